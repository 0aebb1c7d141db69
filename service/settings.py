"""The service's settings: one pydantic-settings object, read from NAVIT_* env variables.

The command line (`navit serve`) builds the same object from its flags, so a value can
come from either: `NAVIT_TOKEN=... navit serve data/` or `navit serve data/ --token-file F`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from packer.contract.auth import read_token


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAVIT_", extra="ignore")

    dataset: str = Field("", description="image folder, WebDataset tars or Parquet (local/URI)")
    host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    flight_port: int = Field(8815, ge=0, le=65535, description="0 picks a free port")
    ray_address: str | None = Field(None, description="Ray cluster; None starts a local Ray")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray")
    state_dir: Path | None = Field(
        None,
        description="SQLite state (config history, cursors); None keeps it in memory, so a "
        "restart then forgets PATCHed configs",
    )
    index_cache_dir: Path | None = None
    token: SecretStr | None = Field(None, description="bearer token for Flight and mutations")
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    config_file: Path | None = Field(None, description="JSON file of packing config fields")
    config_overrides: list[str] = Field(default_factory=list, description="key=value strings")
    max_in_flight: int = Field(4, ge=1, le=256, description="fill tasks per stream")
    recent_sequences: int = Field(24, ge=1, le=1024, description="kept for the dashboard")
    simulate_max_sample: int = Field(20000, ge=1, description="largest /simulate sample")
    simulate_default_sample: int = Field(2000, ge=1)
    simulate_max_images: int = Field(
        40000, ge=1, description="largest /simulate cost: sample_size x epochs images planned"
    )
    max_world_size: int = Field(
        1024, ge=1, le=65536, description="largest world_size a Flight ticket may name"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest HTTP request body; a larger one gets 413"
    )
    holdout_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of images held out of every stream (validation)"
    )
    holdout_seed: int = Field(0, ge=0, description="seed of the held-out split (packer.split)")
    shutdown_timeout_s: float = Field(10.0, gt=0)
    log_level: str = "info"
    verbose: bool = Field(
        False, description="show Ray's and uvicorn's start-up lines (hidden by default)"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

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
