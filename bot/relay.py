"""The progress relay: keeps each job's progress message in step with the store, and posts results.

One background task. Each pass lists the unfinished jobs of the servers the bot is in, edits
their progress messages (only when the text changed, at most once per `min_edit_interval_s`
per message, and within Discord's rate limits, `EditBudget`: the message edited longest ago first,
the rest at later passes, as are those past PROGRESS_PASS_WAIT_S when Discord is slow), then posts
the results of finished jobs the store lists as not posted yet, followed by the final progress text.
Passes run every `poll_interval_s` or at once after `poke()`.

Exactly once, across restarts and several bot processes: before posting a job's results the
relay claims them in the store for `results_lease_s` (`claim_results_posting`; one holder at a
time), renews it while posting (every third of the lease, and before each message it sends), and
records the message each sample went out in as soon as it is sent (`set_sample_message`; for a
sample split over several messages, how many of them are out, after each); each
message carries a nonce, so Discord answers a repeat sent within minutes with the first one. If
posting fails part-way the claim is given back; if the bot is killed mid-post the claim expires.
Either way the next try (this bot or another) posts only the samples without a message, then the
final progress text. When the database cannot be reached just after a message went out (or when the
claim is to be given back, or the results marked posted), the bot keeps what it could not write in
memory and writes it first at each pass until it can: however long the outage lasts (longer than
Discord matches a nonce), this bot never sends that message again. A bot killed during such an
outage forgets it; and after an outage longer than the claim, another bot sharing the database may
claim the results before this one writes it: so a bot that takes over a claim that ran out (rather
than one given back) first reads the channel's messages since the job finished for its own sample
messages without a record, and goes on after them. Results of upsample and continue jobs reply to the
parent sample's message, found in the store after a restart too. Each sample's first message also
carries its picture (bot/pictures.py) when that fits the upload limit beside the audio.

Results that can never go out are given up, so they cannot hold up the others: when Discord says the
bot cannot post in the job's channel (no access, no permission, the channel deleted, the thread locked)
the results are marked posted with one warning in the log, and the progress message says so with the
samples' numbers where Discord still lets the bot edit it (they stay stored: `/sample` re-sends them).
A reply Discord refuses (Read Message History taken from the bot) goes out as a message of its own.
Other failures are retried, the first at the next pass, then after a growing wait per job (its
claim is given back with a time before which nobody retries it, so the jobs behind it in the list go
on). A rate limit longer than discord.py waits (`MAX_RATE_LIMIT_WAIT_S`) is such a wait too, as long
as Discord asked; a progress edit it refuses waits for a later pass. A progress message in a thread
that was archived goes on in a fresh message, which un-archives it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import io
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import discord

from bot import curating, delivery, pictures, progress
from bot.actions import cancel_queued_in_gone_channel, missing_posting_permissions
from bot.errors import DISCORD_FAILURES, MAX_MESSAGE_CHARS, fit_message
from bot.progress import quality_label, render_job, style_line
from bot.requests import may_continue
from bot.views import progress_view, sample_view
from sampler.jobspec import is_full_quality, params_or_defaults
from storage.errors import JobNotFinished, JobNotFound, SampleNotFound, database_unreachable
from storage.models import JobKind, JobStatus, utcnow
from storage.records import Job, MessageParts
from storage.store import JobStore, QueuePlaces, queue_places

if TYPE_CHECKING:
    from bot.bot import JukeBot

log = logging.getLogger(__name__)
# A progress edit is a small request: the pass waits this long for one (discord.py's own waits for a
# rate limit, MAX_RATE_LIMIT_WAIT_S, included), then goes on without it, so that one hung request holds
# up no other job's progress nor the results behind it (aiohttp's own limit is 5 minutes).
PROGRESS_EDIT_TIMEOUT_S = 60.0
# All of a pass's progress messages wait this long at most: past it, the edits not sent yet wait for the
# next pass, so that the results behind them and new jobs' messages (`announce`) wait no longer when
# Discord is slow (discord.py tries a request Discord answers with a 500 five times, over 25 s).
PROGRESS_PASS_WAIT_S = 15.0
# A job's results may take minutes to upload (several files of up to the server's upload limit): the
# pass waits this long for them, then goes on while they go on, so that a slow or hung upload (aiohttp
# gives up after 5 minutes) holds up no other job's progress nor results.
RESULTS_WAIT_S = 60.0
NO_MENTIONS = discord.AllowedMentions.none()
NOTIFY_USER = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False)
# Discord caps the edits of messages older than an hour (JSON error code 30046); real jobs run for hours.
OLD_MESSAGE_EDITS_EXHAUSTED = 30046
# Discord refuses edits in an archived thread (archived after an hour to a week without messages); a
# message sent there un-archives it, unless a moderator locked it.
THREAD_ARCHIVED = 50083
# How long a claim on a job's results holds without renewal: the wait before another bot finishes
# posting for one that was killed mid-post. Renewed every third of it, also during a long upload.
RESULTS_LEASE_S = 30.0
MISSING_PERMISSIONS = 50013
UNKNOWN_CHANNEL = 10003
# Discord refuses a reply from a bot that may not read the channel's history (`send_replying`): 160002
# ("Cannot reply without permission to read message history"), 160009 in its newer wording, or 50013.
REPLY_REFUSED = frozenset({160002, 160009, MISSING_PERMISSIONS})
# Discord's "Request entity too large" (HTTP 413): a file over the server's upload limit.
UPLOAD_TOO_LARGE = 40005
# Discord's answers that mean the bot cannot post in the channel at all: trying again will not help.
CANNOT_POST_THERE = {
    50001: "Missing Access",
    MISSING_PERMISSIONS: "Missing Permissions",
    UNKNOWN_CHANNEL: "Unknown Channel",
    THREAD_ARCHIVED: "Thread is archived",
    160005: "Thread is locked",
}
# Discord lets a bot send or edit about 5 messages per 5 s in a channel, and 50 requests a second in all;
# past that discord.py waits, holding up the whole pass (results, new jobs' messages). Progress edits past
# these budgets wait for a later pass (the message edited longest ago goes first: `_update_order`).
EDITS_PER_CHANNEL = 4
EDIT_WINDOW_S = 5.0
EDITS_PER_PASS = 40
# The longest wait between two tries at posting a job's results that keep failing.
MAX_RETRY_DELAY_S = 600.0
# A bot that takes over a claim that ran out reads up to this many of the channel's messages, newest
# first, back to a margin before the job finished (the clocks of its worker and of Discord may differ),
# for the sample messages its predecessor sent without a record.
HISTORY_SCAN_LIMIT = 1000
HISTORY_SCAN_MARGIN = timedelta(minutes=10)


class _ResultsClaimLost(Exception):
    """Another bot took over posting this job's results (our claim had expired): stop posting."""


class _UploadRefusedAsTooLarge(Exception):
    """Discord refused a sample's file as over the server's upload limit, which shrank since the bot
    learned it (a boost lost, and no member's command since to tell it): split anew, smaller."""


@dataclass
class _Watched:
    text: str | None = None
    edited_at: float = float("-inf")  # time.monotonic() of the last edit
    reply_to: int | None = None  # message that results should reply to


class EditBudget:
    """How many progress edits may go out now: `per_channel` in any `window_s` in one channel, and
    `per_pass` in one pass."""

    def __init__(
        self,
        per_channel: int = EDITS_PER_CHANNEL,
        window_s: float = EDIT_WINDOW_S,
        per_pass: int = EDITS_PER_PASS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_channel, self.window_s, self.per_pass, self.clock = per_channel, window_s, per_pass, clock
        self._sent: dict[int, collections.deque[float]] = {}  # channel -> when its last edits went out
        self._this_pass = 0

    def new_pass(self) -> None:
        self._this_pass = 0
        now = self.clock()
        for channel_id in [
            c for c, sent in self._sent.items() if not sent or now - sent[-1] >= self.window_s
        ]:
            del self._sent[channel_id]

    def take(self, channel_id: int) -> bool:
        """One edit in `channel_id` now, if the budgets allow it."""
        now = self.clock()
        sent = self._sent.setdefault(channel_id, collections.deque())
        while sent and now - sent[0] >= self.window_s:
            sent.popleft()
        if len(sent) >= self.per_channel or self._this_pass >= self.per_pass:
            return False
        sent.append(now)
        self._this_pass += 1
        return True


class ProgressRelay:
    def __init__(
        self,
        bot: JukeBot,
        *,
        poll_interval_s: float = 5.0,
        min_edit_interval_s: float = 5.0,
        finished_batch: int = 25,
        results_lease_s: float = RESULTS_LEASE_S,
    ) -> None:
        self.bot = bot
        self.store = bot.store
        self.poll_interval_s = poll_interval_s
        self.min_edit_interval_s = min_edit_interval_s
        self.finished_batch = finished_batch  # results posted per server per pass; the rest next pass
        self.results_lease_s = results_lease_s
        # Who holds a results claim in the store: unique per bot process, also across restarts.
        self.poster_id = new_poster_id()
        self._watched: dict[int, _Watched] = {}
        self._posting: set[int] = set()  # jobs whose progress message is being posted right now
        self._failures: dict[int, int] = {}  # tries in a row at posting a job's results that failed
        self._update_failures: dict[int, int] = {}  # passes in a row a job's progress edit failed
        # Running jobs whose channel Discord says the bot cannot post in, and when it said so.
        self._channel_lost_at: dict[int, float] = {}
        # Replaced progress messages whose deletion waits out a rate limit: id -> (job, message, what).
        self._to_delete: dict[int, tuple[int, discord.PartialMessage | discord.Message, str]] = {}
        # What went out to Discord but could not be written to the store (its database was away), for
        # `_write_behind` to write before each pass: a sample's message (sample id -> its first message,
        # and how many of its messages are out, or None for all of them), claims on results to give
        # back (job id -> retry after), and jobs whose results all went out, to mark posted.
        self._unrecorded: dict[int, tuple[int, MessageParts | None]] = {}
        # The same for progress messages: job id -> (the message, the id of the one it replaces, and that
        # one to delete once it is recorded: out of edits or in an archived thread, not deleted already).
        self._unrecorded_progress: dict[
            int, tuple[discord.Message, int | None, discord.PartialMessage | None]
        ] = {}
        self._unreleased: dict[int, float] = {}
        self._unmarked: dict[int, bool] = {}  # job id -> True
        # Jobs whose results claim this bot took over from one that ran out, until it read the channel's
        # history for messages sent without a record (kept through a failed try that gives the claim back).
        self._unread_history: set[int] = set()
        self.edit_budget = EditBudget()
        self._slow_edits: dict[int, asyncio.Task[None]] = {}  # job id -> its edit, past its time (`_edit`)
        # Job id -> the posting of its first progress message, past its time (`_post_progress_within`).
        self._slow_posts: dict[int, asyncio.Task[None]] = {}
        # Job id -> the posting of its results, still under way after RESULTS_WAIT_S (`_post_results`),
        # and its channel: the results of other jobs there wait for it.
        self._slow_results: dict[int, asyncio.Task[None]] = {}
        self._slow_results_channel: dict[int, int] = {}
        self._wake = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        # Jobs queued before this may have a progress message a bot before it posted unrecorded.
        self._started_at = utcnow()

    # ---------------------------------------------------------------- control

    def track(self, job_id: int, *, reply_to: int | None = None) -> None:
        watched = self._watched.setdefault(job_id, _Watched())
        if reply_to is not None:
            watched.reply_to = reply_to

    def poke(self) -> None:
        """Run a pass now instead of at the next poll."""
        self._wake.set()

    async def announce(self, job_id: int, *, reply_to: int | None = None) -> None:
        """Post a just-queued job's progress message now, between passes: a pass never sees it
        half-posted (it would skip the job, or finish it without the message's id). A message Discord
        does not answer within PROGRESS_PASS_WAIT_S goes on without holding the passes up."""
        self.track(job_id, reply_to=reply_to)
        async with self._pass_lock:
            with contextlib.suppress(TimeoutError):  # (logged as it ends: `_slow_edit_ended`)
                await self._post_progress_within(job_id, None, PROGRESS_PASS_WAIT_S, queued_here=True)

    async def run(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                await self.run_pass()
            except Exception:
                log.exception("progress relay pass failed; retrying at the next poll")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    # ---------------------------------------------------------------- passes

    async def run_pass(self) -> None:
        async with self._pass_lock:
            await self._write_behind()  # raises while the database is still away: nothing goes out
            for job_id, message, what in [self._to_delete.pop(key) for key in list(self._to_delete)]:
                try:
                    await self._delete(job_id, message, what)
                except Exception as exc:  # e.g. the connection dropped: the jobs go on; it goes later
                    log.warning("job #%s: could not delete %s %s yet: %r", job_id, what, message.id, exc)
                    self._to_delete[message.id] = (job_id, message, what)
            guild_ids = {guild.id for guild in self.bot.guilds}
            unfinished = await self.store.unfinished_jobs()
            places = queue_places(unfinished, await self.store.served_models())
            ours = [job for job in unfinished if job.guild_id in guild_ids]
            self.edit_budget.new_pass()
            for job in ours:
                self.track(job.id)
            updates_until = time.monotonic() + PROGRESS_PASS_WAIT_S
            for job in sorted(ours, key=lambda job: self._update_order(job, places)):
                left_s = updates_until - time.monotonic()
                if left_s < PROGRESS_PASS_WAIT_S / 10:
                    break  # Discord is slow to answer: the rest wait for the next pass, the results do not
                wait_s = min(left_s, PROGRESS_EDIT_TIMEOUT_S)
                lost_at = self._channel_lost_at.get(job.id)
                if lost_at is not None and time.monotonic() - lost_at < MAX_RETRY_DELAY_S:
                    continue  # its channel is gone or closed to the bot: try again now and then
                try:
                    await self._update(job, places, wait_s)
                    self._channel_lost_at.pop(job.id, None)
                    self._update_failures.pop(job.id, None)
                except discord.RateLimited:  # a long wait in its channel (discord.py logs it): later
                    continue
                except Exception as exc:  # the other jobs still update
                    # Tried now: a message whose edits keep failing (slowly) goes behind the others.
                    self._watched[job.id].edited_at = time.monotonic()
                    why = _cannot_post_there(exc)
                    if why is None:
                        failures = self._update_failures[job.id] = self._update_failures.get(job.id, 0) + 1
                        if failures == 1 and not isinstance(exc, TimeoutError):  # a slow Discord says enough
                            log.exception(
                                "job #%s: updating its progress message failed; trying again", job.id
                            )
                        else:  # its traceback is in the log already: one line per pass, not one per failure
                            log.warning(
                                "job #%s: updating its progress message failed%s: %r",
                                job.id,
                                " again" if failures > 1 else "",
                                exc,
                            )
                        continue
                    if isinstance(exc, discord.HTTPException) and exc.code == UNKNOWN_CHANNEL:
                        # Deleted while no bot ran, or an archived thread of a deleted channel: no event came
                        await cancel_queued_in_gone_channel(self.store, job.channel_id)
                    if lost_at is None:
                        log.warning(
                            "job #%s: cannot show its progress in channel %s (%s); trying again every %.0f s",
                            job.id,
                            job.channel_id,
                            why,
                            MAX_RETRY_DELAY_S,
                        )
                    self._channel_lost_at[job.id] = time.monotonic()
            still_running = {job.id for job in ours}
            # Results the store says nobody posted yet: also those that finished while no bot ran.
            finished: set[int] = set()
            # Each server's own batch (one server's backlog does not hold up the others), asked only of
            # the servers with results waiting: an idle pass costs one query, not one per server.
            waiting = await self.store.guilds_with_results_unposted()
            # One RESULTS_WAIT_S for the pass's results together, not one each: jobs whose uploads
            # queue behind a hung one in its channel held the pass a minute apiece.
            results_until = time.monotonic() + RESULTS_WAIT_S
            for guild_id in sorted(gid for gid in guild_ids if gid in waiting):
                for job in await self.store.finished_jobs_unposted(guild_id, limit=self.finished_batch):
                    finished.add(job.id)
                    if job.channel_id in self._channels_posting_slowly(job.id):
                        continue  # Discord would queue it behind those: at a later pass, in order
                    await self._post_results(job, max(0.0, results_until - time.monotonic()))
            # Jobs we watched that ended another way: posted elsewhere, or gone.
            for job_id in [j for j in self._watched if j not in still_running and j not in finished]:
                try:
                    job = await self.store.get_job(job_id)
                except JobNotFound:
                    self._watched.pop(job_id, None)
                    continue
                if not job.finished:
                    continue  # queued after this pass listed the unfinished jobs
                if job.results_posted_at is not None or job.guild_id not in guild_ids:
                    self._forget(job_id)
                # else: more than a batch finished at once, or waiting to retry; a later pass lists it

    async def _post_results(self, job: Job, wait_s: float = RESULTS_WAIT_S) -> None:
        """Post a finished job's results (`_finish`), waiting `wait_s` at most: results still going out
        by then go on without the pass (`_slow_results`); a later pass leaves the job to them."""
        posting = self._slow_results.get(job.id)
        if posting is not None and not posting.done():
            return
        posting = asyncio.create_task(self._finish_logged(job), name=f"results-{job.id}")
        try:
            done, _ = await asyncio.wait({posting}, timeout=wait_s)
        except BaseException:  # a stop mid-post: cut it short, which gives the claim back (`_finish`)
            posting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await posting
            raise
        if posting in done:
            self._slow_results.pop(job.id, None)
            return
        self._slow_results[job.id] = posting
        self._slow_results_channel[job.id] = job.channel_id
        posting.add_done_callback(functools.partial(_forget_slow, self._slow_results, job.id))
        log.warning(
            "job #%s: its results are still going out after %g s (the pass waits %g s for its results "
            "together); the other jobs go on meanwhile",
            job.id,
            wait_s,
            RESULTS_WAIT_S,
        )

    def _channels_posting_slowly(self, but: int) -> set[int]:
        """The channels where results past their time are still going out (`_slow_results`), those of
        job `but` aside."""
        for job_id in [j for j in self._slow_results_channel if j not in self._slow_results]:
            del self._slow_results_channel[job_id]
        return {
            channel_id
            for job_id, channel_id in self._slow_results_channel.items()
            if job_id != but and not self._slow_results[job_id].done()
        }

    async def _finish_logged(self, job: Job) -> None:
        try:
            await self._finish(job)
        except Exception as exc:  # e.g. Discord had a hiccup: the others still go out
            failures = self._failures.get(job.id, 0)
            if failures <= 1:
                log.exception("job #%s: posting the results failed; trying again later", job.id)
            else:  # its traceback is in the log already
                log.warning(
                    "job #%s: posting the results failed again (try %d): %r; next try in %.0f s",
                    job.id,
                    failures,
                    exc,
                    self._retry_delay(failures),
                )

    async def stop(self) -> None:
        """Cut short results still going out past their time: each gives its claim back (`_finish`), for
        the next bot to post the rest at once; and progress edits Discord has not answered yet."""
        every = (*self._slow_results.values(), *self._slow_edits.values(), *self._slow_posts.values())
        slow = [task for task in every if not task.done()]
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        self._slow_results.clear()
        self._slow_edits.clear()
        self._slow_posts.clear()

    def _update_order(self, job: Job, places: QueuePlaces) -> tuple[int, float, int, int]:
        """The order a pass updates progress messages in (the edit budget may not reach the last): new
        jobs' messages first, then the one edited longest ago (none stays stale for good while others
        change every pass), and among those running jobs', then the queue's from its front."""
        if job.progress_message_id is None:
            return (0, 0.0, 0, 0)
        edited_at = self._watched[job.id].edited_at
        if job.status != JobStatus.QUEUED:
            return (1, edited_at, 0, 0)
        place = places.place.get(job.id)
        return (1, edited_at, 1, place) if place is not None else (1, edited_at, 2, 0)

    async def _update(self, job: Job, places: QueuePlaces, wait_s: float = PROGRESS_EDIT_TIMEOUT_S) -> None:
        if job.progress_message_id is None:
            await self._post_progress_within(job.id, places, wait_s)
            return
        watched = self._watched[job.id]
        text = render_job(job, places=places)
        if text == watched.text or time.monotonic() - watched.edited_at < self.min_edit_interval_s:
            return
        if self._slow_edit_of(job.id) is not None:
            return  # Discord has not answered its last edit yet: never two at once, nor out of order
        if self.edit_budget.take(job.channel_id):  # else at a later pass, with the text as it is then
            await self._edit(job, text, wait_s, running=True)

    async def _after_pending_edit(self, job: Job) -> None:
        """Wait (PROGRESS_EDIT_TIMEOUT_S at most) for the job's progress edit Discord has not answered
        yet, if there is one: the final text goes after it, never under it (`_edit` raises TimeoutError
        if it is still under way)."""
        pending = self._slow_edit_of(job.id)
        if pending is not None:
            await asyncio.wait({pending}, timeout=PROGRESS_EDIT_TIMEOUT_S)

    def _slow_edit_of(self, job_id: int) -> asyncio.Task[None] | None:
        """The job's progress edit still under way after PROGRESS_EDIT_TIMEOUT_S, if there is one."""
        edit = self._slow_edits.get(job_id)
        if edit is not None and edit.done():
            del self._slow_edits[job_id]
            return None
        return edit

    async def _edit(
        self, job: Job, text: str, wait_s: float = PROGRESS_EDIT_TIMEOUT_S, *, running: bool = False
    ) -> None:
        """Edit the job's progress message to `text`, waiting `wait_s` at most: an edit Discord has not
        answered by then (a hung request, or one discord.py retries after Discord's 500s) goes on without
        the pass (`_slow_edits`), never cancelled (discord.py cut short in its wait for a global rate
        limit leaves every later request waiting)."""
        if self._slow_edit_of(job.id) is not None:
            raise TimeoutError(f"Discord has not answered job #{job.id}'s last progress edit yet")
        edit = asyncio.create_task(self._edit_now(job, text, running=running), name=f"progress-edit-{job.id}")
        await _within(edit, wait_s, self._slow_edits, job.id, "progress edit")

    async def _edit_now(self, job: Job, text: str, *, running: bool = False) -> None:
        """The edit itself. `running`: a text rendered while the job ran, which may land after another
        bot on this database posted the job's results and final text (its listing is up to a pass old,
        and an edit may be slow): then the final text is put back, as nothing else would edit it again."""
        assert job.progress_message_id is not None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        watched = self._watched.setdefault(job.id, _Watched())
        old = edited = channel.get_partial_message(job.progress_message_id)
        try:
            await old.edit(content=text, view=progress_view(job), allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            # Someone deleted the progress message, it is over an hour old and out of edits, or its
            # thread was archived: go on in a fresh one at the bottom of the channel (edits work again
            # there; sending it un-archives the thread).
            gone = isinstance(exc, discord.NotFound)
            if not gone and exc.code not in (OLD_MESSAGE_EDITS_EXHAUSTED, THREAD_ARCHIVED):
                raise
            message = await channel.send(
                text,
                view=progress_view(job),  # type: ignore[arg-type]
                allowed_mentions=NO_MENTIONS,
                nonce=progress_nonce(job.id, replacing=old.id),
            )
            if not await self._recorded(job.id, message, replacing=old.id, stale=None if gone else old):
                return  # another bot on this database went on in a fresh message first: it stands
            edited = channel.get_partial_message(message.id)
        watched.text, watched.edited_at = text, time.monotonic()
        if running:
            now = await self.store.get_job(job.id)
            if now.results_posted_at is not None and now.progress_message_id == edited.id:
                count = (
                    len(await self.store.samples_for_job(job.id))
                    if now.status == JobStatus.SUCCEEDED
                    else None
                )
                final = render_job(now, sample_count=count)
                await edited.edit(content=final, view=progress_view(now), allowed_mentions=NO_MENTIONS)
                watched.text = final

    async def _post_progress_within(
        self, job_id: int, places: QueuePlaces | None, wait_s: float, *, queued_here: bool = False
    ) -> None:
        """`post_progress_message`, waiting `wait_s` at most: a message Discord has not answered by then
        (a hung request: aiohttp's own limit is 5 minutes) goes on without the pass, as a slow edit does
        (`_slow_posts`; a second is not sent meanwhile: `_posting`), and TimeoutError says so. It held
        up every job's progress and results, in every server."""
        posting = self._slow_posts.get(job_id)
        if posting is not None and not posting.done():
            raise TimeoutError(f"Discord has not answered job #{job_id}'s progress message yet")
        posting = asyncio.create_task(
            self.post_progress_message(job_id, places, queued_here=queued_here),
            name=f"progress-post-{job_id}",
        )
        await _within(posting, wait_s, self._slow_posts, job_id, "new progress message")

    async def post_progress_message(
        self, job_id: int, places: QueuePlaces | None = None, *, queued_here: bool = False
    ) -> None:
        """Post the job's progress message (once) and record its id in the store (`places`: the
        queue's, if the caller has them; `queued_here`: this bot queued it just now, so no bot before it
        posted one)."""
        if job_id in self._posting or job_id in self._unrecorded_progress:  # one posts; one is out
            return
        self._posting.add(job_id)
        try:
            job = await self.store.get_job(job_id)
            # A job that finished first (fast, or while no bot ran) gets its results and final text
            # from `_finish` instead, in a fresh message.
            if job.progress_message_id is not None or job.finished:
                return
            watched = self._watched.setdefault(job.id, _Watched())
            if places is None:
                places = queue_places(await self.store.unfinished_jobs(), await self.store.served_models())
            text = render_job(job, places=places)
            channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            if not queued_here and job.created_at < self._started_at:
                # A bot before this one may have posted it and died before recording it (Discord's
                # nonce stops a second post for a few minutes only): that one is the job's.
                found = await self._unrecorded_progress_message(job)
                if found is not None:
                    if await self._recorded(job.id, found, replacing=None):
                        watched.text, watched.edited_at = found.content, 0.0  # edited at the next pass
                    return
            reply_to = watched.reply_to or await self._parent_message(job)
            reference = self._reference(job.channel_id, job.guild_id, reply_to)
            message = await send_replying(
                channel,
                reference,
                text,
                view=progress_view(job),
                allowed_mentions=NO_MENTIONS,
                nonce=progress_nonce(job.id, replacing=None),
            )
            if await self._recorded(job.id, message, replacing=None):
                watched.text, watched.edited_at = text, time.monotonic()
        finally:
            self._posting.discard(job_id)

    async def _unrecorded_progress_message(self, job: Job) -> discord.Message | None:
        """The bot's own progress message of `job` in its channel since it was queued, if one is
        there (posted by a bot killed before it recorded it); None when none is, or the channel's
        history cannot be read (then a new one is posted, as before)."""
        assert self.bot.user is not None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        begins = f"**Job #{job.id}** ·"
        since = discord.Object(discord.utils.time_snowflake(job.created_at - HISTORY_SCAN_MARGIN))
        try:
            async for message in channel.history(limit=HISTORY_SCAN_LIMIT, after=since, oldest_first=False):
                if (
                    message.author.id == self.bot.user.id
                    and message.webhook_id is None
                    and message.content.startswith(begins)
                ):
                    return message
        except DISCORD_FAILURES as exc:
            log.warning("job #%s: could not look for a progress message posted unrecorded: %r", job.id, exc)
        return None

    async def _recorded(
        self,
        job_id: int,
        message: discord.Message,
        *,
        replacing: int | None,
        stale: discord.PartialMessage | None = None,
    ) -> bool:
        """Record `message` as the job's progress message unless another bot sharing the database
        recorded one first (both saw none, or the same old one); then ours is deleted, so one stays.
        Once recorded, the `stale` one it replaces is deleted."""
        with _kept_until_written(self._unrecorded_progress, job_id, (message, replacing, stale)):
            recorded = await self.store.replace_progress_message(job_id, message.id, replacing=replacing)
        if recorded:
            if stale is not None:
                await self._delete(job_id, stale, "its old progress message")
            return True
        await self._delete(job_id, message, "a second progress message")
        return False

    async def _delete(
        self, job_id: int, message: discord.PartialMessage | discord.Message, what: str
    ) -> None:
        """Delete a progress message that another one replaced. One that Discord asks to wait for (a long
        rate limit) or fails with a server error is tried again at the passes after, until it goes."""
        try:
            await message.delete()
        except (discord.RateLimited, discord.DiscordServerError):  # for now: the next pass tries again
            self._to_delete[message.id] = (job_id, message, what)
        except discord.NotFound:
            pass  # someone deleted it already
        except discord.HTTPException:
            log.warning("job #%s: could not delete %s %s", job_id, what, message.id)
        except Exception as exc:  # the connection dropped, a time-out: the next pass tries again
            log.warning("job #%s: could not delete %s %s yet: %r", job_id, what, message.id, exc)
            self._to_delete[message.id] = (job_id, message, what)

    def _reference(
        self, channel_id: int, guild_id: int | None, message_id: int | None
    ) -> discord.MessageReference | None:
        if message_id is None:
            return None
        return discord.MessageReference(
            message_id=message_id, channel_id=channel_id, guild_id=guild_id, fail_if_not_exists=False
        )

    # ---------------------------------------------------------------- results

    async def _finish(self, job: Job) -> None:
        """Post a finished job's results (or failure) and its final progress text, once."""
        try:
            claim = await self.store.claim_results_posting(job.id, self.poster_id, self.results_lease_s)
        except JobNotFinished:  # an operator retried it since this pass listed it: it runs again
            return
        if claim is None:
            return  # posted already, or another bot is posting them (if it dies, its claim expires)
        if claim.taken_over_from not in (None, self.poster_id):
            self._unread_history.add(job.id)
        cannot_post: str | None = None
        async with claim_renewed(self.store, job.id, self.poster_id, self.results_lease_s):
            try:
                # As it is now: the listing may be older than an operator's retry and the run that followed.
                job = await self.store.get_job(job.id)
                earlier = _EarlierMessages(self, job) if job.id in self._unread_history else None
                sample_count = None
                if job.status == JobStatus.SUCCEEDED:
                    sample_count = await self._post_samples(job, earlier)
                text = render_job(job, sample_count=sample_count)
                await self._keep_claim(job)
                if job.progress_message_id is not None:
                    await self._after_pending_edit(job)
                    await self._edit(job, text)
                elif earlier is None or text not in await earlier.texts():
                    channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
                    await channel.send(text, allowed_mentions=NO_MENTIONS, nonce=final_text_nonce(job))
            except discord.RateLimited as exc:  # longer than discord.py waits: the others go on meanwhile
                await self._give_back(job, exc.retry_after)
                log.warning(
                    "job #%s: Discord asks to wait %.0f s before posting in channel %s again; trying then",
                    job.id,
                    exc.retry_after,
                    job.channel_id,
                )
                return
            except _ResultsClaimLost:
                _log_taken_over(job)
                return
            except _UploadRefusedAsTooLarge as exc:  # split anew at the next pass, not after a back-off
                await self._give_back(job, 0.0)
                log.warning("job #%s: Discord refused %s", job.id, exc)
                return
            except Exception as exc:
                cannot_post = _cannot_post_there(exc)
                if cannot_post is None:
                    await self._retry_later(job)
                    raise
                # no use trying again: given up below, still holding the claim
            except BaseException:  # a shutdown mid-post: the next pass (or bot) finishes the job now
                await self._give_back(job, 0.0)
                raise
            if cannot_post is not None:
                try:  # under the claim: no other bot posts meanwhile
                    await self._say_not_posted(job, cannot_post)
                except _ResultsClaimLost:
                    _log_taken_over(job)
                    return
                except TimeoutError:  # an earlier edit still unanswered: the note goes after it, later
                    await self._retry_later(job)
                    return
                except BaseException:  # a shutdown: the next pass (or bot) says it now
                    await self._give_back(job, 0.0)
                    raise
                log.warning(
                    "job #%s: giving up posting its results in channel %s: %s; its samples stay stored "
                    "(`/sample` re-sends them)",
                    job.id,
                    job.channel_id,
                    cannot_post,
                )
        await self._mark_posted(job.id)

    async def _say_not_posted(self, job: Job, why: str) -> None:
        """Samples Discord would not take in the job's channel (a permission taken from the bot mid-job):
        say so where the requester looks, in the job's progress message (else a message of its own),
        with the numbers `/sample` re-sends them by. Nothing more when Discord refuses that too. Raises
        TimeoutError while an earlier progress edit is still unanswered (the note would land under it)."""
        if job.status != JobStatus.SUCCEEDED:
            return  # its final text was what Discord refused: nothing else to tell
        try:
            unposted = [f"#{info.id}" for info in await self.store.samples_for_job(job.id) if not info.posted]
            if not unposted:
                return
            missing = self._missing_permissions(job.channel_id)
            reason = (
                f"I am missing the {', '.join(missing)} permission{'s' if len(missing) > 1 else ''} here"
                if missing
                else f"Discord refused them: {why}"
            )
            text = fit_message(
                f"{progress.header(job)}\n{progress.MARK_DONE} Done, but I could not post its samples here "
                f"({reason}). `/sample` re-sends them, here once I may or in another channel: "
                f"{', '.join(unposted)}."
            )
            await self._keep_claim(job)
            if job.progress_message_id is not None:
                await self._after_pending_edit(job)
                await self._edit(job, text)
            else:
                channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
                await channel.send(text, allowed_mentions=NO_MENTIONS, nonce=final_text_nonce(job))
        except (TimeoutError, _ResultsClaimLost):
            raise  # (`_finish`) an earlier edit still unanswered; another bot took over
        except Exception as exc:  # the channel is gone, or closed to the bot altogether (warned after)
            log.info("job #%s: could not say in channel %s why either: %r", job.id, job.channel_id, exc)

    def _missing_permissions(self, channel_id: int) -> list[str]:
        """What the bot lacks to post results in the channel, as its cache knows it ([] when unknown)."""
        channel = self.bot.get_channel(channel_id)
        if not isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            return []
        granted = channel.permissions_for(channel.guild.me)
        return missing_posting_permissions(granted, in_thread=isinstance(channel, discord.Thread))

    async def _mark_posted(self, job_id: int) -> None:
        """Mark the results of a job posted: all went out (or were given up). Kept in `_unmarked` while the
        database cannot be reached, else the next try would send the final text again."""
        with _kept_until_written(self._unmarked, job_id, True):
            finished = await self.store.finish_results_posting(job_id, self.poster_id)
        if not finished:
            log.warning("job #%s: results posted, but another bot took over the claim meanwhile", job_id)
        self._forget(job_id)

    def _forget(self, job_id: int) -> None:
        """A job whose results are out (here or elsewhere): nothing of it is kept."""
        self._watched.pop(job_id, None)
        self._failures.pop(job_id, None)
        self._update_failures.pop(job_id, None)
        self._channel_lost_at.pop(job_id, None)
        self._unread_history.discard(job_id)

    async def _retry_later(self, job: Job) -> None:
        """One more failed try at the job's results: the claim goes back for a try after a growing wait."""
        failures = self._failures[job.id] = self._failures.get(job.id, 0) + 1
        await self._give_back(job, self._retry_delay(failures))

    def _retry_delay(self, failures: int) -> float:
        """How long to wait before trying again to post results that failed `failures` times in a row:
        not at all after the first failure (the next pass tries), then doubling, up to a limit."""
        if failures <= 1:
            return 0.0
        return min(self.poll_interval_s * 2 ** (failures - 1), MAX_RETRY_DELAY_S)

    async def _give_back(self, job: Job, retry_after_s: float) -> None:
        """Give the claim on the results back after a failed try, for a try after `retry_after_s`.
        While the database cannot be reached that waits for the next pass (`_write_behind`): a claim
        that nobody gave back holds until it runs out."""
        try:
            await self._release(job.id, retry_after_s)
        except Exception as exc:
            if database_unreachable(exc):
                log.warning(
                    "job #%s: results half-posted; the claim is given back once the database is back", job.id
                )
            else:
                log.exception("job #%s: results half-posted; the claim expires in time", job.id)

    async def _record_sample_message(
        self, sample_id: int, message_id: int, parts: MessageParts | None = None
    ) -> None:
        """Record the message(s) of the sample that went out (see `store.set_sample_message`). While the
        database cannot be reached the record stays in `_unrecorded`, for `_write_behind`: a try that
        found no record would send the message again, a second post once Discord forgot its nonce."""
        with _kept_until_written(self._unrecorded, sample_id, (message_id, parts)):
            await self.store.set_sample_message(sample_id, message_id, parts=parts)

    async def _release(self, job_id: int, retry_after_s: float) -> None:
        """Give the claim on a job's results back, kept in `_unreleased` while the database is away; one
        taken over whose channel this bot did not read yet says so (the next bot reads it)."""
        unread = job_id in self._unread_history
        with _kept_until_written(self._unreleased, job_id, retry_after_s):
            await self.store.release_results_posting(
                job_id, self.poster_id, retry_after_s=retry_after_s, history_unread=unread
            )

    async def _write_behind(self) -> None:
        """Write what went out while the database was away (see `__init__`), before a pass does anything
        else. Raises while it is still away: the pass waits for the next (nothing is sent twice)."""
        for job_id, (message, replacing, stale) in list(self._unrecorded_progress.items()):
            what = f"job #{job_id}: its progress message {message.id}"
            await _written_behind(what, self._recorded(job_id, message, replacing=replacing, stale=stale))
        for sample_id, (message_id, parts) in list(self._unrecorded.items()):
            what = f"sample #{sample_id}: its message {message_id}"
            await _written_behind(what, self._record_sample_message(sample_id, message_id, parts))
        for job_id in sorted(self._unmarked):
            await _written_behind(f"job #{job_id}: its results posted", self._mark_posted(job_id))
        for job_id, retry_after_s in list(self._unreleased.items()):
            what = f"job #{job_id}: its claim on the results given back"
            await _written_behind(what, self._release(job_id, retry_after_s))

    async def _keep_claim(self, job: Job) -> None:
        """Renew our claim on the job's results before sending the next message."""
        if not await self.store.renew_results_posting(job.id, self.poster_id, self.results_lease_s):
            raise _ResultsClaimLost(job.id)

    async def _parent_message(self, job: Job) -> int | None:
        """The message carrying the sample this job upsamples or continues, if it is in the job's
        channel (a reply cannot cross channels); else the parent job's progress message there."""
        if job.parent_sample_id is None:
            return None
        try:
            parent = await self.store.get_sample_info(job.parent_sample_id)
            parent_job = await self.store.get_job(parent.job_id)
        except (SampleNotFound, JobNotFound):
            return None
        if parent_job.channel_id != job.channel_id:
            return None
        return parent.message_id or parent_job.progress_message_id

    async def _results_reply_target(self, job: Job) -> int | None:
        watched = self._watched.get(job.id)
        if watched is not None and watched.reply_to is not None:
            return watched.reply_to  # the message whose button started the job
        return await self._parent_message(job) or job.progress_message_id

    async def _post_samples(self, job: Job, earlier: _EarlierMessages | None) -> int:
        infos = await self.store.samples_for_job(job.id)
        votes = await self.store.vote_counts(info.id for info in infos)
        limit = self.bot.upload_limit(job.guild_id)
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        reply_to = await self._results_reply_target(job)
        for position, info in enumerate(infos, start=1):
            if info.posted:
                continue  # posted by an earlier try that failed part-way
            sample = await self.store.get_sample(info.id)
            params = params_or_defaults(job.params)
            full_quality, quality = is_full_quality(params), quality_label(params, long=True)
            content = (
                f"{_sample_header(job, sample.id)}{position}/{len(infos)} · "
                f"{sample.duration_seconds:.1f} s · {quality} · seed {sample.seed}"
            )
            content += style_line(job.params, sample.index)
            stem = f"jukebot_sample_{sample.id}"
            # An earlier try sent the first messages of this sample: send only the rest, split as then
            # (Discord's nonce stops a repeat for a few minutes only, and tries go on for longer). That
            # split still fits unless the server's upload limit shrank since: then start over.
            parts = info.message_parts if info.message_id is not None else None
            split_limit = limit if parts is None or parts.upload_limit > limit else parts.upload_limit
            groups, impossible = await delivery.grouped_files_or_reason(
                sample.audio, sample.audio_format, split_limit, stem, sample.duration_seconds
            )
            first_id, start = None, 0
            if parts is not None and parts.upload_limit == split_limit and parts.total == len(groups):
                first_id, start = info.message_id, parts.sent
            if earlier is not None:  # the bot before may have sent more than it recorded
                found_id, found = await earlier.sent_of(sample.id, groups, first_id, start)
                if found > start:
                    assert found_id is not None
                    first_id, start = found_id, found
                    parts_sent = (
                        MessageParts(start, len(groups), split_limit) if start < len(groups) else None
                    )
                    await self._record_sample_message(sample.id, first_id, parts_sent)
                    if parts_sent is None:
                        continue
            if start == 0:
                if impossible is not None:
                    content += f"\n⚠️ {impossible} Re-send it later with `/sample {sample.id}`."
                picture = await pictures.picture_of_sample(
                    self.store, job, sample.audio, sample.audio_format, stem, sample.duration_seconds
                )
                groups = delivery.with_picture(groups, picture, split_limit)
            content += curating.order_line(job.params, MAX_MESSAGE_CHARS - len(content))
            view = sample_view(
                sample.id,
                votes.get(sample.id, 0),
                can_upsample=not full_quality and job.kind != JobKind.CURATE,  # a piece: its samples are
                can_continue=may_continue(sample.codes(2)),
            )
            reference = self._reference(job.channel_id, job.guild_id, reply_to)
            for index in range(start, len(groups)):
                uploads = [
                    discord.File(io.BytesIO(f.data), filename=f.filename, description=f.description)
                    for f in groups[index]
                ]
                await self._keep_claim(job)
                # Discord answers a message sent again with the same nonce (within minutes) with the
                # first one: a bot killed after sending, before recording it, does not post it twice.
                # The split is in it: a message of another split is another message.
                nonce = sample_nonce(sample.id, index, split_limit)
                try:
                    if index == 0:
                        first = await send_replying(
                            channel,
                            reference,
                            content,
                            files=uploads,
                            view=view,
                            allowed_mentions=NOTIFY_USER if position == 1 else NO_MENTIONS,
                            nonce=nonce,
                        )
                        first_id = first.id
                    else:
                        await channel.send(
                            continued_text(sample.id, index, len(groups)),
                            files=uploads,
                            allowed_mentions=NO_MENTIONS,
                            nonce=nonce,
                        )
                except discord.HTTPException as exc:
                    largest = max((len(f.data) for f in groups[index]), default=0)
                    if exc.code != UPLOAD_TOO_LARGE or not self.bot.upload_refused(job.guild_id, largest):
                        raise  # (a file within every server's limit: not the size, no smaller split helps)
                    raise _UploadRefusedAsTooLarge(
                        f"a {largest}-byte file over the upload limit of {split_limit} bytes the bot knew; "
                        f"now splitting under {self.bot.upload_limit(job.guild_id)} bytes"
                    ) from exc
                assert first_id is not None
                if index + 1 < len(groups):
                    sent = MessageParts(index + 1, len(groups), split_limit)
                    await self._record_sample_message(sample.id, first_id, sent)
            if first_id is not None:
                await self._record_sample_message(sample.id, first_id)
        return len(infos)


async def send_replying(
    channel: discord.PartialMessageable,
    reference: discord.MessageReference | None,
    content: str,
    **kwargs: Any,
) -> discord.Message:
    """`channel.send` as a reply to `reference`; as a message of its own when Discord refuses the reply
    (a bot needs Read Message History to reply, which a moderator may take from it mid-job)."""
    if reference is None:
        return await channel.send(content, **kwargs)
    try:
        return await channel.send(content, reference=reference, **kwargs)
    except discord.HTTPException as exc:
        if exc.code not in REPLY_REFUSED:
            raise
        for upload in kwargs.get("files") or ():
            upload.reset()  # read once by the refused request
        return await channel.send(content, **kwargs)


def _log_taken_over(job: Job) -> None:
    log.warning("job #%s: another bot took over posting its results; leaving the rest to it", job.id)


def new_poster_id(what: str = "bot") -> str:
    """Who holds a results claim in the store: unique per bot process, also across restarts."""
    return f"{what}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@contextlib.asynccontextmanager
async def claim_renewed(store: JobStore, job_id: int, poster_id: str, lease_s: float) -> AsyncIterator[None]:
    """Keep a claim on a job's results alive while the block posts them, through uploads longer than
    the lease; on leaving, a renewal in flight is let end (cancelling it could break its connection)."""
    posted = asyncio.Event()
    renewing = asyncio.create_task(
        _renewing(store, job_id, poster_id, lease_s, posted), name=f"claim-{job_id}"
    )
    try:
        yield
    finally:
        posted.set()
        await renewing


async def _renewing(
    store: JobStore, job_id: int, poster_id: str, lease_s: float, posted: asyncio.Event
) -> None:
    while True:
        try:
            await asyncio.wait_for(posted.wait(), timeout=lease_s / 3)
            return
        except TimeoutError:
            pass
        try:
            if not await store.renew_results_posting(job_id, poster_id, lease_s):
                return  # taken over: the poster stops before its next message (`_keep_claim`)
        except Exception:  # e.g. a database blip: the next renewal tries again
            log.warning("job #%s: could not renew the claim on its results", job_id, exc_info=True)


def _holds(names: frozenset[str], files: list[delivery.AudioFile]) -> bool:
    return {file.filename for file in files} <= names


def _sample_header(job: Job, sample_id: int) -> str:
    """How the first message of a sample of `job` begins."""
    return f"<@{job.user_id}> **Sample #{sample_id}** · job #{job.id} · "


def _posted_headers(job: Job, sample_id: int) -> tuple[str, ...]:
    """How the first message of a sample of `job` begins, as this relay posts it, and for a curated
    piece as `/curate` posts it (a bot that stopped mid-post leaves its piece to the relay)."""
    if job.kind == JobKind.CURATE:
        return (_sample_header(job, sample_id), curating.piece_header(sample_id, job.id))
    return (_sample_header(job, sample_id),)


def continued_text(sample_id: int, index: int, total: int) -> str:
    """The text of a sample's message `index` (from 0) after the first, of `total`."""
    return f"Sample #{sample_id}, continued ({index + 1}/{total})"


def first_parts(count: int) -> str:
    """The first `count` messages of a sample in parts, as a reply names them ("parts 1–3")."""
    return "part 1" if count == 1 else f"parts 1–{count}"


class _EarlierMessages:
    """The bot's own messages in a job's channel since shortly before the job finished, read once, when
    first asked: what a bot that took over a claim that ran out finds its predecessor sent unrecorded."""

    def __init__(self, relay: ProgressRelay, job: Job) -> None:
        self._relay = relay
        self._job = job
        self._by_text: dict[str, tuple[int, frozenset[str]]] | None = None

    async def texts(self) -> dict[str, tuple[int, frozenset[str]]]:
        """Each message's text, id and attachments' file names (the first, for a text sent twice)."""
        if self._by_text is None:
            self._by_text = await self._read()
            self._relay._unread_history.discard(self._job.id)
        return self._by_text

    async def sent_of(
        self, sample_id: int, groups: list[list[delivery.AudioFile]], first_id: int | None, start: int
    ) -> tuple[int | None, int]:
        """The sample's first message and how many of its messages (`groups`: their files, as this bot
        splits them) are out, given what the store knows (`first_id`, `start`) and what the channel
        shows after it. A message counts only with the files of this split: one of another split (the
        upload limit changed meanwhile) does not, and posting starts over, as the store's record would."""
        texts = await self.texts()
        if first_id is None:
            headers = _posted_headers(self._job, sample_id)
            found = next((sent for text, sent in texts.items() if text.startswith(headers)), None)
            if found is None or not _holds(found[1], groups[0]):
                return None, 0
            first_id, start = found[0], 1
        while start < len(groups):
            sent = texts.get(continued_text(sample_id, start, len(groups)))
            if sent is None or not _holds(sent[1], groups[start]):
                break
            start += 1
        return first_id, start

    async def _read(self) -> dict[str, tuple[int, frozenset[str]]]:
        relay, job = self._relay, self._job
        assert relay.bot.user is not None
        since = (job.finished_at or job.created_at) - HISTORY_SCAN_MARGIN
        channel = relay.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        by_text: dict[str, tuple[int, frozenset[str]]] = {}
        # Newest first: the predecessor's messages are among the latest; a busy channel's older
        # chatter since the job finished may run past the limit.
        history = channel.history(
            limit=HISTORY_SCAN_LIMIT,
            after=discord.Object(discord.utils.time_snowflake(since)),
            oldest_first=False,
        )
        async for message in history:
            # The relay's own messages; not `/sample` re-sends (interaction replies, sent by webhook).
            if message.author.id == relay.bot.user.id and message.webhook_id is None:
                names = frozenset(attachment.filename for attachment in message.attachments)
                by_text[message.content] = (message.id, names)  # older ones, read later, replace it
        return by_text


def sample_nonce(sample_id: int, index: int, split_limit: int) -> str:
    """The nonce of a sample's message `index` when split to fit `split_limit` bytes: at most 25
    characters, as Discord allows (ids are 32-bit; a limit under 4 GiB is 8 hex digits)."""
    return f"s{sample_id}-{index}-{split_limit:x}"


def progress_nonce(job_id: int, *, replacing: int | None) -> str:
    """The nonce of a job's progress message (or of the fresh one `replacing` an old one): sent again
    after its answer was lost, Discord answers with the message it made (at most 25 characters)."""
    return f"p{job_id:x}" if replacing is None else f"p{job_id:x}-{_base36(replacing)}"


def final_text_nonce(job: Job) -> str:
    """The nonce of a job's final text in a message of its own; a retried job's later end is another."""
    finished = 0 if job.finished_at is None else int(job.finished_at.timestamp())
    return f"f{job.id:x}-{finished:x}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if number == 0:
            return text


def _cannot_post_there(exc: BaseException) -> str | None:
    """What Discord said, when `exc` says the bot cannot post in the channel at all (trying again
    will not help); None for anything else."""
    if isinstance(exc, discord.HTTPException) and exc.code in CANNOT_POST_THERE:
        return f"Discord answered HTTP {exc.status}, error {exc.code} ({CANNOT_POST_THERE[exc.code]})"
    return None


K = TypeVar("K")
V = TypeVar("V")


@contextlib.contextmanager
def _kept_until_written(pending: dict[K, V], key: K, record: V) -> Iterator[None]:
    """Keep `record` in `pending` for the store write in the `with` body: it stays while the database
    cannot be reached (`ProgressRelay._write_behind` writes it at the next passes), and goes once
    written or refused for another reason (unless a newer record replaced it meanwhile)."""
    pending[key] = record
    try:
        yield
    except Exception as exc:
        if database_unreachable(exc):
            raise
        _drop(pending, key, record)
        raise
    _drop(pending, key, record)


def _forget_slow(slow: dict[int, asyncio.Task[None]], job_id: int, ended: asyncio.Task[None]) -> None:
    """A posting past its time ended: forget it (unless another took its place)."""
    if slow.get(job_id) is ended:
        del slow[job_id]


async def _within(
    task: asyncio.Task[None], wait_s: float, slow: dict[int, asyncio.Task[None]], job_id: int, what: str
) -> None:
    """Wait `wait_s` at most for `task` (a progress edit or a new progress message), raising what it
    raised; one Discord has not answered by then goes on without the pass, kept in `slow` until it
    ends (never cancelled: discord.py cut short in its wait for a global rate limit leaves every later request
    waiting), and TimeoutError says so."""
    done, _ = await asyncio.wait({task}, timeout=wait_s)
    if task in done:
        task.result()
        return
    slow[job_id] = task
    task.add_done_callback(functools.partial(_forget_slow, slow, job_id))
    task.add_done_callback(functools.partial(_slow_edit_ended, job_id))
    raise TimeoutError(
        f"Discord has not answered job #{job_id}'s {what} within {wait_s:.3g} s; it goes on while the "
        "other jobs' progress does"
    )


def _slow_edit_ended(job_id: int, edit: asyncio.Task[None]) -> None:
    """An edit (or a new progress message) past its time ended: say how (its exception is retrieved,
    not left to the loop)."""
    if edit.cancelled():
        return
    failure = edit.exception()
    if failure is None:
        log.info("job #%s: Discord answered its slow progress message at last", job_id)
    else:
        log.warning("job #%s: its slow progress message failed at last: %r", job_id, failure)


async def _written_behind(what: str, write: Awaitable[Any]) -> None:
    """One write of `_write_behind`: raised while the database is away, logged when refused otherwise
    (a deleted sample, say: it must not hold up the others)."""
    try:
        await write
    except Exception as exc:
        if database_unreachable(exc):
            raise
        log.warning("could not record %s: %r", what, exc)


def _drop(pending: dict[K, V], key: K, record: V) -> None:
    if key in pending and pending[key] == record:
        del pending[key]
