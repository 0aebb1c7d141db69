"""The job's packing config: its versions, where a change applies, and what-if runs.

The config history (persisted in the state store) decides which config planned every
window, so a restarted service regenerates exactly the batches it would have sent. A
PATCH appends a version that applies from the first window no planner has planned
(`EpochPlanners.change_point`); fields that fix the Arrow schema of live streams
(patch_size, seq_len) cannot change at all. `simulate` tries a config on a sample of the
index without touching the running job.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from packer.config import ConfigError, PackingConfig
from packer.index.image_index import ImageIndex
from packer.plan.history import ConfigHistory, ConfigVersion
from packer.plan.planner import PLANNER_VERSION, EpochPlanner
from packer.plan.simulate import simulate
from service.job.errors import ConfigConflict, VersionMismatch
from service.job.planning import EpochPlanners
from service.settings import ServiceSettings
from service.state import StateStore

log = logging.getLogger("navit.service")

# Fields that fix the Arrow schema of a stream (fixed-size lists of seq_len, patch_dim).
SCHEMA_FIELDS = ("patch_size", "seq_len")
# A change predicted to lose more packing efficiency than this is answered with a warning.
WARN_LOSS = 0.02


@dataclass(frozen=True)
class ConfigPrediction:
    """What the simulator predicts of a config change, on a sample of the job's images:
    the new config's stats next to the old one's, and a warning when it loses more than
    WARN_LOSS of packing efficiency."""

    sample_size: int
    predicted: dict[str, Any]  # PackingStats.to_dict() of the new config
    current: dict[str, Any]  # of the config it replaces, on the same sample
    warning: str | None


def index_fingerprint(index: ImageIndex) -> str:
    """A digest of what planning depends on: each image's key (a hash of its id), size
    and header error, the rows of a view, and the planner's version (a state dir whose
    batches an older planner decided is refused, as another dataset's would be)."""
    digest = hashlib.blake2b(f"planner v{PLANNER_VERSION}\n".encode(), digest_size=32)
    columns = index.columns
    for values in (columns.width, columns.height, columns.key, columns.error):
        digest.update(np.ascontiguousarray(values).data)
    if index.rows is not None:
        digest.update(np.ascontiguousarray(index.rows).data)
    return digest.hexdigest()


def batch_bytes(config: PackingConfig) -> int:
    """Bytes of one batch's patch pixels: batch_size * seq_len * patch_size^2 * 3."""
    return config.batch_size * config.seq_len * config.patch_dim


class ConfigControl:
    """The config history of one job, its planners, and the rules for changing it."""

    def __init__(
        self,
        index: ImageIndex,
        config: PackingConfig,
        state: StateStore,
        *,
        dataset: str,
        settings: ServiceSettings,
    ) -> None:
        self.index = index
        self.settings = settings
        self._state = state
        self._dataset = dataset
        self._change_lock = threading.Lock()  # one config change at a time
        self.history = self._load_history(config)
        self.planners = EpochPlanners(index, self.history, state)
        self.warnings: dict[int, str] = {}  # config version -> its change's warning

    def _load_history(self, config: PackingConfig) -> ConfigHistory:
        fingerprint = index_fingerprint(self.index)
        stored = self._state.get_meta("index_fingerprint")
        if stored is not None and stored != fingerprint:
            raise ValueError(
                f"state dir {self._state.state_dir} belongs to another dataset "
                f"({self._state.get_meta('dataset')!r}, {stored[:12]}); its config history "
                "would not reproduce this one's batches: use a new --state-dir"
            )
        history = self._state.load_history()
        if history is None:
            self.check_runnable(config)
            history = ConfigHistory.start(config)
            self._state.set_meta("dataset", self._dataset)
            self._state.set_meta("index_fingerprint", fingerprint)
            self._state.save_history(history)
        elif history.entries[0].config != config:
            # The persisted history decides what was sent; the command line cannot rewrite it.
            log.warning(
                "state dir %s has a config history (latest version %d); using it and "
                "ignoring the config given on the command line (PATCH /config changes it)",
                self._state.state_dir,
                history.latest.version,
            )
        return history

    @property
    def current(self) -> ConfigVersion:
        # No lock: reading the last entry is atomic, and the planner lock may be held for a
        # whole window's planning, which a GET /config should not wait for.
        return self.history.entries[-1]

    @property
    def patch_size(self) -> int:
        return self.history.entries[0].config.patch_size

    @property
    def seq_len(self) -> int:
        return self.history.entries[0].config.seq_len

    def check_runnable(self, config: PackingConfig) -> None:
        """Refuse a config this service could not run safely (ConfigError names the field)."""
        if batch_bytes(config) > self.settings.max_batch_bytes:
            most = self.settings.max_batch_bytes // (config.seq_len * config.patch_dim)
            raise ConfigError(
                "batch_size",
                f"a batch of {config.batch_size} sequences holds {batch_bytes(config)} bytes of "
                f"pixels, more than the service's limit of {self.settings.max_batch_bytes}; "
                f"use at most {most}",
            )
        # Plan a sample with it: a config accepted here is one the planner can run.
        sample = self.sample_index(self.settings.dry_run_images, seed=1)
        try:
            planner = EpochPlanner(sample, ConfigHistory.start(config), 0)
            for _ in planner.iter_plans():
                pass
        except Exception as e:  # noqa: BLE001 - any planner failure means: refuse it
            raise ConfigError("config", f"the planner cannot run this config: {e}") from None

    def change_point(self) -> tuple[int, int]:
        """The first (epoch, window) no planner has planned: where a change can start."""
        return self.planners.change_point()

    def update_config(
        self, changes: dict[str, Any], expected_version: int | None = None
    ) -> tuple[ConfigVersion, list[str]]:
        """Record a config change from the next unplanned window; returns it and the
        fields that changed. Raises VersionMismatch (412), ConfigError (422) or
        ConfigConflict (409)."""
        # One change at a time; the planner lock only for the append, so streams keep
        # planning while a change is vetted.
        with self._change_lock:
            current = self.history.latest
            if expected_version is not None and expected_version != current.version:
                raise VersionMismatch(current.version)
            # A schema field is refused before anything else: no value of it can apply.
            for name in SCHEMA_FIELDS:
                if name in changes and changes[name] != getattr(current.config, name):
                    raise ConfigConflict(
                        name,
                        f"{name} cannot change while the service runs: it fixes the Arrow "
                        f"schema of every live stream ({name}={getattr(current.config, name)}"
                        f"); restart the service with --set {name}={changes[name]} "
                        "and a new --state-dir instead",
                    )
            config = current.config.replace(**changes)
            before = current.config.to_dict()
            changed = [k for k, v in config.to_dict().items() if v != before[k]]
            if not changed:
                return current, []
            self.check_runnable(config)
            entry = self.planners.append_config(config)
        log.info(
            "config version %d from epoch %d window %d: %s",
            entry.version,
            entry.epoch,
            entry.window,
            changed,
        )
        return entry, changed

    def predict(
        self, before: PackingConfig, after: PackingConfig, version: int
    ) -> ConfigPrediction:
        """The simulator on the default sample, `after` against `before`; a loss of more
        than WARN_LOSS packing efficiency is a warning, kept for `version` (the dashboard
        and /stats show the current version's)."""
        sample = self.sample_index(self.settings.simulate_default_sample)
        predicted = simulate(sample, ConfigHistory.start(after)).to_dict()
        current = simulate(sample, ConfigHistory.start(before)).to_dict()
        new, old = predicted["packing_efficiency"], current["packing_efficiency"]
        warning = None
        if old - new > WARN_LOSS:
            changed = ", ".join(
                f"{k}={v}" for k, v in after.to_dict().items() if v != before.to_dict()[k]
            )
            warning = (
                f"config version {version} ({changed}) is predicted to pack at "
                f"{100 * new:.2f}% against {100 * old:.2f}% before ({100 * (new - old):+.2f} "
                f"points, simulated on {sample.num_rows} of the job's images); PATCH the old "
                "values back to undo it"
            )
            self.warnings[version] = warning
        return ConfigPrediction(sample.num_rows, predicted, current, warning)

    @property
    def warning(self) -> str | None:
        """The warning of the current config's change, if it had one."""
        return self.warnings.get(self.current.version)

    # -- what-if -----------------------------------------------------------------------

    def sample_index(self, size: int, seed: int = 0) -> ImageIndex:
        """`size` rows of the index drawn without replacement, in index order (a view)."""
        n = self.index.num_rows
        if size >= n:
            return self.index
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        return self.index.view(rows)

    def simulate(
        self, changes: dict[str, Any], sample_size: int | None = None, epochs: int = 1
    ) -> dict[str, Any]:
        """Stats a proposed config would give on a sample of this dataset, next to the
        current config's on the same sample. Touches nothing of the running job."""
        size = self.settings.simulate_default_sample if sample_size is None else sample_size
        if not 1 <= size <= self.settings.simulate_max_sample:
            raise ConfigError(
                "sample_size", f"must lie in [1, {self.settings.simulate_max_sample}], got {size}"
            )
        # What one run costs: every sampled image planned once per epoch (twice, with the
        # baseline), under the planner of no running stream but on the service's CPUs.
        cost = min(size, self.index.num_rows) * epochs
        if cost > self.settings.simulate_max_images:
            raise ConfigError(
                "epochs",
                f"sample_size x epochs = {cost} images, more than the service's limit of "
                f"{self.settings.simulate_max_images} (simulate_max_images); use a smaller "
                "sample_size or fewer epochs",
            )
        current = self.current
        config = current.config.replace(**changes)
        sample = self.sample_index(size)
        try:
            proposed = simulate(sample, ConfigHistory.start(config), epochs)
        except Exception as e:  # noqa: BLE001 - report, never crash the service
            raise ConfigError("config", f"the planner cannot run this config: {e}") from None
        baseline = simulate(sample, ConfigHistory.start(current.config), epochs)
        return {
            "config": config.to_dict(),
            "sample_size": sample.num_rows,
            "epochs": epochs,
            "stats": proposed.to_dict(),
            "baseline_config_version": current.version,
            "baseline": baseline.to_dict(),
        }
