"""GET/PATCH /config: versions and ETags, refusals naming the field, and a config change
applied to a live stream from the next unplanned window."""

from __future__ import annotations

import httpx
import pytest

from tests.service.service_testkit import (
    SMALL_CONFIG,
    connect,
    image_ids,
    read_stream,
    received,
    ticket,
    valid_image_ids,
)


def test_get_config_has_version_and_etag(api):
    response = api.get("/config")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 1
    assert response.headers["etag"] == '"v1"' == body["etag"]
    assert body["config"] == SMALL_CONFIG.to_dict()
    assert body["effective_from"] == {"epoch": 0, "window": 0}


def test_patch_with_if_match_is_safe_against_concurrent_edits(api):
    etag = api.get("/config").headers["etag"]
    first = api.patch("/config", json={"max_images_per_seq": 5}, headers={"If-Match": etag})
    assert first.status_code == 200, first.text
    assert first.json()["changed"] == ["max_images_per_seq"]
    assert first.headers["etag"] != etag
    # A second editor still holding the old ETag is refused, and told why.
    stale = api.patch("/config", json={"max_images_per_seq": 7}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert "does not match" in stale.json()["detail"]
    assert api.get("/config").json()["config"]["max_images_per_seq"] == 5
    fresh = api.patch(
        "/config", json={"max_images_per_seq": 7}, headers={"If-Match": first.headers["etag"]}
    )
    assert fresh.status_code == 200
    assert api.patch("/config", json={"pack_window": 8}, headers={"If-Match": "*"}).is_success


def test_a_patch_answers_with_the_prediction_and_warns_of_a_loss(api):
    # One image per sequence leaves most of each 128-token sequence empty.
    hurt = api.patch("/config", json={"max_images_per_seq": 1}).json()
    prediction = hurt["prediction"]
    assert prediction["sample_size"] > 0
    before = prediction["current"]["packing_efficiency"]
    after = prediction["predicted"]["packing_efficiency"]
    assert after < before - 0.02
    assert "predicted to pack at" in hurt["warning"] and "max_images_per_seq=1" in hurt["warning"]
    # The dashboard's source shows the current version's warning; GET /config too.
    assert api.get("/stats").json()["config_warning"] == hurt["warning"]
    assert api.get("/config").json()["warning"] == hurt["warning"]
    # Undoing it predicts the gain back, with no warning.
    undo = api.patch("/config", json={"max_images_per_seq": SMALL_CONFIG.max_images_per_seq})
    assert undo.json()["warning"] is None and api.get("/stats").json()["config_warning"] is None
    gain = undo.json()["prediction"]
    assert gain["predicted"]["packing_efficiency"] == before


def test_patch_without_change_keeps_the_version(api):
    response = api.patch("/config", json={"seq_len": SMALL_CONFIG.seq_len})
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert response.json()["changed"] == []
    assert response.json()["prediction"] is None


@pytest.mark.parametrize("field", ["patch_size", "seq_len"])
def test_schema_changes_are_a_409_saying_why(api, field):
    value = {"patch_size": 8, "seq_len": 256}[field]
    response = api.patch("/config", json={field: value})
    assert response.status_code == 409
    body = response.json()
    assert body["field"] == field
    assert "Arrow schema" in body["detail"]


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"max_res": 16}, ["body", "max_res"]),  # below min_res: PackingConfig's rule
        ({"drop_rate": 1.5}, ["body", "drop_rate"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"batch_size": 100_000}, ["body", "batch_size"]),  # a batch of 10 GB of pixels
        ({"token_drop": "sometimes"}, ["body", "token_drop"]),  # pydantic's enum check
        ({"pack_window": "many"}, ["body", "pack_window"]),
        ({"pack_window": 2**31 - 1}, ["body", "pack_window"]),  # the planner's bound
        ({"max_images_per_seq": 10**6}, ["body", "max_images_per_seq"]),
        ({"colour": "red"}, ["body", "colour"]),
    ],
)
def test_invalid_values_are_a_422_naming_the_field(api, patch, loc):
    response = api.patch("/config", json=patch)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(error["loc"] == loc for error in detail), detail
    assert all(error["msg"] for error in detail)
    assert api.get("/config").json()["version"] == 1


def _patch_while_streaming(start, sample_index, config):
    """Stream epoch 0 as one rank, PATCH max_images_per_seq=2 after its first batch, read
    the rest and epoch 1; check exactly once and return (batches, new version, effective)."""
    service = start(config=config, max_in_flight=1)
    client = connect(service.flight_location)
    reader = client.do_get(ticket(0, 1, 0))
    epoch0 = [received(reader.read_chunk())]

    etag = httpx.get(f"{service.api_url}/config").headers["etag"]
    response = httpx.patch(
        f"{service.api_url}/config", json={"max_images_per_seq": 2}, headers={"If-Match": etag}
    )
    assert response.status_code == 200, response.text
    new_version = response.json()["version"]
    effective = response.json()["effective_from"]
    while True:
        try:
            epoch0.append(received(reader.read_chunk()))
        except StopIteration:
            break
    client.close()
    epoch1 = read_stream(service.flight_location, 0, 1, epoch=1)

    valid = valid_image_ids(sample_index)
    assert sorted(image_ids(epoch0)) == valid == sorted(image_ids(epoch1))
    stats = httpx.get(f"{service.api_url}/stats").json()
    assert new_version in {v["config_version"] for v in stats["by_config_version"]}
    return epoch0, epoch1, new_version, effective


@pytest.mark.slow
def test_patch_while_streaming_applies_from_the_next_window(start, sample_index):
    # Without carry-over every window's bins finish in that window, so each batch is
    # planned wholly by the version it is labelled with.
    config = SMALL_CONFIG.replace(pack_window=8, carry_over=False)
    epoch0, epoch1, new_version, effective = _patch_while_streaming(start, sample_index, config)
    versions = [b.metadata["config_version"] for b in epoch0 + epoch1]
    assert versions == sorted(versions)  # once changed, never back
    windows_in_epoch = -(-len(valid_image_ids(sample_index)) // config.pack_window)
    if effective["epoch"] == 0 and effective["window"] < windows_in_epoch:
        # (If the PATCH came after epoch 0's last window was planned, it starts at epoch 1.)
        assert new_version in [b.metadata["config_version"] for b in epoch0], (effective, versions)
    assert all(b.metadata["config_version"] == new_version for b in epoch1)
    # The stream schema (sent once) carries the version at stream start; each batch's
    # own version travels in its app_metadata.
    assert {b.schema_metadata["config_version"] for b in epoch0} == {"1"}
    assert {b.schema_metadata["config_version"] for b in epoch1} == {str(new_version)}
    for batch in epoch0 + epoch1:
        if batch.metadata["config_version"] == new_version:
            assert max(batch.images_per_seq, default=0) <= 2
