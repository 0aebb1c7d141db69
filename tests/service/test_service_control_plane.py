"""The FastAPI control plane: config versions and ETags, stats, simulate, trainers, metrics,
auth and TLS; and a config change applied to a live stream."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import pyarrow.flight as flight
import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.flight import bearer_call_options
from service.job import ServiceJob
from service.settings import ServiceSettings
from service.state import StateStore
from tests.service.service_testkit import (
    SMALL_CONFIG,
    connect,
    image_ids,
    read_stream,
    received,
    ticket,
    valid_image_ids,
)


@pytest.fixture
def api(sample_index) -> TestClient:
    """The app around a job on the sample index; no Ray needed until a stream starts."""
    job = ServiceJob(sample_index, SMALL_CONFIG, StateStore(None), dataset="sample")
    with TestClient(create_app(ServiceSettings(), job)) as client:
        yield client


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


def test_patch_without_change_keeps_the_version(api):
    response = api.patch("/config", json={"seq_len": SMALL_CONFIG.seq_len})
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert response.json()["changed"] == []


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


def test_simulate_predicts_without_touching_the_job(api):
    response = api.post("/simulate", json={"config": {"max_images_per_seq": 1}, "sample_size": 40})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sample_size"] == 40
    assert body["stats"]["images_packed"] == 40
    assert body["stats"]["images_per_sequence_hist"] == {"1": 40}
    assert body["stats"]["efficiency"] < body["baseline"]["efficiency"]
    # Simulate may try a seq_len the live job could not switch to.
    assert api.post("/simulate", json={"config": {"seq_len": 256}}).status_code == 200
    assert api.get("/config").json()["version"] == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"config": {"max_res": 8}}, ["body", "config", "max_res"]),
        ({"config": {"seq_len": -1}}, ["body", "config", "seq_len"]),
        ({"sample_size": 10**6}, ["body", "sample_size"]),
        ({"sample_size": 0}, ["body", "sample_size"]),
        ({"config": {"nope": 1}}, ["body", "config", "nope"]),
    ],
)
def test_simulate_bad_input_is_a_422_naming_the_field(api, body, loc):
    response = api.post("/simulate", json=body)
    assert response.status_code == 422, response.text
    assert any(error["loc"] == loc for error in response.json()["detail"])


def test_trainer_reports_show_in_stats(api):
    ok = api.post("/trainers/0/report", json={"step": 10, "step_time_s": 0.5, "data_wait_s": 0.01})
    starved = api.post(
        "/trainers/1/report", json={"step": 10, "step_time_s": 0.5, "data_wait_s": 0.3}
    )
    assert ok.status_code == starved.status_code == 200
    stats = api.get("/stats").json()
    by_rank = {t["rank"]: t for t in stats["trainers"]}
    assert by_rank[0]["starved"] is False
    assert by_rank[1]["starved"] is True
    assert by_rank[1]["data_wait_fraction"] == pytest.approx(0.6)
    assert stats["trainers_starved"] == 1
    bad = api.post("/trainers/0/report", json={"step": -1, "step_time_s": 1, "data_wait_s": 0})
    assert bad.status_code == 422


def test_health_metrics_and_docs(api, ray_session):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert "navit_packing_efficiency" in metrics.text
    assert "navit_config_version 1.0" in metrics.text
    assert api.get("/docs").status_code == 200
    assert "/config" in api.get("/openapi.json").json()["paths"]


def test_readyz_says_what_is_missing_while_starting():
    with TestClient(create_app(ServiceSettings(), job=None)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "the index is loading" in response.json()["reasons"]
        assert client.get("/stats").status_code == 503


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


@pytest.mark.slow
def test_token_guards_mutations_and_streams(start, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    service = start(token_file=token_file)
    url = service.api_url
    good = {"Authorization": "Bearer s3cret-token"}

    assert httpx.patch(f"{url}/config", json={"pack_window": 8}).status_code == 401
    wrong = httpx.patch(
        f"{url}/config", json={"pack_window": 8}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["detail"]
    assert httpx.post(f"{url}/simulate", json={}).status_code == 401
    report = {"step": 1, "step_time_s": 1.0, "data_wait_s": 0.0}
    assert httpx.post(f"{url}/trainers/0/report", json=report).status_code == 401
    assert httpx.get(f"{url}/stats").status_code == 200  # reading needs no token
    assert httpx.patch(f"{url}/config", json={"pack_window": 8}, headers=good).status_code == 200
    assert httpx.post(f"{url}/trainers/0/report", json=report, headers=good).status_code == 200

    client = connect(service.flight_location)
    with pytest.raises(flight.FlightUnauthenticatedError, match="bearer token"):
        client.do_get(ticket(0, 1, 0)).read_all()
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.list_flights())
    wrong_options = bearer_call_options("nope")
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.do_get(ticket(0, 1, 0), wrong_options).read_all()
    client.close()
    batches = read_stream(service.flight_location, 0, 1, 0, token="s3cret-token", limit=2)
    assert len(batches) == 2


def test_token_from_env(monkeypatch):
    monkeypatch.setenv("NAVIT_TOKEN", "from-env")
    assert ServiceSettings().bearer_token() == "from-env"
    monkeypatch.delenv("NAVIT_TOKEN")
    assert ServiceSettings().bearer_token() is None


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.slow
def test_tls_for_flight_and_http(start, tmp_path):
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path)
    service = start(tls_cert=cert, tls_key=key)
    assert service.api_url.startswith("https://")
    assert service.flight_location.startswith("grpc+tls://")

    context = ssl.create_default_context(cafile=str(cert))
    assert httpx.get(f"{service.api_url}/healthz", verify=context).status_code == 200
    client = connect(service.flight_location, tls_root=cert.read_bytes())
    reader = client.do_get(ticket(0, 1, 0))
    assert received(reader.read_chunk()).metadata["batch"] == 0
    reader.cancel()
    client.close()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{service.api_url}/healthz")  # not trusted without the certificate
