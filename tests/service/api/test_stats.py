"""GET /stats and /stats/timeline on a job that has not streamed yet."""

from __future__ import annotations


def test_stats_of_a_fresh_job_show_its_config_and_nothing_delivered(api, sample_index):
    stats = api.get("/stats")
    assert stats.status_code == 200
    body = stats.json()
    assert (body["dataset"], body["config_version"]) == ("sample", 1)
    assert body["images"] == body["valid_images"] == sample_index.num_rows
    assert body["holdout"] == {"fraction": 0.0, "seed": 0, "held_out_images": 0}
    assert (
        body["packing"]["batches"] == 0
        and body["packing_efficiency"] == body["delivered_efficiency"] == 0
    )
    assert body["throughput"]["run"]["images"] == 0
    assert body["ranks"] == [] and body["trainers"] == []
    assert body["streams"] == {"active": 0, "max_in_flight": 4, "max_in_flight_seen": 0}


def test_the_timeline_is_empty_until_batches_leave_and_limits_are_checked(api):
    timeline = api.get("/stats/timeline").json()
    assert timeline == {"bucket_s": 1.0, "points": []}
    assert api.get("/stats/timeline?limit=0").status_code == 422


def test_the_packing_stats_shape_is_the_packers_own_field_for_field():
    # /stats and /simulate show packer.plan.stats.PackingStats.to_dict() as it is: a key
    # the packer adds must reach the API (not be dropped by the response model).
    from packer.plan.stats import PackingStats
    from service.api.schemas import PackingStatsOut, RatesOut
    from service.live_stats import LiveStats

    assert set(PackingStatsOut.model_fields) == set(PackingStats().to_dict())
    assert set(RatesOut.model_fields) == set(LiveStats().throughput(now=0.0)["run"])


def test_stats_show_notes_and_skipped_files(api):
    body = api.get("/stats").json()
    assert body["notes"] == {} and body["skipped_by_extension"] == {}
    assert body["packing"]["notes"] == {}
