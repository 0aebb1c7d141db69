"""The plan stage: from the index alone, every packed batch of an epoch. Pure, no I/O.

- `split`: the seeded held-out (validation) split, never planned for training;
- `shuffle`: the epoch's order, a seeded permutation computed per place;
- `sampling`: per-image draws (resolution, patch grid, kept tokens), counter-based;
- `packing`: bin packing of images into sequences (exact fit, best fit, next fit);
- `history`: which config plans each window (`ConfigHistory`);
- `planner`: `EpochPlanner`, window by window, and the `BatchPlan` it hands the fill;
- `snapshot`: the planner's state every few windows, for resume at any depth;
- `epoch`: `plan_epoch`, the one way to plan an epoch (ledger, header rejects, planner);
- `stats`: `PackingStats`, what a plan predicts and what a fill delivered;
- `simulate`: the planner alone over whole epochs (`navit simulate`).
"""
