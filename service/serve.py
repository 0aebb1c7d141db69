"""The packer service in one process (`navit serve DATASET` is its command line).

It runs the Ray pipeline (an embedded local Ray, or `--ray-address` for a cluster), the
Arrow Flight server (default 127.0.0.1:8815) and the FastAPI control plane under uvicorn
(default 127.0.0.1:8000). `start_service` does the same programmatically and returns a
`ServiceHandle` with the actual ports (port 0 picks free ones) and `stop()`:

    handle = start_service(dataset="data/sample", api_port=0, flight_port=0,
                           config=PackingConfig(seq_len=256, max_res=128))
    client = pyarrow.flight.connect(handle.flight_location)
    ...
    handle.stop()
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from packer.config import PackingConfig
from packer.index.image_index import ImageIndex
from service.api.main import create_app
from service.flight import PackedFlightServer
from service.job import ServiceJob
from service.settings import ServiceSettings
from service.state import StateStore

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
        return {
            "api": self.api_url,
            "flight": self.flight_location,
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
    The HTTP API answers /healthz (and /readyz: 503) while the index loads.
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
        try:
            job = ServiceJob(index, config, state, dataset=settings.dataset, settings=settings)
            flight_server = PackedFlightServer(
                job,
                settings.host,
                settings.flight_port,
                token=token,
                tls_cert=settings.tls_cert,
                tls_key=settings.tls_key,
            )
        except BaseException:
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
        _owns_ray=owns_ray,
    )
