"""`JukeBot`: the discord.py client. It knows no feature: each is an extension in `bot/exts/`.

`run_bot(settings, store)` is what `jukebot run` calls: it logs in, runs until SIGTERM/SIGINT/SIGHUP
or `close()`, and shuts down cleanly (background tasks cancelled, HTTP session closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.command_sync import clear_guild_copies, sync_commands
from bot.delivery import DEFAULT_UPLOAD_LIMIT, upload_limit
from bot.errors import JukebotError, StorageOutage, apology, fit_message, stored_all_the_same
from bot.options import forged_option
from bot.requests import Limits
from bot.tasks import BackgroundTasks
from jukebot.settings import Settings
from sampler.worker.stop_signals import handled_stop_signals
from storage.errors import LeaseLost, StorageError
from storage.store import JobStore

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.exts.progress",
    "bot.exts.jukebox",
    "bot.exts.samples",
    "bot.exts.jobs",
    "bot.exts.admin",
    "bot.exts.curate",
)


# A rate limit longer than this raises discord.RateLimited instead of waiting inside the call (30 s is
# discord.py's least): a background loop then moves on to other channels rather than stall behind one.
MAX_RATE_LIMIT_WAIT_S = 30.0
# A command sync Discord fails at start (an outage, a restart loop's rate limit) is tried again after
# this long, doubling up to the last: the bot starts meanwhile, with the commands of the last sync.
SYNC_RETRY_S = (30.0, 600.0)
# How often the bot reads the database's schema revision: a newer jukebot may migrate it while this runs.
SCHEMA_CHECK_S = 60.0
# Set in `interaction.extras` by a command that deferred publicly (its answer is for everyone).
PUBLIC_THINKING = "public_thinking"


def user_message(error: BaseException) -> str | None:
    """The message to show for an error a person can act on, or None for a bug."""
    if isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError):
        error = error.__cause__ or error
    if isinstance(error, JukebotError):
        return str(error)
    if isinstance(error, StorageError) and not isinstance(error, LeaseLost):
        return str(error)
    if isinstance(error, app_commands.CheckFailure | app_commands.CommandOnCooldown):
        return str(error) or "You cannot use this command here."
    return None


def _what_was_used(interaction: discord.Interaction[Any]) -> str:
    """The command, button or form an interaction came from, for the log: never what a member typed into
    it (a form's lyrics are theirs, and may be unreleased)."""
    if interaction.command is not None:
        return f"/{interaction.command.qualified_name}"
    data: Mapping[str, Any] = interaction.data or {}
    custom_id = data.get("custom_id")
    return f"{interaction.type.name} {custom_id!r}" if custom_id else interaction.type.name


def message_for(interaction: discord.Interaction[Any], error: BaseException) -> str:
    """What to tell the user about `error`: its own sentence, or for an unexpected one an apology with
    an id they can quote, under which it is logged."""
    message = user_message(error)
    if message is not None:
        return message
    job_id = interaction.extras.get("job_id")
    error_id = f"job #{job_id}" if job_id is not None else f"error {secrets.token_hex(4)}"
    original = getattr(error, "original", error)
    outage = StorageOutage.of(original)
    log.error(
        "%s (%s) in %s by user %s",
        f"storage outage: {outage.value}" if outage else "unexpected error",
        error_id,
        _what_was_used(interaction),
        interaction.user.id,
        exc_info=original,
    )
    if job_id is not None:  # it is stored: "try again" would make it twice
        return stored_all_the_same(job_id, outage)
    return outage.reply(error_id) if outage else apology(error_id)


async def report_error(interaction: discord.Interaction[Any], error: BaseException) -> None:
    """Tell the user what went wrong, ephemerally; log unexpected errors under an id they can quote."""
    message = fit_message(message_for(interaction, error))
    try:
        if interaction.response.is_done():
            if interaction.extras.get(PUBLIC_THINKING):
                # The first followup would fill the public "thinking…" message, whatever it asks:
                # take that message away so the error reaches only the user. A command clears the
                # flag once its own followup filled that message: what it posted stays.
                with contextlib.suppress(discord.HTTPException):
                    await interaction.delete_original_response()
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell user %s about an error: %s", interaction.user.id, message)


class JukeTree(app_commands.CommandTree["JukeBot"]):
    async def interaction_check(self, interaction: discord.Interaction[JukeBot], /) -> bool:
        """Every command's options within what it declared to Discord (`forged_option`)."""
        problem = forged_option(interaction)
        if problem is not None:
            raise app_commands.CheckFailure(problem)
        return True

    async def on_error(
        self, interaction: discord.Interaction[JukeBot], error: app_commands.AppCommandError
    ) -> None:
        await report_error(interaction, error)


class JukeBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        sync_guild_ids: Sequence[int] = (),
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            tree_cls=JukeTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            max_ratelimit_timeout=MAX_RATE_LIMIT_WAIT_S,
        )
        self.settings = settings
        self.store = store
        self.sync_guild_ids = tuple(sync_guild_ids)
        self.tasks = BackgroundTasks()
        self.http_session: aiohttp.ClientSession | None = None
        self._upload_limits: dict[int, int] = {}  # guild id -> the last attachment_size_limit seen
        # guild id -> the limit to keep under since Discord refused a file as too large (`upload_refused`)
        self._refused_uploads: dict[int, int] = {}
        self.base_upload_limit = DEFAULT_UPLOAD_LIMIT  # what every server allows (a test's may allow less)
        self.sync_retry_s = SYNC_RETRY_S
        # Set (with its reason) when the bot must stop on its own: `run_bot` closes it and raises that.
        self.must_stop = asyncio.Event()
        self.stop_reason: Exception | None = None

    async def setup_hook(self) -> None:
        self.http_session = aiohttp.ClientSession()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        wait = await self._synced_or_wait()
        if wait is not None:
            self.tasks.create(self._sync_later(wait), name="sync-commands")
        if not self.sync_guild_ids:
            self.tasks.create(clear_guild_copies(self), name="clear-guild-commands")
        self.tasks.create(self._watch_schema(), name="watch-schema")

    async def _watch_schema(self) -> None:
        """Stop once a newer jukebot migrated the database, as workers do: this bot's requests and
        votes would ignore what the new schema holds. Its restart then refuses the database, saying why."""
        from storage.migrate import UnknownSchemaRevision, head_revision, why_schema_not_ours

        while True:
            await asyncio.sleep(SCHEMA_CHECK_S)  # a period to wait out, not a wait for some state
            try:
                revisions = await self.store.schema_revisions_not_ours()
            except Exception as exc:  # an outage: the commands say so; read again next period
                log.debug("could not read the database's schema revision: %r", exc)
                continue
            if revisions:
                log.error("the bot stops: %s", why_schema_not_ours(revisions))
                self.stop_reason = UnknownSchemaRevision(" and ".join(revisions), head_revision())
                self.must_stop.set()
                return

    async def _synced_or_wait(self, first_wait_s: float | None = None) -> float | None:
        """Sync the commands; when Discord cannot now, how long to wait before trying again."""
        if first_wait_s is None:
            first_wait_s = self.sync_retry_s[0]
        try:
            await sync_commands(self, self.sync_guild_ids)
        except discord.RateLimited as exc:  # restarts in a row: Discord limits syncs
            reason, wait = f"Discord asks to wait {exc.retry_after:.0f} s", max(exc.retry_after, first_wait_s)
        except (discord.DiscordServerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason, wait = f"Discord could not be reached ({exc!r})", first_wait_s
        else:
            return None
        log.warning(
            "could not sync the commands: %s; trying again in %.0f s (the commands of the last sync stand "
            "meanwhile)",
            reason,
            wait,
        )
        return wait

    async def _sync_later(self, wait_s: float) -> None:
        while True:
            await asyncio.sleep(wait_s)  # a period to wait out, not a wait for some state
            following = await self._synced_or_wait(min(wait_s * 2, self.sync_retry_s[1]))
            if following is None:
                log.info("commands synced")
                return
            wait_s = following

    async def close(self) -> None:
        await self.tasks.cancel_all()
        if self.http_session is not None:
            await self.http_session.close()
        await super().close()

    def note_upload_limit(self, interaction: discord.Interaction[Any]) -> None:
        """Remember the server's upload limit for results the relay posts later (no interaction then)."""
        if interaction.guild_id is not None:
            self._upload_limits[interaction.guild_id] = interaction.filesize_limit
            self._refused_uploads.pop(interaction.guild_id, None)

    def upload_limit(self, guild_id: int | None) -> int:
        guild = self.get_guild(guild_id) if guild_id is not None else None
        seen = self._upload_limits.get(guild_id) if guild_id is not None else None
        known = upload_limit(seen, guild.filesize_limit if guild else None)
        refused = self._refused_uploads.get(guild_id) if guild_id is not None else None
        return known if refused is None else min(known, refused)

    def upload_refused(self, guild_id: int | None, size: int) -> bool:
        """Discord refused a `size`-byte file as too large where the limit the bot knew allowed it: the
        server's limit shrank (a boost lost, and no member's command since to say so). Keep under the
        limit the gateway says the server has now, else under the base every server allows; a
        member's next command tells the true limit again. False when `size` was within that base: the
        refusal has another cause, which a smaller split would not cure."""
        if guild_id is None or size <= self.base_upload_limit:
            return False
        guild = self.get_guild(guild_id)
        tier_limit = guild.filesize_limit if guild is not None else 0
        self._upload_limits.pop(guild_id, None)
        self._refused_uploads[guild_id] = tier_limit if 0 < tier_limit < size else self.base_upload_limit
        return True

    async def limits_for(self, guild_id: int) -> Limits:
        return Limits.resolve(self.settings, await self.store.get_guild_settings(guild_id))

    @contextlib.asynccontextmanager
    async def reporting_errors(self, interaction: discord.Interaction[Any]) -> AsyncIterator[None]:
        """For button and modal callbacks, which the command tree's error handler does not see."""
        try:
            yield
        except Exception as exc:
            await report_error(interaction, exc)

    def session(self) -> aiohttp.ClientSession:
        if self.http_session is None:
            raise RuntimeError("the bot's HTTP session is not open yet (setup_hook has not run)")
        return self.http_session


@contextlib.contextmanager
def discord_endpoints(settings: Settings) -> Iterator[None]:
    """Point discord.py at the configured REST base and gateway (e.g. a rate-limit proxy) meanwhile.

    discord.py keeps both as class attributes, so this holds for every client in the process.
    """
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base
    if settings.discord_gateway:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


async def run_bot(settings: Settings, store: JobStore, *, sync_guild_ids: Sequence[int] = ()) -> None:
    """Run the bot until SIGTERM/SIGINT/SIGHUP (or a fatal error), then close it gracefully."""
    token = settings.require_token()
    with discord_endpoints(settings):
        await _run_until_stopped(settings, store, token, sync_guild_ids)


async def _run_until_stopped(
    settings: Settings, store: JobStore, token: str, sync_guild_ids: Sequence[int]
) -> None:
    bot = JukeBot(settings, store, sync_guild_ids=sync_guild_ids)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    installed: list[signal.Signals] = []
    for signum in handled_stop_signals():  # one ignored at start (`nohup jukebot run`) stays ignored
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not main thread
            loop.add_signal_handler(signum, stopping.set)
            installed.append(signum)
    try:
        async with bot:
            runner = asyncio.create_task(bot.start(token), name="discord-bot")
            stoppers = {
                asyncio.create_task(stopping.wait(), name="wait-for-signal"),
                asyncio.create_task(bot.must_stop.wait(), name="wait-for-bot-stop"),
            }
            done, _ = await asyncio.wait({runner, *stoppers}, return_when=asyncio.FIRST_COMPLETED)
            for stopper in stoppers:
                stopper.cancel()
            if runner in done:
                runner.result()  # re-raise a login or connection failure
                return
            log.info("stopping: closing the Discord connection")
            await bot.close()
            try:
                await runner
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                # what closing did to a login in flight: the stop asked for is no failure
                log.info("the Discord connection ended as it closed: %r", exc)
            if bot.stop_reason is not None:
                raise bot.stop_reason
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
