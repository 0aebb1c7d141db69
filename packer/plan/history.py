"""The config history of a job: which packing config planned each window of each epoch.

The service PATCHes the config while a job runs; a change takes effect at the first
window no planner has planned yet, and every packed batch carries the `config_version`
of the config that planned it. Persisted as JSON (service.state), so a restarted service
plans every window with the config it had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from packer.config import PackingConfig


@dataclass(frozen=True)
class ConfigVersion:
    """A config and the first (epoch, window) it plans."""

    version: int
    config: PackingConfig
    epoch: int = 0
    window: int = 0

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "window": self.window,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConfigVersion:
        return cls(d["version"], PackingConfig.from_dict(d["config"]), d["epoch"], d["window"])


@dataclass
class ConfigHistory:
    """Every config a job has used, each from the window where it took effect.

    For entries v1 at (0, 0) and v2 at (0, 5): windows 0..4 of epoch 0 plan with v1,
    window 5 of epoch 0 onwards (and all later epochs) with v2.
    """

    entries: list[ConfigVersion] = field(default_factory=list)

    @classmethod
    def start(cls, config: PackingConfig) -> ConfigHistory:
        return cls([ConfigVersion(1, config, 0, 0)])

    @property
    def latest(self) -> ConfigVersion:
        return self.entries[-1]

    def at(self, epoch: int, window: int) -> ConfigVersion:
        found = self.entries[0]
        for entry in self.entries:
            if (entry.epoch, entry.window) <= (epoch, window):
                found = entry
        return found

    def append(self, config: PackingConfig, epoch: int, window: int) -> ConfigVersion:
        if (epoch, window) < (self.latest.epoch, self.latest.window):
            raise ValueError(
                f"a config change cannot start at ({epoch}, {window}), before the latest "
                f"one at ({self.latest.epoch}, {self.latest.window})"
            )
        entry = ConfigVersion(self.latest.version + 1, config, epoch, window)
        if (epoch, window) == (self.latest.epoch, self.latest.window):
            # Nothing was planned with the latest one yet: replace it.
            self.entries[-1] = entry
        else:
            self.entries.append(entry)
        return entry

    def to_json(self) -> str:
        return json.dumps([e.to_dict() for e in self.entries])

    @classmethod
    def from_json(cls, text: str) -> ConfigHistory:
        return cls([ConfigVersion.from_dict(d) for d in json.loads(text)])
