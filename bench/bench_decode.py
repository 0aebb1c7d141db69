"""CPU cost of one image, from its bytes to its patches in a sequence slot, on one core.

    .venv/bin/python bench/bench_decode.py [--json] [--rounds 5]

Three paths over the same images and the same planned target sizes:
- ours: the fill's path, `patchify(decode_resized(data, w, h), p, out=slot)`;
- pillow: the plain Pillow path: open, draft (JPEG), convert to RGB, antialiased
  bilinear resize, numpy patchify into the slot;
- floor: the decode alone: for JPEGs the same DCT-scaled decode `ours` does (libjpeg-turbo
  at Pillow's draft scale, into an array), for PNG and WebP Pillow's open and load.
Four sets, made here with photo-like content (1/f noise, hard-edged discs, sensor noise):
photo JPEGs 500x375, camera JPEGs 3000x2000, PNGs and WebPs 500x375. Targets come from
the default PackingConfig's resolution sampling (r uniform in [64, 384], 16-pixel
grids), a few epochs per image. Files are read from a temporary folder each time.

Times are this process's CPU time (time.process_time), OpenCV on one thread. Every round
runs every path over every image of a set, back to back; a ratio is the median over
rounds of the ratio within a round. Stages (read, decode, resize, patchify into the slot)
come from separate timed passes that call the steps one at a time.

Quality: PSNR of ours and of plain Pillow against a float32 Lanczos-3 resize of the full
decode. Determinism: ours gives the same bytes in every round and in a Pool of 2 workers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from packer import imageio
from packer.config import PackingConfig
from packer.image.imageio import decode_resized
from packer.image.patchify import patchify
from packer.image.resize import orient_pixels, resize_pixels
from packer.index.table import image_keys
from packer.plan.sampling import sample_resolutions, target_grids
from packer.synthetic import natural_photo

PATCH = 16
STAGES = ("read", "decode", "resize", "patchify_into_slot")
CONFIG = PackingConfig()


# name -> (count, width, height, format, save options, epochs of targets per image)
SETS = {
    "photo_jpeg": (16, 500, 375, "JPEG", {"quality": 90}, 3),
    "camera_jpeg": (3, 3000, 2000, "JPEG", {"quality": 92}, 3),
    "png": (10, 500, 375, "PNG", {}, 3),
    "webp": (10, 500, 375, "WEBP", {"quality": 90}, 3),
}


@dataclass(frozen=True)
class Item:
    path: Path
    width: int
    height: int


def write_set(name: str, folder: Path) -> list[Item]:
    """Encode the set's images into `folder` and plan their target sizes."""
    count, width, height, fmt, options, epochs = SETS[name]
    paths = []
    for i in range(count):
        image = Image.fromarray(natural_photo(width, height, seed=1000 * len(name) + i))
        if i % 3 == 2:  # a third are portrait, as in a photo collection
            image = image.transpose(Image.Transpose.ROTATE_90)
        path = folder / f"{name}-{i:03d}.{fmt.lower()}"
        image.save(path, fmt, **options)
        paths.append(path)
    sizes = [Image.open(p).size for p in paths]
    widths = np.array([w for w, _ in sizes])
    heights = np.array([h for _, h in sizes])
    keys = image_keys([p.name for p in paths])
    items = []
    for epoch in range(epochs):
        resolutions = sample_resolutions(CONFIG, epoch, keys)
        grid_h, grid_w = target_grids(CONFIG, widths, heights, resolutions)
        for path, gh, gw in zip(paths, grid_h.tolist(), grid_w.tolist(), strict=True):
            items.append(Item(path, gw * PATCH, gh * PATCH))
    return items


def _slot(item: Item, slots: np.ndarray) -> np.ndarray:
    return slots[: (item.width // PATCH) * (item.height // PATCH)]


def ours(item: Item, slots: np.ndarray) -> None:
    data = item.path.read_bytes()
    patchify(decode_resized(data, item.width, item.height), PATCH, out=_slot(item, slots))


def _pillow_decode(data: bytes, width: int, height: int) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (width, height))
    return image.convert("RGB")


def pillow(item: Item, slots: np.ndarray) -> None:
    data = item.path.read_bytes()
    image = _pillow_decode(data, item.width, item.height)
    image = image.resize((item.width, item.height), Image.Resampling.BILINEAR)
    patchify(np.asarray(image), PATCH, out=_slot(item, slots))


def _floor_decode(data: bytes, width: int, height: int) -> object:
    """The decode `ours` does, alone: libjpeg-turbo at the draft scale, else Pillow's load."""
    image, _ = imageio._open(data)
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        scale = imageio._dct_scale(image.size, (width, height))
        full_w, full_h = image.size
        return simplejpeg.decode_jpeg(
            data,
            "GRAY" if image.mode == "L" else "RGB",
            min_width=-(-full_w // scale),
            min_height=-(-full_h // scale),
        )
    image.load()
    return image


def floor(item: Item, slots: np.ndarray) -> None:
    _floor_decode(item.path.read_bytes(), item.width, item.height)


def pillow_draft_decode(item: Item, slots: np.ndarray) -> None:
    """Pillow's own draft decode (for comparison with the floor's libjpeg-turbo call)."""
    image = Image.open(io.BytesIO(item.path.read_bytes()))
    image.draft("RGB", (item.width, item.height))
    image.load()


PATHS: dict[str, Callable[[Item, np.ndarray], None]] = {
    "ours": ours,
    "pillow": pillow,
    "floor": floor,
    "pillow_draft_decode": pillow_draft_decode,
}


def _add_stage_times(stages: dict[str, float], marks: tuple[float, ...]) -> None:
    """Add the time between consecutive clock marks to each of STAGES in order."""
    for stage, start, stop in zip(STAGES, marks, marks[1:], strict=False):
        stages[stage] += stop - start


def _ours_staged(item: Item, slots: np.ndarray, stages: dict[str, float]) -> np.ndarray:
    """decode_resized's steps one at a time (the same calls, see packer.image.imageio)."""
    clock = time.process_time
    t0 = clock()
    data = item.path.read_bytes()
    t1 = clock()
    image, orientation = imageio._open(data)
    swap = orientation in imageio._SWAPS_SIDES
    w, h = (item.height, item.width) if swap else (item.width, item.height)
    pixels = imageio._decode_jpeg_scaled(data, image, w, h)
    if pixels is None:
        pixels = imageio._decode_with_pillow(image, w, h)
    t2 = clock()
    pixels = orient_pixels(resize_pixels(pixels, w, h), orientation)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    pixels = np.ascontiguousarray(pixels)
    t3 = clock()
    out = patchify(pixels, PATCH, out=_slot(item, slots))
    t4 = clock()
    _add_stage_times(stages, (t0, t1, t2, t3, t4))
    return out


def _pillow_staged(item: Item, slots: np.ndarray, stages: dict[str, float]) -> np.ndarray:
    clock = time.process_time
    t0 = clock()
    data = item.path.read_bytes()
    t1 = clock()
    image = _pillow_decode(data, item.width, item.height)
    t2 = clock()
    pixels = np.asarray(image.resize((item.width, item.height), Image.Resampling.BILINEAR))
    t3 = clock()
    out = patchify(pixels, PATCH, out=_slot(item, slots))
    t4 = clock()
    _add_stage_times(stages, (t0, t1, t2, t3, t4))
    return out


def _run(fn, items: list[Item], slots: np.ndarray) -> float:
    """CPU milliseconds per image of `fn` over `items`."""
    start = time.process_time()
    for item in items:
        fn(item, slots)
    return 1e3 * (time.process_time() - start) / len(items)


def _staged(fn, items: list[Item], slots: np.ndarray) -> dict[str, float]:
    stages = dict.fromkeys(STAGES, 0.0)
    for item in items:
        fn(item, slots, stages)
    return {k: 1e3 * v / len(items) for k, v in stages.items()}


def _digest(item: Item) -> str:
    """A hash of ours' pixels for one item (Pool workers run this too)."""
    pixels = decode_resized(item.path.read_bytes(), item.width, item.height)
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def _float_lanczos(data: bytes, width: int, height: int) -> np.ndarray:
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    channels = [
        np.asarray(
            Image.fromarray(full[..., c], "F").resize((width, height), Image.Resampling.LANCZOS)
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def _psnr(pixels: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((pixels.astype(np.float64) - reference) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def psnr_db(items: list[Item]) -> dict[str, float]:
    ours_db, pillow_db = [], []
    for item in items:
        data = item.path.read_bytes()
        reference = _float_lanczos(data, item.width, item.height)
        ours_db.append(_psnr(decode_resized(data, item.width, item.height), reference))
        plain = _pillow_decode(data, item.width, item.height)
        plain = plain.resize((item.width, item.height), Image.Resampling.BILINEAR)
        pillow_db.append(_psnr(np.asarray(plain), reference))
    worst_gap = min(o - p for o, p in zip(ours_db, pillow_db, strict=True))
    return {
        "ours_min": round(min(ours_db), 2),
        "ours_median": round(statistics.median(ours_db), 2),
        "pillow_min": round(min(pillow_db), 2),
        "pillow_median": round(statistics.median(pillow_db), 2),
        "ours_minus_pillow_worst": round(worst_gap, 2),
        "items": len(items),
    }


def measure(name: str, items: list[Item], rounds: int, pool) -> dict:
    slots = np.empty((CONFIG.max_tokens_per_image, CONFIG.patch_dim), np.uint8)
    for fn in PATHS.values():  # warm: page cache, imports, lazy init
        _run(fn, items[:4], slots)
    for item in items[:8]:  # the stage-by-stage pass must be the same work as ours
        staged = _ours_staged(item, slots, dict.fromkeys(STAGES, 0.0)).copy()
        ours(item, slots)
        assert np.array_equal(staged, _slot(item, slots)), item
    runs = {k: [] for k in PATHS}
    stages = {"ours": [], "pillow": []}
    digests = set()
    for r in range(rounds):
        order = list(PATHS.items())
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
        for key, fn in order:
            runs[key].append(_run(fn, items, slots))
        stages["ours"].append(_staged(_ours_staged, items, slots))
        stages["pillow"].append(_staged(_pillow_staged, items, slots))
        digests.add(tuple(_digest(item) for item in items))
    pool_digests = tuple(pool.map(_digest, items, chunksize=1))

    def median_ratio(num: str, den: str) -> float:
        return round(statistics.median(n / d for n, d in zip(runs[num], runs[den], strict=True)), 3)

    return {
        "speedup_vs_pillow": median_ratio("pillow", "ours"),
        "cost_vs_decode_floor": median_ratio("ours", "floor"),
        "pillow_cost_vs_decode_floor": median_ratio("pillow", "floor"),
        "cpu_ms_per_image": {k: round(statistics.median(v), 3) for k, v in runs.items()},
        "stages_ms": {
            path: {s: round(statistics.median(r[s] for r in rows), 3) for s in rows[0]}
            for path, rows in stages.items()
        },
        "psnr_db_vs_float_lanczos": psnr_db(items[: 12 if name != "camera_jpeg" else 3]),
        "same_bytes_every_round_and_in_pool_of_2": digests == {pool_digests},
        "images": len({i.path for i in items}),
        "items": len(items),
        "rounds": rounds,
    }


def _markdown(report: dict) -> str:
    lines = [
        "| set | ours ms | plain Pillow ms | decode floor ms | Pillow draft decode ms | "
        "speedup vs Pillow | cost vs floor | PSNR ours min/median | PSNR Pillow min/median |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report.items():
        ms, q = r["cpu_ms_per_image"], r["psnr_db_vs_float_lanczos"]
        lines.append(
            f"| {name} | {ms['ours']} | {ms['pillow']} | {ms['floor']} | "
            f"{ms['pillow_draft_decode']} | {r['speedup_vs_pillow']}x | "
            f"{r['cost_vs_decode_floor']}x | {q['ours_min']} / {q['ours_median']} | "
            f"{q['pillow_min']} / {q['pillow_median']} |"
        )
    lines += [
        "",
        "| set | path | read | decode | resize | patchify into slot |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report.items():
        for path, s in r["stages_ms"].items():
            lines.append(
                f"| {name} | {path} | {s['read']} | {s['decode']} | {s['resize']} | "
                f"{s['patchify_into_slot']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated subset")
    args = parser.parse_args()
    report = {}
    with (
        tempfile.TemporaryDirectory() as folder,
        multiprocessing.get_context("spawn").Pool(2) as pool,
    ):
        for name in args.sets.split(","):
            items = write_set(name, Path(folder))
            report[name] = measure(name, items, args.rounds, pool)
    print(json.dumps(report, indent=2) if args.json else _markdown(report))


if __name__ == "__main__":
    main()
