"""The job's tunables (the service settings fill them from `navit serve` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class JobOptions:
    max_in_flight: int = 4  # fill tasks pending per rank stream
    recent_sequences: int = 24  # packed sequences kept for the dashboard
    max_batch_bytes: int = 1 << 30  # one batch's pixels; a larger batch_size is refused
    dry_run_images: int = 512  # images planned to vet a config change before accepting it
    simulate_max_sample: int = 20000
    simulate_default_sample: int = 2000
    simulate_max_images: int = 40000  # one /simulate's sample_size x epochs
    max_world_size: int = 1024  # the largest world_size a ticket may name
    # The validation split held out of every stream (packer.split): images whose draw for
    # (holdout_seed, image id) falls below holdout_fraction are never planned.
    holdout_fraction: float = 0.0
    holdout_seed: int = 0
