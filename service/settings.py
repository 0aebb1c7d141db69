"""The service's settings: one pydantic-settings object, read from NAVIT_* env variables.

`navit serve` derives its flags from these fields (deploy/cli/serve.py) and builds the same
object from them, so a default is written once and a value can come from either:
`NAVIT_TOKEN=... navit serve data/` or `navit serve data/ --token-file F`. The packing job
(service.job) reads its limits from the same object.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from packer.contract.auth import read_token
from packer.index.build import IndexOptions


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAVIT_", extra="ignore")

    dataset: str = Field("", description="image folder, WebDataset tars or Parquet (local/URI)")
    host: str = Field("127.0.0.1", description="interface of both servers")
    api_port: int = Field(
        8000, ge=0, le=65535, description="port of the HTTP control plane (0: any free one)"
    )
    flight_port: int = Field(
        8815, ge=0, le=65535, description="port of the Arrow Flight server (0: any free one)"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (default: start an embedded local Ray)"
    )
    ray_num_cpus: int | None = Field(
        None,
        ge=1,
        description="CPUs of the embedded local Ray (default: all)",
        json_schema_extra={"flag": "--num-cpus"},
    )
    state_dir: Path | None = Field(
        None,
        description="folder of the SQLite state: config history, planned frontier, rank "
        "cursors (default: in memory, so a restart forgets PATCHed configs)",
    )
    index_cache_dir: Path | None = Field(
        None, description="where header indexes are cached (default: $NAVIT_CACHE_DIR or ~/.cache)"
    )
    verify_sizes: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of image sizes taken from metadata (WebDataset .json, Parquet "
        "columns) whose header is read to check them; a mismatch refuses the index",
    )
    size_columns: str = Field(
        "width,height", description="Parquet columns holding each image's width,height"
    )
    token: SecretStr | None = Field(None, description="bearer token for Flight and mutations")
    token_file: Path | None = Field(None, description="file whose first line is the token")
    tls_cert: Path | None = Field(None, description="PEM certificate (TLS on both servers)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    config_file: Path | None = Field(None, description="JSON file of packing config fields")
    config_overrides: list[str] = Field(default_factory=list, description="key=value strings")
    streamers: int = Field(
        0,
        ge=0,
        le=1024,
        description="Ray actors that plan, fill and send the ranks' batches from their own "
        "nodes, rank r from streamer r mod N, each with a Flight server of its own; this "
        "process then coordinates and sends no batch (0: this process sends every batch)",
    )
    streamer_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="streamer i listens on this port + i of its node (0: any free port)",
    )
    streamer_max_restarts: int = Field(
        10, ge=0, description="times Ray restarts a streamer that died before giving up"
    )
    streamer_start_timeout_s: float = Field(
        120.0, gt=0, description="seconds navit serve waits for its streamers to start"
    )
    max_in_flight: int = Field(4, ge=1, le=256, description="fill tasks pending per rank stream")
    recent_sequences: int = Field(
        24, ge=1, le=1024, description="packed sequences kept for the dashboard's picture"
    )
    simulate_max_sample: int = Field(20000, ge=1, description="largest /simulate sample")
    simulate_default_sample: int = Field(
        2000, ge=1, description="/simulate sample when the request names none"
    )
    simulate_max_images: int = Field(
        40000, ge=1, description="largest /simulate cost: sample_size x epochs images planned"
    )
    max_world_size: int = Field(
        1024, ge=1, le=65536, description="largest world_size a Flight ticket may name"
    )
    max_batch_bytes: int = Field(
        1 << 30, ge=1, description="one batch's pixels; a config with a larger batch is refused"
    )
    dry_run_images: int = Field(
        512, ge=1, description="images planned to vet a config change before accepting it"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest HTTP request body; a larger one gets 413"
    )
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of images held out of every stream (validation)"
    )
    holdout_seed: int = Field(0, ge=0, description="seed of the held-out split (packer.plan.split)")
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="seconds a stop waits for streams and servers"
    )
    log_level: str = Field("info", description="debug, info, warning, error")
    verbose: bool = Field(
        False, description="show Ray's and uvicorn's start-up lines (hidden by default)"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @model_validator(mode="after")
    def _streamer_ports_exist(self) -> ServiceSettings:
        if self.streamer_port and self.streamer_port + self.streamers - 1 > 65535:
            raise ValueError(
                f"streamer_port {self.streamer_port} + {self.streamers} streamers passes 65535"
            )
        return self

    @model_validator(mode="after")
    def _default_sample_within_the_largest(self) -> ServiceSettings:
        if self.simulate_default_sample > self.simulate_max_sample:
            self.simulate_default_sample = self.simulate_max_sample
        return self

    def index_options(self) -> IndexOptions:
        """How the dataset's index is built (packer.index.build.IndexOptions)."""
        width, _, height = self.size_columns.partition(",")
        return IndexOptions(
            size_columns=(width.strip(), height.strip()), verify_sizes=self.verify_sizes
        )

    def bearer_token(self) -> str | None:
        """The configured token: `token` (NAVIT_TOKEN) or the first line of `token_file`.

        A `token_file` that is missing or empty is a ValueError, never an open service.
        """
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is not None:
            return read_token(self.token_file)
        return None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
