"""The Ray pipeline end to end on a local Ray (the session's `ray_session`)."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from image_cases import write_odd_images

from packer.config import PackingConfig
from packer.index import load_index
from packer.pipeline import SPLIT_BELOW_PLANS_PER_CPU, fill_blocks
from packer.plan import ConfigHistory
from packer.sample_data import write_sample_dataset
from packer.schema import from_record_batch
from packer.simulate import simulate

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


def _units(blocks):
    return [(u.plan, u.start, u.stop) for block in blocks for u in block]


def test_fill_blocks_worked_case_ten_plans_on_two_cpus():
    blocks = fill_blocks([8] * 10, cpus=2)
    assert [[u.plan for u in block] for block in blocks[:5]] == [[0, 1], [2], [3], [4], [5]]
    assert _units(blocks[5:9]) == [(6, 0, 4), (6, 4, 8), (7, 0, 4), (7, 4, 8)]
    assert _units(blocks[9:13]) == [(8, 0, 2), (8, 2, 4), (8, 4, 6), (8, 6, 8)]
    assert all(len(block) == 1 for block in blocks[5:]) and len(blocks) == 17


def test_fill_blocks_split_no_plan_when_every_cpu_has_many():
    blocks = fill_blocks([8] * (SPLIT_BELOW_PLANS_PER_CPU * 2), cpus=2)
    assert all(u.parts == 1 and (u.start, u.stop) == (0, 8) for b in blocks for u in b)
    assert len(blocks[-1]) == 1  # still ending on single plans


@settings(max_examples=80, deadline=None)
@given(
    num_rows=st.lists(st.integers(1, 12), min_size=1, max_size=80),
    cpus=st.integers(1, 8),
    max_plans=st.integers(1, 6),
)
def test_fill_blocks_cover_every_row_of_every_plan_once_in_order(num_rows, cpus, max_plans):
    blocks = fill_blocks(num_rows, cpus, max_plans)
    covered = {}
    for block in blocks:
        assert 1 <= len(block) <= max_plans
        assert len(block) == 1 or all(u.parts == 1 for u in block)  # parts travel alone
        for u in block:
            covered.setdefault(u.plan, []).append((u.part, u.parts, u.start, u.stop))
    assert list(covered) == list(range(len(num_rows)))
    for plan, units in covered.items():
        parts = units[0][1]
        assert [u[0] for u in units] == list(range(parts)) and {u[1] for u in units} == {parts}
        edges = [units[0][2]] + [u[3] for u in units]
        assert edges[0] == 0 and edges[-1] == num_rows[plan]
        assert all(u[2] == prev for u, prev in zip(units, edges, strict=False))
        assert all(u[2] < u[3] for u in units)
