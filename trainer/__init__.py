"""navit-pack's trainer: NaViT over packed batches, the batch stream client, the train loop.

Imports only torch, numpy, pyarrow, tqdm, the standard library and `packer.contract.schema`, so a
GPU box needs nothing else (no Ray, no service code).
"""
