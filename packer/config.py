"""The packing configuration: one frozen dataclass, validated once, serialisable to JSON.

The service PATCHes it while a job runs; every packed batch carries the `config_version`
of the config that planned it (see `packer.plan.ConfigHistory`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

ResolutionMode = Literal["area", "side"]
ResolutionDist = Literal["uniform", "truncnorm"]
TokenDrop = Literal["none", "constant", "beta", "resolution"]
PackingStrategy = Literal["exact_fit", "best_fit", "next_fit"]

# Patch coordinates travel as int16 (see packer.contract.schema), so no grid side may pass this.
_MAX_SEQ_LEN = 32767
# Far above any useful value, and low enough that one config cannot make the planner hold
# a whole large dataset in one window, nor a sequence track more images than it can mask.
MAX_PACK_WINDOW = 65536
MAX_IMAGES_PER_SEQ = 1024


class ConfigError(ValueError):
    """A config value is invalid. `field` names the offending field, for a 422 that says so."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PackingConfig:
    """How images become packed token sequences.

    Resolution sampling (NaViT section 3.2): each image draws a resolution r in
    [min_res, max_res]; `area` mode resizes it to about r*r pixels keeping its aspect
    ratio (the paper's pretraining), `side` mode makes its longer side r. `truncnorm`
    draws x ~ N(res_mu, res_sigma) truncated to [-1, 1] and maps it linearly onto
    [min_res, max_res] (the paper favours low resolutions with mu=-0.5, sigma=1).

    Token drop (NaViT section 3.3 and appendix A.4): `constant` drops `drop_rate` of each
    image's patches; `beta` draws a rate ~ drop_rate * Beta(drop_beta_a, drop_beta_b) per
    image; `resolution` makes the rate grow linearly with the sampled resolution, from
    `drop_min_rate` at min_res to `drop_rate` at max_res (large images lose more).
    """

    patch_size: int = 16
    seq_len: int = 1024
    batch_size: int = 8  # sequences per Arrow record batch
    max_images_per_seq: int = 64
    min_res: int = 64
    max_res: int = 384
    res_mode: ResolutionMode = "area"
    res_dist: ResolutionDist = "uniform"
    res_mu: float = -0.5
    res_sigma: float = 1.0
    token_drop: TokenDrop = "none"
    drop_rate: float = 0.0
    drop_min_rate: float = 0.0
    drop_beta_a: float = 1.0
    drop_beta_b: float = 1.0
    packing: PackingStrategy = "exact_fit"  # see packer.plan.packing
    pack_window: int = 1024  # images bin-packed together
    carry_over: bool = True  # let a window leave small images or open sequences to the next
    seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        _positive(self, "patch_size", "seq_len", "batch_size", "max_images_per_seq")
        _positive(self, "min_res", "max_res", "pack_window")
        for name, most in (
            ("seq_len", _MAX_SEQ_LEN),
            ("pack_window", MAX_PACK_WINDOW),
            ("max_images_per_seq", MAX_IMAGES_PER_SEQ),
        ):
            if getattr(self, name) > most:
                raise ConfigError(name, f"must be at most {most}, got {getattr(self, name)}")
        if self.min_res < self.patch_size:
            raise ConfigError(
                "min_res",
                f"must be at least patch_size={self.patch_size}, got {self.min_res}",
            )
        if self.max_res < self.min_res:
            raise ConfigError(
                "max_res", f"must be at least min_res={self.min_res}, got {self.max_res}"
            )
        if self.max_tokens_per_image > self.seq_len:
            # An image at max_res would not fit in one sequence, so it could never be packed.
            largest = self.patch_size * int(self.seq_len**0.5)
            raise ConfigError(
                "max_res",
                f"max_res={self.max_res} gives images of up to {self.max_tokens_per_image} "
                f"tokens, more than seq_len={self.seq_len}; lower max_res to at most "
                f"{largest} or raise seq_len",
            )
        if self.res_sigma <= 0:
            raise ConfigError("res_sigma", f"must be positive, got {self.res_sigma}")
        if not -1.0 <= self.res_mu <= 1.0:
            raise ConfigError("res_mu", f"must lie in [-1, 1], got {self.res_mu}")
        for name in ("drop_rate", "drop_min_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ConfigError(name, f"must lie in [0, 1), got {rate}")
        if self.token_drop == "resolution" and self.drop_min_rate > self.drop_rate:
            raise ConfigError(
                "drop_min_rate",
                f"must not exceed drop_rate={self.drop_rate}, got {self.drop_min_rate}",
            )
        for name in ("drop_beta_a", "drop_beta_b"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError("seed", f"must be non-negative, got {self.seed}")

    @property
    def max_tokens_per_image(self) -> int:
        """The most tokens any image can get: (max_res / patch_size)^2, in both modes."""
        return (self.max_res // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Values per patch: patch_size * patch_size * 3 (RGB)."""
        return self.patch_size * self.patch_size * 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PackingConfig:
        """Build a config from plain values; an unknown key is an error that names it."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, f"unknown config field (known: {', '.join(sorted(known))})")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> PackingConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(
        cls, file: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()
    ) -> PackingConfig:
        """The config every command starts from: the defaults, then the JSON `file`'s
        fields, then `key=value` overrides (`--config FILE --set seq_len=512`).

        A file that cannot be read or is not a JSON object is a ConfigError naming
        `config`, with the file's path.
        """
        config = cls()
        if file is not None:
            try:
                values = json.loads(Path(file).read_text())
            except (OSError, ValueError) as error:
                raise ConfigError("config", f"{file}: {error}") from None
            if not isinstance(values, dict):
                raise ConfigError("config", f"{file}: expected a JSON object of config fields")
            config = cls.from_dict(values)
        return config.with_overrides(list(overrides))

    def replace(self, **changes: Any) -> PackingConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str]) -> PackingConfig:
        """Apply CLI `key=value` strings, coercing each value to its field's type.

        For ["seq_len=512", "token_drop=beta"] this returns a copy with seq_len 512 and
        token drop beta; "seq_len" (no "=") or "seq_len=abc" raise ConfigError naming it.
        """
        changes: dict[str, Any] = {}
        hints = typing.get_type_hints(type(self))
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(key, f"expected key=value, got {assignment!r}")
            if key not in hints:
                raise ConfigError(key, "unknown config field")
            changes[key] = _coerce(key, hints[key], raw.strip())
        return self.replace(**changes)


def _coerce(key: str, hint: Any, raw: str) -> Any:
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"expected a boolean, got {raw!r}")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise ConfigError(key, f"expected {hint.__name__}, got {raw!r}") from None
    return raw  # Literal strings: checked by __post_init__


def _check_types(config: PackingConfig) -> None:
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        hint = hints[f.name]
        if typing.get_origin(hint) is Literal:
            allowed = typing.get_args(hint)
            if value not in allowed:
                raise ConfigError(f.name, f"must be one of {list(allowed)}, got {value!r}")
        elif hint is bool:
            if not isinstance(value, bool):
                raise ConfigError(f.name, f"must be a boolean, got {value!r}")
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f.name, f"must be an integer, got {value!r}")
        elif hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f.name, f"must be a number, got {value!r}")
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f.name, f"must be a finite number, got {str(value)[:40]}")
            object.__setattr__(config, f.name, number)


def _positive(config: PackingConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(name, f"must be positive, got {getattr(config, name)}")


# Sequences of at least this many tokens: several small images share one, as in training.
_FIXED_RESOLUTION_MIN_SEQ_LEN = 256


def fixed_resolution_config(
    resolution: int,
    patch_size: int,
    res_mode: ResolutionMode = "area",
    seq_len: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> PackingConfig:
    """Every image at `resolution`, aspect kept, nothing dropped.

    `seq_len` defaults to enough for the largest image: max(256, (r // p)^2), so r = 384
    at p = 16 packs sequences of 576 tokens. A resolution below the patch size is a
    ConfigError naming `resolution`.
    """
    if not isinstance(resolution, int) or resolution < patch_size:
        raise ConfigError(
            "resolution",
            f"must be an integer of at least patch_size={patch_size}, got {resolution!r}",
        )
    largest = (resolution // patch_size) ** 2
    return PackingConfig(
        patch_size=patch_size,
        seq_len=max(seq_len or _FIXED_RESOLUTION_MIN_SEQ_LEN, largest),
        batch_size=batch_size,
        min_res=resolution,
        max_res=resolution,
        res_mode=res_mode,
        token_drop="none",
        seed=seed,
    )
