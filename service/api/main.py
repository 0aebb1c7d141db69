"""The control plane's app factory: wires the job, the token, routers and metrics."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.api.deps import ApiError
from service.api.routers import config, dashboard, health, metrics, simulate, stats, trainers
from service.job import ServiceJob


def create_app(job: ServiceJob | None = None, token: str | None = None) -> FastAPI:
    """The FastAPI app; `job` may be attached later (`app.state.job = job`): until then
    job routes answer 503 and /readyz says what is missing."""
    app = FastAPI(
        title="navit-pack service",
        summary="Patch n' Pack as a data service: control plane of the packer",
        version="0.1.0",
    )
    app.state.job = job
    app.state.token = token
    app.state.registry = metrics.build_registry(app)
    app.middleware("http")(metrics.count_requests)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": error.detail, "field": error.field}, status_code=error.status_code
        )

    for module in (config, stats, simulate, trainers, health, metrics, dashboard):
        app.include_router(module.router)
    return app
