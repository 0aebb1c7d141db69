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
import sys
import threading
from pathlib import Path

import pydantic

from deploy.cli import UsageError, one_line
from deploy.cli.data import add_config_arguments
from deploy.cli.options import add_settings_arguments, settings_values
from deploy.ready_file import ReadyFile
from packer.config import ConfigError
from service.serve import start_service
from service.settings import ServiceSettings

log = logging.getLogger("navit.service")


# Settings that are no flags of their own: the positional dataset, the secret token
# (NAVIT_TOKEN or --token-file only, never on a command line), the packing config (the
# shared --config/--set flags) and --verbose (a flag of every command).
_NOT_FLAGS = ("dataset", "token", "config_file", "config_overrides", "verbose")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `navit serve` flags: one per ServiceSettings field (service/settings.py)."""
    parser.add_argument("dataset", help="image folder, WebDataset tars or Parquet (local or URI)")
    add_settings_arguments(parser, ServiceSettings, exclude=_NOT_FLAGS)
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write {api, flight, pid} as JSON here once both servers listen",
    )
    add_config_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    """ServiceSettings from the flags given; the rest from its defaults and NAVIT_* vars."""
    values = settings_values(args, ServiceSettings, exclude=_NOT_FLAGS)
    values["dataset"] = args.dataset
    if getattr(args, "config", None) is not None:
        values["config_file"] = args.config
    if getattr(args, "overrides", None):
        values["config_overrides"] = list(args.overrides)
    if getattr(args, "verbose", False):
        values["verbose"] = True
    try:
        return ServiceSettings(**values)
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
        for warning in handle.job.classes.warnings:
            print(f"navit serve: warning: {warning}", file=sys.stderr, flush=True)
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
