"""The contract between the packer, the service and the trainer.

What crosses a process boundary is defined here once and imported everywhere:

- `schema`: the packed batch (Arrow columns, metadata, numpy view) and its converters;
- `cursor`: a rank's position (`Cursor`), the Flight ticket, rank striding, batch metadata;
- `auth`: the bearer token, where it is read from and how it is sent;
- `files`: atomic writes (checkpoints, index caches, state files).

It needs only the standard library, numpy and pyarrow, so a GPU trainer box that has
torch and pyarrow can import it without Ray or the service.
"""
