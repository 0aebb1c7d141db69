"""The index stage: one row per image (location, label, oriented size), from headers only.

- `table`: the index's columns and metadata, and the views of it (rejects, notes, stats);
- `build`: the header scan that fills it;
- `cache`: the index kept as Parquet per source, rebuilt when the source changes;
- `reject_ledger`: images whose pixels failed to decode, left out of later plans.
"""
