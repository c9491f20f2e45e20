"""`jukebot run` (the bot plus local workers) and `jukebot worker` (workers only)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import click

from jukebot.commands import require_torch, settings_or_exit
from jukebot.settings import Settings, SettingsError

log = logging.getLogger(__name__)

RUNNER = "sampler.cascade_runner:make_runner"
POOL_SHUTDOWN_SECONDS = 90.0


def _worker_environment(settings: Settings) -> None:
    """What spawned worker processes read: they inherit the environment, not our settings object."""
    os.environ["JUKEBOT_MODEL_DIR"] = str(settings.model_dir)
    os.environ["JUKEBOT_MAX_BATCH_SIZE"] = settings.max_batch_size


def _devices(settings: Settings) -> list:  # type: ignore[type-arg]
    from sampler.worker.contract import DeviceError
    from sampler.worker.pool import devices_from_setting

    try:
        return list(devices_from_setting(settings.gpu_indices()))
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None


def _upgrade(settings: Settings) -> None:
    from storage.migrate import upgrade_to_head

    try:
        upgrade_to_head(settings.database_url)
    except OSError as exc:
        raise click.ClickException(f"cannot reach the database at {settings.database_url}: {exc}") from None


@click.command()
@click.option(
    "--sync-guild", "sync_guilds", multiple=True, type=int, help="Sync commands to this server at once."
)
def run(sync_guilds: tuple[int, ...]) -> None:
    """Start the Discord bot and the local workers (migrating the database first)."""
    settings = settings_or_exit()
    try:
        settings.require_token()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.local_workers:
        require_torch("local workers")
    _upgrade(settings)
    stop = threading.Event()
    pool_thread = None
    if settings.local_workers:
        from sampler.worker.pool import run_pool

        devices = _devices(settings)
        _worker_environment(settings)
        pool_thread = threading.Thread(
            target=run_pool,
            args=(settings.database_url, devices, RUNNER),
            kwargs=dict(stop=stop, install_signal_handlers=False, shutdown_timeout=POOL_SHUTDOWN_SECONDS),
            name="worker-pool",
            daemon=True,
        )
        pool_thread.start()
        log.info("local workers on %s", ", ".join(str(d) for d in devices))
    try:
        asyncio.run(_run_bot(settings, sync_guilds))
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
def worker() -> None:
    """Run workers only (no Discord token), e.g. on another GPU machine sharing the database."""
    from sampler.worker.pool import run_pool

    settings = settings_or_exit()
    require_torch("workers")
    _upgrade(settings)
    devices = _devices(settings)
    _worker_environment(settings)
    raise SystemExit(run_pool(settings.database_url, devices, RUNNER, shutdown_timeout=POOL_SHUTDOWN_SECONDS))
