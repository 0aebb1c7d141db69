"""Pydantic models of the control plane's requests and responses (the OpenAPI schema).

The config models are built from `packer.config.PackingConfig`'s own fields and types,
so the API cannot drift from the packer: `PackingConfigModel` has every field, and
`ConfigPatch` has every field optional (a partial config). Type errors are caught here
(422 naming the field); value rules (min_res <= max_res, ...) are PackingConfig's, and
the routes map its ConfigError.field into the same 422 shape.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from packer.config import PackingConfig
from service.job.config_control import WARN_LOSS

_INT_MAX = 2**31 - 1  # sizes and counts: far above any sane value, below numpy overflow
_SEED_MAX = 2**63 - 1

# The warning of ConfigResponse and of StatsResponse (ConfigControl.warning): one text.
ConfigWarning = Annotated[
    str | None,
    Field(
        description="the current config's change is predicted to lose more than "
        f"{100 * WARN_LOSS:g} points of packing efficiency"
    ),
]


def _config_fields(optional: bool) -> dict[str, Any]:
    hints = typing.get_type_hints(PackingConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(PackingConfig):
        hint = hints[f.name]
        limits: dict[str, Any] = {}
        if hint is int:
            limits["le"] = _SEED_MAX if f.name == "seed" else _INT_MAX
        if optional:
            fields[f.name] = (hint | None, Field(None, **limits))
        else:
            fields[f.name] = (hint, Field(f.default, **limits))
    return fields


PackingConfigModel = create_model(
    "PackingConfigModel",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    __doc__="A complete packing config (packer.config.PackingConfig).",
    **_config_fields(optional=False),
)

ConfigPatch = create_model(
    "ConfigPatch",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False, strict=True),
    __doc__="A partial packing config: only the fields to change.",
    **_config_fields(optional=True),
)


def patch_values(patch: BaseModel) -> dict[str, Any]:
    """The fields a client actually set (an explicit null means: leave unchanged)."""
    return {k: v for k, v in patch.model_dump(exclude_unset=True).items() if v is not None}


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = None


# Documented on every route that reads a body: FastAPI answers 400 to unparsable JSON,
# the request guard 413 to a body over the service's max_body_bytes.
BAD_BODY = {
    400: {"model": ErrorResponse, "description": "the body is not valid JSON"},
    413: {"model": ErrorResponse, "description": "the body exceeds max_body_bytes"},
}
# Documented on every mutation: with a token configured, they need it (see deps.Authorized).
UNAUTHORIZED = {401: {"model": ErrorResponse, "description": "missing or wrong bearer token"}}


class EffectiveFrom(BaseModel):
    epoch: int
    window: int


class ConfigVersionOut(BaseModel):
    version: int
    epoch: int
    window: int
    config: PackingConfigModel  # type: ignore[valid-type]


class PackingStatsOut(BaseModel):
    """packer.plan.stats.PackingStats.to_dict(), field for field (a test holds it)."""

    model_config = ConfigDict(extra="forbid")

    images_in: int
    images_packed: int
    images_rejected: int
    rejected_by_reason: dict[str, int]
    batches: int
    sequences: int
    filler_sequences: int = Field(description="sequences that hold no image (an epoch's tail)")
    filler_tokens: int
    real_tokens: int
    pad_tokens: int = Field(description="padding in the sequences that hold images")
    packing_efficiency: float = Field(
        description="real tokens / tokens of the sequences that hold images: what the packer "
        "controls"
    )
    delivered_efficiency: float = Field(
        description="real tokens / every token sent, filler sequences included: what the GPU sees"
    )
    images_per_sequence_mean: float
    tokens_per_image_mean: float
    images_per_sequence_hist: dict[str, int]
    tokens_per_image_hist: dict[str, int]
    notes: dict[str, int] = Field(description="Pillow warnings while decoding, by kind")
    skipped_by_extension: dict[str, int] = Field(
        description="files of the dataset that are not dataset files, by extension"
    )
    elapsed_s: float
    images_per_s: float | None
    tokens_per_s: float | None


class ConfigPredictionOut(BaseModel):
    sample_size: int = Field(description="images of the job the prediction simulated")
    predicted: PackingStatsOut = Field(description="the new config's simulated stats")
    current: PackingStatsOut = Field(description="the config it replaces, on the same sample")


class ConfigResponse(BaseModel):
    version: int
    etag: str
    effective_from: EffectiveFrom
    config: PackingConfigModel  # type: ignore[valid-type]
    changed: list[str] = Field(default_factory=list, description="fields this PATCH changed")
    history: list[ConfigVersionOut]
    prediction: ConfigPredictionOut | None = Field(
        None, description="a PATCH that changed something: the simulator's figures"
    )
    warning: ConfigWarning = None


class RatesOut(BaseModel):
    """Delivery rates of service.live_stats, field for field (a test holds it)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float
    batches: int
    sequences: int
    images: int
    real_tokens: int
    pad_tokens: int
    filler_tokens: int
    bytes: int
    packing_efficiency: float
    delivered_efficiency: float
    batches_per_s: float
    sequences_per_s: float
    images_per_s: float
    tokens_per_s: float
    bytes_per_s: float


class ThroughputOut(BaseModel):
    run: RatesOut
    last_minute: RatesOut


class VersionStatsOut(BaseModel):
    config_version: int
    from_epoch: int | None
    from_window: int | None
    stats: PackingStatsOut


class RankOut(BaseModel):
    """One row of RankStreams.positions (service/job/streams.py)."""

    model_config = ConfigDict(extra="forbid")

    rank: int
    world_size: int
    epoch: int
    next_batch: int = Field(description="this rank's next batch index not yet sent")
    batches_sent: int
    connected: bool
    in_flight: int = Field(
        description="fill tasks pending (started, batch not yet taken) for the stream that "
        "last moved this rank's cursor, as of that move; 0 before any move and after its last "
        "open stream closed (until the next move)"
    )
    lag_epochs: int
    lag_batches: int | None = Field(description="batches behind the furthest rank")
    idle_s: float


class StreamsOut(BaseModel):
    active: int
    max_in_flight: int
    max_in_flight_seen: int = Field(
        description="without streamers: the most fill tasks any open stream has had "
        "pending at once since it opened; with streamers: the largest in_flight (ranks) of "
        "a connected rank, each the value at that rank's last cursor move"
    )


class StreamerOut(BaseModel):
    """One row of StreamerRegistry.rows (service/job/streamer_registry.py)."""

    model_config = ConfigDict(extra="forbid")

    streamer: int = Field(description="its index: it serves the ranks r with r % streamers")
    state: str = Field(
        description="up; silent (nothing heard for 5 s: stopped or restarting); starting; "
        "failed (it cannot serve, see failure)"
    )
    node: str = Field(description="the address of its Ray node")
    location: str | None = Field(description="its Flight server, as get_flight_info answers")
    pid: int | None
    world_size: int = Field(description="world size of the ranks below")
    ranks: list[int] = Field(description="ranks it has streamed to (of that world size)")
    restarts: int = Field(description="times Ray restarted it")
    failure: str | None
    batches: int = Field(description="batches it sent (run)")
    images: int
    bytes: int
    images_per_s: float = Field(description="last minute")
    bytes_per_s: float = Field(description="last minute")
    seen_s_ago: float | None = Field(description="since it last called the coordinator")


class TrainerReport(BaseModel):
    """What a trainer rank reports after a step: is it waiting for data?"""

    # Strict: a JSON value of the wrong type is refused (no "5" -> 5, no false -> 0.0),
    # so the API accepts exactly what its OpenAPI schema says.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    step: int = Field(ge=0, le=_SEED_MAX)
    step_time_s: float = Field(ge=0, description="wall time of the whole step")
    data_wait_s: float = Field(ge=0, description="part of the step spent waiting for data")
    world_size: int | None = Field(None, ge=1, le=65536)
    epoch: int | None = Field(None, ge=0, le=_SEED_MAX)
    batch: int | None = Field(None, ge=0, le=_SEED_MAX)
    samples_per_s: float | None = Field(None, ge=0)
    tokens_per_s: float | None = Field(None, ge=0)
    loss: float | None = None


class TrainerOut(TrainerReport):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=False)

    rank: int
    data_wait_fraction: float
    starved: bool = Field(description="more than 20% of the step spent waiting for data")
    age_s: float = 0.0


class TrainersResponse(BaseModel):
    trainers: list[TrainerOut]


class HoldoutOut(BaseModel):
    fraction: float = Field(description="share of images held out of every stream")
    seed: int = Field(description="seed of the held-out split (packer.plan.split)")
    held_out_images: int = Field(description="images held out: in no stream, no count above")


class StatsResponse(BaseModel):
    dataset: str
    uptime_s: float
    config_version: int
    images: int = Field(description="images the streams draw from (the held-out ones not)")
    valid_images: int
    classes: list[str] = Field(description="the class names, in label order (sent on streams)")
    images_per_class: dict[str, int] = Field(description="the data set's images of each class")
    holdout: HoldoutOut
    packing_efficiency: float = Field(
        description="real tokens / tokens of the sequences that hold images (run)"
    )
    delivered_efficiency: float = Field(
        description="real tokens / every token sent, filler sequences included (run)"
    )
    packing: PackingStatsOut
    throughput: ThroughputOut
    by_config_version: list[VersionStatsOut]
    rejected_by_reason: dict[str, int]
    notes: dict[str, int] = Field(description="Pillow warnings while decoding, by kind")
    skipped_by_extension: dict[str, int] = Field(
        description="files of the dataset that are not dataset files, by extension"
    )
    config_warning: ConfigWarning = None
    class_warnings: list[str] = Field(description="what is odd about the data set's classes")
    ranks: list[RankOut]
    streams: StreamsOut
    streamers: list[StreamerOut] = Field(
        description="the streamers that send the batches (navit serve --streamers N); "
        "none: this process sends them"
    )
    coordinator_bytes_sent: int = Field(
        description="bytes this process's Flight server sent (batches with app_metadata, "
        "FlightInfo, schemas, action results); with streamers, a small share of "
        "throughput.run.bytes"
    )
    trainers: list[TrainerOut]
    trainers_starved: int


class TimelinePoint(RatesOut):
    t: float = Field(description="bucket start, unix seconds")


class TimelineResponse(BaseModel):
    bucket_s: float
    points: list[TimelinePoint]


class SimulateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    config: ConfigPatch = Field(  # type: ignore[valid-type]
        default_factory=ConfigPatch, description="overrides of the current config"
    )
    sample_size: int | None = Field(
        None, ge=1, le=_INT_MAX, description="images sampled from the index (default 2000)"
    )
    epochs: int = Field(1, ge=1, le=4)


class SimulateResponse(BaseModel):
    config: PackingConfigModel  # type: ignore[valid-type]
    sample_size: int
    epochs: int
    stats: PackingStatsOut
    baseline_config_version: int
    baseline: PackingStatsOut = Field(description="the current config on the same sample")


class SegmentOut(BaseModel):
    slot: int
    start: int
    length: int
    image_id: str
    label: int


class SequenceOut(BaseModel):
    epoch: int
    rank: int
    batch: int
    global_batch: int
    row: int
    config_version: int
    seq_len: int
    real_tokens: int
    segments: list[SegmentOut]


class SequencesResponse(BaseModel):
    sequences: list[SequenceOut]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    index_loaded: bool
    ray: bool
    reasons: list[str]
