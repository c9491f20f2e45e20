"""The one typed settings object, read from the environment and `.env`.

Every variable is `JUKEBOT_<FIELD>`; the two everybody knows also work bare
(`DISCORD_TOKEN`, `DATABASE_URL`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

import platformdirs
from dotenv.parser import Binding, parse_stream
from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
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
from sampler.jobspec import MAX_PRIME_SECONDS, MIN_LENGTH_SECONDS, MIN_PRIME_SECONDS
from sampler.jukebox.registry import DEFAULT_MIRRORS, MAX_SONG_SECONDS
from sampler.model_files import default_model_dir
from sampler.residency import DEFAULT_RESIDENT_PRIORS, ResidentPriors, parse_resident_priors
from sampler.units import format_bytes, format_bytes_pair
from sampler.worker.logs import LOG_LEVELS, LogFormat
from sampler.worker.runtime import WorkerConfig
from storage.models import MAX_INTEGER

APP_NAME = "jukebot"
ENV_PREFIX = "JUKEBOT_"
DAY_SECONDS = 24 * 3600
# The shortest lease and requeue period: a lease shorter than a few heartbeats' round trips is lost by
# a healthy worker (0.001 s failed a live worker's job as dead at every try); a requeue period near 0
# makes an idle worker write to the database in a loop.
MIN_LEASE_SECONDS = 5.0
MIN_REQUEUE_SECONDS = 0.05
# The shortest stall limit: a sampler may be quiet for a minute on a loaded machine without hanging.
MIN_STALL_SECONDS = 60.0
# A `user:` curation gathers from the user's first this many samples in the server, so one /curate can
# join no more. Defined here for bot/curating.py, which imports this module (through bot.requests), so
# this one cannot import it from there.
MAX_USER_SAMPLES = 1000
# The longest time between two reads of job progress: results and progress reach Discord only at a
# read, so a longer one leaves every message looking stalled.
MAX_PROGRESS_POLL_SECONDS = 3600.0

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


# Stands for a hidden query-string password while a URL is rendered (which would %-encode "***").
_HIDDEN = "JUKEBOTHIDDENPASSWORD"


def hide_password(url: str) -> str:
    """`url` with its password replaced by ***, for logs and messages (also when it does not parse).

    Hides the password after the user name, `password=` in the query string, and all of a password
    that holds an unencoded `@` (which leaves the rest of it in the host).
    """
    try:
        parsed = make_url(url)
        if parsed.database and "@" in parsed.database:
            # `user:p@ss/word@host/db`: the password's tail reads as the database; hide up to the last @.
            raise ValueError(url)
        if parsed.host and "@" in parsed.host:
            parsed = parsed.set(password=_HIDDEN, host=parsed.host.rpartition("@")[2])
        if "password" in parsed.query:
            parsed = parsed.update_query_dict({"password": _HIDDEN})
        shown = parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        shown = re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)
        shown = re.sub(r"([?&]password=)[^&]*", r"\1***", shown)
    return shown.replace(_HIDDEN, "***")


def _worker_default(name: str) -> float:
    """A worker timing's default, defined once in WorkerConfig."""
    default = next(f.default for f in dataclasses.fields(WorkerConfig) if f.name == name)
    assert isinstance(default, float)
    return default


# libpq's sslmode values, which asyncpg takes as `ssl` (a URL's `sslmode` is translated to it).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
# Query parameters a Postgres URL may carry: what asyncpg's connect() takes, plus libpq's sslmode.
POSTGRES_QUERY_PARAMETERS = (
    "host",
    "port",
    "user",
    "password",
    "ssl",
    "sslmode",
    "target_session_attrs",
    "prepared_statement_cache_size",
)


# Query parameters a SQLite URL may carry: `timeout`, the seconds a writer waits for another's lock
# before failing (storage.engine makes it SQLite's busy timeout; 60 by default).
SQLITE_QUERY_PARAMETERS = ("timeout",)
# The longest SQLite `timeout` (seconds): a day, like the worker timings.
MAX_SQLITE_TIMEOUT_SECONDS = DAY_SECONDS
# Why each SQLite URI parameter (and the driver's check_same_thread) cannot work for jukebot, which
# opens its database by path, reads and writes it, and shares it with its workers' processes. With
# `uri=true` a path not spelled `file:…` is a plain file name (`?mode=ro` would be part of it); without
# it SQLite ignores them all; so they are refused rather than passed on.
_REFUSED_SQLITE_PARAMETERS = {
    "uri": "jukebot opens the SQLite file by its path, so uri is not needed: remove it",
    "mode": (
        "jukebot writes to its database (so a read-only one, mode=ro, cannot work) and creates the "
        "file when it is missing: remove it"
    ),
    "cache": (
        "jukebot's processes each keep their own cache and wait for each other's writes; a shared "
        "cache would make a writer fail at once instead of waiting: remove it"
    ),
    "immutable": "jukebot writes to its database, so it cannot be immutable: remove it",
    "nolock": "the bot and its workers write the database together and need SQLite's locks: remove it",
    "vfs": "jukebot uses SQLite's default VFS: remove it",
    "check_same_thread": (
        "jukebot's SQLite driver uses each connection on one thread of its own, so "
        "check_same_thread changes nothing: remove it"
    ),
}


def normalise_database_url(url: str) -> str:
    """Return `url` with an async driver, or raise ValueError saying what is wrong.

    Spaces and line breaks around it are dropped (as around a `.env` value): no file or database name
    ends in one that an operator meant, and they would be invisible in every message."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes the environment held that are not UTF-8 (surrogate escapes)
        byte = ord(url[exc.start]) - 0xDC00 if 0xDC80 <= ord(url[exc.start]) <= 0xDCFF else None
        which = f" (byte {byte:#04x} at character {exc.start + 1})" if byte is not None else ""
        raise ValueError(
            f"it is not UTF-8 text{which}; set it again as UTF-8, writing any other character of a "
            "file name or password %-encoded (e.g. %FF)"
        ) from None
    url = url.strip()
    if not url:
        raise ValueError(
            "it is empty; set it to a database URL, e.g. postgresql://user@host/db, "
            "or remove it for the default SQLite file"
        )
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
    if _holds_nul(parsed):
        where = "SQLite file name" if driver.startswith("sqlite") else "URL"
        raise ValueError(
            f"the {where} holds a NUL byte (%00), which no file or database name may hold: remove it"
        )
    if driver.startswith("sqlite"):
        if not parsed.database:
            raise ValueError("a SQLite URL needs a file path, e.g. sqlite:///path/to/jukebot.sqlite3")
        _check_sqlite_query(url, parsed)
        if parsed.database == ":memory:" or parsed.database.startswith("file::memory:"):
            raise ValueError(
                "an in-memory SQLite database (:memory:) lives only as long as one process, and jukebot "
                "shares its database with its worker processes, so it needs a file: give its path, "
                "e.g. sqlite:////path/to/jukebot.sqlite3"
            )
        if parsed.database.startswith("file:"):  # a URI, which only uri=true (refused) would read as one
            raise ValueError(
                "jukebot opens SQLite files by path, not by file: URI; write the path itself, "
                "e.g. sqlite:////path/to/jukebot.sqlite3"
            )
        if parsed.database.startswith("~"):
            parsed = parsed.set(database=str(Path(parsed.database).expanduser()))
    else:
        parsed = _check_postgres_url(parsed)
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _holds_nul(parsed: URL) -> bool:
    """Whether a part of `parsed` holds a NUL byte (a `%00`, decoded), which the OS and drivers refuse."""
    parts = [parsed.username, parsed.password, parsed.host, parsed.database, *parsed.query]
    parts += [value for name in parsed.query for value in _query_values(parsed, name)]
    return any(part is not None and "\0" in part for part in parts)


def _check_sqlite_query(url: str, parsed: URL) -> None:
    """ValueError unless the SQLite URL's query string is at most one number `timeout`."""
    # SQLAlchemy drops a query part without `=`: read the raw one.
    raw_query = url.partition("?")[2]
    names = {name or raw_query for name, _ in parse_qsl(raw_query, keep_blank_values=True)}
    refused = sorted(names & set(_REFUSED_SQLITE_PARAMETERS))
    if refused:
        name = refused[0]
        raise ValueError(
            f"the SQLite URL's query string has {name}, which jukebot cannot use: "
            f"{_REFUSED_SQLITE_PARAMETERS[name]} (a SQLite URL takes only timeout=SECONDS)"
        )
    unknown = sorted(names - set(SQLITE_QUERY_PARAMETERS))
    if unknown:  # `?` in a file name starts a query string: `/data/a?b.sqlite3` would open `/data/a`
        raise ValueError(
            f"the SQLite URL's query string has {', '.join(unknown)}, which SQLite does not take (it "
            f"accepts {', '.join(SQLITE_QUERY_PARAMETERS)}); write a '?' in the file name as %3F"
        )
    timeouts = _query_values(parsed, "timeout")
    if len(timeouts) > 1:
        raise ValueError(f"timeout appears {len(timeouts)} times in the SQLite URL; give it once")
    for timeout in timeouts:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", timeout) or float(timeout) > MAX_SQLITE_TIMEOUT_SECONDS:
            raise ValueError(
                f"timeout={timeout} in the SQLite URL is not a number of seconds from 0 to "
                f"{MAX_SQLITE_TIMEOUT_SECONDS}, e.g. timeout=30"
            )


def _check_postgres_url(parsed: URL) -> URL:
    """`parsed` with libpq's sslmode as asyncpg's ssl, or ValueError for what asyncpg cannot use."""
    if (parsed.host and "@" in parsed.host) or (parsed.database and "@" in parsed.database):
        raise ValueError(
            "the password holds an unencoded '@': write it as %40 (e.g. postgresql://user:p%40ss@host/db)"
        )
    if not parsed.host and not parsed.query.get("host"):
        raise ValueError("a Postgres URL needs a host, e.g. postgresql://user@127.0.0.1:5432/jukebot")
    if not parsed.database:
        raise ValueError(
            "a Postgres URL needs a database name after the host, e.g. postgresql://user@127.0.0.1:5432/jukebot"
        )
    unknown = sorted(set(parsed.query) - set(POSTGRES_QUERY_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"in the Postgres URL; it accepts {', '.join(POSTGRES_QUERY_PARAMETERS)}"
        )
    query_ports = [part for value in _query_values(parsed, "port") for part in value.split(",")]
    for port in [parsed.port, *query_ports]:
        if port is not None and (not re.fullmatch(r"[0-9]+", str(port)) or not 1 <= int(port) <= 65535):
            raise ValueError(f"port {port} is not a port number; use one from 1 to 65535, e.g. 5432")
    if "sslmode" in parsed.query:
        if "ssl" in parsed.query:
            raise ValueError("give ssl or sslmode in the Postgres URL, not both")
        parsed = parsed.update_query_dict({"ssl": parsed.query["sslmode"]}).difference_update_query(
            ["sslmode"]
        )
    _check_choice(parsed, "ssl", SSL_MODES)
    _check_choice(parsed, "target_session_attrs", _TARGET_SESSION_ATTRS)
    for size in _query_values(parsed, "prepared_statement_cache_size"):
        if not re.fullmatch(r"[0-9]+", size):
            raise ValueError(
                f"prepared_statement_cache_size={size} in the Postgres URL is not a whole number"
            )
    return parsed


def _query_values(parsed: URL, name: str) -> list[str]:
    value = parsed.query.get(name)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _check_choice(parsed: URL, name: str, choices: tuple[str, ...]) -> None:
    values = _query_values(parsed, name)
    if len(values) > 1:
        raise ValueError(f"{name} appears {len(values)} times in the Postgres URL; give it once")
    if values and values[0] not in choices:
        shown = "sslmode/ssl" if name == "ssl" else name
        raise ValueError(f"{shown}={values[0]} in the Postgres URL is not one of {', '.join(choices)}")


def _split_ints(value: object) -> object:
    """Accept `1,2,3`, `1 2 3`, a JSON-ish list or an empty string for id lists (ids are positive)."""
    if isinstance(value, str):
        parts = value.strip().strip("[]").replace(",", " ").split()
        if not all(re.fullmatch(r"[0-9]+", part) and int(part) > 0 for part in parts):
            raise ValueError(
                "use channel ids separated by commas, e.g. 123456789012345678,234567890123456789 "
                "(each a positive whole number)"
            )
        return [int(part) for part in parts]
    return value


# Credentials in a mirror URL (`http://user:password@host/`): a user name or password runs from `://` to
# an `@` before the path (it may hold `,`, which separates mirrors, so this is looked for before splitting).
_MIRROR_CREDENTIALS = re.compile(r"(://)[^/?#\s]*@")


def _shown_mirror(part: str) -> str:
    """`part` for a message, anything from `://` to its last `@` (which may be a password, or part of
    one holding `/` or `#`) shown as ***."""
    return re.sub(r"(://).*@", r"\1***@", part)


def _refuse_mirror_credentials(value: str) -> None:
    """ValueError, naming the mirror with its credentials hidden, when one holds a user name or
    password: the downloader sends none (urllib would take `user:password@host` for a host name and
    fail to resolve it), and the mirrors are shown in `models list`, errors and the `-v` dump."""
    if _MIRROR_CREDENTIALS.search(value) is None:
        return
    masked = _MIRROR_CREDENTIALS.sub(r"\1***@", value)
    shown = next(part for part in masked.replace(",", " ").split() if "://***@" in part)
    raise ValueError(
        f"{shown!r} holds credentials (user:password@), which mirrors do not support: a mirror is a "
        "plain http(s) folder of the model files, read without logging in; give its URL without "
        "user:password"
    )


def _parse_mirror(part: str) -> str:
    """One mirror root, ending in `/`, or ValueError when it is not an http(s) URL with a host."""
    try:
        split = urlsplit(part)
        host = split.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        host = None
        split = None
    try:
        port_ok = split is not None and (split.port is None or split.port > 0)
    except ValueError:  # not a number, or past 65535
        port_ok = False
    if (
        split is None
        or split.scheme not in {"http", "https"}
        or not host
        or not re.fullmatch(r"[a-z0-9.-]+|[0-9a-f:.]+", host)  # a name, an IPv4 or IPv6 address
        or not port_ok
        or split.query
        or split.fragment
    ):
        raise ValueError(
            f"{_shown_mirror(part)!r} is not a mirror URL; use http(s) roots separated by commas, "
            f"e.g. {DEFAULT_MIRRORS[0]}"
        )
    return part if part.endswith("/") else part + "/"


_BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_byte_size(value: object) -> object:
    """Accept a number of bytes or one with a unit: `26214400`, `25MiB`, `25 MB` (MB = 10^6, MiB = 2^20)."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS:
        raise ValueError(
            "use a number of bytes, or one with a unit, e.g. 26214400 or 25MiB (also kB, MB, KiB, GiB)"
        )
    return int(Decimal(match.group(1)) * _BYTE_UNITS[unit])  # exact, however many digits


# Each Discord endpoint's schemes, and an example: REST goes over HTTP, the gateway over WebSocket
# (the other scheme fails only at login).
_ENDPOINT_SCHEMES = {
    "discord_api_base": (("http", "https"), "http://proxy:8080/api/v10"),
    "discord_gateway": (("ws", "wss"), "ws://proxy:7878"),
}


def database_url_variable() -> str:
    """The variable the database URL was read from, for a message that says to fix it:
    JUKEBOT_DATABASE_URL, in the environment or `.env`, wins over DATABASE_URL (see _OwnDatabaseUrl)."""
    return "JUKEBOT_DATABASE_URL" if "JUKEBOT_DATABASE_URL" in _variable_names() else "DATABASE_URL"


def discord_token_variable(token: str) -> str:
    """The variable `token` (as read, stripped) came from, for a message that says to fix it: the
    environment is read before `.env`, and in each JUKEBOT_DISCORD_TOKEN before DISCORD_TOKEN."""
    names = (f"{ENV_PREFIX}DISCORD_TOKEN", "DISCORD_TOKEN")
    env_file = [(line.key.upper(), line.value or "") for line in _env_lines(_env_file()) if line.key]
    for source in ([(key.upper(), value) for key, value in os.environ.items()], env_file):
        for name in names:
            if any(key == name and value.strip() == token for key, value in source):
                return name
    return "DISCORD_TOKEN"


def token_problem(token: str) -> str | None:
    """What is wrong with a Discord token that Discord would refuse anyway, seen without asking it (a
    login would say only "improper token"); None when it looks like one."""
    if any(character.isspace() for character in token):
        return (
            f"{discord_token_variable(token)} holds a space (is 'Bot ' in front of it?): set it to the token "
            "alone, as the Developer Portal's Bot page copies it"
        )
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        # utf-8-sig: UTF-8, with or without the byte-order mark some Windows editors write.
        env_file_encoding="utf-8-sig",
        extra="ignore",
        allow_inf_nan=False,  # no setting is infinite or not a number
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
    max_length_seconds: float = Field(default=60.0, ge=MIN_LENGTH_SECONDS, le=MAX_SONG_SECONDS)
    max_samples_per_job: int = Field(default=3, ge=1, le=16)
    max_running_jobs_per_user: int = Field(default=1, ge=1, le=MAX_INTEGER)  # stored with each job
    max_queued_jobs_per_user: int = Field(default=3, ge=1, le=MAX_INTEGER)
    # A user's unfinished jobs in all servers together (0: no such limit, only each
    # server's): a member of many servers could otherwise queue in each.
    max_jobs_per_user_all_servers: int = Field(default=0, ge=0, le=MAX_INTEGER)
    allowed_channels: Annotated[list[int], NoDecode] = Field(default_factory=list)
    max_prime_bytes: int = Field(default=25 * 1024 * 1024, gt=0, le=MAX_INTEGER)
    max_prime_seconds: float = Field(default=60.0, ge=MIN_PRIME_SECONDS, le=MAX_PRIME_SECONDS)
    # Most samples one /curate may join (decoding and fingerprinting them is the bot's CPU work).
    max_curate_samples: int = Field(default=50, ge=2, le=MAX_USER_SAMPLES)

    # Progress messages: how often the bot reads job state, and how often one message may be edited.
    progress_poll_seconds: float = Field(default=5.0, gt=0, le=MAX_PROGRESS_POLL_SECONDS)
    progress_min_edit_seconds: float = Field(default=5.0, ge=0)
    # Operations: logging (bot and workers alike), Discord endpoints, worker and relay timing.
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    # Another REST base (e.g. a rate-limit proxy: http://proxy:8080/api/v10) and gateway (ws://…).
    discord_api_base: str | None = None
    discord_gateway: str | None = None
    # At most a day: a lease is added to the database's clock, and past year 9999 no date holds it.
    worker_lease_seconds: float = Field(
        default=_worker_default("lease_seconds"), ge=MIN_LEASE_SECONDS, le=DAY_SECONDS
    )
    worker_requeue_seconds: float = Field(
        default=_worker_default("requeue_seconds"), ge=MIN_REQUEUE_SECONDS, le=DAY_SECONDS
    )
    worker_checkpoint_seconds: float = Field(
        default=_worker_default("checkpoint_seconds"), ge=0, le=DAY_SECONDS
    )
    worker_stall_seconds: float = Field(
        default=_worker_default("stall_seconds"), ge=MIN_STALL_SECONDS, le=DAY_SECONDS
    )

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
        size = parse_byte_size(value)
        if isinstance(size, int) and size > MAX_INTEGER:  # (`le` would answer in bytes alone)
            # (in exact bytes where the units read the same: 2 GiB is not "2.0 GiB" against "2.0 GiB")
            given = "more digits than any size"
            if size < 1024**9:
                given = format_bytes_pair(size, MAX_INTEGER)[0]
            raise ValueError(f"at most {MAX_INTEGER:,} bytes ({format_bytes(MAX_INTEGER)}), not {given}")
        return size

    @field_validator("model_mirrors", mode="before")
    @classmethod
    def _parse_mirrors(cls, value: object) -> object:
        if isinstance(value, str):
            _refuse_mirror_credentials(value)
            mirrors = [_parse_mirror(part) for part in value.replace(",", " ").split()]
            if not mirrors:  # "," alone: no mirror to download from
                raise ValueError(f"name at least one mirror root, e.g. {DEFAULT_MIRRORS[0]}")
            return mirrors
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _fold_log_format(cls, value: object) -> object:
        """`JSON` or ` json\r` (a line of a .env saved with Windows line ends) as `json`, like the other
        choices."""
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("model_dir", mode="before")
    @classmethod
    def _strip_model_dir(cls, value: object) -> object:
        """Whitespace around the path (a `\r` of a Windows line end) is no part of a folder's name."""
        return value.strip() if isinstance(value, str) else value

    @field_validator("model_dir")
    @classmethod
    def _expand_model_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("*")
    @classmethod
    def _path_without_nul(cls, value: object) -> object:
        """Refuse a path holding a NUL byte (from .env: the environment cannot hold one), which every
        file operation on it would fail on with a traceback."""
        if isinstance(value, Path) and "\0" in str(value):
            raise ValueError("the path holds a NUL byte, which no file or folder name may hold: remove it")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("discord_api_base", "discord_gateway")
    @classmethod
    def _check_endpoint(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        url = value.strip().rstrip("/")
        schemes, example = _ENDPOINT_SCHEMES[info.field_name or ""]
        shown = _MIRROR_CREDENTIALS.sub(r"\1***@", url)  # (errors and the -v dump show no password)
        if shown != url:
            # discord.py sends its own Authorization header, which aiohttp will not combine with
            # credentials in the URL: `run` ended in a traceback.
            raise ValueError(
                f"{shown!r} holds credentials (user:password@), which the Discord client cannot send "
                "(it authorises each request with the bot's token); give a proxy that needs no login"
            )
        split = urlsplit(url)
        if split.scheme not in schemes or not split.netloc or re.search(r"\s", url):
            raise ValueError(f"{url!r} is not a {' or '.join(schemes)} URL; use e.g. {example}")
        return url

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: str) -> str:
        text = value.strip().lower()
        if text in {"auto", "all", "cpu", "none"}:
            return text
        try:
            indices = [int(part) for part in text.replace(",", " ").split()]
        except ValueError:
            indices = []
        if not indices or min(indices) < 0:  # "," alone meant one CPU worker, silently
            raise ValueError("use 'auto', 'all', 'cpu', 'none' or GPU indices such as '0,1'")
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

    # Defined last, so it runs before every other validator: an empty value (`JUKEBOT_GPUS=` in
    # .env) means the default. DATABASE_URL is the exception: an empty one is refused, as a worker
    # whose shared database went missing from its settings must not start on a SQLite file of its own.
    @field_validator("*", mode="before")
    @classmethod
    def _empty_means_default(cls, value: object, info: ValidationInfo) -> object:
        name = info.field_name
        if name is None or name == "database_url" or not isinstance(value, str) or value.strip():
            return value
        return cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        own_url = _OwnDatabaseUrl(settings_cls, env_settings, dotenv_settings)
        return init_settings, own_url, env_settings, dotenv_settings, file_secret_settings

    @property
    def database_url_for_display(self) -> str:
        return hide_password(self.database_url)

    @property
    def sqlite_path(self) -> Path | None:
        """The file of a SQLite database (None for Postgres and memory databases; `file:` URIs and
        `?uri=` are refused when the URL is read)."""
        parsed = make_url(self.database_url)
        database = parsed.database
        if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    def worker_config(self) -> WorkerConfig:
        """The worker timings an operator sets (the rest keep WorkerConfig's defaults)."""
        return WorkerConfig(
            lease_seconds=self.worker_lease_seconds,
            requeue_seconds=self.worker_requeue_seconds,
            checkpoint_seconds=self.worker_checkpoint_seconds,
            stall_seconds=self.worker_stall_seconds,
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

    @property
    def gpus_required(self) -> bool:
        """`all`: every visible GPU, and none visible is an error (no CPU worker on a GPU host whose
        CUDA does not work: it would claim jobs for hours each)."""
        return self.gpus == "all"

    def gpu_indices(self) -> list[int] | None:
        """Explicit GPU indices, [] for CPU only, None for 'every visible GPU'."""
        if self.gpus in {"auto", "all"}:
            return None
        if self.gpus in {"cpu", "none"}:
            return []
        return [int(part) for part in self.gpus.replace(",", " ").split()]

    def require_token(self) -> str:
        if self.discord_token is None or not self.discord_token.get_secret_value().strip():
            if _values_set("JUKEBOT_DISCORD_TOKEN") and any(_values_set("DISCORD_TOKEN")[:1]):
                raise SettingsError(  # (an empty JUKEBOT_ name wins, as for the database URL)
                    "No Discord token: JUKEBOT_DISCORD_TOKEN is set but empty, and it is read before "
                    "DISCORD_TOKEN: remove JUKEBOT_DISCORD_TOKEN, or set the token in it."
                )
            hiding = _empty_in_environment_over_env_file(("JUKEBOT_DISCORD_TOKEN", "DISCORD_TOKEN"))
            if hiding is not None:  # (a stray `export DISCORD_TOKEN=`, or a service's Environment=)
                raise SettingsError(
                    f"No Discord token: {hiding} is set but empty in the environment, which is read "
                    f"before the .env file that holds the token: unset {hiding}, or set the token in it."
                )
            raise SettingsError(
                "No Discord token: set DISCORD_TOKEN (in the environment or a .env file) to your bot's token "
                "from https://discord.com/developers/applications."
            )
        token = self.discord_token.get_secret_value().strip()
        problem = token_problem(token)
        if problem is not None:
            raise SettingsError(f"{problem}.")
        return token


class _OwnDatabaseUrl(PydanticBaseSettingsSource):
    """JUKEBOT_DATABASE_URL, from the environment or else from `.env`, ahead of DATABASE_URL from either:
    jukebot's own name wins wherever it is set over the generic one, which another program on the
    machine may export. (Without this the environment's DATABASE_URL would beat `.env`'s
    JUKEBOT_DATABASE_URL, the environment being read first for either name.)"""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        *sources: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._sources = sources

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the one variable

    def __call__(self) -> dict[str, Any]:
        for source in self._sources:  # the environment, then .env
            variables = getattr(source, "env_vars", None) or {}
            for name, value in variables.items():
                if name.upper() == "JUKEBOT_DATABASE_URL" and value is not None:
                    return {"JUKEBOT_DATABASE_URL": value}
        return {}


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one clear sentence."""
    env_file = _env_file()
    # pydantic-settings reads `.env` only when it is a file: a folder or a broken link there would be
    # passed over in silence, and a worker whose DATABASE_URL is in it would start on a SQLite file.
    if env_file.is_symlink() and not env_file.exists():
        raise SettingsError(
            f"Cannot read {env_file}: it links to {os.readlink(env_file)}, which does not exist."
        )
    if env_file.exists() and not env_file.is_file():
        raise SettingsError(
            f"Cannot read {env_file}: it is not a file (a folder?): remove it, or make it a file."
        )
    line = _unparsable_line(env_file)
    if line is not None:  # (python-dotenv logs it and reads on without it, and may take lines after it)
        raise SettingsError(
            f"Cannot read {env_file}: line {line} is not NAME=value (an unclosed quote?), and it would be "
            "ignored (a quote left open may take lines after it too): fix or remove it."
        )
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"Cannot read {_env_file()}: it is not UTF-8 text (byte {exc.start} is "
            f"{exc.object[exc.start]:#04x}; e.g. UTF-16 from Windows Notepad): save it as UTF-8."
        ) from None
    except OSError as exc:
        raise SettingsError(f"Cannot read {_env_file()} ({exc.strerror or exc}): fix or remove it.") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        env = f"JUKEBOT_{field.upper()}"
        if field in {"database_url", "JUKEBOT_DATABASE_URL", "DATABASE_URL"}:
            # The one read: JUKEBOT_DATABASE_URL, in the environment or .env, wins over DATABASE_URL
            # (also when empty; see _OwnDatabaseUrl).
            env = database_url_variable()
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"Bad value for {env}: {message}.") from None


def misspelled_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(variable, setting it is probably meant to be) for each variable in the environment or `.env`
    that is no setting but one or two typed letters away from one: `JUKEBOT_GPU`, or `DATABSE_URL` for
    the settings also read without the prefix. Such a variable is ignored, which an operator would not
    notice (a mistyped DATABASE_URL gave a private SQLite queue). Other `JUKEBOT_` variables (the
    install scripts' own) are not settings and are not named."""
    names = _variable_names(environ)
    known = {
        name
        for field_name, field in Settings.model_fields.items()
        for name in _env_names(field_name, field.validation_alias)
    }
    # An unprefixed name is only a likely typo while the setting it is near is not set at all: beside
    # a DATABASE_URL, a DATABASE_URI or DATABASE_SSL is another program's.
    unset = {k for k in known if k not in names and f"{ENV_PREFIX}{k}" not in names}
    found = []
    for name in sorted(names - known):
        prefixed = name.startswith(ENV_PREFIX)
        close = [
            k
            for k in sorted(known if prefixed else unset)
            if k.startswith(ENV_PREFIX) == prefixed and _typo_distance(name, k) <= 2
        ]
        if close:
            found.append((name, close[0]))
    return found


def _env_names(field_name: str, alias: object) -> list[str]:
    if isinstance(alias, AliasChoices):
        return [str(choice).upper() for choice in alias.choices]
    return [f"{ENV_PREFIX}{field_name.upper()}"]


def _typo_distance(a: str, b: str) -> int:
    """Edits (a letter added, dropped or changed, two neighbours swapped) that make `a` into `b`."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, letter in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (letter != other))
            if i > 1 and j > 1 and letter == b[j - 2] and a[i - 2] == other:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def _variable_names(environ: Mapping[str, str] | None = None) -> set[str]:
    """The names set in the environment (or `environ`) and in `.env`, upper-cased: settings are read
    in any case. A `.env` that cannot be read adds none (`load_settings` says why)."""
    names = {name.upper() for name in (os.environ if environ is None else environ)}
    return names | {line.key.upper() for line in _env_lines(_env_file()) if line.key}


def _values_set(name: str) -> list[str]:
    """The values `name` is given, the one read first (stripped): the environment's, then `.env`'s last
    (settings are read in any case)."""
    lines = _env_lines(_env_file())
    values = [value for key, value in os.environ.items() if key.upper() == name]
    values += reversed([line.value or "" for line in lines if line.key and line.key.upper() == name])
    return [value.strip() for value in values]


def _empty_in_environment_over_env_file(names: tuple[str, ...]) -> str | None:
    """Of `names` (one setting's), the one the environment sets to nothing while `.env` gives the
    setting a value: the empty one is read first and hides it. None when there is no such one."""
    last = {
        line.key.upper(): line.value or "" for line in _env_lines(_env_file()) if line.key
    }  # (the last wins)
    in_file = any(last.get(name, "").strip() for name in names)
    empty = [key for key, value in os.environ.items() if key.upper() in names and not value.strip()]
    return empty[0] if in_file and empty else None


def _env_lines(env_file: Path) -> list[Binding]:
    """`.env`'s lines as python-dotenv reads them (none when it cannot be read: `load_settings` says
    why)."""
    if not env_file.is_file():
        return []
    try:
        with env_file.open(encoding=Settings.model_config.get("env_file_encoding")) as stream:
            return list(parse_stream(stream))
    except (OSError, UnicodeDecodeError):
        return []


def _unparsable_line(env_file: Path) -> int | None:
    return next((line.original.line for line in _env_lines(env_file) if line.error), None)


def _env_file() -> Path:
    env_file = Settings.model_config.get("env_file")
    assert isinstance(env_file, str)
    return Path(env_file).absolute()
