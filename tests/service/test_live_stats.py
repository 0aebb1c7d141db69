"""LiveStats arithmetic on worked examples: efficiency, once-only packing counts,
throughput over the run and the last minute, and the per-second timeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from packer.contract.schema import PackedBatch
from packer.plan.batch_plan import BatchPlan
from packer.plan.history import ConfigVersion
from service.live_stats import LiveStats
from tests.service.service_testkit import SMALL_CONFIG


def _batch(global_batch: int = 0) -> tuple[BatchPlan, PackedBatch]:
    """Two sequences of 8 tokens: images a, b (3 + 2 tokens) then c (4 tokens).

    Real tokens 9 of 16, so both efficiencies are 9/16 = 0.5625; pad tokens 7.
    """
    version = ConfigVersion(1, SMALL_CONFIG)
    plan = dataclasses.replace(
        BatchPlan.empty(0, global_batch, version),
        num_sequences=2,
        sequence=np.array([0, 0, 1], np.int32),
        image_ids=["a", "b", "c"],
    )
    packed = PackedBatch.empty(2, 8, 16)
    packed.segment_ids[0] = [1, 1, 1, 2, 2, 0, 0, 0]
    packed.segment_ids[1] = [1, 1, 1, 1, 0, 0, 0, 0]
    packed.images_per_seq = np.array([2, 1], np.int32)
    packed.image_grid_h = np.array([1, 1, 2], np.int16)
    packed.image_grid_w = np.array([3, 2, 2], np.int16)
    packed.labels = np.array([0, 1, 2], np.int64)
    packed.image_ids = ["a", "b", "c"]
    return plan, packed


def test_packing_efficiency_is_real_tokens_over_all_tokens_of_the_packed_sequences():
    stats = LiveStats()
    plan, packed = _batch()
    stats.add_delivered(plan, packed, [], nbytes=1000, now=1000.0)
    packing = stats.packing()
    assert (packing["real_tokens"], packing["pad_tokens"]) == (9, 7)
    assert packing["packing_efficiency"] == packing["delivered_efficiency"] == 0.5625
    assert packing["images_packed"] == 3
    assert packing["images_per_sequence_hist"] == {"1": 1, "2": 1}
    assert stats.by_version()[1]["packing_efficiency"] == 0.5625


def test_a_filler_sequence_counts_in_the_delivered_efficiency_only():
    # The batch above plus one all-padding sequence: 9 real tokens of 16 in the sequences
    # with images (packing 0.5625), of 24 sent (delivered 0.375).
    stats = LiveStats()
    plan, packed = _batch()
    plan = dataclasses.replace(plan, num_sequences=3)
    filled = PackedBatch.empty(3, 8, 16)
    filled.segment_ids[:2] = packed.segment_ids
    filled.images_per_seq = np.array([2, 1, 0], np.int32)
    filled.labels, filled.image_ids = packed.labels, packed.image_ids
    filled.image_grid_h, filled.image_grid_w = packed.image_grid_h, packed.image_grid_w
    stats.add_delivered(plan, filled, [], nbytes=1000, now=1000.0)
    packing = stats.packing()
    assert (packing["filler_sequences"], packing["filler_tokens"]) == (1, 8)
    assert (packing["packing_efficiency"], packing["delivered_efficiency"]) == (0.5625, 0.375)
    minute = stats.throughput(now=1001.0)["last_minute"]
    assert (minute["packing_efficiency"], minute["delivered_efficiency"]) == (0.5625, 0.375)


def test_a_batch_sent_twice_counts_once_in_packing_and_twice_in_throughput():
    stats = LiveStats()
    plan, packed = _batch()
    stats.add_delivered(plan, packed, ["decode_error"], nbytes=1000, now=1000.0)
    stats.add_delivered(plan, packed, ["decode_error"], nbytes=1000, now=1000.5)
    assert stats.packing()["batches"] == 1
    assert stats.packing()["rejected_by_reason"] == {"decode_error": 1}
    run = stats.throughput(now=1001.0)["run"]
    assert (run["batches"], run["images"], run["bytes"]) == (2, 6, 2000)


def test_throughput_over_the_run_and_the_last_minute():
    stats = LiveStats()
    first, packed = _batch(0)
    second, _ = _batch(1)
    stats.add_delivered(first, packed, [], nbytes=100, now=1000.0)
    stats.add_delivered(second, packed, [], nbytes=100, now=1030.0)

    # 40 s after the first delivery: both windows span the 40 s there has been.
    early = stats.throughput(now=1040.0)
    assert early["run"]["seconds"] == early["last_minute"]["seconds"] == 40.0
    assert early["run"]["images_per_s"] == 6 / 40 == early["last_minute"]["images_per_s"]

    # At 1080 the last minute (after 1020) holds only the second batch.
    late = stats.throughput(now=1080.0)
    assert late["run"]["images_per_s"] == pytest.approx(6 / 80)
    assert late["last_minute"]["seconds"] == 60.0
    assert late["last_minute"]["images"] == 3
    assert late["last_minute"]["images_per_s"] == 0.05
    assert late["last_minute"]["tokens_per_s"] == 0.15  # 9 real tokens / 60 s
    assert late["last_minute"]["delivered_efficiency"] == 0.5625


def test_nothing_delivered_gives_zero_rates():
    run = LiveStats().throughput(now=5.0)["run"]
    assert (
        run["seconds"] == 0.0 and run["images_per_s"] == 0.0 and run["delivered_efficiency"] == 0.0
    )


def test_the_timeline_has_one_point_per_second_with_deliveries():
    stats = LiveStats(bucket_s=1.0)
    plan, packed = _batch()
    for now in (1000.2, 1000.7, 1002.5):
        stats.add_delivered(plan, packed, [], nbytes=10, now=now)
    points = stats.timeline()
    assert [p["t"] for p in points] == [1000.0, 1002.0]  # 1001 had none
    assert (points[0]["batches"], points[0]["batches_per_s"]) == (2, 2.0)
    assert (points[1]["images"], points[1]["bytes_per_s"]) == (3, 10.0)
    assert stats.timeline(limit=1) == points[-1:]


def test_unreadable_headers_count_once_per_epoch():
    stats = LiveStats()
    stats.add_header_rejected(0, ["unreadable_header"])
    stats.add_header_rejected(0, ["unreadable_header"])
    assert stats.packing()["rejected_by_reason"] == {"unreadable_header": 1}
    stats.add_header_rejected(1, ["unreadable_header"])
    assert stats.packing()["rejected_by_reason"] == {"unreadable_header": 2}


def test_a_delivery_sent_as_json_counts_as_the_batch_itself():
    import json

    from service.live_stats import Delivery

    plan, packed = _batch()
    direct, relayed = LiveStats(), LiveStats()
    direct.add_delivered(plan, packed, ["truncated"], nbytes=1000, now=1000.0, notes=["exif"])
    wire = json.loads(
        json.dumps(Delivery.of(plan, packed, ["truncated"], 1000, ["exif"]).to_dict())
    )
    relayed.add_delivery(Delivery.from_dict(wire), now=1000.0)
    assert relayed.packing() == direct.packing()
    assert relayed.throughput(now=1001.0) == direct.throughput(now=1001.0)
    with pytest.raises(ValueError, match="images"):
        Delivery.from_dict({**wire, "images": "3"})
