"""The one typed settings object, read from the environment and `.env`.

Every variable is `JUKEBOT_<FIELD>`; the two everybody knows also work bare
(`DISCORD_TOKEN`, `DATABASE_URL`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sampler.batch_sizes import DEFAULT_MAX_BATCH_SIZE, format_batch_sizes, parse_batch_sizes
from sampler.engine_settings import (
    AUTO,
    DecodeKernelsSetting,
    DecodePathSetting,
    Switch,
    parse_decode_kernels,
    parse_decode_path,
    parse_switch,
)
from sampler.jukebox.registry import DEFAULT_MIRRORS
from sampler.model_files import default_model_dir
from sampler.residency import DEFAULT_RESIDENT_PRIORS, ResidentPriors, parse_resident_priors
from sampler.worker.logs import LogFormat, log_level_number
from sampler.worker.runtime import WorkerConfig

APP_NAME = "jukebot"

# Plain driver names a user may type, mapped to the async drivers we run on.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one sentence saying what to set."""


def default_database_url() -> str:
    data_dir = Path(platformdirs.user_data_dir(APP_NAME))
    return f"sqlite+aiosqlite:///{data_dir / 'jukebot.sqlite3'}"


def hide_password(url: str) -> str:
    """`url` with its password replaced by ***, for logs and messages (also when it does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _worker_default(name: str) -> float:
    """A worker timing's default, defined once in WorkerConfig."""
    default = next(f.default for f in dataclasses.fields(WorkerConfig) if f.name == name)
    assert isinstance(default, float)
    return default


def normalise_database_url(url: str) -> str:
    """Return `url` with an async driver, or raise ValueError saying what is wrong."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is no number
        raise ValueError(
            f"{hide_password(url)!r} is not a database URL; use e.g. postgresql://user@host/db or sqlite:///path/to/file.sqlite3"
        ) from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"database driver {parsed.drivername!r} is not supported; use postgresql:// or sqlite:///"
        )
    if driver.startswith("sqlite") and not parsed.database:
        raise ValueError("a SQLite URL needs a file path, e.g. sqlite:///path/to/jukebot.sqlite3")
    if driver.startswith("postgresql") and not parsed.host and not parsed.query.get("host"):
        raise ValueError("a Postgres URL needs a host, e.g. postgresql://user@127.0.0.1:5432/jukebot")
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _split_ints(value: object) -> object:
    """Accept `1,2,3`, `1 2 3`, a JSON-ish list or an empty string for id lists."""
    if isinstance(value, str):
        parts = value.strip().strip("[]").replace(",", " ").split()
        try:
            return [int(part) for part in parts]
        except ValueError:
            raise ValueError(
                "use channel ids separated by commas, e.g. 123456789012345678,234567890123456789"
            ) from None
    return value


_BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_byte_size(value: object) -> object:
    """Accept a number of bytes or one with a unit: `26214400`, `25MiB`, `25 MB` (MB = 10^6, MiB = 2^20)."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS:
        raise ValueError(
            "use a number of bytes, or one with a unit, e.g. 26214400 or 25MiB (also kB, MB, KiB, GiB)"
        )
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JUKEBOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("JUKEBOT_DISCORD_TOKEN", "DISCORD_TOKEN")
    )
    database_url: str = Field(
        default_factory=default_database_url,
        validation_alias=AliasChoices("JUKEBOT_DATABASE_URL", "DATABASE_URL"),
    )
    model_dir: Path = Field(default_factory=default_model_dir)
    # Which devices run local workers: "auto" (every visible GPU, else one CPU worker),
    # "cpu", GPU indices such as "0,1", or "none" (no local workers: other machines run them).
    gpus: str = "auto"
    # Samples sampled at once per level (0, 1, 2): lower these when a GPU runs out of memory.
    max_batch_size: str = format_batch_sizes(DEFAULT_MAX_BATCH_SIZE)
    # Keep a model's three priors loaded across levels and jobs: "auto" (where the GPU has room),
    # "on" or "off" (load each level's prior and free it after).
    resident_priors: ResidentPriors = DEFAULT_RESIDENT_PRIORS
    # The sampling engine, "auto" being the device's fastest: the decode loop (sliced, static or
    # graph), its blocks compiled by torch.compile or run as hand-fused Triton kernels, and the
    # middle and bottom levels sampled at once.
    decode_path: DecodePathSetting = AUTO
    decode_compile: Switch = AUTO
    decode_kernels: DecodeKernelsSetting = AUTO
    overlap_levels: Switch = AUTO
    # Mirrors tried in order for model downloads (see sampler.jukebox.registry.DEFAULT_MIRRORS).
    model_mirrors: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_MIRRORS))

    # Limits a server owner tunes (per-guild overrides live in the database).
    max_length_seconds: float = Field(default=60.0, gt=0)
    max_samples_per_job: int = Field(default=3, ge=1, le=16)
    max_running_jobs_per_user: int = Field(default=1, ge=1)
    max_queued_jobs_per_user: int = Field(default=3, ge=1)
    allowed_channels: Annotated[list[int], NoDecode] = Field(default_factory=list)
    max_prime_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_prime_seconds: float = Field(default=60.0, gt=0)
    # Most samples one /curate may join (decoding and fingerprinting them is the bot's CPU work).
    max_curate_samples: int = Field(default=50, ge=2)

    # Progress messages: how often the bot reads job state, and how often one message may be edited.
    progress_poll_seconds: float = Field(default=5.0, gt=0)
    progress_min_edit_seconds: float = Field(default=5.0, ge=0)
    # Operations: logging (bot and workers alike), Discord endpoints, worker and relay timing.
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    # Another REST base (e.g. a rate-limit proxy: http://proxy:8080/api/v10) and gateway (ws://…).
    discord_api_base: str | None = None
    discord_gateway: str | None = None
    worker_lease_seconds: float = Field(default=_worker_default("lease_seconds"), gt=0)
    worker_requeue_seconds: float = Field(default=_worker_default("requeue_seconds"), gt=0)
    worker_checkpoint_seconds: float = Field(default=_worker_default("checkpoint_seconds"), ge=0)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("allowed_channels", mode="before")
    @classmethod
    def _parse_channels(cls, value: object) -> object:
        return _split_ints(value)

    @field_validator("max_prime_bytes", mode="before")
    @classmethod
    def _parse_byte_size(cls, value: object) -> object:
        return parse_byte_size(value)

    @field_validator("model_mirrors", mode="before")
    @classmethod
    def _parse_mirrors(cls, value: object) -> object:
        if isinstance(value, str):
            return [part if part.endswith("/") else part + "/" for part in value.replace(",", " ").split()]
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        log_level_number(value)
        return value.strip().upper()

    @field_validator("discord_api_base", "discord_gateway")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = value.strip().rstrip("/")
        if not re.match(r"(https?|wss?)://[^/]+", url):
            raise ValueError(f"{url!r} is not a URL; use e.g. http://proxy:8080/api/v10 or ws://proxy:7878")
        return url

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: str) -> str:
        text = value.strip().lower()
        if text in {"auto", "cpu", "none"}:
            return text
        try:
            [int(part) for part in text.replace(",", " ").split()]
        except ValueError:
            raise ValueError("use 'auto', 'cpu', 'none' or GPU indices such as '0,1'") from None
        return text

    @field_validator("resident_priors", mode="before")
    @classmethod
    def _parse_resident_priors(cls, value: object) -> object:
        return parse_resident_priors(value) if isinstance(value, str) else value

    @field_validator("decode_path", mode="before")
    @classmethod
    def _parse_decode_path(cls, value: object) -> object:
        return parse_decode_path(value) if isinstance(value, str) else value

    @field_validator("decode_kernels", mode="before")
    @classmethod
    def _parse_decode_kernels(cls, value: object) -> object:
        return parse_decode_kernels(value) if isinstance(value, str) else value

    @field_validator("decode_compile", "overlap_levels", mode="before")
    @classmethod
    def _parse_switch(cls, value: object, info: ValidationInfo) -> object:
        return parse_switch(info.field_name or "", value) if isinstance(value, str) else value

    @field_validator("max_batch_size")
    @classmethod
    def _check_batch_sizes(cls, value: str) -> str:
        return format_batch_sizes(parse_batch_sizes(value))

    @property
    def database_url_for_display(self) -> str:
        return hide_password(self.database_url)

    def worker_config(self) -> WorkerConfig:
        """The worker timings an operator sets (the rest keep WorkerConfig's defaults)."""
        return WorkerConfig(
            lease_seconds=self.worker_lease_seconds,
            requeue_seconds=self.worker_requeue_seconds,
            checkpoint_seconds=self.worker_checkpoint_seconds,
            runner_options=(
                ("model_dir", str(self.model_dir)),
                ("max_batch_size", self.max_batch_size),
                ("resident_priors", self.resident_priors),
                ("decode_path", self.decode_path),
                ("decode_compile", self.decode_compile),
                ("decode_kernels", self.decode_kernels),
                ("overlap_levels", self.overlap_levels),
            ),
        )

    @property
    def local_workers(self) -> bool:
        return self.gpus != "none"

    def gpu_indices(self) -> list[int] | None:
        """Explicit GPU indices, [] for CPU only, None for 'every visible GPU'."""
        if self.gpus == "auto":
            return None
        if self.gpus in {"cpu", "none"}:
            return []
        return [int(part) for part in self.gpus.replace(",", " ").split()]

    def require_token(self) -> str:
        if self.discord_token is None or not self.discord_token.get_secret_value().strip():
            raise SettingsError(
                "No Discord token: set DISCORD_TOKEN (in the environment or a .env file) to your bot's token "
                "from https://discord.com/developers/applications."
            )
        return self.discord_token.get_secret_value().strip()


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one clear sentence."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        env = f"JUKEBOT_{field.upper()}"
        if field in {"database_url", "JUKEBOT_DATABASE_URL", "DATABASE_URL"}:
            env = "DATABASE_URL"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"Bad value for {env}: {message}.") from None
