"""navit-pack's trainer: NaViT over packed batches, the batch stream client, the train loop.

    config.py       TrainConfig: every setting of a run and its default
    model.py        NaViT over packed sequences
    data.py         the batch stream of one rank (packed folder or Flight) and to_device
    train.py        train(config): the loop
    checkpoint.py   checkpoint.pt: save (atomic, rank 0), load, resume cursor, RNG state
    distributed.py  device, process group, DDP wrap
    metrics.py      metrics.jsonl: step records and throughput
    evaluate.py     loss and accuracy over a packed folder, labels mapped by class name
    flex_mask.py    flex attention's block mask and compiled kernel (CUDA)
    progress.py     the progress bar on a terminal, plain lines elsewhere
    report.py       step reports to the packer service (its dashboard's trainers table)

Imports only torch, numpy, pyarrow, tqdm, the standard library and `packer.contract`, so a
GPU box needs nothing else (no Ray, no service code, no launch layer).
"""
