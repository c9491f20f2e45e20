"""`/curate` end to end: the real bot against the fake Discord, samples made through the real store."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import discord
import numpy as np
import pytest
from PIL import Image

from bot.bot import JukeBot
from bot.exts.curate import Curate
from sampler.audio import SAMPLE_RATE, decode_audio, encode_audio
from storage.models import JobKind, JobStatus
from storage.records import NewSample
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, InteractionRecord
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    codes,
    job_count,
    make_bot,
    make_settings,
    queue_song,
    reply_of,
    sample_message,
    tone,
)
from tests.waiting import wait_until

WORKING = ("Joining ", "Another curation is running")
PROGRESS = re.compile(
    r"Joining \d+ samples \([^)]*\): ((decoding|fingerprinting|comparing) \d+/\d+|encoding the piece)…"
)


async def final_reply(fake: FakeDiscord, record: InteractionRecord, timeout_s: float = 60.0) -> str:
    """The private reply to /curate once it stopped showing progress."""

    def done() -> str | None:
        original = record.original
        if original is None or original.loading or original.content.startswith(WORKING):
            return None
        return original.content

    content = await fake.wait_for(done, timeout_s=timeout_s)
    assert record.original is not None and record.original.ephemeral, content
    return content


async def made_job(fake: FakeDiscord, store: JobStore, n: int, seconds: float = 2.0) -> list[int]:
    """A /jukebox job by alice, played to success with `n` tones of different pitch."""
    await queue_song(fake, samples=min(n, 3))
    worker = PlayedWorker(store)
    return await worker.complete(await worker.claim(), n=n, full=False, seconds=seconds)


async def silent_job(store: JobStore, fake: FakeDiscord, n: int) -> list[int]:
    await queue_song(fake, samples=min(n, 3))
    worker = PlayedWorker(store)
    job = await worker.claim()
    silence = encode_audio(np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE, "ogg", 64_000)
    return await store.complete(
        job.id,
        worker.worker_id,
        [
            NewSample(index=i, seed=i, duration_seconds=1.0, audio=silence, audio_format="ogg")
            for i in range(n)
        ],
    )


async def test_curating_a_jobs_samples_posts_one_piece_that_is_stored_resent_and_voted(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    await bot_runner.start(make_bot(fake, store))
    ingredients = await made_job(fake, store, 3)

    before = len(bot_messages(fake))
    curate = await fake.invoke_command("curate", {"job": 1})
    reply = await final_reply(fake, curate)
    assert reply == "Done: sample #4 is posted in this channel (similarity: Chromaprint fingerprints)."
    assert curate.original is not None
    shown = [revision.content for revision in curate.original.edits[:-1]]
    assert shown and all(PROGRESS.fullmatch(line) for line in shown), shown  # "fingerprinting 2/3…"
    posted = bot_messages(fake)[before:]
    assert len(posted) == 1  # one message: audio, the strip, the buttons
    (message,) = posted
    assert message.content.startswith("**Sample #4** · job #2 · curated by ")
    audio, strip = message.attachments
    assert (audio.filename, strip.filename) == ("jukebot_sample_4.ogg", "jukebot_sample_4_order.png")
    assert message.custom_ids == ["jukebot:vote:4", "jukebot:continue:4"]

    job = await store.get_job(2)
    assert (job.kind, job.status) == (JobKind.CURATE, JobStatus.SUCCEEDED)
    record = job.params["curation"]
    assert sorted(record["sample_ids"]) == ingredients and len(record["join_scores"]) == 2
    assert record["similarity"] == "chromaprint" and record["left_out_silent"] == []
    order = " → ".join(
        [f"#{record['sample_ids'][0]}"]
        + [f"#{i}({s:.2f})" for i, s in zip(record["sample_ids"][1:], record["join_scores"], strict=True)]
    )
    assert f"Order (similarity of each join): {order}" in message.content
    piece = await store.get_sample(4)
    assert piece.message_id == message.id and audio.data == piece.audio
    parts = [await store.get_sample(i) for i in record["sample_ids"]]
    assert piece.codes(2) == b"".join(part.codes(2) or b"" for part in parts)  # continuable
    heard = decode_audio(piece.audio, max_seconds=None, silence_threshold_db=None)
    assert abs(heard.shape[0] / SAMPLE_RATE - piece.duration_seconds) < 0.1
    assert 3.0 < piece.duration_seconds < 6.0  # three 2 s tones, trimmed, minus two crossfades
    picture = np.asarray(Image.open(io.BytesIO(strip.data)).convert("L"))
    assert picture.shape[1] > 3 * 100 and picture.std() > 10  # three tiles, not blank

    resent = await fake.invoke_command("sample", {"id": 4})
    await fake.wait_for(lambda: resent.original is not None and not resent.original.loading)
    again = bot_messages(fake)[-1]
    assert again.content.startswith("**Sample #4** · job #2") and again.attachments[0].data == piece.audio
    head, order = again.content.split("\n")
    assert head.endswith(" s · curated piece")  # not a preview: no Upsample button either
    assert order.startswith("Order (similarity of each join): #"), order  # what it was joined from
    assert again.custom_ids == ["jukebot:vote:4", "jukebot:continue:4"]

    # continuable from its concatenated top-level codes, in the style of its last sample; not upsampled
    continued = await reply_of(fake, await fake.invoke_command("continue", {"sample": 4, "seconds": 5.0}))
    assert continued.startswith("Queued as job #3."), continued
    continue_job = await store.get_job(3)
    assert (continue_job.kind, continue_job.parent_sample_id) == (JobKind.CONTINUE, 4)
    assert continue_job.params["seconds"] == 5.0 and "curation" not in continue_job.params
    upsample = await reply_of(fake, await fake.invoke_command("upsample", {"sample": 4}))
    assert upsample.startswith("Sample #4 is a curated piece joined from other samples; upsample those")

    await fake.click(message, "jukebot:vote:4", user=fake.user("bob"))
    await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1")
    assert await store.vote_count(4) == 1
    assert (await store.top_samples(fake.default_guild.id))[0].sample.id == 4


async def test_without_chromaprint_samples_made_here_are_compared_by_their_codes(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    ingredients = await made_job(fake, store, 2)
    bot.settings.progress_min_edit_seconds = 3600.0  # progress edits are throttled to one per this
    monkeypatch.setitem(sys.modules, "chromaprint", None)  # `import chromaprint` fails as if not installed
    curate = await fake.invoke_command("curate", {"samples": "2, #1"})
    reply = await final_reply(fake, curate)
    assert curate.original is not None
    (shown, done) = curate.original.edits  # one progress line in the hour, then the answer
    assert PROGRESS.fullmatch(shown.content) and done.content == reply
    assert reply.startswith(
        "Done: sample #3 is posted in this channel (similarity: their stored Jukebox codes"
    )
    record = (await store.get_job(2)).params["curation"]
    assert record["similarity"] == "codes" and sorted(record["sample_ids"]) == ingredients
    message = sample_message(fake, 3)
    assert message is not None and "similarity: their stored Jukebox codes" in message.content


async def test_each_bad_selection_gets_its_own_reply_and_stores_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    await bot_runner.start(make_bot(fake, store, make_settings(max_curate_samples=3)))
    await made_job(fake, store, 1)  # job 1: sample 1
    await silent_job(store, fake, 2)  # job 2: samples 2, 3
    await made_job(fake, store, 2)  # job 3: samples 4, 5
    other = fake.add_guild("Other Server", channels=("lobby",))
    other_job = await store.enqueue(
        kind="generate", model="5b", params={}, channel_id=1, user_id=1, guild_id=other.id
    )
    worker = PlayedWorker(store)
    claimed = await worker.claim()
    assert claimed.id == other_job
    await store.complete(
        other_job,
        worker.worker_id,
        [
            NewSample(
                index=0,
                seed=0,
                duration_seconds=1.0,
                audio=encode_audio(tone(1.0), SAMPLE_RATE, "ogg", 64_000),
                audio_format="ogg",
                codes_level_2=codes(300, 0),
            )
        ],
    )  # sample 6, in another server
    jobs_before = await job_count(store)

    async def reply_to(options: dict[str, object], forged: bool = False) -> str:
        return await final_reply(fake, await fake.invoke_command("curate", options, forged=forged))

    assert (
        await reply_to({}) == "Say what to curate with exactly one of `job:`, `user:`, `top:` or `samples:`."
    )
    assert (await reply_to({"job": 3, "top": "week"})).endswith("(you gave several).")
    assert (await reply_to({"job": 1})).startswith(
        "Curating joins at least two samples, and job #1's samples come to 1."
    )
    assert await reply_to({"job": 2}) == "Every clip is silent: there is nothing to curate."
    assert (await reply_to({"samples": "1, 2, 3, 4"})).startswith(
        "That is 4 listed samples; one /curate joins at most 3."
    )
    assert (await reply_to({"user": fake.user("alice")})).startswith(
        f"<@{fake.user('alice').id}> has more than 3 samples here; one /curate joins at most 3."
    )
    assert (await reply_to({"samples": "4, 6"})) == (
        "Sample #6 was made in another server; you can only curate samples made here."
    )
    assert (await reply_to({"job": other_job})).startswith(f"Job #{other_job} belongs to another server")
    assert (await reply_to({"samples": "4, 98, 99"})) == (
        "There is no samples #98, #99; check the numbers (see /top)."
    )
    assert (await reply_to({"samples": "4, " + "9" * 40})).startswith("There is no sample #999")
    assert (await reply_to({"samples": "4, five"})).startswith("five is not a sample number")
    assert (await reply_to({"job": 2**63}, forged=True)).startswith("There is no job #")
    assert await job_count(store) == jobs_before


@contextlib.asynccontextmanager
async def curation_held(
    bot: JukeBot, fake: FakeDiscord
) -> AsyncIterator[tuple[InteractionRecord, threading.Event]]:
    """`/curate job:1`, held in its thread before it joins until the block ends; its record, and the
    event that lets it go on."""
    found = bot.get_cog("Curate")
    # load_extension imports the module afresh: the class is not the one imported here
    assert found is not None and type(found).__name__ == Curate.__name__
    cog = cast(Curate, found)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:  # runs in the curation's thread
        holding.set()
        assert release.wait(timeout=60), "the test never released the curation"

    async def held() -> bool:
        return holding.is_set()

    cog.before_joining = hold
    try:
        record = await fake.invoke_command("curate", {"job": 1})
        await wait_until(held, within=30, what="the curation to reach its hook")
        yield record, release
    finally:
        cog.before_joining = None
        release.set()


async def test_a_long_curation_leaves_the_bot_answering_and_the_next_one_waits_its_turn(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 2)  # job 1: samples #1 and #2, which alice joins (held)
    await made_job(fake, store, 2)  # job 2: bob's top of all time is #1 to #4, another piece
    async with curation_held(bot, fake) as (first, release):
        started = time.monotonic()
        queue = await fake.invoke_command("queue", {})
        await fake.wait_for(lambda: queue.original is not None and not queue.original.loading)
        assert time.monotonic() - started < 3.0  # Discord's limit for an answer
        assert not release.is_set() and first.original is not None and first.original.loading

        # One each: the same member's second waits for nothing, it is refused; another member's waits.
        again = await fake.invoke_command("curate", {"top": "all"})
        assert await final_reply(fake, again) == (
            "Your earlier /curate is still being made (or waits its turn); wait for its answer, then ask again."
        )
        second = await fake.invoke_command("curate", {"top": "all"}, user=fake.user("bob"))
        await fake.wait_for(
            lambda: (
                second.original is not None
                and second.original.content.startswith("Another curation is running in this bot")
            )
        )
    assert (await final_reply(fake, first)).startswith("Done: sample #5 ")
    assert (await final_reply(fake, second)).startswith("Done: sample #6 ")
    assert (await store.get_job(4)).params["curation"]["selection"] == "the top 10 of all time"


async def test_a_lost_answer_to_the_wait_notice_costs_nobody_their_piece(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """ "Another curation is running…" is a courtesy: a connection cut as it was shown ended bob's
    curation with "something went wrong on our side", no piece made."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 2)
    await made_job(fake, store, 2)
    async with curation_held(bot, fake) as (first, _release):
        fake.fail_next("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", dropped=True)
        second = await fake.invoke_command("curate", {"samples": "3, 4"}, user=fake.user("bob"))
        await fake.wait_for(lambda: fake.failures_left() == 0)
    assert (await final_reply(fake, first)).startswith("Done: sample #5 ")
    assert (await final_reply(fake, second)).startswith("Done: sample #6 ")


async def test_a_piece_over_the_upload_limit_goes_out_in_parts_that_each_fit(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    limit = 24 * 1024  # under the piece even at the lowest bitrate: it must be split
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3, seconds=4.0)
    fake.default_guild.attachment_size_limit = limit  # the server's boost ran out

    before = len(bot_messages(fake))
    record = await fake.invoke_command("curate", {"job": 1})
    assert (await final_reply(fake, record)).startswith("Done: sample #4 ")
    piece = await store.get_sample(4)
    assert len(piece.audio) > limit  # the stored copy does not fit: it went out re-encoded in parts
    posted = bot_messages(fake)[before:]
    assert len(posted) >= 2 and posted[0].content.startswith("**Sample #4**")
    assert posted[0].custom_ids == ["jukebot:vote:4", "jukebot:continue:4"]
    assert all(sum(len(a.data) for a in m.attachments) <= limit for m in posted)
    audio = [a for m in posted for a in m.attachments if not a.filename.endswith(".png")]
    heard = sum(decode_audio(a.data, max_seconds=None, silence_threshold_db=None).shape[0] for a in audio)
    assert abs(heard / SAMPLE_RATE - piece.duration_seconds) < 0.5
    # The order strip, with no room beside the audio, follows in a message of its own (review: left out).
    pictures = [(m, a.filename) for m in posted for a in m.attachments if a.filename.endswith(".png")]
    assert [name for _, name in pictures] == ["jukebot_sample_4_order.png"]
    assert pictures[0][0] is posted[-1] and posted[-1].content == "Sample #4: the order its samples play in"
    # The audio's parts are numbered among themselves, as the relay numbers a sample's (review: a bot
    # taking over a piece whose poster stopped did not find them, and posted them again).
    parts = len(posted) - 1
    assert [m.content for m in posted[1:-1]] == [
        f"Sample #4, continued ({i}/{parts})" for i in range(2, parts + 1)
    ]


async def test_curate_is_refused_at_once_where_the_bot_cannot_post_the_piece(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)
    music = fake.channel("music")
    music.bot_denied = discord.Permissions(attach_files=True).value
    jobs_before = await job_count(store)

    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}, channel=music))

    assert reply.startswith("I cannot post results in this channel: I am missing the Attach Files permission")
    assert await job_count(store) == jobs_before  # nothing joined, nothing stored
    assert not bot_messages(fake, "music")


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        # The channel goes away (or the bot's access to it) while the samples are joined.
        ({"status": 403, "code": 50001, "message": "Missing Access"}, "Missing Access"),
        # Discord asks the bot to wait longer than it waits inside a command.
        ({"status": 429, "retry_after": 120.0}, "wait 120 s before posting here again"),
    ],
    ids=["refused", "rate-limited"],
)
async def test_a_piece_discord_does_not_take_is_kept_and_the_reply_says_how_to_get_it(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    failure: dict[str, Any],
    said: str,
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)
    before = len(bot_messages(fake))
    fake.fail_next("POST", "/channels/{channel_id}/messages", **failure)

    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))

    assert reply == (
        f"Sample #4 is made and stored, but I could not post it in this channel (Discord said: {said}). "
        "`/sample 4` posts it where I may."
    )
    piece = await store.get_sample(4)
    assert (await store.get_job(piece.job_id)).kind == JobKind.CURATE and piece.audio
    assert len(bot_messages(fake)) == before
    resent = await fake.invoke_command("sample", {"id": 4}, channel=fake.channel("music"))
    await fake.wait_for(lambda: resent.original is not None and not resent.original.loading)
    assert bot_messages(fake, "music")[-1].content.startswith("**Sample #4** · job #2 by ")


async def test_a_curation_that_outlives_its_interaction_token_still_posts_its_piece_quietly(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A curation that waited its turn long enough outlives the 15-minute token of its private reply:
    the piece is still stored and posted (with the bot's own token), and the replies it can no longer
    edit are a log line, not an error with a traceback and an apology that cannot be sent either."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 2)
    async with curation_held(bot, fake) as (record, _):
        fake.expire_interaction(record)

    async def reply_given_up() -> bool:
        return "could not update the /curate reply" in caplog.text

    await wait_until(reply_given_up, within=30, what="the curation to give up its reply")
    assert sample_message(fake, 3) is not None and (await store.get_sample_info(3)).posted
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
