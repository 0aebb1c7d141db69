"""GET/PATCH /config: the packing config, versioned, with an ETag for safe concurrent edits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response

from packer.config import ConfigError
from packer.plan.history import ConfigVersion
from service.api.deps import ApiError, Authorized, JobDep, config_error_422
from service.api.schemas import (
    BAD_BODY,
    UNAUTHORIZED,
    ConfigPatch,
    ConfigPredictionOut,
    ConfigResponse,
    ErrorResponse,
    PackingStatsOut,
    patch_values,
)
from service.job import ConfigConflict, ServiceJob, VersionMismatch
from service.job.config_control import ConfigPrediction

router = APIRouter(tags=["config"])


def etag(version: int) -> str:
    return f'"v{version}"'


def parse_if_match(value: str | None, current: int) -> int | None:
    """The version an If-Match header names; None when absent or `*` (any version).

    A header naming no version of ours (garbage, another ETag) can never match, so it
    gets -1 and the PATCH fails with 412, as RFC 9110 says for a failed precondition.
    """
    if value is None or value.strip() == "*":
        return None
    for candidate in value.split(","):
        tag = candidate.strip().removeprefix("W/").strip('"')
        if tag.startswith("v") and tag[1:].isdigit() and int(tag[1:]) == current:
            return current
    return -1


def _response(
    job: ServiceJob,
    entry: ConfigVersion,
    changed: list[str],
    prediction: ConfigPrediction | None = None,
) -> ConfigResponse:
    return ConfigResponse(
        version=entry.version,
        etag=etag(entry.version),
        effective_from={"epoch": entry.epoch, "window": entry.window},
        config=entry.config.to_dict(),
        changed=changed,
        history=[
            {
                "version": e.version,
                "epoch": e.epoch,
                "window": e.window,
                "config": e.config.to_dict(),
            }
            for e in list(job.history.entries)
        ],
        prediction=(
            ConfigPredictionOut(
                sample_size=prediction.sample_size,
                predicted=PackingStatsOut.model_validate(prediction.predicted),
                current=PackingStatsOut.model_validate(prediction.current),
            )
            if prediction is not None
            else None
        ),
        warning=job.config_control.warning,
    )


@router.get("/config", response_model=ConfigResponse)
async def get_config(job: JobDep, response: Response) -> ConfigResponse:
    """The current packing config and its version (also the ETag)."""
    entry = job.config_version
    response.headers["ETag"] = etag(entry.version)
    return _response(job, entry, [])


@router.patch(
    "/config",
    response_model=ConfigResponse,
    dependencies=[Authorized],
    responses={
        **BAD_BODY,
        **UNAUTHORIZED,
        409: {"model": ErrorResponse, "description": "valid, but cannot apply to a running job"},
        412: {"model": ErrorResponse, "description": "If-Match names another version"},
    },
)
def patch_config(
    patch: ConfigPatch,  # type: ignore[valid-type]
    job: JobDep,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> ConfigResponse:
    """Change packing fields; they apply from the next unplanned pack window, and every
    batch planned from there carries the new config_version. patch_size and seq_len
    fix the stream's Arrow schema, so changing them is a 409. The answer holds the
    simulator's prediction for the new config next to the old one's, and a `warning`
    when it is predicted to lose more than 2 points of packing efficiency."""
    expected = parse_if_match(if_match, job.config_version.version)
    before = job.config_version.config
    try:
        entry, changed = job.update_config(patch_values(patch), expected)
    except VersionMismatch as e:
        raise HTTPException(
            412,
            f"If-Match {if_match!r} does not match the current config {etag(e.current)}: "
            "GET /config and retry",
        ) from None
    except ConfigConflict as e:
        raise ApiError(409, e.message, e.field) from None
    except ConfigError as e:
        raise config_error_422(e, "body") from None
    response.headers["ETag"] = etag(entry.version)
    prediction = (
        job.config_control.predict(before, entry.config, entry.version) if changed else None
    )
    return _response(job, entry, changed, prediction)
