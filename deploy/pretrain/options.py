"""`PretrainOptions`: what one `navit pretrain` run starts, and the trainers' settings.

The trainers' settings are `TrainConfig` fields (trainer/config.py owns their defaults).
A pretrain run differs from `navit train` in a few defaults, declared once here in
`TRAINER_DEFAULTS`; the supervisor sets the fields in `SUPERVISED_FIELDS` itself for
each rank (the Flight address, the run directory, the rank, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packer.config import ConfigError, PackingConfig
from packer.plan.split import check_fraction
from trainer.config import TrainConfig

# Pretrain's own defaults for trainer settings: a short local run, so a higher peak LR,
# a checkpoint every 50 steps, and (None) a warmup and a validation pass every tenth of
# the steps.
TRAINER_DEFAULTS: dict[str, Any] = {
    "steps": 300,
    "lr": 2e-3,
    "ckpt_every": 50,
    "warmup_steps": None,
    "eval_every": None,
}
WARMUP_SHARE = 10  # warmup_steps None: steps // 10 (at least 1)
EVAL_SHARE = 10  # eval_every None: steps // 10 (at least 1)
DEFAULT_VAL_FRACTION = 0.1

# TrainConfig fields the supervisor sets for each rank, so not settings of the run:
# the token reaches the service and the trainers alike through NAVIT_TOKEN only.
SUPERVISED_FIELDS = ("source", "ckpt_dir", "rank", "world_size", "resume", "progress", "token_file")
TRAINER_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in SUPERVISED_FIELDS
)


@dataclass(frozen=True)
class PretrainOptions:
    """One local pretrain job: the data set, the service's addresses, the trainer ranks."""

    dataset: str
    trainers: int = 1  # ranks (DDP when > 1)
    run_dir: Path = Path("runs/pretrain")
    resume: bool = False  # continue the run in run_dir from its checkpoint
    host: str = "127.0.0.1"
    api_port: int = 8000  # 0: any free port
    flight_port: int = 8815
    num_cpus: int | None = None  # of the local Ray (None: all)
    ray_address: str | None = None  # a Ray cluster instead of a local Ray
    max_restarts: int = 3  # restarts of failed trainers
    progress: bool = True  # a progress bar (False: a plain status line every 10 s)
    verbose: bool = False  # the service shows Ray's start-up lines (in its log)
    # The validation split (packer.plan.split): held out of the service's streams, packed once
    # at the packing config's max_res into run_dir/val, scored every eval_every steps.
    val_fraction: float = DEFAULT_VAL_FRACTION  # 0: no split, no validation
    val_seed: int = 0
    verify_sizes: float = 0.0  # share of metadata sizes checked (packer.index.build)
    overrides: tuple[str, ...] = ()  # packing config KEY=VALUE
    config_file: Path | None = None  # packing config JSON
    training: Mapping[str, Any] = field(default_factory=dict)  # TRAINER_FIELDS values

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("dataset", "required")
        if self.trainers < 1:
            raise ConfigError("trainers", f"must be at least 1, got {self.trainers}")
        if self.max_restarts < 0:
            raise ConfigError("max_restarts", f"must be >= 0, got {self.max_restarts}")
        for name in ("api_port", "flight_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(name, f"must be a port (0: any), got {getattr(self, name)}")
        try:
            check_fraction(self.val_fraction)
        except ValueError as error:
            raise ConfigError("val_fraction", str(error).split(": ", 1)[1]) from None
        if not 0.0 <= self.verify_sizes <= 1.0:
            raise ConfigError("verify_sizes", f"must lie in [0, 1], got {self.verify_sizes}")
        if self.val_seed < 0:
            raise ConfigError("val_seed", f"must be >= 0, got {self.val_seed}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError("num_cpus", f"must be at least 1, got {self.num_cpus}")
        for name in self.training:
            if name not in TRAINER_FIELDS:
                why = "set by the supervisor" if name in SUPERVISED_FIELDS else "no such setting"
                raise ConfigError(name, f"not a trainer setting of pretrain ({why})")
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        self.trainer_config(self.requested_flight)  # a bad trainer value fails here, naming it

    @property
    def requested_flight(self) -> str:
        """The Flight address asked for (port 0: the service picks; it tells the real one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"grpc://{host}:{self.flight_port}"

    def trainer_config(self, source: str, num_classes: int | None = None) -> TrainConfig:
        """What every rank trains with (rank and resume are set per start)."""
        values = {**TRAINER_DEFAULTS, **self.training}
        if values["warmup_steps"] is None:
            values["warmup_steps"] = max(1, values["steps"] // WARMUP_SHARE)
        if values["eval_every"] is None:
            values["eval_every"] = max(1, values["steps"] // EVAL_SHARE)
        if num_classes is not None:
            values["num_classes"] = num_classes
        return TrainConfig(
            source=source,
            ckpt_dir=str(self.run_dir),
            world_size=self.trainers,
            progress=False,  # the supervisor shows the progress
            **values,
        )

    def packing_config(self) -> PackingConfig:
        """The packing config the service starts with (--config file, then --set)."""
        return PackingConfig.load(self.config_file, self.overrides)

    @property
    def steps(self) -> int:
        return self.trainer_config(self.requested_flight).steps

    def describe(self) -> dict[str, Any]:
        """The options as JSON values (for events.jsonl)."""
        values = dataclasses.asdict(self)
        values["run_dir"] = str(self.run_dir)
        values["config_file"] = str(self.config_file) if self.config_file else None
        values["training"] = dict(self.training)
        return values
