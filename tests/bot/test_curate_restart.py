"""A bot stopped while it posts a `/curate` piece: the piece was stored as posted, so no bot ever
posted it, and nobody was told its number. Its posting is now claimed as a job's results are: given
back as the bot stops (or run out, if it dies), it is posted by the next bot's relay."""

from __future__ import annotations

from sampler.jobspec import CURATION_KEY
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import answer_of, make_bot, relay_of, sample_message, sample_posts, when
from tests.bot.test_curate import final_reply, made_job
from tests.waiting import wait_until


async def order_of(store: JobStore, job_id: int) -> str:
    """The order line a curated piece's message carries, written out from its job's record."""
    record = (await store.get_job(job_id)).params[CURATION_KEY]
    first, *rest = record["sample_ids"]
    joins = "".join(
        f" → #{sample}({score:.2f})" for sample, score in zip(rest, record["join_scores"], strict=True)
    )
    return f"\nOrder (similarity of each join): #{first}{joins}"


async def test_a_piece_whose_post_a_stop_cut_off_is_posted_by_the_next_bot(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    first = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)  # samples #1 to #3
    relay_of(first).poke()
    await fake.wait_for(lambda: all(sample_message(fake, i) for i in (1, 2, 3)), timeout_s=60)
    held = fake.hold("POST", "/channels/{channel_id}/messages")  # the piece's message
    await fake.invoke_command("curate", {"job": 1})
    await fake.wait_for(lambda: held.arrived, timeout_s=120)
    await bot_runner.stop(first)
    held.drop()  # it never reached Discord

    second = await bot_runner.start(make_bot(fake, store))
    await fake.wait_for(when(lambda: sample_message(fake, 4)), timeout_s=60)

    async def marked_posted() -> bool:
        return (await store.get_job(2)).results_posted_at is not None

    await wait_until(marked_posted, 30.0, "the piece's results to be marked posted")
    await relay_of(second).run_pass()
    assert len(sample_posts(fake, 4)) == 1
    piece = sample_message(fake, 4)
    assert piece is not None and "jukebot:vote:4" in piece.custom_ids
    assert "jukebot:upsample:4" not in piece.custom_ids  # a piece is not upsampled (its samples are)
    assert await order_of(store, 2) in piece.content, piece.content  # what it was joined from, in order
    # with the strip of its samples in that order, as /curate posts it (it had the piece's spectrogram)
    assert [a.filename for a in piece.attachments] == ["jukebot_sample_4.ogg", "jukebot_sample_4_order.png"]


async def test_a_piece_posted_whole_is_left_alone_by_the_relay(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    bot = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)
    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))
    assert reply.startswith("Done: sample #4 "), reply
    assert (await store.get_job(2)).results_posted_at is not None
    await relay_of(bot).run_pass()
    assert len(sample_posts(fake, 4)) == 1
    # Posted again, it still says what it was joined from, in order.
    again = await fake.invoke_command("sample", {"id": 4})
    message = await fake.wait_for(lambda: answer_of(again))
    assert message.content.startswith("**Sample #4** · job #2 ") and message.attachments
    assert message.content.endswith(await order_of(store, 2)), message.content
    assert [a.filename for a in message.attachments] == ["jukebot_sample_4.ogg", "jukebot_sample_4_order.png"]
