"""GET /stats and /stats/timeline on a job that has not streamed yet."""

from __future__ import annotations


def test_stats_of_a_fresh_job_show_its_config_and_nothing_delivered(api, sample_index):
    stats = api.get("/stats")
    assert stats.status_code == 200
    body = stats.json()
    assert (body["dataset"], body["config_version"]) == ("sample", 1)
    assert body["images"] == body["valid_images"] == sample_index.num_rows
    assert body["holdout"] == {"fraction": 0.0, "seed": 0, "held_out_images": 0}
    assert body["packing"]["batches"] == 0 and body["efficiency"] == 0
    assert body["throughput"]["run"]["images"] == 0
    assert body["ranks"] == [] and body["trainers"] == []
    assert body["streams"] == {"active": 0, "max_in_flight": 4, "max_in_flight_seen": 0}


def test_the_timeline_is_empty_until_batches_leave_and_limits_are_checked(api):
    timeline = api.get("/stats/timeline").json()
    assert timeline == {"bucket_s": 1.0, "points": []}
    assert api.get("/stats/timeline?limit=0").status_code == 422
