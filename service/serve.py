"""The packer service (`navit serve DATASET` is its command line).

It runs the Ray pipeline (an embedded local Ray, or `--ray-address` for a cluster), the
Arrow Flight server (default 127.0.0.1:8815) and the FastAPI control plane under uvicorn
(default 127.0.0.1:8000). With `streamers=N` it also starts N streamers on Ray
(service.streamers), which send the batches; its own Flight server then answers
discovery (get_flight_info) and its streamers' calls, and sends no batch.
`start_service` does the same programmatically and returns a `ServiceHandle` with the
actual ports (port 0 picks free ones) and `stop()`:

    handle = start_service(dataset="data/sample", api_port=0, flight_port=0,
                           config=PackingConfig(seq_len=256, max_res=128))
    client = pyarrow.flight.connect(handle.flight_location)
    ...
    handle.stop()
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from packer.config import PackingConfig
from packer.index.image_index import ImageIndex
from service.api.main import create_app
from service.flight import PackedFlightServer
from service.job import ServiceJob
from service.settings import ServiceSettings
from service.state import StateStore

if TYPE_CHECKING:
    from service.streamers.pool import StreamerPool

log = logging.getLogger("navit.service")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit TCP_NODELAY. Without it a keep-alive response written
    # in two parts (headers, body) waits for the client's delayed ACK: 40 ms a request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def _server_log_level(settings: ServiceSettings) -> str:
    """uvicorn's level: its start-up and shutdown lines (INFO) only when verbose (or
    with log_level debug)."""
    level = settings.log_level.lower()
    return "warning" if level == "info" and not settings.verbose else level


class _ApiServer:
    """uvicorn on a pre-bound socket, in a thread (so port 0 gives its real port at once)."""

    def __init__(self, app: Any, settings: ServiceSettings) -> None:
        self.socket = _bind(settings.host, settings.api_port)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=_server_log_level(settings),
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="navit-api", daemon=True
        )

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self, timeout: float) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()


@dataclass
class ServiceHandle:
    """A running service: its ports, its job, and `stop()`."""

    settings: ServiceSettings
    job: ServiceJob
    app: Any
    api_port: int
    flight_port: int
    _api: _ApiServer = field(repr=False)
    _flight: PackedFlightServer = field(repr=False)
    streamers: StreamerPool | None = None
    _owns_ray: bool = False
    _stopped: bool = False

    @property
    def api_url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{_url_host(self.settings.host)}:{self.api_port}"

    @property
    def flight_location(self) -> str:
        scheme = "grpc+tls" if self.settings.tls else "grpc+tcp"
        return f"{scheme}://{_url_host(self.settings.host)}:{self.flight_port}"

    def describe(self) -> dict[str, Any]:
        streamers = self.job.streamers.rows() if self.job.streamers is not None else []
        return {
            "api": self.api_url,
            "flight": self.flight_location,
            "streamers": [{"node": r["node"], "location": r["location"]} for r in streamers],
            "dataset": self.settings.dataset,
            "config_version": self.job.config_version.version,
            "state_dir": str(self.settings.state_dir) if self.settings.state_dir else None,
            **self.job.classes.to_dict(),
        }

    def stop(self) -> None:
        """Stop streams (they end with 'reconnect with your cursor'), then both servers."""
        if self._stopped:
            return
        self._stopped = True
        timeout = self.settings.shutdown_timeout_s
        if self.streamers is not None:
            # First: their last events (cursors, stats) reach this coordinator's server.
            self.streamers.stop(timeout)
        self.job.stop()
        # FlightServerBase.shutdown waits for every call to finish, and a call whose
        # client stopped reading waits in gRPC for it; bound the wait instead of hanging.
        stopper = threading.Thread(target=self._flight.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning("a Flight stream did not end within %.0f s; leaving it", timeout)
        self._api.stop(timeout)
        self.job.state.close()
        if self._owns_ray:
            import ray

            ray.shutdown()

    def __enter__(self) -> ServiceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_service(
    settings: ServiceSettings | None = None,
    *,
    index: ImageIndex | None = None,
    config: PackingConfig | None = None,
    **setting_values: Any,
) -> ServiceHandle:
    """Start Ray (unless already up), the job, the Flight server and the HTTP API.

    `settings` fields may also be passed as keywords (`dataset=..., api_port=0`);
    `index` skips loading the dataset's index (tests, benchmarks, synthetic data);
    `config` replaces the config from the settings' config file and overrides.
    The HTTP API answers /healthz (and /readyz: 503) while the index loads. With
    `streamers`, it returns once every streamer serves; one that cannot start is a
    StreamerStartError (an OSError, as a port in use is), in one line.
    """
    if settings is None:
        settings = ServiceSettings(**setting_values)
    elif setting_values:
        settings = settings.model_copy(update=setting_values)
    token = settings.bearer_token()
    if config is None:
        config = PackingConfig.load(settings.config_file, settings.config_overrides)

    app = create_app(None, token, max_body_bytes=settings.max_body_bytes)
    api = _ApiServer(app, settings)
    api.start()
    owns_ray = False
    try:
        # The dataset first: a wrong path fails in a second, before Ray starts; then its
        # index, whose header scan runs as Ray tasks (packer.pipeline.scan_groups_on_ray).
        source = None
        if index is None:
            from packer.sources import open_source

            source = open_source(settings.dataset)
        import ray

        from packer.pipeline import init_ray, scan_groups_on_ray

        owns_ray = not ray.is_initialized()
        init_ray(settings.ray_address, settings.ray_num_cpus, verbose=settings.verbose)
        if index is None:
            from packer.index.cache import load_index

            index = load_index(
                source,
                cache_dir=settings.index_cache_dir,
                options=settings.index_options(),
                scanner=scan_groups_on_ray,
            )
        state = StateStore(settings.state_dir)
        flight_server = None
        try:
            job = ServiceJob(index, config, state, dataset=settings.dataset, settings=settings)
            key = secrets.token_urlsafe(24)  # the streamers' own secret (streamers.wire)
            actions = _coordinator_actions(job, key) if settings.streamers else None
            flight_server = PackedFlightServer(
                job,
                settings.host,
                settings.flight_port,
                token=token,
                tls_cert=settings.tls_cert,
                tls_key=settings.tls_key,
                actions=actions,
                sent=job.flight_sent,
            )
            pool = None
            if settings.streamers:
                pool = _start_streamers(job, settings, flight_server.port, key, token)
        except BaseException:
            if flight_server is not None:
                flight_server.shutdown()
            state.close()
            raise
        app.state.job = job
    except BaseException:
        api.stop(settings.shutdown_timeout_s)
        if owns_ray:
            import ray

            ray.shutdown()
        raise
    return ServiceHandle(
        settings=settings,
        job=job,
        app=app,
        api_port=api.port,
        flight_port=flight_server.port,
        _api=api,
        _flight=flight_server,
        streamers=pool,
        _owns_ray=owns_ray,
    )


def _coordinator_actions(job: ServiceJob, key: str) -> dict[str, Any]:
    from service.streamers.coordinator import StreamerCoordinator

    return StreamerCoordinator(job, key).actions()


def coordinator_location(settings: ServiceSettings, port: int) -> str:
    """Where streamers reach this process's Flight server: its host, or, listening on
    every interface, the address Ray knows this node by."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        import ray

        host = ray.util.get_node_ip_address()
    scheme = "grpc+tls" if settings.tls else "grpc+tcp"
    return f"{scheme}://{_url_host(host)}:{port}"


def _start_streamers(
    job: ServiceJob, settings: ServiceSettings, port: int, key: str, token: str | None
) -> StreamerPool:
    """Start the job's streamers and wait until each serves (StreamerStartError)."""
    from service.streamers.pool import StreamerPool
    from service.streamers.streamer import StreamerSpec

    def pem(path: Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    assert job.streamers is not None
    specs = [
        StreamerSpec(
            streamer=i,
            count=settings.streamers,
            coordinator=coordinator_location(settings, port),
            key=key,
            patch_size=job.config_control.patch_size,
            seq_len=job.config_control.seq_len,
            class_names=list(job.classes.classes),
            dataset=settings.dataset,
            token=token,
            tls_cert=pem(settings.tls_cert),
            tls_key=pem(settings.tls_key),
            port=settings.streamer_port + i if settings.streamer_port else 0,
            max_in_flight=settings.max_in_flight,
            max_world_size=settings.max_world_size,
            shutdown_timeout_s=settings.shutdown_timeout_s,
        )
        for i in range(settings.streamers)
    ]
    return StreamerPool.start(
        specs,
        job.streamers,
        max_restarts=settings.streamer_max_restarts,
        timeout_s=settings.streamer_start_timeout_s,
    )
