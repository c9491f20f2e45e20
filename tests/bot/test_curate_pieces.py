"""`/curate` with curated pieces among what it gathers, or pieces too long to continue: each sample is
heard once, and a piece offers a continuation only where one fits."""

from __future__ import annotations

import pytest

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import PlayedWorker, make_bot, queue_song, reply_of, sample_message
from tests.bot.test_curate import curation_held, final_reply, made_job, silent_job
from tests.waiting import wait_until


async def _piece_of_job_1(fake: FakeDiscord, store: JobStore) -> None:
    """Samples #1 to #3 (job 1), joined into piece #4 (job 2)."""
    await made_job(fake, store, 3)
    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))
    assert reply.startswith("Done: sample #4 "), reply


async def test_a_users_samples_leave_out_those_already_in_a_piece_of_theirs(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """alice's samples here are #1 to #3, her piece #4 of them, and #5, #6: the new piece joins #4, #5
    and #6, not #1 to #3 a second time (each further `/curate user:` would double the piece)."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await _piece_of_job_1(fake, store)
    await made_job(fake, store, 2)  # job 3: samples #5 and #6

    reply = await final_reply(fake, await fake.invoke_command("curate", {"user": fake.user("alice")}))
    assert reply.startswith("Done: sample #7 "), reply
    record = (await store.get_job(4)).params["curation"]
    assert sorted(record["sample_ids"]) == [4, 5, 6]
    message = sample_message(fake, 7)
    assert message is not None
    assert "Left out (already in #4): #1, #2, #3" in message.content.splitlines()


@pytest.mark.parametrize(
    ("selection", "refusal"),
    [
        (
            {"top": "all"},
            "Curating joins at least two samples, and this server's samples (the top 10 of all time) not "
            "already in a piece among them come to 1.",
        ),
        (
            {"samples": "1, 4"},
            "Sample #1 is already in piece #4, which you listed too: it would play twice. List the piece "
            "or its samples, not both.",
        ),
    ],
    ids=["top", "samples"],
)
async def test_a_piece_and_its_own_samples_are_never_joined_together(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    selection: dict[str, str],
    refusal: str,
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await _piece_of_job_1(fake, store)

    reply = await final_reply(fake, await fake.invoke_command("curate", selection, user=fake.user("bob")))
    assert reply.startswith(refusal), reply
    assert sorted(job.id for job in await store.list_jobs()) == [1, 2]  # nothing stored


async def test_a_piece_too_long_to_continue_says_so_and_has_no_continue_button(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A continuation starts from all the piece's samples' codes: three of 210 s come to 630 s, past the
    600 s songs stay under, however short the piece (the audio here is 2 s each: quick to join)."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await queue_song(fake, samples=3)
    worker = PlayedWorker(store)
    await worker.complete(await worker.claim(), n=3, full=False, seconds=2.0, codes_seconds=210.0)

    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))
    assert reply.startswith("Done: sample #4 "), reply
    message = sample_message(fake, 4)
    assert message is not None
    assert message.content.splitlines()[-1].startswith(
        "A continuation would start from all its samples' codes, 629.9 s together, and songs stay under "
        "600 s: this piece cannot be continued."
    )
    assert "jukebot:continue:4" not in message.custom_ids and "jukebot:vote:4" in message.custom_ids
    await fake.click(message, "jukebot:vote:4", user=fake.user("bob"))  # redraws the buttons
    await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1")
    assert message.custom_ids == ["jukebot:vote:4"]

    # A piece that fits still offers it.
    await made_job(fake, store, 2)  # job 3: samples #5 and #6
    reply = await final_reply(fake, await fake.invoke_command("curate", {"samples": "5, 6"}))
    assert reply.startswith("Done: sample #7 "), reply
    fits = sample_message(fake, 7)
    assert fits is not None and "jukebot:continue:7" in fits.custom_ids
    assert fits.content.splitlines()[-1] == "`/continue sample:7` extends it from its last sample."


async def test_a_refusal_after_the_reply_token_expired_is_a_log_line_not_an_error(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A curation that waited long ends in a refusal (every sample silent) after its private reply's
    15-minute token expired: that the reply cannot say so is a log line, not an error and an apology."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await silent_job(store, fake, 2)
    async with curation_held(bot, fake) as (record, _):
        fake.expire_interaction(record)

    async def reply_given_up() -> bool:
        return "could not update the /curate reply" in caplog.text

    await wait_until(reply_given_up, within=30, what="the curation to give up its reply")
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert [job.id for job in await store.list_jobs()] == [1]


async def _two_pieces_sharing_sample_2(fake: FakeDiscord, store: JobStore, maker: str = "alice") -> None:
    """Samples #1 to #3 (job 1, alice's); `maker` joins #1, #2 into piece #4 and #2, #3 into #5."""
    await made_job(fake, store, 3)
    for listed, made in (("1, 2", 4), ("2, 3", 5)):
        curate = await fake.invoke_command("curate", {"samples": listed}, user=fake.user(maker))
        reply = await final_reply(fake, curate)
        assert reply.startswith(f"Done: sample #{made} "), reply


@pytest.mark.parametrize(
    ("selection", "joined", "lines"),
    [
        ("user", [3, 4], ["Left out (already in #4): #1, #2", "Left out (shares samples with #4): #5"]),
        ("top", [1, 5], ["Left out (already in #5): #2, #3", "Left out (shares samples with #5): #4"]),
    ],
)
async def test_of_two_gathered_pieces_sharing_a_sample_the_later_one_is_left_out(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    selection: str,
    joined: list[int],
    lines: list[str],
) -> None:
    """#4 and #5 both hold #2: joined together, #2 would play twice. The piece gathered first stays (a
    user's samples come oldest first, the top newest first with no votes), the other is left out, and
    the samples only it held are joined on their own: #1, #2 and #3 are each heard once."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await _two_pieces_sharing_sample_2(fake, store)

    options = {"user": fake.user("alice")} if selection == "user" else {"top": "all"}
    reply = await final_reply(fake, await fake.invoke_command("curate", options))
    assert reply.startswith("Done: sample #6 "), reply
    record = (await store.get_job(4)).params["curation"]
    assert sorted(record["sample_ids"]) == joined
    message = sample_message(fake, 6)
    assert message is not None
    content = message.content.splitlines()
    assert [line for line in content if line.startswith("Left out")] == lines, content


@pytest.mark.parametrize(
    ("selection", "refusal"),
    [
        (
            {"user": "bob"},
            "Curating joins at least two samples, and <@{bob}>'s samples here not sharing samples with "
            "another piece among them come to 1.",
        ),
        (
            {"samples": "4, 5"},
            "Pieces #4 and #5 both hold sample #2: it would play twice. List one of them.",
        ),
    ],
    ids=["user", "samples"],
)
async def test_two_pieces_sharing_a_sample_are_never_joined_together(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    selection: dict[str, str],
    refusal: str,
) -> None:
    """bob's pieces #4 and #5 hold alice's #2 both: his samples come to one once #5 is left out, and
    listing the two is refused."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await _two_pieces_sharing_sample_2(fake, store, maker="bob")

    bob = fake.user("bob")
    options = {"user": bob} if selection.get("user") == "bob" else selection
    reply = await final_reply(fake, await fake.invoke_command("curate", options, user=bob))
    assert reply.startswith(refusal.format(bob=bob.id)), reply
    assert sorted(job.id for job in await store.list_jobs()) == [1, 2, 3]  # nothing stored


async def test_a_users_samples_leave_out_those_an_upsample_or_a_continuation_of_theirs_plays_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """alice's previews #1 and #2; #3 is #1 at full quality, #4 continues #2 (its start is #2): the
    piece joins #3 and #4, not each song twice (review: lo-fi, then hi-fi, then again)."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 2)  # job 1: samples #1 and #2
    worker = PlayedWorker(store)
    for command, options in (("upsample", {"sample": 1}), ("continue", {"sample": 2, "seconds": 2.0})):
        record = await fake.invoke_command(command, options)
        assert (await reply_of(fake, record)).startswith("Queued as job #")
        await worker.complete(await worker.claim(), n=1, full=command == "upsample")

    reply = await final_reply(fake, await fake.invoke_command("curate", {"user": fake.user("alice")}))
    assert reply.startswith("Done: sample #5 "), reply
    assert sorted((await store.get_job(4)).params["curation"]["sample_ids"]) == [3, 4]
    message = sample_message(fake, 5)
    assert message is not None
    lines = message.content.splitlines()
    assert "Left out (already in #3): #1" in lines and "Left out (already in #4): #2" in lines

    # Listed by number, they are the member's choice: joined as asked.
    reply = await final_reply(fake, await fake.invoke_command("curate", {"samples": "1, 3"}))
    assert reply.startswith("Done: sample #6 "), reply
