"""A new server's walk through the commands, as README.md's "Commands in Discord" describes them:
what each reply says must be right, specific and consistent with the README and with each other."""

from __future__ import annotations

import sys

import pytest

from bot.requests import MAX_HISTORY_PAGE
from sampler.jobspec import JobParams
from storage.models import JobKind
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    answer_of,
    make_bot,
    progress_message,
    queue_song,
    relay_of,
    reply_of,
    when,
)


async def _jobs_of(store: JobStore, fake: FakeDiscord, user: str, count: int) -> None:
    """`count` queued jobs of `user` in #general, stored as `/jukebox` would (no limit in the way)."""
    for seed in range(count):
        await store.enqueue(
            kind=JobKind.GENERATE,
            model="5b",
            params=JobParams(seed=seed).to_json(),
            channel_id=fake.channel("general").id,
            user_id=fake.user(user).id,
            guild_id=fake.default_guild.id,
        )


async def test_history_of_another_member_points_to_their_next_page(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """`/history user:@alice` with more than a page: the "More" hint must page through alice's jobs,
    not the reader's own (`/history page:2` alone shows bob his own second page)."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    await _jobs_of(sqlite_store, fake, "alice", 11)
    alice = fake.user("alice")
    reply = await reply_of(fake, await fake.invoke_command("history", {"user": alice}, user=fake.user("bob")))
    more = reply.splitlines()[-1]
    assert more.startswith("More:") and "page:2" in more, reply
    assert "user:" in more and f"<@{alice.id}>" in more, more
    # One's own history needs no user: the hint stays as short as before.
    own = await reply_of(fake, await fake.invoke_command("history", {}, user=alice))
    assert own.splitlines()[-1] == "More: `/history page:2`", own


async def test_a_one_style_sweep_is_not_one_styles(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """`styles:` with one style is a valid sweep (one sample): the public progress message says
    "a sweep of 1 style", not "1 styles"."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    await queue_song(fake, styles="Ella Fitzgerald / jazz")
    progress = await fake.wait_for(when(lambda: progress_message(fake, 1)))
    assert "a sweep of 1 style ·" in progress.content and "1 styles" not in progress.content, progress.content
    assert "· 1 sample ·" in progress.content, progress.content
    history = await reply_of(fake, await fake.invoke_command("history", {}))
    assert "a sweep of 1 style ·" in history and "1 styles" not in history, history


async def test_a_job_held_behind_the_users_queued_job_does_not_claim_one_is_running(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The running limit is one and no worker took either of alice's two jobs yet: the second waits for
    the first, which is queued, not running."""
    fake = fake_discord
    bot = await bot_runner.start(make_bot(fake, sqlite_store))
    for _ in range(2):
        await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    await relay_of(bot).run_pass()
    held = progress_message(fake, 2)
    assert held is not None and held.content.endswith(
        "⏳ Queued: waiting until an earlier job of yours here ends."
    ), held.content
    queue = await reply_of(fake, await fake.invoke_command("queue", user=fake.user("alice")))
    assert "running jobs" not in queue and "waiting until an earlier job of yours here ends" in queue, queue


async def test_lyrics_form_asked_of_a_model_without_lyrics_says_why_none_opened(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """README: the `5b` model has no lyrics and ignores them with a note. `lyrics_modal:true` asked for
    a form: the member must hear why none opened, not only "Queued as job #1"."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    record = await fake.invoke_command("jukebox", {"model": "5b", "lyrics_modal": True})
    assert record.modal is None
    reply = await reply_of(fake, record)
    assert reply.startswith("Queued as job #1."), reply
    notes = [line for line in reply.splitlines() if line.startswith("Note:")]
    assert any("5b" in note and "lyrics" in note for note in notes), reply


async def test_command_hints_name_the_options_that_exist(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The "Queued" reply tells the member how to cancel: with the option `/cancel` has (`job:`), as
    README.md writes it and as other replies write theirs (`/upsample sample:12`)."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    reply = await queue_song(fake)
    assert "`/cancel job:1`" in reply, reply
    assert "job" in {
        option["name"] for option in fake.synced_commands(fake.default_guild)["cancel"]["options"]
    }


async def test_history_of_exactly_a_page_offers_no_next_page(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Ten jobs fill page 1: a "More: /history page:2" would lead to "no jobs on page 2"."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    await _jobs_of(sqlite_store, fake, "alice", 10)
    alice = fake.user("alice")
    for reader in (alice, fake.user("bob")):
        reply = await reply_of(fake, await fake.invoke_command("history", {"user": alice}, user=reader))
        assert len(reply.splitlines()) == 11 and "More:" not in reply, reply


async def test_a_sweeps_sample_posted_again_names_its_style(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """`/sample` re-posts a style sweep's sample with the style it was made in, as its first post does."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    await queue_song(fake, styles="the beatles / pop; ella fitzgerald / jazz", model="5b_lyrics")
    worker = PlayedWorker(sqlite_store)
    await worker.complete(await worker.claim(), n=2, full=False, seconds=0.5)
    record = await fake.invoke_command("sample", {"id": 2})
    posted = await fake.wait_for(lambda: answer_of(record))
    assert posted.content.startswith("**Sample #2** · job #1 by ") and posted.attachments, posted.content
    assert posted.content.splitlines()[1:] == ["Style: **ella fitzgerald / jazz**"], posted.content


async def test_last_history_page_offers_no_page_past_the_maximum(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member with more than MAX_HISTORY_PAGE pages of jobs reads the last page: no hint to a page
    past it, which Discord's option range and `history_page` refuse. (The store is shifted so that 11
    jobs stand at page 1000's offset, instead of storing 10,001 jobs.)"""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    await _jobs_of(sqlite_store, fake, "alice", 11)
    real = sqlite_store.recent_jobs
    shift = (MAX_HISTORY_PAGE - 1) * sys.modules["bot.exts.jobs"].HISTORY_PAGE

    async def shifted(user_id: int, guild_id: int | None = None, limit: int = 10, offset: int = 0):  # type: ignore[no-untyped-def]
        return await real(user_id, guild_id, limit=limit, offset=max(0, offset - shift))

    monkeypatch.setattr(sqlite_store, "recent_jobs", shifted)
    alice = fake.user("alice")
    reply = await reply_of(fake, await fake.invoke_command("history", {"page": MAX_HISTORY_PAGE}, user=alice))
    assert f"page:{MAX_HISTORY_PAGE + 1}" not in reply, reply


@pytest.mark.parametrize("older", [0, 1])
async def test_another_members_last_page_at_the_scan_limit_says_older_jobs_may_be_hidden_only_if_any(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    older: int,
) -> None:
    """alice has exactly HISTORY_SCAN_LIMIT jobs (here made 20 so the test stores few), all visible to
    bob. Her last page (2) is complete: nothing older exists, so "Older jobs may be hidden" would be
    false; with one job more it is true."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    # discord.py loads an extension as a fresh module object: patch the one the bot runs.
    monkeypatch.setattr(sys.modules["bot.exts.jobs"], "HISTORY_SCAN_LIMIT", 20)
    await _jobs_of(sqlite_store, fake, "alice", 20 + older)
    alice = fake.user("alice")
    reply = await reply_of(
        fake, await fake.invoke_command("history", {"user": alice, "page": 2}, user=fake.user("bob"))
    )
    assert reply.count("• Job #") == 10, reply
    assert ("Older jobs may be hidden" in reply) is bool(older), reply
