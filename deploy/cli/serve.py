"""`navit serve DATASET`: the packer service (Flight stream + control plane) in one process.

It runs `service.serve.start_service` with settings from the flags (a flag not given
leaves the value to `ServiceSettings` and its NAVIT_* environment variables), prints
`{"serving": {...}}` once both servers listen, writes the `--ready-file` (see
deploy/ready_file.py) for a supervisor, and stops the streams (saving the rank cursors),
both servers and the Ray it started on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path

import pydantic

from deploy.cli import UsageError, one_line
from deploy.cli.data import add_config_arguments
from deploy.ready_file import ReadyFile
from packer.config import ConfigError
from service.serve import start_service
from service.settings import ServiceSettings

log = logging.getLogger("navit.service")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=None,
        help="share of images held out of every stream, for validation (0)",
    )
    parser.add_argument(
        "--holdout-seed", type=int, default=None, help="seed of the held-out split (0)"
    )
    parser.add_argument("--log-level", default=None, help="info, warning, debug")
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write {api, flight, pid} as JSON here once both servers listen",
    )
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
        "holdout_fraction": args.holdout_fraction,
        "holdout_seed": args.holdout_seed,
        "log_level": args.log_level,
        "config_file": getattr(args, "config", None),
        "config_overrides": list(getattr(args, "overrides", []) or []) or None,
        "verbose": True if getattr(args, "verbose", False) else None,
    }
    try:
        return ServiceSettings(**{k: v for k, v in values.items() if v is not None})
    except pydantic.ValidationError as error:
        raise UsageError(f"invalid setting {settings_problems(error)}") from None


def settings_problems(error: pydantic.ValidationError) -> str:
    """The problems of a ServiceSettings as one line: "api_port: Input should be less
    than or equal to 65535 (got 70000); ..." (a NAVIT_* variable, or a flag)."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
        + (f" (got {str(e['input'])[:40]})" if e["loc"] else "")
        for e in error.errors(include_url=False)
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        handle = start_service(settings)
    except ConfigError:
        raise  # the CLI prints it as an invalid config
    except ValueError as error:
        # A wrong dataset path, a bad token file, a state dir of another dataset.
        raise UsageError(str(error)) from None
    except OSError as error:
        # A port in use, a state dir that cannot be written: fixed by other flags.
        raise UsageError(f"cannot start the service: {one_line(error)}") from None
    # After start_service: ray.init installs its own SIGTERM handler, which would exit
    # without stopping the streams and saving the cursors.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        print(json.dumps({"serving": handle.describe()}), flush=True)
        if args.ready_file is not None:
            # start_service returned: both servers accept connections now.
            ready = ReadyFile(api=handle.api_url, flight=handle.flight_location, pid=os.getpid())
            ready.write(args.ready_file)
        while not stop.wait(0.5):
            pass
    finally:
        if args.ready_file is not None:
            with contextlib.suppress(OSError):
                args.ready_file.unlink(missing_ok=True)
        handle.stop()
    log.info("stopped")
    return 0
