"""The peers a user would pick instead of `navit pack`, each making the same packed
folder from the same planned batches (bench/bench_pipeline.py times them against ours).

Every peer starts from the `BatchPlan`s of `packer.plan.epoch.plan_epoch` and ends with
the contract's batch files (`write_batch_file(batch_path(...), to_record_batch(...))`),
so its files are byte for byte ours; what differs is how the work is spread over the CPUs
and what each image costs on the way. They use the library's decode primitive
(`decode_resized`: the same pixels as ours) and nothing else of the fill: no notes, no
reject handling, no stats, no byte reader. A bad image stops a peer; the bench's
images are all good.

- `PoolPeer`: `multiprocessing.Pool(cpus).imap` over the plans; a worker fills one plan
  (each image decoded and patchified straight into its slot) and writes its file.
- `DataLoaderPeer`: what a timm or vit-pytorch user writes: `DataLoader(num_workers=cpus)`
  over a Dataset of images (read, decode, resize, patchify per image), a batch sampler
  yielding each plan's images, and a packing collate that lays them into the plan's
  sequences in tensors allocated in shared memory, as torch's default_collate does in a
  worker; the loop in this process writes each packed batch.
- `RayDataPeer`: plain Ray Data: `from_items(plans).map_batches(fill and write)` with its
  defaults (blocks, batch size, resource reservation; only the progress bars are off).

`pack_images` is the one layout all three share, the one `packer.fill.batch.fill_batch`
makes: a plan whose sequence 0 holds a (3 tokens) and b (2), and sequence 1 holds c (4),
at seq_len 6, gives segment_ids [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]].
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from packer.contract.packed_folder import batch_path, write_batch_file
from packer.contract.schema import PackedBatch, to_record_batch
from packer.image.imageio import decode_resized
from packer.image.patchify import patchify
from packer.plan.batch_plan import BatchPlan
from packer.plan.sampling import kept_token_indices

# write(i, out): put image i's kept patches into `out`, its [kept, p*p*3] slot.
WriteImage = Callable[[int, np.ndarray], None]


def kept_tokens(plan: BatchPlan, i: int) -> np.ndarray:
    """Image i's kept token indices (all of them unless the config drops tokens)."""
    tokens = int(plan.grid_h[i] * plan.grid_w[i])
    return kept_token_indices(
        plan.config, plan.epoch, int(plan.key[i]), tokens, int(plan.num_kept[i])
    )


def image_patches(plan: BatchPlan, i: int, out: np.ndarray | None = None) -> np.ndarray:
    """Image i of the plan as its kept patches: read, decode at the planned size,
    patchify (into `out` when given and nothing is dropped)."""
    p = plan.config.patch_size
    gh, gw = int(plan.grid_h[i]), int(plan.grid_w[i])
    pixels = decode_resized(Path(plan.uri[i]).read_bytes(), gw * p, gh * p)
    if int(plan.num_kept[i]) == gh * gw:
        return patchify(pixels, p, out=out)
    kept = patchify(pixels, p)[kept_tokens(plan, i)]
    if out is not None:
        out[...] = kept
        return out
    return kept


def pack_images(
    plan: BatchPlan, write: WriteImage, arrays: dict[str, np.ndarray] | None = None
) -> PackedBatch:
    """Lay the plan's images into its sequences: image i goes to the next free tokens of
    sequence `plan.sequence[i]`, filled by `write(i, slot)`. `arrays` (zeroed, shaped
    [B, L, p*p*3], [B, L] x3) may be given, e.g. in shared memory; else they are made."""
    config = plan.config
    b, length = plan.num_sequences, config.seq_len
    if arrays is None:
        arrays = {
            "patches": np.zeros((b, length, config.patch_dim), np.uint8),
            "segment_ids": np.zeros((b, length), np.int32),
            "patch_rows": np.zeros((b, length), np.int16),
            "patch_cols": np.zeros((b, length), np.int16),
        }
    next_token = np.zeros(b, np.int64)
    images_per_seq = np.zeros(b, np.int32)
    for i in range(plan.num_images):
        s = int(plan.sequence[i])
        tokens = kept_tokens(plan, i)
        start = int(next_token[s])
        stop = start + len(tokens)
        write(i, arrays["patches"][s, start:stop])
        images_per_seq[s] += 1
        arrays["segment_ids"][s, start:stop] = images_per_seq[s]
        arrays["patch_rows"][s, start:stop] = tokens // int(plan.grid_w[i])
        arrays["patch_cols"][s, start:stop] = tokens % int(plan.grid_w[i])
        next_token[s] = stop
    return packed_batch(plan, arrays, images_per_seq)


def packed_batch(
    plan: BatchPlan, arrays: dict[str, np.ndarray], images_per_seq: np.ndarray
) -> PackedBatch:
    """The laid-out arrays with the plan's per-image columns: a PackedBatch."""
    return PackedBatch(
        **arrays,
        images_per_seq=images_per_seq,
        image_grid_h=plan.grid_h.astype(np.int16),
        image_grid_w=plan.grid_w.astype(np.int16),
        labels=plan.label.astype(np.int64),
        image_ids=list(plan.image_ids),
        patch_size=plan.config.patch_size,
        config_version=plan.config_version,
    )


def write_packed(plan: BatchPlan, packed: PackedBatch, out_dir: str | Path) -> int:
    """The plan's batch file, as the contract writes it; the images it holds."""
    path = batch_path(Path(out_dir), plan.epoch, plan.global_batch)
    write_batch_file(path, to_record_batch(packed))
    return packed.num_images


def fill_and_write_plain(plan: BatchPlan, out_dir: str | Path) -> int:
    """A peer's whole fill of one plan: every image into its slot, then the file."""
    packed = pack_images(plan, lambda i, slot: image_patches(plan, i, out=slot))
    return write_packed(plan, packed, out_dir)


class PoolPeer:
    """`Pool(cpus).imap` over plans, one plan per task, warm workers across runs."""

    name = "pool"

    def __init__(self, cpus: int) -> None:
        self._pool = multiprocessing.get_context("spawn").Pool(cpus)

    def run(self, plans: list[BatchPlan], out_dir: str | Path) -> int:
        jobs = ((plan, str(out_dir)) for plan in plans)
        return sum(self._pool.imap(_pool_task, jobs))

    def worker_pids(self) -> list[int]:
        return [process.pid for process in self._pool._pool]  # noqa: SLF001

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


def _pool_task(job: tuple[BatchPlan, str]) -> int:
    return fill_and_write_plain(*job)


class _PlannedImages:
    """A map-style torch Dataset over every image of the plans: item k is (plan index,
    image's kept patches) for the k-th image in plan order."""

    def __init__(self, plans: list[BatchPlan]) -> None:
        self.plans = plans
        self.items = [(j, i) for j, plan in enumerate(plans) for i in range(plan.num_images)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray]:
        j, i = self.items[k]
        return j, image_patches(self.plans[j], i)


class _PlanBatches:
    """A batch sampler: each plan's images, plan after plan."""

    def __init__(self, plans: list[BatchPlan]) -> None:
        self._sizes = [plan.num_images for plan in plans]

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[list[int]]:
        first = 0
        for size in self._sizes:
            yield list(range(first, first + size))
            first += size


class _PackingCollate:
    """The plan's images (as the Dataset returned them) laid into its sequences, in
    tensors a worker allocates in shared memory so the batch reaches the loop without a
    copy (torch's default_collate does the same)."""

    def __init__(self, plans: list[BatchPlan]) -> None:
        self.plans = plans

    def __call__(self, samples: list[tuple[int, np.ndarray]]) -> dict:
        import torch

        plan = self.plans[samples[0][0]]
        b, length = plan.num_sequences, plan.config.seq_len
        shapes = {
            "patches": ((b, length, plan.config.patch_dim), torch.uint8),
            "segment_ids": ((b, length), torch.int32),
            "patch_rows": ((b, length), torch.int16),
            "patch_cols": ((b, length), torch.int16),
        }
        tensors = {name: _shared_zeros(shape, dtype) for name, (shape, dtype) in shapes.items()}
        arrays = {name: tensor.numpy() for name, tensor in tensors.items()}
        packed = pack_images(plan, lambda i, slot: np.copyto(slot, samples[i][1]), arrays)
        return {"plan": samples[0][0], "images_per_seq": packed.images_per_seq, **tensors}


def _shared_zeros(shape: tuple[int, ...], dtype) -> object:
    import torch
    import torch.utils.data

    if torch.utils.data.get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    numel = int(np.prod(shape))
    # default_collate's way: a storage in shared memory (fresh pages are zeros).
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)  # noqa: SLF001
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class DataLoaderPeer:
    """`DataLoader(num_workers=cpus)` with a per-plan batch sampler and a packing collate;
    this process writes each packed batch. Workers persist across runs (warm, as the
    Pool's), started with spawn (this process runs Ray's threads: no fork)."""

    name = "dataloader"

    def __init__(self, cpus: int, plans: list[BatchPlan]) -> None:
        import torch.utils.data

        self.plans = plans
        self._loader = torch.utils.data.DataLoader(
            _PlannedImages(plans),
            batch_sampler=_PlanBatches(plans),
            collate_fn=_PackingCollate(plans),
            num_workers=cpus,
            persistent_workers=True,
            multiprocessing_context="spawn",
        )

    def run(self, plans: list[BatchPlan], out_dir: str | Path) -> int:
        if plans is not self.plans:
            raise ValueError("a DataLoaderPeer runs the plans it was made with")
        images = 0
        for batch in self._loader:
            plan = self.plans[int(batch["plan"])]
            arrays = {name: batch[name].numpy() for name in _LAID_OUT}
            packed = packed_batch(plan, arrays, batch["images_per_seq"])
            images += write_packed(plan, packed, out_dir)
        return images

    def worker_pids(self) -> list[int]:
        iterator = self._loader._iterator  # noqa: SLF001 - the persistent workers
        return [worker.pid for worker in getattr(iterator, "_workers", [])]

    def close(self) -> None:
        iterator = self._loader._iterator  # noqa: SLF001
        if iterator is not None:
            iterator._shutdown_workers()  # noqa: SLF001


_LAID_OUT = ("patches", "segment_ids", "patch_rows", "patch_cols")


class RayDataPeer:
    """Plain Ray Data: `from_items` of the plans, `map_batches` filling and writing them,
    every setting at its default (progress bars off, for the bench's output). pack_to_dir
    tunes the process's DataContext, so each run starts from a fresh default one."""

    name = "ray_data"

    def run(self, plans: list[BatchPlan], out_dir: str | Path) -> int:
        import ray.data

        context = ray.data.DataContext()
        context.enable_progress_bars = False
        ray.data.DataContext._set_current(context)  # noqa: SLF001
        dataset = ray.data.from_items([{"plan": plan} for plan in plans]).map_batches(
            _ray_fill_and_write, fn_kwargs={"out_dir": str(out_dir)}
        )
        return sum(int(batch["images"].sum()) for batch in dataset.iter_batches(batch_size=None))

    def worker_pids(self) -> list[int]:
        return None  # Ray's workers, found by bench.cpu_use as for ours

    def close(self) -> None:
        pass


def _ray_fill_and_write(batch: dict[str, np.ndarray], out_dir: str) -> dict[str, np.ndarray]:
    return {"images": np.array([fill_and_write_plain(plan, out_dir) for plan in batch["plan"]])}


class RayDataTunedPeer:
    """How `pack_to_dir` ran before it moved to Ray tasks: Ray Data with `plans_per_block`
    plans per block, resource reservation off, plans and results pickled as bytes, our
    fill (`fill_and_write`: notes, stats) on the workers. Kept to show what Ray Data's
    own costs are (bench/RESULTS.md); the driver does not write pack_to_dir's logs."""

    def __init__(self, plans_per_block: int) -> None:
        self.plans_per_block = plans_per_block
        self.name = f"ray_data_tuned_{plans_per_block}"

    def run(self, plans: list[BatchPlan], out_dir: str | Path) -> int:
        import pickle

        import ray.data

        context = ray.data.DataContext()
        context.enable_progress_bars = False
        context.op_resource_reservation_enabled = False
        ray.data.DataContext._set_current(context)  # noqa: SLF001
        dataset = ray.data.from_items(
            [{"plan": pickle.dumps(plan, protocol=5)} for plan in plans],
            override_num_blocks=-(-len(plans) // self.plans_per_block),
        ).map_batches(
            _ray_fill_and_write_tuned,
            batch_size=None,
            batch_format="numpy",
            fn_kwargs={"out_dir": str(out_dir)},
        )
        written = [pickle.loads(row["written"]) for row in dataset.iter_rows()]
        return sum(w.stats.images_packed for w in written)

    def worker_pids(self) -> None:
        return None

    def close(self) -> None:
        pass


def _ray_fill_and_write_tuned(block: dict[str, np.ndarray], out_dir: str) -> dict[str, np.ndarray]:
    import pickle

    from packer.fill.batch import fill_and_write

    written = [
        pickle.dumps(fill_and_write(pickle.loads(pickled), Path(out_dir)), protocol=5)
        for pickled in block["plan"]
    ]
    return {"written": np.array(written, dtype=object)}
