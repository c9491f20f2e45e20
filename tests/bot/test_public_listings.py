"""A reply posted publicly in a channel lists (or joins) only what everyone reading that channel may
see: samples made there, or in a channel the server's @everyone role may read, and of those only what
the asker may use. /top and /curate top:/user: in #general leave out a private #music's samples even
for a member who reads #music; /queue (ephemeral) leaves out the running jobs of channels the asker
cannot see."""

from __future__ import annotations

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import PlayedWorker, make_bot, reply_of
from tests.bot.test_channel_privacy import made, posted, private_music
from tests.bot.test_curate import final_reply


async def test_public_listings_leave_out_a_private_channels_samples_even_for_its_readers(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await private_music(fake, bot, "bob")
    bob = fake.user("bob")
    general, music = fake.channel("general"), fake.channel("music")
    first, second = await made(store, fake, "bob", general.id, n=2)  # job 1
    (hidden,) = await made(store, fake, "bob", music.id)  # job 2
    for voter in range(3):
        await store.toggle_vote(hidden, voter)

    in_general = (await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=bob))).content
    assert f"Sample #{hidden} " not in in_general and f"<#{music.id}>" not in in_general, in_general
    assert f"Sample #{first} " in in_general and f"Sample #{second} " in in_general, in_general
    in_music = (
        await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=bob, channel=music))
    ).content
    assert f"1. Sample #{hidden} · 👍 3" in in_music, in_music  # made there: its readers see it

    done = await final_reply(fake, await fake.invoke_command("curate", {"top": "all"}, user=bob))
    assert done.startswith("Done: sample #"), done
    piece = (await store.recent_jobs(bob.id))[0]
    assert sorted(piece.params["curation"]["sample_ids"]) == [first, second]
    (piece_sample,) = [info.id for info in await store.samples_for_job(piece.id)]
    third, fourth = await made(store, fake, "bob", general.id, n=2)
    done = await final_reply(fake, await fake.invoke_command("curate", {"user": bob}, user=bob))
    assert done.startswith("Done: sample #"), done
    piece = (await store.recent_jobs(bob.id))[0]
    # (#first and #second play inside the earlier piece)
    assert sorted(piece.params["curation"]["sample_ids"]) == sorted([piece_sample, third, fourth])

    # Bob's own /history is his alone (ephemeral): it lists the #music job.
    own = await reply_of(fake, await fake.invoke_command("history", user=bob))
    assert "• Job #2 " in own, own


async def test_queue_leaves_out_running_jobs_of_channels_the_asker_cannot_see(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await private_music(fake, bot, "bob")
    alice, bob = fake.user("alice"), fake.user("bob")
    guild_id = fake.default_guild.id
    for channel in ("general", "music"):
        await store.enqueue(
            kind="generate",
            model="5b",
            params={"artist": "queen"},
            channel_id=fake.channel(channel).id,
            user_id=bob.id,
            guild_id=guild_id,
        )
        await PlayedWorker(store).claim()

    seen_by_alice = await reply_of(fake, await fake.invoke_command("queue", user=alice))
    assert "• Job #1 for " in seen_by_alice and "Job #2" not in seen_by_alice, seen_by_alice
    seen_by_bob = await reply_of(fake, await fake.invoke_command("queue", user=bob))
    assert "Job #1" in seen_by_bob and "Job #2" in seen_by_bob, seen_by_bob
