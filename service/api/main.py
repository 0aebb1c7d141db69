"""The control plane's app factory: wires the job, the token, routers and metrics."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from service.api.deps import ApiError
from service.api.errors import api_error, validation_error_422
from service.api.request_guard import RequestGuard
from service.api.routers import config, dashboard, health, metrics, simulate, stats, trainers
from service.job import ServiceJob

DEFAULT_MAX_BODY_BYTES = 1 << 20


def create_app(
    job: ServiceJob | None = None,
    token: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app; `job` may be attached later (`app.state.job = job`): until then
    job routes answer 503 and /readyz says what is missing. With a `token`, mutations
    need it; `max_body_bytes` caps every request body (413 beyond)."""
    app = FastAPI(
        title="navit-pack service",
        summary="Patch n' Pack as a data service: control plane of the packer",
        version="0.1.0",
    )
    app.state.job = job
    app.state.token = token
    app.state.registry = metrics.build_registry(app)
    # The guard first, so that the metrics middleware (added after: outside it) counts
    # its 401s and 413s too.
    app.add_middleware(RequestGuard, token=token, max_body_bytes=max_body_bytes)
    app.middleware("http")(metrics.count_requests)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error_422)
    for module in (config, stats, simulate, trainers, health, metrics, dashboard):
        app.include_router(module.router)
    return app
