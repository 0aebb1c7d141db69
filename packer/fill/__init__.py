"""The fill stage: a `BatchPlan` becomes a packed batch by decoding its images.

- `batch`: `fill_batch`, one plan into one `PackedBatch` (rejects and notes beside it);
- `bounded`: the ordered, bounded in-flight loop every streaming fill uses;
- `in_process`: plan and fill in this process, no Ray (evaluation, the held-out split).

`packer.pipeline` runs the same fill on Ray workers.
"""
