"""Request dependencies: the running job and bearer-token auth.

They are `async def` because they never block: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per request that costs latency when the streaming threads
keep the GIL busy.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from packer.config import ConfigError
from packer.contract.auth import AUTH_HEADER, bearer_matches
from service.api.request_guard import UNAUTHORIZED_DETAIL
from service.job import ServiceJob

_bearer = HTTPBearer(auto_error=False, description="the service token (--token-file, NAVIT_TOKEN)")


async def get_job(request: Request) -> ServiceJob:
    job = request.app.state.job
    if job is None:
        raise HTTPException(503, "the service is starting (loading the index, starting Ray)")
    return job


async def require_token(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Mutations need `Authorization: Bearer <token>` when the service has a token.

    `_scheme` only declares the bearer scheme in the OpenAPI document; the header is
    checked by `bearer_matches`, the rule the Flight server applies too.
    """
    expected: str | None = request.app.state.token
    if expected is None:
        return
    if not bearer_matches(request.headers.get(AUTH_HEADER), expected):
        raise HTTPException(
            401,
            UNAUTHORIZED_DETAIL,
            headers={"WWW-Authenticate": "Bearer"},
        )


class ApiError(Exception):
    """A refused request: its status and a reason naming the field (see main's handler)."""

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = field


JobDep = Annotated[ServiceJob, Depends(get_job)]
Authorized = Depends(require_token)


def config_error_422(error: ConfigError, *loc: str) -> HTTPException:
    """A packer ConfigError as FastAPI's own 422 shape, its field in `loc`."""
    where = [*loc] if error.field == "config" else [*loc, error.field]
    return HTTPException(422, detail=[{"loc": where, "msg": error.message, "type": "config_error"}])
