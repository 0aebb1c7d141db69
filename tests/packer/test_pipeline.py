"""The Ray pipeline end to end on a local Ray (the session's `ray_session`)."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from packer.config import PackingConfig
from packer.contract.schema import from_record_batch, to_record_batch
from packer.fill import fill_batch
from packer.index import load_index
from packer.plan import ConfigHistory, EpochPlanner
from packer.sample_data import write_sample_dataset
from packer.simulate import simulate
from tests.packer.image_cases import write_odd_images

SETTINGS = ["seq_len=256", "max_res=192", "batch_size=4", "pack_window=24"]
CONFIG = PackingConfig().with_overrides(SETTINGS)

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root, 40, seed=7)
    return root


def _read_dir(out: Path) -> list[pa.RecordBatch]:
    # Plain pyarrow, no Ray and no packer: what any consumer of the files does.
    return [
        pa.ipc.open_file(path).get_batch(0) for path in sorted(out.glob("epoch-*/batch-*.arrow"))
    ]


def _pack(dataset: Path, out: Path, epochs: int = 1):
    from packer.pipeline import pack_to_dir

    index = load_index(str(dataset))
    return index, pack_to_dir(index, ConfigHistory.start(CONFIG), out, epochs)


def test_pack_writes_batches_plain_pyarrow_reads_with_every_image_once_per_epoch(sample, tmp_path):
    index, stats = _pack(sample, tmp_path / "out", epochs=2)
    batches = _read_dir(tmp_path / "out")
    assert batches[0].schema.metadata[b"seq_len"] == b"256"
    by_epoch: dict[str, list[str]] = {}
    for path, rb in zip(
        sorted((tmp_path / "out").glob("epoch-*/batch-*.arrow")), batches, strict=True
    ):
        by_epoch.setdefault(path.parent.name, []).extend(
            rb.column("image_ids").flatten().to_pylist()
        )
    all_ids = sorted(index.column("image_id").to_pylist())
    assert sorted(by_epoch) == ["epoch-000", "epoch-001"]
    for ids in by_epoch.values():
        assert sorted(ids) == all_ids
    assert by_epoch["epoch-000"] != by_epoch["epoch-001"]  # epochs reshuffle
    assert stats.images_in == stats.images_packed == 80
    # Batch files are written atomically: no temporary file is left beside them.
    files = {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert files == {p.name for p in (tmp_path / "out").glob("epoch-*/batch-*.arrow")} | {
        "rejected.jsonl",
        "notes.jsonl",
    }


def test_simulate_predicts_exactly_what_pack_delivers(sample, tmp_path):
    index, delivered = _pack(sample, tmp_path / "out")
    predicted = simulate(index, ConfigHistory.start(CONFIG))
    keep = ("images_in", "images_packed", "sequences", "real_tokens", "pad_tokens", "efficiency")
    assert {k: predicted.to_dict()[k] for k in keep} == {k: delivered.to_dict()[k] for k in keep}
    real = sum(from_record_batch(rb).real_tokens for rb in _read_dir(tmp_path / "out"))
    assert real == predicted.real_tokens


def test_bad_images_are_counted_with_reasons_and_the_rest_packed(tmp_path):
    expected = write_odd_images(tmp_path / "odd")
    index, stats = _pack(tmp_path / "odd", tmp_path / "out")
    bad = {k: v for k, v in expected.items() if v is not None}
    assert stats.images_in == len(expected)
    assert stats.images_packed + stats.images_rejected == len(expected)
    assert dict(stats.rejected) == {r: list(bad.values()).count(r) for r in set(bad.values())}
    logged = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").open()]
    assert {row["image_id"]: row["reason"] for row in logged} == bad
    packed = [i for rb in _read_dir(tmp_path / "out") for i in from_record_batch(rb).image_ids]
    assert sorted(packed) == sorted(k for k, v in expected.items() if v is None)


def test_same_seed_gives_identical_batches_with_one_and_two_ray_cpus(sample, tmp_path):
    _pack(sample, tmp_path / "two")
    env_cmd = [sys.executable, "-m", "packer.cli", "pack", str(sample), "--out"]
    overrides = [a for s in SETTINGS for a in ("--set", s)]
    subprocess.run(
        [*env_cmd, str(tmp_path / "one"), *overrides, "--num-cpus", "1", "--no-progress", "--json"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    one = sorted((tmp_path / "one").glob("epoch-*/*.arrow"))
    two = sorted((tmp_path / "two").glob("epoch-*/*.arrow"))
    assert [p.name for p in one] == [p.name for p in two] and one
    for a, b in zip(one, two, strict=True):
        assert a.read_bytes() == b.read_bytes()
    report = json.loads((tmp_path / "one" / "stats.json").read_text())
    assert report["stats"]["images_packed"] == 40
    classes = json.loads((tmp_path / "one" / "classes.json").read_text())
    assert classes == ["checkers", "circles", "squares", "stripes"]


def test_stream_filled_yields_every_plan_in_order_as_the_fill_makes_it(sample):
    from packer.pipeline import stream_filled

    index = load_index(str(sample))
    plans = list(EpochPlanner(index, ConfigHistory.start(CONFIG), 0).iter_batches())
    streamed = list(stream_filled(iter(plans), max_in_flight=2))
    assert [(e.epoch, e.batch) for e in streamed] == [(p.epoch, p.batch) for p in plans]
    for encoded, plan in zip(streamed, plans, strict=True):
        assert encoded.config_version == plan.config_version and encoded.rejected == []
        assert encoded.record_batch().equals(to_record_batch(fill_batch(plan).batch))
