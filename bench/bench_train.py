"""Training throughput on the same images: packed batches vs one image per row vs vit-pytorch.

    .venv/bin/python bench/bench_train.py                   # CPU, about 80 s on 2 idle cores
    .venv/bin/python bench/bench_train.py --device cuda --model b16 --steps 20

Three ways to train one NaViT-shaped model on the same images, step for step:

* packed: our batches (packer best-fit into `--seq-len` sequences) read from a folder of
  Arrow files through `trainer.data.iter_batches` (prefetch thread), block-diagonal
  attention (flex attention on CUDA, SDPA with a mask on CPU);
* padded: the same images one per row, padded to the longest image of the step (the
  timm / transformers NaFlex layout), same model, SDPA with a padding mask;
* vit_pytorch: `vit_pytorch.na_vit.NaViT` given the same sequences as lists of images; it
  patchifies and builds a dense mask inside forward.

Throughput counts useful tokens only (real image patches, not padding) per second of a
full step: batch to device, forward, loss, backward, AdamW. Images come from
`packer.synthetic.imagenet_like_sizes` with the default resolution sampling (uniform
64..384 in area mode, p=16), random pixels, random labels. Prints one JSON object with
ratios against the padded baseline of the same run, and the packed run's data-wait
fraction (time blocked on the next batch / step time).

The modes run interleaved (one step of each per round) so that other processes on a
shared machine slow them alike. On CPU it also reports useful tokens per process CPU
second, which such load disturbs less; it flatters single-threaded Python work (most of
vit-pytorch's per-image patchify loop), so the wall-clock figures are the headline.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from padded_baseline import pad_one_image_per_row

from packer.config import PackingConfig
from packer.contract.cursor import Cursor
from packer.contract.packed_folder import batch_path, write_batch_file
from packer.contract.schema import PackedBatch, to_record_batch
from packer.plan.packing import BinLimits, pack
from packer.plan.sampling import sample_resolutions, target_grids
from packer.synthetic import imagenet_like_sizes
from trainer.data import iter_batches, to_device
from trainer.model import MODEL_INPUTS, MODEL_SIZES, NaViT, NaViTConfig

NUM_CLASSES = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, choices=sorted(MODEL_SIZES), help="named size")
    parser.add_argument("--width", type=int, default=192, help="without --model")
    parser.add_argument("--depth", type=int, default=4, help="without --model")
    parser.add_argument("--heads", type=int, default=3, help="without --model")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--sequences", type=int, default=4, help="packed sequences per step")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-vit-pytorch", action="store_true")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------
# The images and their packed batches


def packed_steps(args: argparse.Namespace) -> list[PackedBatch]:
    """warmup + steps batches of `sequences` packed sequences each, random pixels."""
    config = PackingConfig(patch_size=args.patch_size, seq_len=args.seq_len, seed=args.seed)
    needed = (args.warmup + args.steps) * args.sequences
    pool = needed * args.seq_len // 60 + 200  # ~4x more images than the sequences need
    widths, heights = imagenet_like_sizes(pool, seed=args.seed)
    keys = np.arange(pool, dtype=np.uint64)
    grid_h, grid_w = target_grids(config, widths, heights, sample_resolutions(config, 0, keys))
    tokens = grid_h * grid_w
    limits = BinLimits(config.seq_len, config.max_images_per_seq)
    bins = pack(tokens, np.arange(pool), limits, "best_fit")
    # Best fit leaves its slack in the last bins it opens; a random subset is typical.
    rng = np.random.default_rng(args.seed)
    chosen = [bins[i] for i in rng.permutation(len(bins))[:needed]]
    patch_dim = config.patch_dim
    steps = []
    for s in range(args.warmup + args.steps):
        batch = PackedBatch.empty(args.sequences, args.seq_len, args.patch_size)
        images = []
        for row, packed_bin in enumerate(chosen[s * args.sequences : (s + 1) * args.sequences]):
            at = 0
            for slot, image in enumerate(packed_bin.items, start=1):
                h, w = int(grid_h[image]), int(grid_w[image])
                span = slice(at, at + h * w)
                batch.patches[row, span] = rng.integers(0, 256, (h * w, patch_dim), np.uint8)
                batch.segment_ids[row, span] = slot
                batch.patch_rows[row, span] = np.repeat(np.arange(h), w)
                batch.patch_cols[row, span] = np.tile(np.arange(w), h)
                at += h * w
                images.append((h, w))
            batch.images_per_seq[row] = len(packed_bin.items)
        batch.image_grid_h = np.array([h for h, _ in images], np.int16)
        batch.image_grid_w = np.array([w for _, w in images], np.int16)
        batch.labels = rng.integers(0, NUM_CLASSES, len(images)).astype(np.int64)
        batch.image_ids = [f"synthetic/{s}/{i}" for i in range(len(images))]
        steps.append(batch)
    return steps


def write_folder(batches: list[PackedBatch], root: Path) -> None:
    for j, batch in enumerate(batches):
        write_batch_file(batch_path(root, 0, j), to_record_batch(batch))


def images_of(batch: PackedBatch) -> list[list[torch.Tensor]]:
    """The batch as vit-pytorch wants it: per sequence, float images [3, H, W] in [0, 1]."""
    p = batch.patch_size
    sequences, image = [], 0
    for row in range(batch.num_sequences):
        group = []
        for slot in range(1, int(batch.images_per_seq[row]) + 1):
            h, w = int(batch.image_grid_h[image]), int(batch.image_grid_w[image])
            patches = batch.patches[row, batch.segment_ids[row] == slot]  # [h*w, p*p*3]
            pixels = patches.reshape(h, w, p, p, 3).transpose(4, 0, 2, 1, 3)  # [3, h, p, w, p]
            group.append(torch.from_numpy(pixels.reshape(3, h * p, w * p) / 255.0).float())
            image += 1
        sequences.append(group)
    return sequences


# ---------------------------------------------------------------------------------------
# Timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class Mode:
    """One way of training: a step function, its inputs, and per-step token counts."""

    def __init__(
        self, name: str, step: Callable[[Any], None], inputs: Any, slot_tokens: list[int]
    ) -> None:
        self.name, self.step, self.inputs = name, step, iter(inputs)
        self.slot_tokens = slot_tokens  # tokens computed per step, padding included
        self.step_times: list[float] = []
        self.cpu_times: list[float] = []  # process CPU seconds (all threads) per step
        self.waits: list[float] = []


def run_interleaved(
    modes: list[Mode], useful_tokens: list[int], warmup: int, device: torch.device
) -> dict[str, Any]:
    """Step every mode once per round, so that load from other processes hits all alike.

    A step's time runs from asking for its batch to the end of the optimizer step, so the
    packed mode's wait on the prefetch thread is included (and reported on its own).
    """
    for index in range(len(useful_tokens)):
        for mode in modes:
            synchronize(device)
            begin, cpu_begin = time.perf_counter(), time.process_time()
            item = next(mode.inputs)
            waited = time.perf_counter() - begin
            mode.step(item)
            synchronize(device)
            if index >= warmup:
                mode.step_times.append(time.perf_counter() - begin)
                mode.cpu_times.append(time.process_time() - cpu_begin)
                mode.waits.append(waited)
        print(f"  round {index + 1}/{len(useful_tokens)} done", flush=True)
    useful = sum(useful_tokens[warmup:])
    results = {}
    for mode in modes:
        total = sum(mode.step_times)
        results[mode.name] = {
            "step_s_mean": round(total / len(mode.step_times), 4),
            "step_s_median": round(float(np.median(mode.step_times)), 4),
            "useful_tokens_per_s": round(useful / total, 1),
            "pad_fraction": round(1 - useful / sum(mode.slot_tokens[warmup:]), 4),
            "data_wait_fraction": round(sum(mode.waits) / total, 5),
        }
        if device.type == "cpu":
            # Wall time swells when other processes share the cores; CPU time much less.
            results[mode.name]["useful_tokens_per_cpu_s"] = round(useful / sum(mode.cpu_times), 1)
    return results


def train_step_for(model: torch.nn.Module, device: torch.device) -> Callable[[Any], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: PackedBatch) -> None:
        tensors = to_device(batch, device)
        labels = tensors.pop("labels")
        with autocast(device):
            logits = model(**{name: tensors[name] for name in MODEL_INPUTS})
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def load_vit_pytorch_navit() -> type:
    # vit_pytorch/__init__.py imports torchvision (for its DINO helpers), which may not match
    # the installed torch; na_vit.py itself needs only torch and einops, so load it alone.
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("vit-pytorch is not installed (pip install -e '.[dev]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "na_vit.py"
    module_spec = importlib.util.spec_from_file_location("vit_pytorch_na_vit", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.NaViT


def vit_pytorch_step_for(
    config: NaViTConfig, max_side: int, device: torch.device
) -> Callable[[Any], None]:
    NaViTReference = load_vit_pytorch_navit()
    torch.manual_seed(0)
    model = NaViTReference(
        image_size=max_side * config.patch_size,  # its position tables must cover every side
        patch_size=config.patch_size,
        num_classes=NUM_CLASSES,
        dim=config.width,
        depth=config.depth,
        heads=config.heads,
        dim_head=config.head_dim,
        mlp_dim=config.mlp_dim,
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(item: tuple[list[list[torch.Tensor]], torch.Tensor]) -> None:
        groups, labels = item
        groups = [[image.to(device, non_blocking=True) for image in g] for g in groups]
        with autocast(device):
            logits = model(groups)
        loss = F.cross_entropy(logits.float(), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# ---------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    sizes = (
        MODEL_SIZES[args.model]
        if args.model
        else {
            "width": args.width,
            "depth": args.depth,
            "heads": args.heads,
        }
    )
    config = NaViTConfig(num_classes=NUM_CLASSES, patch_size=args.patch_size, **sizes)
    batches = packed_steps(args)
    useful = [b.real_tokens for b in batches]
    padded = [pad_one_image_per_row(b) for b in batches]
    report: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": {k: getattr(config, k) for k in ("width", "depth", "heads", "mlp_dim")},
        "seq_len": args.seq_len,
        "sequences_per_step": args.sequences,
        "images_per_step": round(sum(b.num_images for b in batches) / len(batches), 1),
        "useful_tokens_per_step": round(sum(useful) / len(useful), 1),
        "padded_row_length_mean": round(np.mean([p.seq_len for p in padded]), 1),
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
    }
    print(f"benchmark on {device}: {report['images_per_step']} images per step", flush=True)

    torch.manual_seed(0)
    packed_model = NaViT(config).to(device)
    torch.manual_seed(0)
    padded_model = NaViT(dataclasses.replace(config, attn_impl="sdpa")).to(device)
    with tempfile.TemporaryDirectory() as folder:
        write_folder(batches, Path(folder))
        # The packed batches come from Arrow files through the trainer's prefetch thread.
        batches_read = iter_batches(folder, Cursor(rank=0, world_size=1), end_epoch=1, prefetch=2)
        stream = (batch for _, batch in batches_read)
        modes = [
            Mode(
                "packed",
                train_step_for(packed_model, device),
                stream,
                [b.segment_ids.size for b in batches],
            ),
            Mode(
                "padded",
                train_step_for(padded_model, device),
                padded,
                [p.segment_ids.size for p in padded],
            ),
        ]
        if not args.skip_vit_pytorch:
            max_side = max(int(max(b.image_grid_h.max(), b.image_grid_w.max())) for b in batches)
            # It pads each step's sequences to the longest one, not to seq_len.
            lengths = [int(b.segment_ids.astype(bool).sum(1).max()) for b in batches]
            modes.append(
                Mode(
                    "vit_pytorch",
                    vit_pytorch_step_for(config, max_side, device),
                    [(images_of(b), torch.from_numpy(b.labels)) for b in batches],
                    [n * b.num_sequences for n, b in zip(lengths, batches, strict=True)],
                )
            )
        results = run_interleaved(modes, useful, args.warmup, device)
    results["packed"]["attention"] = "flex" if device.type == "cuda" else "sdpa (block mask)"
    results["padded"]["attention"] = "sdpa (padding mask)"
    if "vit_pytorch" in results:
        results["vit_pytorch"]["attention"] = "sdpa (dense mask built in forward)"
        results["vit_pytorch"]["data_wait_fraction"] = None  # its inputs sit in memory
    base = results["padded"]["useful_tokens_per_s"]
    report["results"] = results
    report["useful_tokens_per_s_vs_padded"] = {
        name: round(r["useful_tokens_per_s"] / base, 3) for name, r in results.items()
    }
    if device.type == "cpu":
        cpu_base = results["padded"]["useful_tokens_per_cpu_s"]
        report["useful_tokens_per_cpu_s_vs_padded"] = {
            name: round(r["useful_tokens_per_cpu_s"] / cpu_base, 3) for name, r in results.items()
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
