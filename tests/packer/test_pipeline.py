"""The Ray pipeline end to end on a local Ray (the session's `ray_session`)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from packer.config import PackingConfig
from packer.contract.schema import from_record_batch, to_record_batch
from packer.fill.batch import fill_batch
from packer.index.cache import load_index
from packer.index.reject_ledger import RejectLedger
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.plan.simulate import simulate
from packer.sample_data import write_sample_dataset
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


def test_each_batch_is_reported_once_and_the_stats_do_not_depend_on_the_order_tasks_end(
    sample, tmp_path
):
    from packer.pipeline import pack_to_dir

    # The fill's tasks end in any order; one at a time they end in plan order.
    index = load_index(str(sample))
    reports: dict[int, list[int]] = {1: [], 4: []}
    stats = {}
    for concurrency, seen in reports.items():
        stats[concurrency] = pack_to_dir(
            index,
            ConfigHistory.start(CONFIG),
            tmp_path / str(concurrency),
            on_batch=lambda batch, _, seen=seen: seen.append(batch),
            concurrency=concurrency,
        ).to_dict()
    batches = len(list((tmp_path / "1").glob("epoch-000/batch-*.arrow")))
    assert reports[1] == list(range(batches))
    assert sorted(reports[4]) == list(range(batches))
    for summary in stats.values():
        for timing in ("elapsed_s", "images_per_s", "tokens_per_s"):
            summary.pop(timing)
    assert stats[1] == stats[4]


def test_simulate_predicts_exactly_what_pack_delivers(sample, tmp_path):
    index, delivered = _pack(sample, tmp_path / "out")
    predicted = simulate(index, ConfigHistory.start(CONFIG))
    keep = (
        "images_in",
        "images_packed",
        "sequences",
        "real_tokens",
        "pad_tokens",
        "packing_efficiency",
        "delivered_efficiency",
    )
    assert {k: predicted.to_dict()[k] for k in keep} == {k: delivered.to_dict()[k] for k in keep}
    real = sum(from_record_batch(rb).real_tokens for rb in _read_dir(tmp_path / "out"))
    assert real == predicted.real_tokens


def test_both_efficiencies_are_what_the_written_files_hold(sample, tmp_path):
    # 40 images at batch_size 4: the epoch's last batch is short. Its missing rows are
    # not written as padding, so what the files hold is what the packer packed.
    _, stats = _pack(sample, tmp_path / "out", epochs=2)
    segments = [from_record_batch(rb).segment_ids for rb in _read_dir(tmp_path / "out")]
    real = sum(int(np.count_nonzero(s)) for s in segments)
    every = sum(s.size for s in segments)
    with_images = sum(int((s > 0).any(axis=1).sum()) * s.shape[1] for s in segments)
    assert stats.delivered_efficiency == pytest.approx(real / every, abs=1e-12)
    assert stats.packing_efficiency == pytest.approx(real / with_images, abs=1e-12)
    assert stats.filler_sequences == 0 and every == with_images  # no all-padding row written


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
    env_cmd = [sys.executable, "-m", "deploy.cli", "pack", str(sample), "--out"]
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
    assert report["delivered"]["images_packed"] == 40
    classes = json.loads((tmp_path / "one" / "classes.json").read_text())
    assert classes == ["checkers", "circles", "squares", "stripes"]


def test_stream_filled_yields_every_plan_in_order_as_the_fill_makes_it(sample):
    from packer.pipeline import stream_filled

    index = load_index(str(sample))
    plans = list(EpochPlanner(index, ConfigHistory.start(CONFIG), 0).iter_plans())
    streamed = list(stream_filled(iter(plans), max_in_flight=2))
    assert [(e.epoch, e.global_batch) for e in streamed] == [
        (p.epoch, p.global_batch) for p in plans
    ]
    for encoded, plan in zip(streamed, plans, strict=True):
        assert encoded.config_version == plan.config_version and encoded.rejected == []
        assert encoded.record_batch().equals(to_record_batch(fill_batch(plan).packed))


def _listening_sockets(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every TCP/UDP socket these processes listen on."""
    found = []
    for flags in ("-ltnpH", "-lunpH"):
        out = subprocess.run(["ss", flags], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if any(f"pid={pid}," in line for pid in pids):
                fields = line.split()
                found.append((fields[3], fields[-1]))
    return found


def test_the_embedded_ray_listens_on_loopback_only():
    import os
    import shutil

    import psutil
    import ray

    if shutil.which("ss") is None:
        pytest.skip("needs `ss` (iproute2) to list listening sockets")
    # A task makes sure a worker process (which has its own gRPC server) is up.
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()
    me = psutil.Process()
    pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
    sockets = _listening_sockets(pids)
    assert sockets, "Ray's processes listen somewhere; the check must see them"
    loopback = ("127.", "[::1]", "[::ffff:127.")
    beyond = [(address, who) for address, who in sockets if not address.startswith(loopback)]
    assert beyond == []


def test_rejected_jsonl_lines_carry_the_decoders_detail(tmp_path):
    write_odd_images(tmp_path / "odd")
    _pack(tmp_path / "odd", tmp_path / "out")
    logged = {
        row["image_id"]: row
        for row in map(json.loads, (tmp_path / "out" / "rejected.jsonl").open())
    }
    assert "image file is truncated" in logged["bad/truncated.jpg"]["detail"]
    assert "100000x100000" in logged["bad/bomb.png"]["detail"]
    assert all(row["detail"] for row in logged.values())


def _compared(stats) -> dict:
    keep = ("images_in", "images_packed", "rejected_by_reason", "sequences", "real_tokens")
    return {
        k: stats.to_dict()[k]
        for k in (*keep, "pad_tokens", "packing_efficiency", "delivered_efficiency")
    }


def test_after_a_pack_finds_decode_failures_simulate_predicts_the_next_pack_exactly(tmp_path):
    write_odd_images(tmp_path / "odd")
    index, first = _pack(tmp_path / "odd", tmp_path / "first")
    predicted_before = simulate(index, ConfigHistory.start(CONFIG), ledger=RejectLedger())
    assert _compared(first) != _compared(predicted_before)  # truncated.jpg failed at fill
    predicted = simulate(index, ConfigHistory.start(CONFIG))
    _, second = _pack(tmp_path / "odd", tmp_path / "second")
    assert _compared(second) == _compared(predicted)
    logged = [json.loads(line) for line in (tmp_path / "second" / "rejected.jsonl").open()]
    truncated = [row for row in logged if row["image_id"] == "bad/truncated.jpg"]
    assert [row["reason"] for row in truncated] == ["truncated"]  # known before planning


def test_a_decode_failure_found_in_one_epoch_is_left_out_from_the_next(tmp_path):
    write_odd_images(tmp_path / "odd")
    _, stats = _pack(tmp_path / "odd", tmp_path / "out", epochs=2)
    batches = sorted((tmp_path / "out").glob("epoch-*/batch-*.arrow"))
    by_epoch: dict[str, list[str]] = {}
    for path in batches:
        ids = from_record_batch(pa.ipc.open_file(path).get_batch(0)).image_ids
        by_epoch.setdefault(path.parent.name, []).extend(ids)
    assert "bad/truncated.jpg" not in by_epoch["epoch-000"] + by_epoch["epoch-001"]
    assert stats.rejected["truncated"] == 2  # rejected once per epoch, at fill then at plan
    # Epoch 0 was planned before the failure was known; replanning it is unchanged.
    index = load_index(str(tmp_path / "odd"))
    replanned = EpochPlanner(
        RejectLedger.for_index(index).apply(index, 0), ConfigHistory.start(CONFIG), 0
    )
    assert any("bad/truncated.jpg" in plan.image_ids for plan in replanned.iter_plans())


def test_every_file_of_the_format_corpus_is_packed_rejected_with_detail_or_skipped(tmp_path, capfd):
    from packer.sources.image_folder import IMAGE_EXTENSIONS
    from tests.packer.format_cases import write_format_corpus

    expected = write_format_corpus(tmp_path / "corpus", IMAGE_EXTENSIONS)
    capfd.readouterr()
    index, stats = _pack(tmp_path / "corpus", tmp_path / "out")
    packed = {i for rb in _read_dir(tmp_path / "out") for i in from_record_batch(rb).image_ids}
    logged = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").open()]
    rejected = {row["image_id"]: row["reason"] for row in logged}
    assert all(row["detail"] for row in logged)
    skipped = {name for name, e in expected.items() if e.outcome == "skipped"}
    assert packed == {name for name, e in expected.items() if e.outcome == "packed"}
    # Formats without a strong signature, packed because their names say what they are.
    named = {"tiny.tga", "tiny.pcx", "tiny.sgi", "tiny.rgb", "pixmap.xpm", "pointer.cur"}
    assert {f"formats/{name}" for name in named | {"sky.fits", "frames.fli"}} <= packed
    assert rejected == {name: e.reason for name, e in expected.items() if e.outcome == "rejected"}
    counts: dict[str, int] = {}
    for name in skipped:
        ext = Path(name).suffix.lower() or "(none)"
        counts[ext] = counts.get(ext, 0) + 1
    assert stats.to_dict()["skipped_by_extension"] == dict(sorted(counts.items()))
    assert stats.images_in == len(packed) + len(rejected)
    assert stats.notes["corrupt_metadata"] >= 1  # odd/corrupt_exif.jpg, at decode
    notes = [json.loads(line) for line in (tmp_path / "out" / "notes.jsonl").open()]
    noted = {(n["stage"], n["image_id"], n["kind"]) for n in notes}
    assert ("decode", "odd/corrupt_exif.jpg", "corrupt_metadata") in noted
    # What Pillow logs and what libtiff prints are notes too, never lines on stderr.
    assert ("header", "odd/too_many_samples.tif", "decoder_message") in noted
    assert ("decode", "odd/stray_marker.tif", "decoder_message") in noted
    assert capfd.readouterr().err == ""


def test_the_header_scan_on_ray_builds_the_index_the_threads_build(tmp_path):
    from packer.index.build import IndexOptions
    from packer.pipeline import scan_groups_on_ray
    from packer.sample_data import write_webdataset_shards

    write_sample_dataset(tmp_path / "folder", 12, seed=3)
    write_webdataset_shards(tmp_path / "folder", tmp_path / "wds", images_per_shard=4)
    on_ray = load_index(
        str(tmp_path / "wds"), cache_dir=tmp_path / "ray-cache", scanner=scan_groups_on_ray
    )
    on_threads = load_index(str(tmp_path / "wds"), cache_dir=tmp_path / "thread-cache")
    assert on_ray.num_rows == 12
    assert on_ray.table.equals(on_threads.table)
    assert list(scan_groups_on_ray([], IndexOptions())) == []  # nothing new: no task


@pytest.mark.parametrize(
    ("seconds_per_plan", "plans"),
    [(0.04, 5), (0.1, 2), (0.5, 1), (5.0, 1), (0.001, 8), (0.0, 8)],
)
def test_a_pack_task_takes_as_many_plans_as_fill_in_about_a_fifth_of_a_second(
    seconds_per_plan, plans
):
    from packer.pipeline import _plans_per_task

    assert _plans_per_task(seconds_per_plan) == plans
