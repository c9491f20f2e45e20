"""Every bad input gets a specific ephemeral reply, and nothing is queued."""

from __future__ import annotations

import logging
from typing import Any

import discord
import pytest

from sampler.audio import SAMPLE_RATE, encode_audio, wav_bytes
from storage.models import JobStatus
from storage.records import GuildSettings
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeUser, Upload
from tests.bot.harness import (
    PlayedWorker,
    job_count,
    make_bot,
    make_settings,
    prime_wav,
    reply_of,
    sample_message,
    tone,
)
from tests.bot.test_curate import made_job
from tests.sampler.audio_fixtures import png_bytes, wav_with_zero_frames


def _corrupt_ogg() -> bytes:
    data = encode_audio(tone(2.0), SAMPLE_RATE, "ogg", 64_000)
    return data[:200] + bytes(reversed(data[200:4000]))


BAD_JUKEBOX = [
    pytest.param(
        {}, {"prime": Upload("cat.png", png_bytes())}, "'cat.png' is not an audio file", id="not-audio"
    ),
    pytest.param({}, {"prime": Upload("riff.ogg", _corrupt_ogg())}, "'riff.ogg' is damaged", id="corrupt"),
    pytest.param({}, {"prime": Upload("empty.wav", b"")}, "'empty.wav' is empty (0 bytes)", id="empty-file"),
    pytest.param(
        {}, {"prime": Upload("none.wav", wav_with_zero_frames())}, "'none.wav' has no audio", id="no-frames"
    ),
    pytest.param(
        {"length": 50.0},
        {"prime": Upload("long.ogg", encode_audio(tone(40.0), SAMPLE_RATE, "ogg", 32_000))},
        "'long.ogg' is too long",
        id="too-long",
    ),
    pytest.param({"artist": "the beatls"}, {}, "Closest matches: 'the beatles'", id="unknown-artist"),
    pytest.param({"genre": "rokc"}, {}, "does not know the genre 'rokc'", id="unknown-genre"),
    pytest.param(
        {"model": "1b_lyrics", "genre": "rock, pop"}, {}, "this model takes at most 1", id="too-many-genres"
    ),
    pytest.param(
        {"styles": "Ella Fitzgerald / jazz; Metalicca / metal"},
        {},
        "Style 2 of 2 ('Metalicca / metal'): Jukebox does not know the artist 'Metalicca'",
        id="styles-unknown-artist",
    ),
    pytest.param(
        {"styles": "queen / rokc", "model": "5b"},
        {},
        "Style 1 of 1 ('queen / rokc'): Jukebox does not know the genre 'rokc'",
        id="styles-unknown-genre",
    ),
    pytest.param(
        {"styles": "abba / pop; " + "x" * 120 + " / rock"},
        {},
        "Style 2 of 2 ('" + "x" * 60 + "…' (127 characters)): The artist is 120 characters long",
        id="styles-long-artist-quoted-short",
    ),
    pytest.param(
        {"styles": "queen / rock", "artist": "abba"},
        {},
        "Use either `styles` (one artist / genre per sample) or `artist` and `genre`, not both.",
        id="styles-and-artist",
    ),
    pytest.param(
        {"styles": "queen / rock; abba / pop; ella fitzgerald / jazz; metallica / metal"},
        {},
        "You listed 4 styles, one sample each, but the limit in this server is 3 samples per job",
        id="styles-over-limit",
    ),
    pytest.param(
        {"styles": "queen / rock; abba / pop", "samples": 3},
        {},
        "You listed 2 styles but asked for 3 samples",
        id="styles-and-samples-disagree",
    ),
    pytest.param({"styles": " ; "}, {}, "The styles list is empty", id="styles-empty"),
    pytest.param({"length": 90.0}, {}, "the limit in this server is 60 s", id="length-over-limit"),
    pytest.param({"samples": 5}, {}, "the limit in this server is 3 per job", id="samples-over-limit"),
    pytest.param({"prime_seconds": 2.0}, {}, "prime_seconds needs a prime", id="prime-seconds-without-prime"),
    pytest.param(
        {"prime_seconds": 9.0},
        {"prime": Upload("short.wav", prime_wav(3.0))},
        "the attached clip is only 3.0 s long",
        id="prime-seconds-over-clip",
    ),
    pytest.param(
        {"length": 2.0},
        {"prime": Upload("riff.wav", prime_wav(3.0))},
        "must be longer than the prime",
        id="prime-longer",
    ),
]


@pytest.mark.parametrize(("options", "attachments", "expected"), BAD_JUKEBOX)
async def test_bad_jukebox_input_is_refused_and_nothing_queued(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    options: dict[str, Any],
    attachments: dict[str, Upload],
    expected: str,
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    record = await fake_discord.invoke_command("jukebox", options, attachments=attachments)
    assert expected in await reply_of(fake_discord, record)
    assert await job_count(sqlite_store) == 0
    assert fake_discord.rejections == []


async def test_too_large_prime_is_refused_from_metadata_before_download(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    settings = make_settings(max_prime_bytes=100_000)
    await bot_runner.start(make_bot(fake_discord, sqlite_store, settings))
    big = Upload("big.wav", prime_wav(2.0))  # ~176 kB
    record = await fake_discord.invoke_command("jukebox", {}, attachments={"prime": big})
    reply = await reply_of(fake_discord, record)
    assert "'big.wav' is 172.3 KiB, larger than the 97.7 KiB limit for a prime" in reply
    assert fake_discord.calls(route="/attachments/{channel_id}/{attachment_id}/{filename}") == []
    assert await job_count(sqlite_store) == 0


async def test_not_audio_is_refused_from_the_first_bytes(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    big_text = Upload("notes.wav", b"just some text, not a song\n" * 10_000)  # ~270 kB
    record = await fake_discord.invoke_command("jukebox", {}, attachments={"prime": big_text})
    assert "'notes.wav' is not an audio file" in await reply_of(fake_discord, record)
    downloads = fake_discord.calls(route="/attachments/{channel_id}/{attachment_id}/{filename}")
    assert [r.headers.get("Range") for r in downloads] == ["bytes=0-65535"]  # the header only
    assert await job_count(sqlite_store) == 0


async def test_too_long_from_the_first_bytes_says_at_least(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    # 200 s of Opus at 6 kbit/s: its first 64 KiB tell well over a minute, not the whole length.
    quiet = Upload("long.ogg", encode_audio(0.01 * tone(200.0), SAMPLE_RATE, "ogg", 6_000))
    assert len(quiet.data) > 64 * 1024
    record = await fake_discord.invoke_command("jukebox", {}, attachments={"prime": quiet})
    reply = await reply_of(fake_discord, record)
    assert "'long.ogg' is too long: The audio is at least " in reply and "but the limit is" in reply
    downloads = fake_discord.calls(route="/attachments/{channel_id}/{attachment_id}/{filename}")
    assert [r.headers.get("Range") for r in downloads] == ["bytes=0-65535"]  # the header only
    assert await job_count(sqlite_store) == 0


async def test_lyrics_for_a_model_without_lyrics_are_ignored_with_a_note(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    record = await fake_discord.invoke_command("jukebox", {"model": "5b", "lyrics": "la la la"})
    reply = await reply_of(fake_discord, record)
    assert reply.startswith("Queued as job #1.")
    assert "Note: The 5b model does not sing lyrics, so your lyrics were ignored" in reply
    assert (await sqlite_store.get_job(1)).params["lyrics"] == ""


async def test_channel_not_allowed(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    music = fake_discord.channel("music")
    await sqlite_store.set_guild_settings(
        GuildSettings(guild_id=fake_discord.default_guild.id, allowed_channel_ids=(music.id,))
    )
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    record = await fake_discord.invoke_command("jukebox", {}, channel=fake_discord.channel("general"))
    assert (
        await reply_of(fake_discord, record)
        == f"Jukebox is not available in this channel. Use it in <#{music.id}>."
    )
    assert await job_count(sqlite_store) == 0
    allowed = await fake_discord.invoke_command("jukebox", {}, channel=music)
    assert (await reply_of(fake_discord, allowed)).startswith("Queued as job #1.")


async def test_commands_that_post_keep_off_channels_the_allow_list_leaves_out(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """/sample, /top and /curate posted audio publicly in a channel the server's admin had closed."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    first, second = await made_job(fake, sqlite_store, 2)  # made in #general while it was open
    music = fake.channel("music")
    await sqlite_store.set_guild_settings(
        GuildSettings(guild_id=fake.default_guild.id, allowed_channel_ids=(music.id,))
    )
    general = fake.channel("general")
    public_before = len([m for m in fake.channel_messages(general) if not m.ephemeral and not m.deleted])
    refusal = f"Jukebox is not available in this channel. Use it in <#{music.id}>."
    for command, options in (
        ("sample", {"id": first}),
        ("top", {}),
        ("curate", {"samples": f"{first}, {second}"}),
    ):
        record = await fake.invoke_command(command, options, channel=general)
        assert await reply_of(fake, record) == refusal, command
    public_after = [m for m in fake.channel_messages(general) if not m.ephemeral and not m.deleted]
    assert len(public_after) == public_before
    allowed = await fake.invoke_command("sample", {"id": first}, channel=music)
    await fake.wait_for(lambda: sample_message(fake, first, "music") is not None)
    assert allowed.original is not None


async def test_running_and_queued_limits_say_when_to_try_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store, make_settings(max_queued_jobs_per_user=1)))
    first = await fake_discord.invoke_command("jukebox", {})
    assert (await reply_of(fake_discord, first)).startswith("Queued as job #1.")
    queued = await fake_discord.invoke_command("jukebox", {})
    assert await reply_of(fake_discord, queued) == (
        "You have 1 job waiting in the queue (#1), the limit here is 1; try again when job #1 starts "
        "(or cancel one with /cancel)."
    )
    await PlayedWorker(sqlite_store).claim()
    running = await fake_discord.invoke_command("jukebox", {})
    assert await reply_of(fake_discord, running) == (
        "You have 1 job running (#1), the limit here is 1; try again when job #1 finishes (or cancel it "
        "with /cancel)."
    )
    assert await job_count(sqlite_store) == 1


async def _sample_in_other_server(fake: FakeDiscord, store: JobStore) -> tuple[int, FakeUser]:
    other = fake.add_guild("Other Server", channels=("lounge",))
    stranger = fake.add_user("stranger")
    fake.add_member(other, stranger)
    job_id = await store.enqueue(
        kind="generate",
        model="5b",
        params={"artist": "queen"},
        channel_id=other.channel("lounge").id,
        user_id=stranger.id,
        guild_id=other.id,
    )
    worker = PlayedWorker(store)
    claimed = await worker.claim()
    assert claimed.id == job_id
    (sample_id,) = await worker.complete(claimed, n=1, full=False)
    return sample_id, stranger


@pytest.mark.parametrize(
    ("command", "options"),
    [("upsample", {}), ("continue", {"seconds": 5.0}), ("sample", {})],
)
async def test_samples_that_do_not_exist_or_belong_elsewhere(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    command: str,
    options: dict[str, Any],
) -> None:
    sample_id, _ = await _sample_in_other_server(fake_discord, sqlite_store)
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    key = "id" if command == "sample" else "sample"
    missing = await fake_discord.invoke_command(command, {key: 999, **options})
    assert await reply_of(fake_discord, missing) == "There is no sample #999; it may have been typed wrong."
    foreign = await fake_discord.invoke_command(command, {key: sample_id, **options})
    assert (await reply_of(fake_discord, foreign)).startswith(
        f"Sample #{sample_id} was made in another server"
    )
    assert await job_count(sqlite_store) == 1  # only the other server's own job


async def test_cancel_of_someone_elses_job_and_other_cancel_mistakes(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    alice, bob = fake_discord.user("alice"), fake_discord.user("bob")
    await reply_of(fake_discord, await fake_discord.invoke_command("jukebox", {}, user=alice))
    theirs = await fake_discord.invoke_command("cancel", {"job": 1}, user=bob)
    assert await reply_of(fake_discord, theirs) == (
        "Job #1 belongs to someone else; only the person who started it, or a member who may manage "
        "messages in its channel, can cancel it."
    )
    missing = await fake_discord.invoke_command("cancel", {"job": 42}, user=alice)
    assert (
        await reply_of(fake_discord, missing) == "There is no job #42; check the id (see your recent jobs)."
    )
    mine = await fake_discord.invoke_command("cancel", {"job": 1}, user=alice)
    assert await reply_of(fake_discord, mine) == "Job #1 is cancelled; it had not started."
    again = await fake_discord.invoke_command("cancel", {"job": 1}, user=alice)
    assert await reply_of(fake_discord, again) == (
        "Job #1 has already finished (cancelled); there is nothing left to cancel."
    )


async def test_a_moderator_cancels_anyones_job_in_the_server(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Members who may manage messages stop a runaway or offensive job without its owner."""
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    alice, moderator = fake_discord.user("alice"), fake_discord.user("moderator")
    for _ in range(2):
        await reply_of(fake_discord, await fake_discord.invoke_command("jukebox", {}, user=alice))
    assert (await PlayedWorker(sqlite_store).claim()).id == 1  # job 1 runs
    stopped = await fake_discord.invoke_command("cancel", {"job": 1}, user=moderator)
    assert await reply_of(fake_discord, stopped) == (
        f"Job #1 (started by <@{alice.id}>) is stopping after its current step; nothing of it is "
        "posted, unless it finishes first."
    )
    queued = await fake_discord.invoke_command("cancel", {"job": 2}, user=moderator)
    assert await reply_of(fake_discord, queued) == (
        f"Job #2 (started by <@{alice.id}>) is cancelled; it had not started."
    )
    assert [(await sqlite_store.get_job(n)).status for n in (1, 2)] == [
        JobStatus.CANCELLING,
        JobStatus.CANCELLED,
    ]


async def test_a_channels_own_moderator_cancels_its_jobs_and_no_others(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Manage Messages in one channel (an overwrite there) is no power over another channel's jobs,
    wherever the command comes from: Discord gives an interaction the permissions of its own channel."""
    fake = fake_discord
    general, music = fake.channel("general"), fake.channel("music")
    keeper = fake.add_user("keeper")
    fake.add_member(fake.default_guild, keeper)
    music.member_overwrites[keeper.id] = (discord.Permissions(manage_messages=True).value, 0)
    await bot_runner.start(make_bot(fake, sqlite_store))
    alice = fake.user("alice")
    await reply_of(fake, await fake.invoke_command("jukebox", {}, user=alice, channel=general))  # job 1
    await reply_of(fake, await fake.invoke_command("jukebox", {}, user=alice, channel=music))  # job 2
    for where in (general, music):
        refused = await fake.invoke_command("cancel", {"job": 1}, user=keeper, channel=where)
        assert await reply_of(fake, refused) == (
            "Job #1 belongs to someone else; only the person who started it, or a member who may manage "
            "messages in its channel, can cancel it."
        )
    assert (await sqlite_store.get_job(1)).status is JobStatus.QUEUED
    # job 2 runs in their channel: theirs to stop, even typed elsewhere (the bot knows the overwrite)
    stopped = await fake.invoke_command("cancel", {"job": 2}, user=keeper, channel=general)
    assert (
        await reply_of(fake, stopped)
        == f"Job #2 (started by <@{alice.id}>) is cancelled; it had not started."
    )


async def test_unexpected_errors_get_an_apology_with_an_id_and_are_logged(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot = await bot_runner.start(make_bot(fake_discord, sqlite_store))

    async def broken(guild_id: int) -> GuildSettings:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(bot.store, "get_guild_settings", broken)
    with caplog.at_level(logging.ERROR, logger="bot.bot"):
        record = await fake_discord.invoke_command("jukebox", {})
        reply = await reply_of(fake_discord, record)
    assert reply.startswith("Sorry, something went wrong on our side (error ")
    error_id = reply.split("(error ", 1)[1].split(")", 1)[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    assert "database on fire" not in reply
    assert await job_count(sqlite_store) == 0


def test_wav_fixture_is_what_it_claims() -> None:
    assert wav_bytes(tone(0.1))[:4] == b"RIFF"
