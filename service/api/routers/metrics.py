"""GET /metrics: Prometheus text format, from the app's own CollectorRegistry.

The job's numbers are read at scrape time by a custom collector (no second copy of the
state to keep in sync); HTTP requests are counted by a middleware into the same registry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.api.routers.stats import stats_response
from service.api.schemas import StreamerOut

router = APIRouter(tags=["metrics"])


class JobCollector(Collector):
    """Packing and delivery numbers of the job behind `app` (none while it starts)."""

    def __init__(self, app) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        job = self.app.state.job
        if job is None:
            return
        stats = stats_response(job)
        run, minute = stats.throughput.run, stats.throughput.last_minute
        yield GaugeMetricFamily(
            "navit_config_version", "current packing config version", stats.config_version
        )
        for name, help_text in (
            ("packing_efficiency", "real / all tokens of the sequences that hold images"),
            ("delivered_efficiency", "real / every token sent, filler sequences included"),
        ):
            yield GaugeMetricFamily(f"navit_{name}", f"{help_text}, run", getattr(stats, name))
            yield GaugeMetricFamily(
                f"navit_{name}_last_minute", f"{help_text}, last minute", getattr(minute, name)
            )
        for name, key, help_text in (
            ("navit_batches_delivered", "batches", "batches sent to trainer ranks"),
            ("navit_sequences_delivered", "sequences", "packed sequences sent"),
            ("navit_images_delivered", "images", "images sent"),
            ("navit_real_tokens_delivered", "real_tokens", "image tokens sent"),
            ("navit_pad_tokens_delivered", "pad_tokens", "padding tokens sent"),
            ("navit_filler_tokens_delivered", "filler_tokens", "tokens of filler sequences sent"),
            ("navit_bytes_delivered", "bytes", "Arrow bytes sent"),
        ):
            yield CounterMetricFamily(name, help_text, value=getattr(run, key))
        for key in ("images_per_s", "tokens_per_s", "sequences_per_s", "bytes_per_s"):
            yield GaugeMetricFamily(
                f"navit_{key}_last_minute", f"{key}, last minute", getattr(minute, key)
            )
        rejected = CounterMetricFamily(
            "navit_images_rejected", "images rejected, by reason", labels=["reason"]
        )
        for reason, count in stats.rejected_by_reason.items():
            rejected.add_metric([reason], count)
        yield rejected
        cursor = GaugeMetricFamily(
            "navit_rank_next_batch", "each rank's next batch index", labels=["rank", "world_size"]
        )
        in_flight = GaugeMetricFamily(
            "navit_rank_in_flight", "fill tasks pending per rank", labels=["rank", "world_size"]
        )
        for r in stats.ranks:
            labels = [str(r.rank), str(r.world_size)]
            cursor.add_metric(labels, r.next_batch)
            in_flight.add_metric(labels, r.in_flight)
        yield cursor
        yield in_flight
        yield GaugeMetricFamily("navit_streams_active", "open Flight streams", stats.streams.active)
        yield CounterMetricFamily(
            "navit_coordinator_bytes_sent",
            "bytes this process's Flight server sent (with streamers: discovery and "
            "their calls only)",
            value=stats.coordinator_bytes_sent,
        )
        yield from _streamer_metrics(stats.streamers)
        wait = GaugeMetricFamily(
            "navit_trainer_data_wait_fraction",
            "share of step time waiting for data",
            labels=["rank"],
        )
        for t in stats.trainers:
            wait.add_metric([str(t.rank)], t.data_wait_fraction)
        yield wait


def _streamer_metrics(streamers: list[StreamerOut]) -> Iterator[Metric]:
    """Per streamer, labelled by its index and node (none without streamers)."""
    labels = ["streamer", "node"]
    up = GaugeMetricFamily("navit_streamer_up", "1 while the streamer is up", labels=labels)
    ranks = GaugeMetricFamily("navit_streamer_ranks", "ranks it streams to", labels=labels)
    images = GaugeMetricFamily(
        "navit_streamer_images_per_s_last_minute", "images/s it sent", labels=labels
    )
    rate = GaugeMetricFamily(
        "navit_streamer_bytes_per_s_last_minute", "bytes/s it sent", labels=labels
    )
    sent = CounterMetricFamily("navit_streamer_bytes_delivered", "bytes it sent", labels=labels)
    restarts = CounterMetricFamily(
        "navit_streamer_restarts", "times Ray restarted it", labels=labels
    )
    for s in streamers:
        values = [str(s.streamer), s.node]
        up.add_metric(values, 1.0 if s.state == "up" else 0.0)
        ranks.add_metric(values, len(s.ranks))
        images.add_metric(values, s.images_per_s)
        rate.add_metric(values, s.bytes_per_s)
        sent.add_metric(values, s.bytes)
        restarts.add_metric(values, s.restarts)
    yield from (up, ranks, images, rate, sent, restarts)


def build_registry(app) -> CollectorRegistry:
    """A registry of this app's own (several apps in one process never share metrics)."""
    registry = CollectorRegistry()
    registry.register(JobCollector(app))
    app.state.http_requests = Counter(
        "navit_http_requests",
        "control-plane requests",
        ["method", "route", "status"],
        registry=registry,
    )
    app.state.http_latency = Histogram(
        "navit_http_request_seconds", "control-plane request latency", ["route"], registry=registry
    )
    return registry


async def count_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    # The route template, not the raw path: /trainers/{rank}/report, not one series per rank.
    name = getattr(route, "path", "unmatched")
    request.app.state.http_requests.labels(request.method, name, str(response.status_code)).inc()
    request.app.state.http_latency.labels(name).observe(time.perf_counter() - started)
    return response


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of the job and the control plane."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
