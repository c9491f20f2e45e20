"""A long queue in one channel: each claim moves every queued job up one place, and Discord lets a bot
edit about 5 messages per 5 s in a channel (more makes discord.py wait, holding up the whole pass: new
jobs' messages, results). A pass edits within a budget, running jobs first, then the queue from its
front; further back than 20 a message shows a bound that a claim rarely changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event

from bot.progress import EXACT_PLACES, place_bound
from bot.relay import EDIT_WINDOW_S, EDITS_PER_CHANNEL, EditBudget
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import PlayedWorker, make_bot, progress_message, relay_of

QUEUED = 30
EDITS = "/channels/{channel_id}/messages/{message_id}"


async def test_a_claim_in_a_long_queue_edits_within_discords_limits_running_job_first(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    for user_id in range(1, QUEUED + 1):  # one job each: no user's limit holds any back
        await _queue(fake, store, user_id)
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    await relay.run_pass()  # after the first pass, which posted every progress message
    messages = {job_id: progress_message(fake, job_id) for job_id in range(1, QUEUED + 1)}
    texts = {job_id: m.content.splitlines()[-1] for job_id, m in messages.items() if m is not None}
    assert texts[1] == "⏳ Queued: position 1 in the queue."
    assert texts[EXACT_PLACES] == f"⏳ Queued: position {EXACT_PLACES} in the queue."
    assert texts[QUEUED] == "⏳ Queued: past position 20 in the queue."

    await PlayedWorker(store).claim()  # job 1 runs: jobs 2 to 21 move up a place shown exactly
    before = len(fake.calls("PATCH", EDITS))
    await relay.run_pass()
    edited = fake.calls("PATCH", EDITS)[before:]
    assert len(edited) == EDITS_PER_CHANNEL
    assert [_job_of(fake, record.path) for record in edited] == [1, 2, 3, 4]
    assert "Queued" not in _last_line(fake, 1)
    assert _last_line(fake, 5) == "⏳ Queued: position 5 in the queue."  # its old place, till the next pass

    relay.edit_budget.window_s = 0.0  # Discord's window has passed: the rest go out
    await relay.run_pass()
    assert len(fake.calls("PATCH", EDITS)) - before == EXACT_PLACES + 1  # jobs 1 to 21; not 22 to 30
    for job_id in range(2, QUEUED + 1):
        place = job_id - 1
        shown = f"position {place}" if place <= EXACT_PLACES else f"past position {place_bound(place)}"
        assert _last_line(fake, job_id) == f"⏳ Queued: {shown} in the queue.", job_id


async def _queue(fake: FakeDiscord, store: JobStore, user_id: int) -> None:
    await store.enqueue(
        kind="generate",
        model="5b_lyrics",
        params={"artist": "queen", "genre": "pop", "seconds": 20, "samples": 1},
        channel_id=fake.channel("general").id,
        user_id=user_id,
        guild_id=fake.default_guild.id,
    )


def _job_of(fake: FakeDiscord, path: str) -> int:
    message = fake.message(int(path.rsplit("/", 1)[1]))
    return int(message.content.split("#", 1)[1].split("*", 1)[0])


def _last_line(fake: FakeDiscord, job_id: int) -> str:
    message = progress_message(fake, job_id)
    assert message is not None
    return message.content.splitlines()[-1]


@pytest.mark.parametrize(
    ("place", "bound"),
    [(21, 20), (50, 20), (51, 50), (100, 50), (101, 100), (201, 200), (501, 500), (1001, 1000), (2001, 2000)],
)
def test_places_past_the_front_show_the_bound_before_them(place: int, bound: int) -> None:
    assert place_bound(place) == bound


async def test_queued_messages_are_not_left_stale_while_running_jobs_change_every_pass(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Four running jobs in one channel whose progress changes at every pass would take the whole
    channel budget every time: the message edited longest ago goes first, so the queue's move too."""
    fake, store = fake_discord, sqlite_store
    for user_id in range(1, 7):
        await _queue(fake, store, user_id)
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    await relay.run_pass()
    assert _last_line(fake, 6) == "⏳ Queued: position 6 in the queue."
    workers = [PlayedWorker(store, worker_id=f"worker-{n}") for n in range(4)]
    for worker in workers:
        await worker.claim()  # jobs 1 to 4 run; 5 and 6 move up to places 1 and 2
    now = [0.0]
    relay.edit_budget = EditBudget(clock=lambda: now[0])
    for window in range(1, 4):  # a pass every 5 s, as the relay polls: a fresh window each
        now[0] += EDIT_WINDOW_S
        for job_id, worker in enumerate(workers, start=1):
            await worker.progress(job_id, window=window, of=100)
        await relay.run_pass()
    assert _last_line(fake, 6) == "⏳ Queued: position 2 in the queue."


async def test_an_idle_pass_asks_the_database_the_same_however_many_servers_the_bot_is_in(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Each pass asked every server for its unposted results, one query each: 84 statements a pass for 40
    servers with nothing to do, every few seconds. It now asks only the servers that have some."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    one_server = await _statements_of(store, relay_of(bot).run_pass)
    await bot_runner.stop(bot)
    for number in range(40):
        fake.add_guild(f"Server {number}")
    bot = await bot_runner.start(make_bot(fake, store))
    assert len(bot.guilds) == 41
    assert await _statements_of(store, relay_of(bot).run_pass) == one_server

    # a server with results waiting is still asked, and its results go out
    await _queue(fake, store, 1)
    worker = PlayedWorker(store)
    await worker.complete(await worker.claim(), n=1, full=False)
    await relay_of(bot).run_pass()
    assert (await store.get_job(1)).results_posted_at is not None


async def _statements_of(store: JobStore, call: Callable[[], Awaitable[object]]) -> int:
    """How many statements `call` sends to the database."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        await call()
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    return len(seen)
