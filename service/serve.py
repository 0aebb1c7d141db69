"""`navit serve DATASET`: the packer service in one process.

It runs the Ray pipeline (an embedded local Ray, or `--ray-address` for a cluster), the
Arrow Flight server (default 127.0.0.1:8815) and the FastAPI control plane under uvicorn
(default 127.0.0.1:8000). `start_service` does the same programmatically and returns a
`ServiceHandle` with the actual ports (port 0 picks free ones) and `stop()`:

    handle = start_service(dataset="data/sample", api_port=0, flight_port=0,
                           config=PackingConfig(seq_len=256, max_res=128))
    client = pyarrow.flight.connect(handle.flight_location)
    ...
    handle.stop()

Also runnable as `python -m service.serve DATASET ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import uvicorn

from packer.config import ConfigError, PackingConfig
from service.api.main import create_app
from service.flight import PackedFlightServer
from service.job import JobOptions, ServiceJob
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


class _ApiServer:
    """uvicorn on a pre-bound socket, in a thread (so port 0 gives its real port at once)."""

    def __init__(self, app: Any, settings: ServiceSettings) -> None:
        self.socket = _bind(settings.host, settings.api_port)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=settings.log_level.lower(),
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


def config_from_settings(settings: ServiceSettings) -> PackingConfig:
    config = PackingConfig()
    if settings.config_file is not None:
        config = PackingConfig.from_json(Path(settings.config_file).read_text())
    return config.with_overrides(list(settings.config_overrides))


def start_service(
    settings: ServiceSettings | None = None,
    *,
    index: pa.Table | None = None,
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
    config = config if config is not None else config_from_settings(settings)

    app = create_app(None, token, max_body_bytes=settings.max_body_bytes)
    api = _ApiServer(app, settings)
    api.start()
    owns_ray = False
    try:
        # The index first: a wrong dataset path fails in a second, before Ray starts.
        if index is None:
            from packer.index import load_index

            index = load_index(settings.dataset, cache_dir=settings.index_cache_dir)
        import ray

        from packer.pipeline import init_ray

        owns_ray = not ray.is_initialized()
        init_ray(settings.ray_address, settings.ray_num_cpus)
        state = StateStore(settings.state_dir)
        options = JobOptions(
            max_in_flight=settings.max_in_flight,
            recent_sequences=settings.recent_sequences,
            simulate_max_sample=settings.simulate_max_sample,
            simulate_default_sample=min(
                settings.simulate_default_sample, settings.simulate_max_sample
            ),
            simulate_max_images=settings.simulate_max_images,
            max_world_size=settings.max_world_size,
        )
        try:
            job = ServiceJob(index, config, state, dataset=settings.dataset, options=options)
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


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from packer.commands import add_config_arguments

    parser.add_argument("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    # Defaults of None leave the value to ServiceSettings (and its NAVIT_* env variables).
    parser.add_argument("--host", default=None, help="interface of both servers (127.0.0.1)")
    parser.add_argument("--api-port", type=int, default=None, help="HTTP port (8000; 0: any)")
    parser.add_argument("--flight-port", type=int, default=None, help="Flight port (8815; 0: any)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="SQLite state: config history, cursors"
    )
    parser.add_argument("--index-cache-dir", type=Path, default=None)
    parser.add_argument(
        "--token-file", type=Path, default=None, help="bearer token (or env NAVIT_TOKEN)"
    )
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    parser.add_argument(
        "--max-in-flight", type=int, default=None, help="fill tasks pending per stream (4)"
    )
    parser.add_argument("--log-level", default=None, help="info, warning, debug")
    add_config_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    values = {
        "dataset": args.dataset,
        "host": args.host,
        "api_port": args.api_port,
        "flight_port": args.flight_port,
        "ray_address": args.ray_address,
        "ray_num_cpus": args.num_cpus,
        "state_dir": args.state_dir,
        "index_cache_dir": args.index_cache_dir,
        "token_file": args.token_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "max_in_flight": args.max_in_flight,
        "log_level": args.log_level,
        "config_file": getattr(args, "config", None),
        "config_overrides": list(getattr(args, "overrides", []) or []) or None,
    }
    return ServiceSettings(**{k: v for k, v in values.items() if v is not None})


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        handle = start_service(settings)
    except ConfigError:
        raise  # the CLI prints it as an invalid config
    except (ValueError, OSError) as error:
        # A missing dataset, a state dir of another dataset, a port in use: say so plainly.
        print(f"navit serve: {error}", file=sys.stderr)
        return 2
    # After start_service: ray.init installs its own SIGTERM handler, which would exit
    # without stopping the streams and saving the cursors.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(json.dumps({"serving": handle.describe()}), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.serve", description=__doc__)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except ConfigError as error:
        print(f"navit serve: invalid config: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
