"""Commands and buttons that read the database answer Discord within its 3 seconds however slow the
database is (a remote Postgres: each read a few round trips away), acknowledging first; /history
reads its jobs' samples in one query, not one per job."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import CALLBACK_MODAL, FakeDiscord, InteractionRecord
from tests.bot.harness import (
    PlayedWorker,
    answer_of,
    make_bot,
    queue_song,
    reply_of,
    sample_message,
)
from tests.bot.test_commands import _preview

DISCORD_DEADLINE_S = 3.0
# A read on a remote Postgres some 60 ms away: pool ping, BEGIN, the query, COMMIT.
REMOTE_READ_S = 0.3


@contextlib.contextmanager
def reads_delayed(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> Iterator[None]:
    """Every read of every store takes `delay_s` longer, as over a slow link."""
    reading = JobStore._reading

    @contextlib.asynccontextmanager
    async def slow(self: JobStore) -> AsyncIterator[Any]:
        await asyncio.sleep(delay_s)
        async with reading(self) as connection:
            yield connection

    with monkeypatch.context() as patched:
        patched.setattr(JobStore, "_reading", slow)
        yield


async def acknowledged_before_reading(
    monkeypatch: pytest.MonkeyPatch, ask: Callable[..., Awaitable[InteractionRecord]]
) -> InteractionRecord:
    """`ask(timeout_s=…)` (an interaction) is acknowledged within Discord's deadline while no store
    read has been answered: the database is slower than any deadline until then."""
    answering = asyncio.Event()
    reading = JobStore._reading

    @contextlib.asynccontextmanager
    async def held(self: JobStore) -> AsyncIterator[Any]:
        await answering.wait()
        async with reading(self) as connection:
            yield connection

    with monkeypatch.context() as patched:
        patched.setattr(JobStore, "_reading", held)
        try:
            return await ask(timeout_s=DISCORD_DEADLINE_S)
        finally:
            answering.set()


async def test_history_of_ten_jobs_answers_in_time_over_a_remote_database(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    for _ in range(10):
        await queue_song(fake, samples=1)
        await worker.complete(await worker.claim(), n=1, full=False)

    with reads_delayed(monkeypatch, REMOTE_READ_S):
        asked = await fake.invoke_command("history", timeout_s=DISCORD_DEADLINE_S)
        assert asked.ack_latency is not None and asked.ack_latency < DISCORD_DEADLINE_S
        history = await fake.wait_for(lambda: answer_of(asked))
    assert history.ephemeral
    lines = history.content.splitlines()  # a page of ten: no next page to offer
    assert [line.split(" · ")[0] for line in lines[1:]] == [f"• Job #{n}" for n in range(10, 0, -1)]
    assert all(f"→ samples #{n}" in line for n, line in zip(range(10, 0, -1), lines[1:], strict=True))


@pytest.mark.parametrize("asked", ["/top", "/jukebot-admin show", "/sample", "the vote button"])
async def test_it_acknowledges_before_it_reads_the_database(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    asked: str,
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    asks: dict[str, Callable[..., Awaitable[InteractionRecord]]] = {
        "/top": lambda **wait: fake.invoke_command("top", {"period": "all"}, **wait),
        "/jukebot-admin show": lambda **wait: fake.invoke_command(
            "jukebot-admin show", user=fake.user("mod"), **wait
        ),
        "/sample": lambda **wait: fake.invoke_command("sample", {"id": sample_id}, **wait),
        "the vote button": lambda **wait: fake.click(message, f"jukebot:vote:{sample_id}", **wait),
    }

    record = await acknowledged_before_reading(monkeypatch, asks[asked])

    if asked == "the vote button":
        await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1")
        return
    answer = await fake.wait_for(lambda: answer_of(record))
    expected = {
        "/top": "**Top samples of all time**\n1. Sample #1 · 👍 0",
        "/jukebot-admin show": "Longest song: 60 s",
        "/sample": "**Sample #1** · job #1",
    }
    assert answer.content.startswith(expected[asked]), answer.content
    assert answer.ephemeral == (asked == "/jukebot-admin show")


async def test_the_continue_form_opens_in_time_and_its_submission_checks_what_the_database_did_not_answer(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A form cannot be deferred, so checks that need the database open it only if the database
    answers in time; otherwise the form opens and its submission makes them."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    await queue_song(fake, "bob")
    await PlayedWorker(store).claim()  # bob's job runs: at his running limit, he may queue nothing

    for user in ("bob", "mod"):
        opened = await acknowledged_before_reading(
            monkeypatch,
            lambda user=user, **wait: fake.click(
                message, f"jukebot:continue:{sample_id}", user=fake.user(user), **wait
            ),
        )
        assert opened.response_type == CALLBACK_MODAL, user
        answer = await reply_of(fake, await fake.submit_modal(opened, {"seconds": "5"}))
        if user == "bob":
            assert answer.startswith("You have 1 job running"), answer
        else:
            assert answer.startswith("Queued as job #3."), answer
    assert (await store.get_job(3)).parent_sample_id == sample_id
    assert fake.rejections == []


async def test_the_lyrics_form_opens_in_time_and_its_submission_chooses_the_default_model(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await store.record_worker("small-gpu", ["1b_lyrics"])  # the default is the best model served

    opened = await acknowledged_before_reading(
        monkeypatch,
        lambda **wait: fake.invoke_command("jukebox", {"lyrics_modal": True, "artist": "queen"}, **wait),
    )
    assert opened.response_type == CALLBACK_MODAL
    answer = await reply_of(fake, await fake.submit_modal(opened, {"lyrics": "a line to sing"}))
    assert answer.startswith("Queued as job #1."), answer
    job = await store.get_job(1)
    assert (job.model, job.params["lyrics"]) == ("1b_lyrics", "a line to sing")
    assert fake.rejections == []
