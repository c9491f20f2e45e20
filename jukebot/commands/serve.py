"""`jukebot run` (the bot plus local workers) and `jukebot worker` (workers only)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from typing import Any

import click

from jukebot import __version__
from jukebot.commands import (
    FiniteFloatRange,
    database_problem,
    model_dir_refusal,
    require_torch,
    settings_or_exit,
    upgrade_or_exit,
)
from jukebot.settings import (
    DAY_SECONDS,
    MIN_LEASE_SECONDS,
    MIN_REQUEUE_SECONDS,
    MIN_STALL_SECONDS,
    Settings,
    SettingsError,
    discord_token_variable,
)
from sampler.worker.private import keep_memory_private

log = logging.getLogger(__name__)

RUNNER = "sampler.cascade_runner:make_runner"
TOKEN_VARIABLES = ("DISCORD_TOKEN", "JUKEBOT_DISCORD_TOKEN")
POOL_SHUTDOWN_SECONDS = 90.0
DISCORD_API_BASE = "https://discord.com/api/v10"  # discord.py's own, named for messages


def _devices(settings: Settings) -> list:  # type: ignore[type-arg]
    from sampler.worker.contract import DeviceError
    from sampler.worker.pool import devices_from_setting

    try:
        return list(devices_from_setting(settings.gpu_indices(), require_gpu=settings.gpus_required))
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None


def _refuse_unusable_model_dir(settings: Settings) -> None:
    """Stop before local workers start on a model directory they cannot read: they would run,
    serving no model, with only a log line to say why."""
    problem = model_dir_refusal(settings.model_dir)
    if problem is not None:
        raise click.ClickException(problem)


def migrate_and_say(settings: Settings) -> None:
    """Migrate the database as `jukebot db upgrade` does, and log a change of an existing schema: every
    machine sharing the database must run this version from now on (an older one refuses to start)."""
    from storage.migrate import head_revision

    before, head = upgrade_or_exit(settings), head_revision()
    if before is not None and before != head:
        log.warning(
            "the database at %s was at schema %s and is now at %s: every machine sharing it must run "
            "this jukebot version",
            settings.database_url_for_display,
            before,
            head,
        )


def _drop_token_from_environment() -> None:
    """Workers are spawned with this process's environment, and never need the Discord token (the
    bot holds it in its settings): taken out of it, no worker can leak it."""
    for name in [key for key in os.environ if key.upper() in TOKEN_VARIABLES]:
        del os.environ[name]


def _log_what_is_in_use(settings: Settings, what: str, devices: list[Any]) -> None:
    """The first line an operator reads: which database, model directory and devices this run uses."""
    workers = ", ".join(str(d) for d in devices) if devices else "none (JUKEBOT_GPUS=none)"
    log.info(
        "jukebot %s %s: database %s, models in %s, workers on %s",
        __version__,
        what,
        settings.database_url_for_display,
        settings.model_dir,
        workers,
    )


# Discord's JSON error codes for a server the bot cannot sync commands to: retrying cannot help.
UNKNOWN_GUILD, MISSING_ACCESS = 10004, 50001


def _sync_guild_problem(error: BaseException, sync_guilds: tuple[int, ...]) -> str | None:
    """The sentence for a --sync-guild server the bot is not in (or may not add commands to)."""
    import discord

    if not isinstance(error, discord.HTTPException) or error.code not in (UNKNOWN_GUILD, MISSING_ACCESS):
        return None
    url = getattr(error.response, "url", None)
    found = re.search(r"/guilds/(\d+)/commands", str(getattr(url, "path", "")))
    if found is None or int(found[1]) not in sync_guilds:  # not the sync of a --sync-guild server
        return None
    if error.code == UNKNOWN_GUILD:
        why = f"Discord knows no server {found[1]} that the bot is in ({error.status} Unknown Guild)"
    else:
        why = (
            f"Discord gives the bot no access to server {found[1]} ({error.status} Missing Access: it is not "
            "in that server, or was invited without the applications.commands scope)"
        )
    return (
        f"{why}, so the bot cannot sync its commands there: check --sync-guild (a server's id), "
        "or invite the bot to that server."
    )


def discord_problem(
    error: BaseException, settings: Settings, sync_guilds: tuple[int, ...] = ()
) -> str | None:
    """One sentence with the fix for a failed Discord login, or None for anything else."""
    import aiohttp
    import discord

    base = settings.discord_api_base or DISCORD_API_BASE
    synced = _sync_guild_problem(error, sync_guilds)
    if synced is not None:
        return synced
    if isinstance(error, discord.LoginFailure):
        token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
        return (
            "Discord refused the token: copy the bot's token from "
            "https://discord.com/developers/applications (Bot → Reset Token) into "
            f"{discord_token_variable(token)}."
        )
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return f"Discord refused the connection: {error}."
    if isinstance(error, discord.HTTPException):
        return (
            f"Discord answered {error.status} at {base} ({error.text or 'no reason given'}): try again later."
        )
    if isinstance(error, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"Cannot reach Discord at {base} ({reason}): check the network"
            f"{' and JUKEBOT_DISCORD_API_BASE' if settings.discord_api_base else ''}."
        )
    return None


MAX_DISCORD_ID = 2**63 - 1  # ids are snowflakes: positive 64-bit signed numbers


class DiscordId(click.ParamType):
    """A Discord server id, refused as a usage error before anything starts when it cannot be one."""

    name = "server_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = click.INT.convert(value, param, ctx)
        if not 1 <= number <= MAX_DISCORD_ID:
            self.fail(
                f"{value} is not a Discord server id (1 to {MAX_DISCORD_ID}): copy the server's id in "
                "Discord (right-click the server, Copy Server ID)",
                param,
                ctx,
            )
        return int(number)


def _setting_default(field: str) -> str:
    """What a flag that falls back on a setting shows as its default: the setting, and its own default."""
    variable = f"JUKEBOT_{field.upper()}"
    return f"{variable}, else {Settings.model_fields[field].default:g}"


@click.command()
@click.option(
    "--sync-guild",
    "sync_guilds",
    multiple=True,
    type=DiscordId(),
    help="Sync the commands to this server only (they appear at once) and clear the global ones.",
)
def run(sync_guilds: tuple[int, ...]) -> None:
    """Start the Discord bot and the local workers (migrating the database first)."""
    keep_memory_private("the bot's process")
    settings = settings_or_exit()
    try:
        settings.require_token()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.local_workers:
        require_torch("local workers", bot_alone=True)
        _refuse_unusable_model_dir(settings)
    devices = _devices(settings) if settings.local_workers else []
    if devices:
        _drop_token_from_environment()
    _log_what_is_in_use(settings, "bot", devices)
    migrate_and_say(settings)
    stop = threading.Event()
    pool_thread = None
    if devices:
        from sampler.worker.pool import run_pool

        pool_thread = threading.Thread(
            target=run_pool,
            args=(settings.database_url, devices, RUNNER),
            kwargs=dict(
                config=settings.worker_config(),
                stop=stop,
                install_signal_handlers=False,
                shutdown_timeout=POOL_SHUTDOWN_SECONDS,
                log_level=logging.getLogger().level,
                log_format=settings.log_format,
            ),
            name="worker-pool",
            daemon=True,
        )
        pool_thread.start()
    try:
        asyncio.run(_run_bot(settings, sync_guilds))
    except Exception as exc:
        message = discord_problem(exc, settings, sync_guilds) or database_problem(exc, settings)
        if message is None:
            raise
        raise click.ClickException(message) from None
    finally:
        stop.set()
        if pool_thread is not None:
            pool_thread.join(POOL_SHUTDOWN_SECONDS + 10)


async def _run_bot(settings: Settings, sync_guilds: tuple[int, ...]) -> None:
    from bot.bot import run_bot
    from storage.engine import create_engine
    from storage.store import JobStore

    engine = create_engine(settings.database_url)
    try:
        await run_bot(settings, JobStore(engine), sync_guild_ids=sync_guilds)
    finally:
        await engine.dispose()


@click.command()
@click.option(
    "--lease-seconds",
    type=FiniteFloatRange(min=MIN_LEASE_SECONDS, max=DAY_SECONDS),
    default=None,
    show_default=_setting_default("worker_lease_seconds"),
    help=(
        "A job whose worker is silent this long, and a lease more after a recovery pass saw it so, "
        "goes back to the queue."
    ),
)
@click.option(
    "--requeue-seconds",
    type=FiniteFloatRange(min=MIN_REQUEUE_SECONDS, max=DAY_SECONDS),
    default=None,
    show_default=_setting_default("worker_requeue_seconds"),
    help="How often a worker recovers the jobs of dead workers.",
)
@click.option(
    "--checkpoint-seconds",
    type=FiniteFloatRange(min=0, max=DAY_SECONDS),
    default=None,
    show_default=_setting_default("worker_checkpoint_seconds"),
    help="At most one checkpoint per this many seconds.",
)
@click.option(
    "--stall-seconds",
    type=FiniteFloatRange(min=MIN_STALL_SECONDS, max=DAY_SECONDS),
    default=None,
    show_default=_setting_default("worker_stall_seconds"),
    help="A job whose sampler shows no sign of life this long hangs: back to the queue, its worker "
    "restarted.",
)
def worker(
    lease_seconds: float | None,
    requeue_seconds: float | None,
    checkpoint_seconds: float | None,
    stall_seconds: float | None,
) -> None:
    """Run workers only (no Discord token), e.g. on another GPU machine sharing the database."""
    from sampler.worker.pool import run_pool
    from sampler.worker.runtime import WorkerConfigError

    keep_memory_private("the worker pool's process")  # its environment holds the database password
    settings = settings_or_exit()
    if not settings.local_workers:
        raise click.ClickException(
            "JUKEBOT_GPUS=none says this machine runs no workers, so `jukebot worker` has nothing to "
            "run: set JUKEBOT_GPUS to auto, cpu or GPU numbers such as 0,1 here."
        )
    require_torch("workers")
    _refuse_unusable_model_dir(settings)
    _drop_token_from_environment()
    overrides = {
        "worker_lease_seconds": lease_seconds,
        "worker_requeue_seconds": requeue_seconds,
        "worker_checkpoint_seconds": checkpoint_seconds,
        "worker_stall_seconds": stall_seconds,
    }
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    try:
        config = settings.worker_config()
    except WorkerConfigError as exc:
        raise click.ClickException(str(exc)) from None
    devices = _devices(settings)
    _log_what_is_in_use(settings, "worker", devices)
    migrate_and_say(settings)
    raise SystemExit(
        run_pool(
            settings.database_url,
            devices,
            RUNNER,
            config=config,
            shutdown_timeout=POOL_SHUTDOWN_SECONDS,
            log_level=logging.getLogger().level,
            log_format=settings.log_format,
        )
    )
