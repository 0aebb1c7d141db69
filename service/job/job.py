"""`ServiceJob`: the packing job behind the service, wiring its parts together.

One job owns the index, the config (`ConfigControl`: history, planners, changes,
what-if runs), the rank streams (`RankStreams`: planning per rank, bounded fills), what
they did (`JobRecorder`: each rank's cursor, the live statistics, the layouts sent
lately) and the trainers' reports. The Flight server streams from it
(`open_rank_stream`), the FastAPI routers read and change it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from packer.config import PackingConfig
from packer.contract.cursor import Cursor
from packer.contract.schema import packed_schema
from packer.index.classes import class_summary
from packer.index.image_index import ImageIndex
from packer.index.table import index_skipped
from packer.plan.history import ConfigHistory, ConfigVersion
from packer.plan.split import split_index
from service.batch_source import OutgoingBatch, ServedElsewhere
from service.job.config_control import ConfigControl
from service.job.layouts import RecentLayouts
from service.job.rank_cursors import RankCursors
from service.job.recorder import JobRecorder
from service.job.streamer_registry import StreamerRegistry
from service.job.streams import FillFunction, RankStreams, StreamStatus
from service.job.trainer_reports import TrainerReports
from service.live_stats import LiveStats, SentBytes
from service.settings import ServiceSettings
from service.state import StateStore


class ServiceJob:
    """The packing job: config history and planners, rank streams, live stats, reports."""

    def __init__(
        self,
        index: ImageIndex,
        config: PackingConfig,
        state: StateStore,
        *,
        dataset: str = "",
        settings: ServiceSettings | None = None,
        fill: FillFunction | None = None,
    ) -> None:
        # The service's one settings object: its limits, the held-out split, streams.
        self.settings = settings or ServiceSettings()
        # The class names travel with every stream (packer.contract.classes); the counts
        # and warnings are the whole data set's, shown by navit serve and /stats.
        self.classes = class_summary(index, dataset or "the data set")
        # The held-out images leave the index before anything plans it: no stream, no
        # /simulate and no count of the job's images includes them.
        index, held_out = split_index(
            index, self.settings.holdout_fraction, self.settings.holdout_seed
        )
        self.held_out_images = held_out.num_rows
        self.index = index
        self.state = state
        self.dataset = dataset
        self.started_at = time.time()
        self.num_images = index.num_rows
        self.num_valid_images = index.num_plannable
        self.stats = LiveStats()
        self.flight_sent = SentBytes()  # what this process's Flight server sent
        self.stats.add_skipped(index_skipped(index))
        self.config_control = ConfigControl(
            index, config, state, dataset=dataset, settings=self.settings
        )
        self.recent = RecentLayouts(self.settings.recent_sequences)
        self.cursors = RankCursors(state)
        self.recorder = JobRecorder(self.cursors, self.stats, self.recent)
        self.trainer_reports = TrainerReports()
        self.rank_streams = RankStreams(
            self.config_control.planners,
            self.recorder,
            max_in_flight=self.settings.max_in_flight,
            max_world_size=self.settings.max_world_size,
            fill=fill,
        )
        # With streamers (service.streamers) the batches leave from them; this job then
        # keeps the config, the frontier, the cursors and the stats for all of them.
        count = self.settings.streamers
        self.streamers = StreamerRegistry(count) if count else None

    # -- config ------------------------------------------------------------------------

    @property
    def history(self) -> ConfigHistory:
        return self.config_control.history

    @property
    def config_version(self) -> ConfigVersion:
        return self.config_control.current

    def stream_schema(self) -> pa.Schema:
        return packed_schema(
            self.config_control.patch_size,
            self.config_control.seq_len,
            self.config_control.current.version,
            class_names=self.classes.classes,
        )

    def describe(self) -> dict[str, Any]:
        """What list_flights / get_flight_info tell a client about the stream."""
        current = self.config_control.current
        return {
            "dataset": self.dataset,
            "patch_size": self.config_control.patch_size,
            "seq_len": self.config_control.seq_len,
            "config_version": current.version,
            "batch_size": current.config.batch_size,
            "images": self.num_images,
            "valid_images": self.num_valid_images,
            "max_in_flight": self.settings.max_in_flight,
            "streamers": self.settings.streamers,
            **self.classes.to_dict(),
        }

    def update_config(
        self, changes: dict[str, Any], expected_version: int | None = None
    ) -> tuple[ConfigVersion, list[str]]:
        """See `ConfigControl.update_config`."""
        return self.config_control.update_config(changes, expected_version)

    def simulate(
        self, changes: dict[str, Any], sample_size: int | None = None, epochs: int = 1
    ) -> dict[str, Any]:
        """See `ConfigControl.simulate`."""
        return self.config_control.simulate(changes, sample_size, epochs)

    # -- streams -----------------------------------------------------------------------

    def open_rank_stream(self, cursor: Cursor) -> Iterator[OutgoingBatch]:
        """Check `cursor` now (TicketError, ServiceStopping); return its lazy stream.
        With streamers, a rank's stream comes from its streamer only (ServedElsewhere)."""
        if self.streamers is not None:
            raise ServedElsewhere(
                f"rank {cursor.rank}'s batches come from a streamer of this service: call "
                "get_flight_info with your ticket as a command descriptor and do_get the "
                "endpoint's ticket at its location"
            )
        return self.rank_streams.open(cursor)

    def locate(self, cursor: Cursor) -> list[str]:
        """Where `cursor`'s stream is served: its streamer's location, or [] (here)."""
        if self.streamers is None:
            return []
        self.rank_streams.check(cursor)
        self.config_control.planners.check_epoch(cursor.epoch)
        return self.streamers.locate(cursor)

    def open_counts(self) -> tuple[int, int]:
        """(open streams, the most fill tasks one had in flight) for /stats."""
        if self.streamers is not None:
            return self.cursors.open_streams()
        return self.rank_streams.open_counts()

    def streams(self) -> list[StreamStatus]:
        return self.rank_streams.statuses()

    def stop(self) -> None:
        """Make every stream end at its next batch (ServiceStopping) and save cursors."""
        self.rank_streams.stop()

    # -- status for the control plane --------------------------------------------------

    def rank_positions(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each rank's cursor, and its lag behind the furthest rank of its world size."""
        return self.cursors.positions(time.time() if now is None else now)

    def recent_sequences(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.recent.sequences(limit)

    def report_trainer(self, rank: int, report: dict[str, Any]) -> dict[str, Any]:
        return self.trainer_reports.add(rank, report)

    def trainers(self, now: float | None = None) -> list[dict[str, Any]]:
        return self.trainer_reports.entries(now)
