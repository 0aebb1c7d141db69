"""`start_service`: one token guards both servers' mutations and streams; TLS on both."""

from __future__ import annotations

import ssl

import httpx
import pyarrow.flight as flight
import pytest

from service.flight import bearer_call_options
from tests.service.service_testkit import connect, read_stream, received, self_signed, ticket


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


@pytest.mark.slow
def test_tls_for_flight_and_http(start, tmp_path):
    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
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
