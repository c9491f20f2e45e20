"""The database goes away (or Discord fails) just after a write committed: a job queued, a vote
counted, the bot removed from a server. The member must not be told to "try again" what is done
(a second job, a vote taken back), and what the write started must still happen once it is back."""

from __future__ import annotations

from typing import Any

from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    job_count,
    make_bot,
    posted_preview,
    progress_message,
    relay_of,
    reply_of,
    sample_message,
    when,
)
from tests.bot.test_outage_mid_post import StoreThatGoesAway
from tests.waiting import wait_until


class StoreAwayAfter(StoreThatGoesAway):
    """The bot's store, whose database becomes unreachable (a refused connection) as soon as the store
    method named `after` has committed, until `away` is set back."""

    after: str | None = None

    async def enqueue(self, **fields: Any) -> int:
        job_id = await super().enqueue(**fields)
        self.away = self.away or self.after == "enqueue"
        return job_id

    async def toggle_vote(self, sample_id: int, user_id: int) -> tuple[bool, int]:
        done = await super().toggle_vote(sample_id, user_id)
        self.away = self.away or self.after == "toggle_vote"
        return done


def stored_all_the_same(job_id: int, went_wrong: str) -> str:
    return (
        f"Job #{job_id} is stored all the same, though {went_wrong} just after (logged under job "
        f"#{job_id}). Its results are posted in this channel as usual, so there is no need to ask again."
    )


async def test_a_database_lost_just_after_queueing_says_the_job_is_queued(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """It said "this could not be done … please try again": doing so queued the same job twice."""
    fake = fake_discord
    store = StoreAwayAfter(sqlite_store.engine)
    store.after = "enqueue"
    bot = await bot_runner.start(make_bot(fake, store))

    reply = await reply_of(
        fake, await fake.invoke_command("jukebox", {"samples": 1}, user=fake.user("alice"))
    )

    assert reply == stored_all_the_same(1, "the bot lost its database")
    store.away = False
    assert await job_count(sqlite_store) == 1
    relay_of(bot).poke()  # its next pass, the database back, posts its progress message
    await fake.wait_for(when(lambda: progress_message(fake, 1)))


async def test_a_queued_reply_discord_does_not_take_says_the_job_is_queued_and_announces_it(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Discord refusing "Queued as job #1" (here an unknown webhook; 503s past discord.py's own
    retries the same): the member was told "something went wrong … please try again later" of a
    queued job, and its progress message waited for the relay's next pass."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    fake.fail_next(
        "POST", "/webhooks/{application_id}/{token}", status=404, code=10015, message="Unknown Webhook"
    )

    reply = await reply_of(
        fake, await fake.invoke_command("jukebox", {"samples": 1}, user=fake.user("alice"))
    )

    assert reply == stored_all_the_same(1, "something went wrong on our side")
    assert await job_count(sqlite_store) == 1
    await fake.wait_for(when(lambda: progress_message(fake, 1)))


async def test_a_database_lost_just_after_a_vote_says_the_vote_is_counted(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """It said "this could not be done … please try again": a second click takes the vote back."""
    fake = fake_discord
    store = StoreAwayAfter(sqlite_store.engine)
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await posted_preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    store.after = "toggle_vote"

    record = await fake.click(message, f"jukebot:vote:{sample_id}", user=fake.user("bob"))
    told = await fake.wait_for(lambda: record.followups[0] if record.followups else None)

    assert told.ephemeral and told.content == (
        "Your vote is counted, but the button could not show the new count: the bot lost its database "
        "just after. It shows it at the next vote."
    )
    store.away = False
    assert await sqlite_store.vote_count(sample_id) == 1


async def test_a_removal_from_a_server_while_the_database_is_away_cancels_its_jobs_once_it_is_back(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The cancel failed once and nothing tried again: workers went on claiming the server's jobs,
    whose results nobody there could see."""
    fake = fake_discord
    store = StoreAwayAfter(sqlite_store.engine)
    await bot_runner.start(make_bot(fake, store))
    reply = await reply_of(
        fake, await fake.invoke_command("jukebox", {"samples": 1}, user=fake.user("alice"))
    )
    assert reply.startswith("Queued as job #1."), reply
    store.away = True

    await fake.dispatch("GUILD_DELETE", {"id": str(fake.default_guild.id)})

    async def tried() -> bool:
        return store.refused > 0

    await wait_until(tried, within=30, what="the bot to try to cancel the server's jobs")
    store.away = False

    async def cancelled() -> bool:
        return (await sqlite_store.get_job(1)).status == JobStatus.CANCELLED

    await wait_until(cancelled, within=30, what="the server's job to be cancelled once the database is back")
