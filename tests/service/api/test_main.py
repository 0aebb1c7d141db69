"""The app factory: every router is mounted, with interactive docs and an OpenAPI schema."""

from __future__ import annotations


def test_docs_and_openapi_list_the_routes(api):
    assert api.get("/docs").status_code == 200
    assert "/config" in api.get("/openapi.json").json()["paths"]
