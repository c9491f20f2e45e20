"""`/curate` of samples a piece here was joined from already: joining is deterministic, so it would
store and post the same piece again (as a second upsample of a preview would give the same codes).
The reply names the piece and how to post it; a piece the member may not use is no answer."""

from __future__ import annotations

import itertools
import threading
from typing import Any, cast

import numpy as np

from bot import curating
from bot.curating import Similarity
from bot.exts.curate import Curate
from sampler.audio import decode_audio
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import make_bot, when
from tests.bot.test_curate import curation_held, final_reply, made_job
from tests.storage.helpers import CHANNEL, GUILD, MODEL, USER, new_sample


async def test_the_same_samples_again_name_the_piece_made_of_them_and_store_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)  # job 1: samples #1 to #3
    alice, bob = fake.user("alice"), fake.user("bob")
    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}, user=alice))
    assert reply.startswith("Done: sample #4 "), reply

    # Listed in another order, by another member: the same three samples.
    again = await final_reply(fake, await fake.invoke_command("curate", {"samples": "3, 1, 2"}, user=bob))
    channel = fake.channel("general").id
    assert again == (
        f"These 3 samples were joined already: sample #4 (curated by <@{alice.id}> in <#{channel}>), and "
        "joining them again makes the same piece. `/sample 4` posts it here."
    )
    assert sorted(job.id for job in await store.list_jobs()) == [1, 2]  # nothing stored

    # Fewer of them is another piece.
    fewer = await final_reply(fake, await fake.invoke_command("curate", {"samples": "1, 2"}, user=bob))
    assert fewer.startswith("Done: sample #5 "), fewer


async def test_the_samples_make_the_same_piece_in_whatever_order_they_are_listed(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A listing in another order is refused as "the same piece", so it must be: the chain started
    from the lower listed index, and `3, 1, 2` joined in another order than `1, 2, 3`."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    ids = await made_job(fake, store, 3)
    samples = {sample_id: await store.get_sample(sample_id) for sample_id in ids}
    pieces = {
        listed: curating.make_piece([samples[i] for i in listed], Similarity.CHROMAPRINT, lambda _: None)
        for listed in itertools.permutations(ids)
    }
    first = pieces[tuple(ids)]
    for listed, piece in pieces.items():
        assert (piece.order, piece.join_scores) == (first.order, first.join_scores), listed
        # (an Ogg stream's serial number is random: the sound is compared)
        assert np.array_equal(heard(piece.audio), heard(first.audio)), listed


def heard(audio: bytes) -> np.ndarray:
    return decode_audio(audio, max_seconds=None, silence_threshold_db=None)


async def _piece(store: JobStore, record: dict[str, Any], **where: int) -> int:
    _, sample_id = await store.store_curation(
        guild_id=where.get("guild_id", GUILD),
        channel_id=where.get("channel_id", CHANNEL),
        user_id=USER,
        model=MODEL,
        params={"curation": record},
        sample=new_sample(0, seed=0),
    )
    return sample_id


async def test_only_a_piece_of_exactly_these_samples_by_this_similarity_that_the_member_may_use_counts(
    sqlite_store: JobStore,
) -> None:
    store = sqlite_store
    silent_left_out = {"sample_ids": [2, 1], "left_out_silent": [3], "similarity": "chromaprint"}
    by_codes = {"sample_ids": [1, 2, 3], "similarity": "codes"}
    hidden = {"sample_ids": [1, 2], "similarity": "chromaprint"}
    older = await _piece(store, silent_left_out)
    await _piece(store, by_codes)
    await _piece(store, hidden, channel_id=CHANNEL + 1)
    await _piece(store, {"sample_ids": [1, 2, 3, 4], "similarity": "chromaprint"})
    await _piece(store, {"sample_ids": [1, 2, 3], "similarity": "chromaprint"}, guild_id=GUILD + 1)
    await _piece(store, {"selection": "no ids: a record this bot cannot read", "similarity": "chromaprint"})

    async def may_use(channel_id: int, user_id: int) -> bool:
        return channel_id == CHANNEL

    async def found(ids: list[int], similarity: Similarity) -> int | None:
        piece = await curating.joined_before(store, GUILD, ids, similarity, may_use)
        return None if piece is None else piece.sample_id

    # The silent sample it left out counts: joined again, it would be left out again.
    assert await found([3, 1, 2], Similarity.CHROMAPRINT) == older
    assert await found([1, 2], Similarity.CHROMAPRINT) is None  # only in a channel she cannot read
    assert await found([1, 2, 3], Similarity.CODES) == older + 1
    assert await found([1, 3], Similarity.CHROMAPRINT) is None


async def test_a_curation_of_the_same_samples_that_waited_its_turn_names_the_piece_made_meanwhile(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Checked before it waits, and again once joined: the curation it waited for stored the piece."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)
    stored = threading.Event()
    async with curation_held(bot, fake) as (first, release):  # alice's, of job 1
        second = await fake.invoke_command("curate", {"samples": "1, 2, 3"}, user=fake.user("bob"))
        await fake.wait_for(when(lambda: second.original and "starts as soon as" in second.original.content))
        cog = cast(Curate, bot.get_cog("Curate"))
        cog.before_joining = lambda: stored.wait(timeout=60) and None  # bob's: once alice's piece is stored
        release.set()
        assert (await final_reply(fake, first)).startswith("Done: sample #4 ")
        stored.set()
        again = await final_reply(fake, second)
    assert again.startswith("These 3 samples were joined already: sample #4 "), again
    assert sorted(job.id for job in await store.list_jobs()) == [1, 2]
