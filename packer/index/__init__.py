"""The index stage: one row per image (location, label, oriented size), from headers only.

- `table`: the index's columns, key and metadata;
- `build`: the scan of one file group (metadata sizes, else headers) that fills it;
- `cache`: the index kept as a memory-mapped Arrow file per source, one part per file
  group, only new groups scanned when the source changes;
- `image_index`: `ImageIndex`, what stays resident (13 bytes an image) and the views of
  it (rejects, notes, stats, the rows a batch reads);
- `reject_ledger`: images whose pixels failed to decode, left out of later plans.
"""
