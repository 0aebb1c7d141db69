"""A small, learnable, deterministic image dataset, and converters to tar shards and Parquet.

`write_sample_dataset` draws four classes a tiny ViT can tell apart at 64 px after a few
hundred CPU steps: `circles` and `squares` (big bold shapes), `stripes` and `checkers`
(bold textures), each in random colours over a noisy background. Image sizes spread like
photos: aspect ratios from portrait 1:2 to panorama 3:1, sides from 64 to 1600 px, most
images with a long side of 200-800 px (as ImageNet's), a few tiny or huge ones.

Everything is drawn at most 256 px on the long side and upscaled, so 300 images take a
few seconds; the same seed writes the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

CLASSES = ("checkers", "circles", "squares", "stripes")  # sorted: ImageFolder label order
MIN_SIDE = 64
MAX_SIDE = 1600
MIN_ASPECT = 0.5  # width / height: portrait 1:2
MAX_ASPECT = 3.0  # panorama 3:1
_DRAW_SIDE = 256  # the long side images are drawn at before upscaling
_JPEG_QUALITY = 90


def write_sample_dataset(out_dir: str | Path, num_images: int, seed: int) -> dict[str, Any]:
    """Write `num_images` JPEGs as out_dir/<class>/<class>_<i>.jpg; return a summary.

    Classes take turns (image i is class i % 4), so counts differ by at most one.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be non-negative, got {num_images}")
    out = Path(out_dir)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    per_class = dict.fromkeys(CLASSES, 0)
    total_bytes = 0
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        name = CLASSES[i % len(CLASSES)]
        width, height = _sample_size(rng)
        data = _encode_jpeg(_draw(name, width, height, rng))
        (out / name / f"{name}_{i:06d}.jpg").write_bytes(data)
        per_class[name] += 1
        total_bytes += len(data)
    return {
        "dir": str(out),
        "images": num_images,
        "classes": list(CLASSES),
        "per_class": per_class,
        "bytes": total_bytes,
        "seed": seed,
    }


def _sample_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): log-uniform aspect in [1:2, 3:1], long side mostly 200-800 px.

    85% of long sides are log-normal around 420 px clipped to [200, 800]; the rest are
    log-uniform over [64, 1600]. The short side is then raised to 64 px if needed (a 3:1
    panorama is at least 192x64).
    """
    aspect = float(np.exp(rng.uniform(np.log(MIN_ASPECT), np.log(MAX_ASPECT))))
    if rng.random() < 0.85:
        long_side = float(np.clip(rng.lognormal(np.log(420.0), 0.35), 200.0, 800.0))
    else:
        long_side = float(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(MAX_SIDE))))
    if aspect >= 1.0:
        width, height = long_side, long_side / aspect
    else:
        width, height = long_side * aspect, long_side
    short = min(width, height)
    if short < MIN_SIDE:  # scale up keeping the aspect; the long side stays <= 192
        width, height = width * MIN_SIDE / short, height * MIN_SIDE / short
    width_px = int(np.clip(round(width), MIN_SIDE, MAX_SIDE))
    height_px = int(np.clip(round(height), MIN_SIDE, MAX_SIDE))
    return width_px, height_px


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _contrasting(rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """A random colour at least 160 away (L1, per-channel mean ~53) from `other`."""
    for _ in range(32):
        color = _random_color(rng)
        if np.abs(color - other).sum() >= 160:
            return color
    return 255.0 - other  # the complement always contrasts


def _draw(name: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Draw class `name` at most _DRAW_SIDE px long, then upscale to width x height."""
    scale = min(1.0, _DRAW_SIDE / max(width, height))
    w, h = max(round(width * scale), 8), max(round(height * scale), 8)
    background = _random_color(rng)
    foreground = _contrasting(rng, background)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    short = float(min(w, h))
    if name in ("stripes", "checkers"):
        period = short * rng.uniform(0.18, 0.33)
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        if name == "stripes":
            mask = (np.floor(u / (period / 2)) % 2) == 0
        else:
            v = -xx * np.sin(angle) + yy * np.cos(angle)
            mask = ((np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2) == 0
    else:
        shapes = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(shapes)
        for _ in range(int(rng.integers(1, 4))):
            size = short * rng.uniform(0.35, 0.6)
            cx = rng.uniform(size / 2, w - size / 2) if w > size else w / 2
            cy = rng.uniform(size / 2, h - size / 2) if h > size else h / 2
            box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
            if name == "circles":
                draw.ellipse(box, fill=255)
            else:
                draw.rectangle(box, fill=255)
        mask = np.asarray(shapes) > 127
    pixels = np.where(mask[:, :, None], foreground, background)
    pixels = pixels + rng.normal(0.0, 18.0, pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if (w, h) != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return image


def _encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


# --------------------------------------------------------------------------- converters


def _folder_items(folder: str | Path) -> tuple[list[str], list[tuple[Path, str, int]]]:
    """(class names, [(path, relative id, label)]) of a local ImageFolder, sorted by id."""
    root = Path(folder)
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    items = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                items.append((path, path.relative_to(root).as_posix(), label))
    return classes, sorted(items, key=lambda item: item[1])


def write_webdataset_shards(
    folder: str | Path, out_dir: str | Path, images_per_shard: int = 100
) -> list[Path]:
    """Convert an ImageFolder into WebDataset shards out_dir/shard-000000.tar, ...

    Each image becomes members <key>.<ext> and <key>.cls (its label as text), where key
    is its relative path with "/" -> "__" and no extension: "circles/circles_000001.jpg"
    -> "circles__circles_000001" (with "_<ext>" added if two files would share a key).
    Member headers carry no time or owner, so the same folder gives the same bytes.
    A WebDataset source reads only jpg, jpeg, png and webp members; other images are
    written but not indexed.
    """
    if images_per_shard <= 0:
        raise ValueError(f"images_per_shard must be positive, got {images_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, items = _folder_items(folder)
    stems = [
        relative.rpartition(".")[0].replace("/", "__").replace(".", "_") for _, relative, _ in items
    ]
    shared = {stem for stem, count in Counter(stems).items() if count > 1}
    members = []  # (path, key, extension, label)
    for (path, relative, label), stem in zip(items, stems, strict=True):
        ext = relative.rpartition(".")[2].lower()
        members.append((path, f"{stem}_{ext}" if stem in shared else stem, ext, label))
    shards = []
    for start in range(0, len(members), images_per_shard):
        shard = out / f"shard-{start // images_per_shard:06d}.tar"
        with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
            for path, key, ext, label in members[start : start + images_per_shard]:
                _add_member(tar, f"{key}.{ext}", path.read_bytes())
                _add_member(tar, f"{key}.cls", str(label).encode())
        shards.append(shard)
    return shards


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_parquet(
    folder: str | Path,
    out_path: str | Path,
    row_group_size: int = 64,
    hf_style: bool = False,
    with_ids: bool = False,
) -> Path:
    """Convert an ImageFolder into one Parquet file of image bytes and labels.

    Columns: `image` (binary; with hf_style a struct<bytes, path> as `datasets` writes),
    `label` int64, and with `with_ids` an `image_id` string column holding the
    folder-relative path. Class names go in Hugging Face ClassLabel schema metadata.
    """
    classes, items = _folder_items(folder)
    blobs = [path.read_bytes() for path, _, _ in items]
    relatives = [relative for _, relative, _ in items]
    if hf_style:
        image = pa.StructArray.from_arrays(
            [pa.array(blobs, pa.binary()), pa.array(relatives, pa.string())],
            names=["bytes", "path"],
        )
    else:
        image = pa.array(blobs, pa.binary())
    columns: dict[str, pa.Array] = {
        "image": image,
        "label": pa.array([label for _, _, label in items], pa.int64()),
    }
    if with_ids:
        columns["image_id"] = pa.array(relatives, pa.string())
    # Class names travel as Hugging Face ClassLabel metadata, which open_source reads.
    features: dict[str, Any] = {
        "image": {"_type": "Image"} if hf_style else {"dtype": "binary", "_type": "Value"},
        "label": {"_type": "ClassLabel", "names": classes},
    }
    if with_ids:
        features["image_id"] = {"dtype": "string", "_type": "Value"}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = pa.table(columns).replace_schema_metadata(metadata)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, row_group_size=row_group_size)
    return out
