"""The lyrics form of `/jukebox lyrics_modal:true` never fails silently: a form whose request the bot no
longer holds (it restarted, or the form stayed open too long) queues nothing and gives the user their
lyrics back, in the reply when they fit, else as a text file.

The real bot against the fake Discord.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, Upload
from tests.bot.harness import job_count, make_bot, make_settings, prime_wav, reply_of

AGAIN = " Run /jukebox again with `lyrics_modal:true`"
RESTARTED = "This lyrics form expired (the bot restarted since it was opened), so nothing was queued." + AGAIN
TOO_OLD = "This lyrics form expired (it was open more than 12 hours), so nothing was queued." + AGAIN
NEWER = "This lyrics form expired (you opened 3 newer ones), so nothing was queued." + AGAIN


async def test_a_form_submitted_after_a_restart_gives_the_lyrics_back_as_a_file(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    bot = await bot_runner.start(make_bot(fake, sqlite_store))
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True, "lyrics": "first line"})
    await bot_runner.stop(bot)
    await bot_runner.start(make_bot(fake, sqlite_store))

    # As long as the form takes, too long for one message; a ``` in it would break a code block.
    verse = "Frère Jacques, dormez-vous? ```ding, dang, dong```\n"
    lyrics = (verse * 80)[:4000]
    submitted = await fake.submit_modal(opened, {"lyrics": lyrics}, timeout_s=5)
    assert await reply_of(fake, submitted) == (
        f"{RESTARTED} and paste your lyrics back in: they are in the attached lyrics.txt."
    )
    assert submitted.original is not None
    (attached,) = submitted.original.attachments
    assert attached.filename == "lyrics.txt" and attached.data.decode() == lyrics
    assert await job_count(sqlite_store) == 0
    assert fake.rejections == []


async def test_an_expired_form_gives_short_lyrics_back_in_the_reply(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    bot = await bot_runner.start(make_bot(fake, sqlite_store))
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True})
    empty = await fake.invoke_command("jukebox", {"lyrics_modal": True})
    # by name: `load_extension` executes the extension module afresh, so its classes are not importable
    cog: Any = bot.get_cog("Jukebox")
    cog.lyrics_form_timeout_s = 0.0  # as if both had been open longer than that

    lyrics = "  la la la\n\nthe second verse  "
    reply = await reply_of(fake, await fake.submit_modal(opened, {"lyrics": lyrics}))
    assert reply == f"{TOO_OLD} and paste your lyrics back in:\n```\n{lyrics}\n```"
    assert await reply_of(fake, await fake.submit_modal(empty, {"lyrics": ""})) == f"{TOO_OLD}."
    assert await job_count(sqlite_store) == 0
    assert fake.rejections == []


async def test_a_form_queues_only_for_whoever_opened_it(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True}, user=fake.user("alice"))

    # Someone else sends a submission of alice's form (a tampered client can): not theirs to use.
    forged = await fake.submit_modal(opened, {"lyrics": "bob's words"}, user=fake.user("bob"))
    assert (await reply_of(fake, forged)).startswith(
        "This lyrics form was opened by someone else, so nothing was queued."
    )
    assert await job_count(sqlite_store) == 0

    mine = await fake.submit_modal(opened, {"lyrics": "alice's words"})
    assert (await reply_of(fake, mine)).startswith("Queued as job #1.")
    job = await sqlite_store.get_job(1)
    assert job.user_id == fake.user("alice").id and job.params["lyrics"] == "alice's words"
    # A form is answered once: sent again, it gives the lyrics back instead of queueing twice.
    again = await fake.submit_modal(opened, {"lyrics": "alice's words"})
    assert (await reply_of(fake, again)).startswith(
        "This lyrics form was sent already, so nothing more was queued."
    )
    assert await job_count(sqlite_store) == 1


async def test_a_length_over_the_servers_limit_is_refused_before_the_form_opens(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True, "length": 120.0})
    assert opened.modal is None  # it opened, and the refusal came after the lyrics were written
    assert "limit in this server is 60 s" in await reply_of(fake, opened)


async def test_a_prime_too_big_or_a_prime_length_without_a_prime_is_refused_before_the_form_opens(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Refusals that need no lyrics come before the form (audit): an attachment over the prime's size
    limit, `prime_seconds` with no prime, and a `prime_seconds` past the length opened the form and
    were refused once it was written."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store, make_settings(max_prime_bytes=100_000)))
    big = Upload("big.wav", prime_wav(2.0))
    assert len(big.data) > 100_000
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True}, attachments={"prime": big})
    assert opened.modal is None
    assert (await reply_of(fake, opened)).startswith("The attachment 'big.wav' is 172.3 KiB, larger than the")
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True, "prime_seconds": 5.0})
    assert opened.modal is None
    assert (
        await reply_of(fake, opened) == "prime_seconds needs a prime: attach the clip to continue as `prime`."
    )
    assert await job_count(sqlite_store) == 0
    small = Upload("small.wav", prime_wav(0.5))
    past_the_length = {"lyrics_modal": True, "prime_seconds": 30.0, "length": 20.0}
    opened = await fake.invoke_command("jukebox", past_the_length, attachments={"prime": small})
    assert opened.modal is None
    assert "must be longer than the prime" in await reply_of(fake, opened)
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True}, attachments={"prime": small})
    assert opened.modal is not None  # one that may fit is downloaded once the lyrics are written


async def test_a_form_refused_when_it_is_sent_gives_the_lyrics_back(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store, make_settings(max_queued_jobs_per_user=1)))
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True})
    queued = await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}))
    assert queued.startswith("Queued as job #1."), queued  # the user's one place, taken meanwhile

    lyrics = "an hour of careful verse"
    reply = await reply_of(fake, await fake.submit_modal(opened, {"lyrics": lyrics}))
    assert reply.endswith(
        "Nothing was queued. Run /jukebox again with `lyrics_modal:true` and paste your lyrics back in:\n"
        f"```\n{lyrics}\n```"
    ), reply
    assert await job_count(sqlite_store) == 1


async def _bot_keeping_forms(
    count: int, fake: FakeDiscord, bot_runner: BotRunner, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bot that keeps at most `count` lyrics forms open in all."""
    bot = await bot_runner.start(make_bot(fake, store))
    cog: Any = bot.get_cog("Jukebox")
    extension = sys.modules[type(cog).__module__]  # loaded afresh by `load_extension`: not importable
    monkeypatch.setattr(extension, "MAX_OPEN_LYRICS_FORMS", count)


async def test_one_member_opening_forms_again_and_again_expires_only_their_own(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a form queues nothing, so no job limit holds it back: the bot-wide cap on open forms
    must not let one member push everyone else's out."""
    fake = fake_discord
    await _bot_keeping_forms(5, fake, bot_runner, sqlite_store, monkeypatch)
    alices = await fake.invoke_command("jukebox", {"lyrics_modal": True}, user=fake.user("alice"))
    bobs = [
        await fake.invoke_command("jukebox", {"lyrics_modal": True}, user=fake.user("bob")) for _ in range(6)
    ]
    assert all(opened.modal is not None for opened in [alices, *bobs])

    queued = await fake.submit_modal(alices, {"lyrics": "alice's words"})
    assert (await reply_of(fake, queued)).startswith("Queued as job #1.")
    assert (await reply_of(fake, await fake.submit_modal(bobs[2], {"lyrics": "x"}))).startswith(NEWER)
    assert (await reply_of(fake, await fake.submit_modal(bobs[3], {"lyrics": "y"}))).startswith(
        "Queued as job #2."
    )
    assert await job_count(sqlite_store) == 2


async def test_a_bug_while_a_form_is_sent_gives_the_lyrics_back_and_logs_none_of_them(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The error log held the whole form, lyrics and all (perhaps unreleased), and the member got an
    apology without them."""
    from bot import actions

    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))

    async def a_bug(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(actions, "enqueue_and_announce", a_bug)
    opened = await fake.invoke_command(
        "jukebox", {"artist": "queen", "model": "1b_lyrics", "lyrics_modal": True}
    )
    lyrics = "my unreleased verse\nSECRET-7f3a"
    reply = await reply_of(fake, await fake.submit_modal(opened, {"lyrics": lyrics}))
    assert reply.startswith("Sorry, something went wrong on our side (error ")
    assert lyrics in reply and "Nothing was queued." in reply
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(logged) == 1 and "modal_submit 'jukebot:lyrics-form:" in logged[0]
    assert "SECRET-7f3a" not in logged[0]
    assert await job_count(sqlite_store) == 0


async def test_a_form_let_go_among_many_peoples_says_so_not_that_its_member_opened_newer_ones(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot-wide cap lets the oldest form go: its member opened no other, and was told they had."""
    fake = fake_discord
    await _bot_keeping_forms(3, fake, bot_runner, sqlite_store, monkeypatch)
    alices = await fake.invoke_command("jukebox", {"lyrics_modal": True}, user=fake.user("alice"))
    for name in ("bob", "mod", "moderator"):
        await fake.invoke_command("jukebox", {"lyrics_modal": True}, user=fake.user(name))
    reply = await reply_of(fake, await fake.submit_modal(alices, {"lyrics": "la"}))
    assert reply == (
        "This lyrics form expired (3 forms were open; yours was the oldest), so nothing was queued. Run "
        "/jukebox again with `lyrics_modal:true` and paste your lyrics back in:\n```\nla\n```"
    )
    assert await job_count(sqlite_store) == 0
