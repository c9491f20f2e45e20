"""What a server's moderators (and a slow Discord) do to a job mid-flight.

- Attach Files taken from the bot while a job ran: its samples could not be posted, and its progress
  message went on saying "Running 75%" under a Cancel button, nobody told why. It now says so, with the
  numbers `/sample` re-sends them by.
- Read Message History taken from the bot: Discord refuses a reply without it, and every result (sent as
  a reply to the progress message) was given up. They now go out as messages of their own.
- Discord slow to answer progress edits (hung requests, or 500s discord.py tries five times over 25 s):
  one pass waited on each in turn, holding up every server's results and new jobs' messages. A pass now
  waits PROGRESS_PASS_WAIT_S for its edits in all.
- A channel or thread deleted: its queued jobs still took a worker's hours. They are now cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import discord
import pytest

from bot import relay as relay_module
from bot.relay import ProgressRelay
from storage.models import JobStatus
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, HeldRequest
from tests.bot.harness import PlayedWorker, make_bot, progress_message, relay_of, sample_message
from tests.bot.test_relay_delivery import _queued_and_claimed
from tests.waiting import wait_until

EDITS = "/channels/{channel_id}/messages/{message_id}"


async def _bot_with_a_running_job(
    fake: FakeDiscord, bot_runner: BotRunner, store: JobStore
) -> tuple[ProgressRelay, PlayedWorker, ClaimedJob]:
    """A bot, and alice's job in #general claimed by a worker the test plays: its relay, the worker, the job."""
    relay = relay_of(await bot_runner.start(make_bot(fake, store)))
    worker = PlayedWorker(store)
    return relay, worker, await _queued_and_claimed(fake, worker, "alice", "general", seed=1)


async def test_samples_refused_for_a_permission_taken_mid_job_are_named_in_the_progress_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    relay, worker, job = await _bot_with_a_running_job(fake, bot_runner, store)
    await worker.progress(job.id, window=3, of=4)
    await relay.run_pass()
    await fake.deny_bot(fake.channel("general"), discord.Permissions(attach_files=True))
    first, second = await worker.complete(job, n=2, full=False)
    await relay.run_pass()

    shown = progress_message(fake, job.id)
    assert shown is not None
    last_line = shown.content.splitlines()[-1]
    assert last_line.startswith("✅ Done, but I could not post its samples here"), shown.content
    assert "I am missing the Attach Files permission here" in last_line
    assert f"#{first}, #{second}" in last_line and "`/sample`" in last_line
    assert f"jukebot:cancel:{job.id}" not in shown.custom_ids  # it runs no more
    assert (await store.get_job(job.id)).results_posted_at is not None  # given up: tried no more
    assert sample_message(fake, first) is None


async def test_results_go_out_unreplied_when_the_bot_may_no_longer_read_the_history(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    relay, worker, job = await _bot_with_a_running_job(fake, bot_runner, store)
    await fake.deny_bot(fake.channel("general"), discord.Permissions(read_message_history=True))
    (sample_id,) = await worker.complete(job, n=1, full=False)
    await relay.run_pass()

    posted = sample_message(fake, sample_id)
    assert posted is not None and posted.reference is None
    shown = progress_message(fake, job.id)
    assert shown is not None and shown.content.endswith("✅ Done: 1 sample below.")
    refused = [r for r in fake.rejections if r.method == "POST" and (r.error or {}).get("code") == 160002]
    assert len(refused) == 1  # the reply, once: then the message on its own


async def test_a_new_jobs_progress_message_stands_alone_when_the_bot_may_not_read_the_history(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    relay = relay_of(await bot_runner.start(make_bot(fake, store)))
    general = fake.channel("general")
    worker = PlayedWorker(store)
    parent = await _queued_and_claimed(fake, worker, "alice", "general", seed=1)
    (sample_id,) = await worker.complete(parent, n=1, full=False)
    await relay.run_pass()
    assert sample_message(fake, sample_id) is not None
    await fake.deny_bot(general, discord.Permissions(read_message_history=True))
    # An upsample's progress message replies to its sample's message: here it cannot, and goes out on
    # its own. (A request is refused without Read Message History, so the job is queued as one asked for
    # just before a moderator's change is.)
    parent_job = await store.get_job(parent.id)
    job_id = await store.enqueue(
        kind="upsample",
        model=parent_job.model,
        params=parent_job.params,
        channel_id=general.id,
        user_id=fake.user("alice").id,
        guild_id=general.guild_id,
        parent_sample_id=sample_id,
    )
    relay.track(job_id)
    await relay.run_pass()
    shown = progress_message(fake, job_id)
    assert shown is not None and shown.reference is None


async def _running_with_news_and_one_finished(
    fake: FakeDiscord, bot_runner: BotRunner, store: JobStore, where: list[tuple[str, str]]
) -> tuple[ProgressRelay, int]:
    """A bot, a running job per (member, channel) in `where` with progress to show, and a job finished
    in #music: the relay, and the finished job's sample."""
    relay = relay_of(await bot_runner.start(make_bot(fake, store)))
    relay.min_edit_interval_s = 0.0
    worker = PlayedWorker(store)
    running = [
        await _queued_and_claimed(fake, worker, user, channel, seed=i)
        for i, (user, channel) in enumerate(where)
    ]
    finished = await _queued_and_claimed(fake, worker, "moderator", "music", seed=9)
    await relay.run_pass()
    for job in running:
        await worker.progress(job.id, window=1, of=4)
    (sample_id,) = await worker.complete(finished, n=1, full=False)
    return relay, sample_id


async def test_slow_progress_edits_hold_up_no_results_past_the_pass_wait(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "PROGRESS_PASS_WAIT_S", 0.5)
    fake = fake_discord
    where = [("alice", "general"), ("bob", "music"), ("mod", "general")]
    relay, sample_id = await _running_with_news_and_one_finished(fake, bot_runner, sqlite_store, where)
    held = [fake.hold("PATCH", EDITS) for _ in where]  # Discord answers none of them
    passing = asyncio.create_task(relay.run_pass())
    try:
        # At 60 s a hung edit, one after another, the results would wait minutes.
        await fake.wait_for(lambda: sample_message(fake, sample_id, "music") is not None, timeout_s=10)
        assert held[0].arrived and not held[2].arrived  # the other jobs' edits wait for a later pass
    finally:
        for h in held:
            h.release()
        await passing


async def test_progress_edits_answered_with_500s_hold_up_no_results_past_the_pass_wait(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "PROGRESS_PASS_WAIT_S", 0.5)
    fake = fake_discord
    where = [("alice", "general"), ("bob", "music")]
    relay, sample_id = await _running_with_news_and_one_finished(fake, bot_runner, sqlite_store, where)
    # An incident: discord.py tries each edit five times, waiting 1 + 3 + 5 + 7 + 9 s in between.
    fake.fail_next("PATCH", EDITS, status=500, times=1000)
    passing = asyncio.create_task(relay.run_pass())
    try:
        await fake.wait_for(lambda: sample_message(fake, sample_id, "music") is not None, timeout_s=10)
    finally:
        fake.clear_failures()
        await passing


async def test_a_deleted_channels_queued_jobs_are_cancelled_and_its_running_ones_finish(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    running = await _queued_and_claimed(fake, worker, "alice", "music", seed=1)
    elsewhere = await _queued_and_claimed(fake, worker, "bob", "general", seed=2)
    queued = []
    for seed in (3, 4):
        record = await fake.invoke_command(
            "jukebox",
            {"artist": "queen", "samples": 1, "seed": seed},
            user=fake.user("mod"),
            channel=fake.channel("music"),
        )
        await fake.wait_for(lambda record=record: record.original is not None and not record.original.loading)
        queued.append(max(job.id for job in await store.unfinished_jobs()))

    await fake.delete_channel(fake.channel("music"))

    async def cancelled() -> bool:
        return [(await store.get_job(job_id)).status for job_id in queued] == [JobStatus.CANCELLED] * 2

    await wait_until(cancelled, 10.0, "the deleted channel's queued jobs to be cancelled")
    assert (await store.get_job(queued[0])).error == "its channel was deleted"
    assert (await store.get_job(running.id)).status == JobStatus.RUNNING  # its work is kept
    assert (await store.get_job(elsewhere.id)).status == JobStatus.RUNNING


async def test_a_deleted_threads_queued_jobs_are_cancelled(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    thread = fake.add_thread(fake.channel("general"), "jams")
    await fake.dispatch("THREAD_CREATE", thread.payload() | {"newly_created": True})
    record = await fake.invoke_command("jukebox", {"artist": "queen", "samples": 1}, channel=thread)
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    (job,) = await store.unfinished_jobs()

    await fake.delete_thread(thread)

    async def cancelled() -> bool:
        return (await store.get_job(job.id)).status == JobStatus.CANCELLED

    await wait_until(cancelled, 10.0, "the deleted thread's queued job to be cancelled")


async def test_the_fake_refuses_what_discord_refuses_a_bot_without_access_or_history(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    general = fake.channel("general")
    target = await fake.post_user_message(general, fake.user("alice"), "hi")
    channel = bot.get_partial_messageable(general.id, guild_id=general.guild_id)
    own = await channel.send("mine")
    reply = discord.MessageReference(message_id=target.id, channel_id=general.id, fail_if_not_exists=False)

    general.bot_denied = discord.Permissions(read_message_history=True).value
    with pytest.raises(discord.Forbidden) as refused:
        await channel.send("a reply", reference=reply)
    assert refused.value.code == 160002
    with pytest.raises(discord.Forbidden) as refused:
        await channel.fetch_message(own.id)
    assert refused.value.code == 50013
    await channel.send("not a reply")  # allowed

    general.bot_denied = discord.Permissions(view_channel=True).value
    for request in (own.edit(content="edited"), own.delete()):
        with pytest.raises(discord.Forbidden) as refused:
            await request
        assert refused.value.code == 50001


async def test_a_progress_message_whose_edits_keep_failing_goes_behind_the_others(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message edited longest ago goes first; one whose edits failed stayed "edited longest ago", and
    took a pass's whole edit budget (or its whole wait, failing slowly) at every pass."""
    fake, store = fake_discord, sqlite_store
    relay = relay_of(await bot_runner.start(make_bot(fake, store)))
    relay.min_edit_interval_s = 0.0
    relay.edit_budget = relay_module.EditBudget(per_pass=1)
    worker = PlayedWorker(store)
    failing = await _queued_and_claimed(fake, worker, "alice", "general", seed=1)  # its message is older
    healthy = await _queued_and_claimed(fake, worker, "bob", "music", seed=2)
    edit_now, tried = relay._edit_now, []

    async def edit_or_fail(job: Any, text: str, **how: Any) -> None:
        tried.append(job.id)
        if job.id == failing.id:
            raise ConnectionResetError("the connection dropped")  # as after discord.py's tries at 500s
        await edit_now(job, text, **how)

    monkeypatch.setattr(relay, "_edit_now", edit_or_fail)
    for window in (1, 2):
        for job in (failing, healthy):
            await worker.progress(job.id, window=window, of=4)
        await relay.run_pass()
    assert tried == [failing.id, healthy.id]


async def _running_with_an_edit_unanswered(
    fake: FakeDiscord, bot_runner: BotRunner, store: JobStore
) -> tuple[ProgressRelay, PlayedWorker, ClaimedJob, HeldRequest]:
    """A running job whose progress edit Discord does not answer (held past the pass)."""
    relay, worker, job = await _bot_with_a_running_job(fake, bot_runner, store)
    relay.min_edit_interval_s = 0.0
    await worker.progress(job.id, window=3, of=4)
    held = fake.hold("PATCH", EDITS)
    await relay.run_pass()
    assert held.arrived
    return relay, worker, job, held


async def test_the_note_waits_for_a_progress_edit_discord_has_not_answered_yet(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its edit was refused at once ("Discord has not answered the last edit yet") and the note dropped
    for good: the message went on saying "Running", Cancel button and all."""
    monkeypatch.setattr(relay_module, "PROGRESS_PASS_WAIT_S", 0.3)
    fake, store = fake_discord, sqlite_store
    relay, worker, job, held = await _running_with_an_edit_unanswered(fake, bot_runner, store)
    await fake.deny_bot(fake.channel("general"), discord.Permissions(attach_files=True))
    await worker.complete(job, n=1, full=False)
    passing = asyncio.create_task(relay.run_pass())
    try:
        await fake.wait_for(lambda: any((r.error or {}).get("code") == 50013 for r in fake.rejections))
    finally:
        held.release()
        await passing
    shown = progress_message(fake, job.id)
    assert shown is not None and "Done, but I could not post its samples here" in shown.content
    assert f"jukebot:cancel:{job.id}" not in shown.custom_ids


async def test_a_channel_deleted_unseen_cancels_its_queued_jobs_when_discord_says_it_is_gone(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Deleted while no bot ran, or a thread of a deleted channel the bot had not seen: no event came."""
    fake, store = fake_discord, sqlite_store
    relay = relay_of(await bot_runner.start(make_bot(fake, store)))
    relay.min_edit_interval_s = 0.0
    for user, channel in (("alice", "general"), ("bob", "music")):
        record = await fake.invoke_command(
            "jukebox", {"artist": "queen"}, user=fake.user(user), channel=fake.channel(channel)
        )
        await fake.wait_for(lambda record=record: record.original is not None and not record.original.loading)
    ahead, behind = sorted(job.id for job in await store.unfinished_jobs())
    await relay.run_pass()
    music = fake.channel("music")
    fake.default_guild.channels.remove(music)  # Discord forgot it; no bot heard
    del fake.channels[music.id]
    await PlayedWorker(store).claim()  # the job ahead: the one behind moves up, its message with it
    await relay.run_pass()
    job = await store.get_job(behind)
    assert (job.status, job.error) == (JobStatus.CANCELLED, "its channel was deleted")
    assert (await store.get_job(ahead)).status == JobStatus.RUNNING


async def test_a_final_text_waits_for_a_progress_edit_discord_has_not_answered_yet(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its edit was refused at once: an ERROR with a traceback, and the results tried again a pass later."""
    monkeypatch.setattr(relay_module, "PROGRESS_PASS_WAIT_S", 0.3)
    fake, store = fake_discord, sqlite_store
    relay, worker, job, held = await _running_with_an_edit_unanswered(fake, bot_runner, store)
    (sample_id,) = await worker.complete(job, n=1, full=False)
    monkeypatch.setattr(relay_module, "RESULTS_WAIT_S", 0.5)  # the pass goes on while the results wait
    caplog.set_level(logging.WARNING, logger="bot.relay")
    try:
        await relay.run_pass()
        assert sample_message(fake, sample_id) is not None
    finally:
        held.release()  # Discord answers the earlier edit: the final text goes after it

    def done() -> bool:
        shown = progress_message(fake, job.id)
        return shown is not None and shown.content.endswith("✅ Done: 1 sample below.")

    await fake.wait_for(done)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_stop_while_the_note_is_written_gives_the_results_claim_back(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note was written outside the handler that gives the claim back on a stop: the next bot
    waited for the claim to run out, then read the channel's history for what this one had sent."""
    fake, store = fake_discord, sqlite_store
    relay, worker, job = await _bot_with_a_running_job(fake, bot_runner, store)
    await fake.deny_bot(fake.channel("general"), discord.Permissions(attach_files=True))
    await worker.complete(job, n=1, full=False)
    writing = asyncio.Event()

    async def note_under_way(*args: Any) -> None:
        writing.set()
        await asyncio.Event().wait()  # Discord takes its time: the bot is stopped meanwhile

    monkeypatch.setattr(relay, "_say_not_posted", note_under_way)
    passing = asyncio.create_task(relay.run_pass())
    await asyncio.wait_for(writing.wait(), 30)
    passing.cancel()  # the bot stops
    await asyncio.gather(passing, return_exceptions=True)
    assert await store.claim_results_posting(job.id, "bot:next", 30.0) is not None  # at once
