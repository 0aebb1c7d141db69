"""GET /: the dashboard page, and GET /sequences/recent, the packed sequences it draws."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse

from service.api.deps import JobDep
from service.api.schemas import SequencesResponse

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).resolve().parents[2] / "static"


@router.get("/", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    """Efficiency and throughput over time, and a picture of recent packed sequences."""
    return HTMLResponse((STATIC / "dashboard.html").read_text())


@router.get("/static/dashboard.js", include_in_schema=False)
def dashboard_js() -> FileResponse:
    return FileResponse(STATIC / "dashboard.js", media_type="text/javascript")


@router.get("/sequences/recent", response_model=SequencesResponse)
async def recent_sequences(job: JobDep, limit: Annotated[int, Query(ge=1, le=1024)] = 12) -> dict:
    """The last packed sequences sent: each image's span of tokens (the rest is padding)."""
    return {"sequences": job.recent_sequences(limit)}
