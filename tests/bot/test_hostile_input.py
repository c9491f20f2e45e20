"""Input a hostile or unlucky server member can send, against the real bot (issue 15, points 1-3 and 11).

Each case gets a specific reply, nothing is stored for it, and the bot keeps answering. Files are
generated in code (tests/sampler/audio_fixtures.py); forged payloads go through the fake Discord's
`forged=True`, as a tampered client would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from discord.utils import HAS_ORJSON
from sqlalchemy import event
from sqlalchemy.engine import make_url

from sampler.user_text import QUOTE_LIMIT
from storage.engine import create_engine
from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, Upload
from tests.bot.harness import (
    PlayedWorker,
    job_count,
    make_bot,
    prime_wav,
    progress_message,
    recorded_progress_message,
    when,
)
from tests.bot.test_bad_input import reply_of
from tests.sampler.audio_fixtures import multichannel, sine, wav_with_header

MAX_ID = "9,223,372,036,854,775,807"


async def _queued(fake: FakeDiscord, options: dict[str, Any] | None = None, **kwargs: Any) -> str:
    return await reply_of(fake, await fake.invoke_command("jukebox", options or {}, **kwargs))


# ------------------------------------------------------------------ point 1: files that crash decoders


async def test_an_eight_channel_prime_is_decoded_and_the_bot_keeps_answering(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """An 8-channel FLAC segfaulted PyAV, and with it the whole bot (and this test run)."""
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    data, expected = multichannel("flac", 8)
    reply = await _queued(fake_discord, attachments={"prime": Upload("surround.flac", data)})
    assert reply.startswith("Queued as job #1.")
    prime = await sqlite_store.get_prime((await sqlite_store.get_job(1)).prime_id or 0)
    stored = np.frombuffer(prime.pcm, "<i2").astype(np.float32) / 32767.0
    np.testing.assert_allclose(stored, expected, atol=3e-4)  # the plain mean of the 8 channels
    assert (await _queued(fake_discord, user=fake_discord.user("bob"))).startswith("Queued as job #2.")


def _decoders_die(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Every child interpreter runs `code` first (a sitecustomize on its PYTHONPATH): a decoder process
    that really dies, with no test hook in the bot."""
    (tmp_path / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("signal_name", ["SIGSEGV", "SIGKILL"])
async def test_a_decoder_that_dies_costs_one_reply_not_the_bot(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signal_name: str,
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    _decoders_die(tmp_path, monkeypatch, f"import os, signal\nos.kill(os.getpid(), signal.{signal_name})\n")
    reply = await _queued(fake_discord, attachments={"prime": Upload("riff.wav", prime_wav(2.0))})
    assert reply == (
        f"The attachment 'riff.wav' could not be decoded: The decoder crashed ({signal_name}) on this file. "
        "Convert it to a mono or stereo WAV, FLAC or MP3 and attach it again."
    )
    assert await job_count(sqlite_store) == 0
    assert (await _queued(fake_discord)).startswith("Queued as job #1.")  # the bot is still here


async def test_a_decoder_that_hangs_is_stopped_with_a_reply(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sampler.audio_process.DECODE_TIMEOUT_S", 1.0)
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    _decoders_die(tmp_path, monkeypatch, "import signal\nsignal.pause()\n")
    reply = await _queued(fake_discord, attachments={"prime": Upload("riff.wav", prime_wav(2.0))})
    assert reply.startswith(
        "The attachment 'riff.wav' could not be decoded: Decoding this file took longer than 1 s, "
        "so it was stopped."
    )
    assert await job_count(sqlite_store) == 0


# ------------------------------------------------------------------ point 3: absurd values


def _pcm(seconds: float) -> bytes:
    return (sine(seconds) * 32767).astype("<i2").tobytes()


HOSTILE_PRIMES = [
    pytest.param(
        {},
        Upload("fast.wav", wav_with_header(2**31 - 1, _pcm(1.0))),
        "The attachment 'fast.wav' is damaged: The file says its sample rate is 2,147,483,647 Hz, which "
        "no audio uses (4,000 to 768,000 Hz are accepted): the file is damaged. Export it again and "
        "re-attach it.",
        id="sample-rate-2^31-1",
    ),
    pytest.param(
        {},
        Upload("hours.wav", wav_with_header(44_100, _pcm(4096 / 2 / 44_100), claimed_bytes=0xFFFF_FF00)),
        "The attachment 'hours.wav' is too short: it holds 0.046 s of audio (whatever its header claims), "
        "and a prime needs at least 0.5 s. Attach a longer clip.",
        id="header-claims-hours-4KB-of-data",
    ),
    pytest.param(
        {},
        Upload("short.wav", wav_with_header(44_100, _pcm(22_047 / 44_100))),  # 0.49993 s
        "The attachment 'short.wav' is too short: it holds 0.499 s of audio (whatever its header claims), "
        "and a prime needs at least 0.5 s. Attach a longer clip.",
        id="just-under-the-minimum-is-not-rounded-up-to-it",
    ),
    pytest.param(
        {"prime_seconds": -1.0},
        Upload("riff.wav", prime_wav(2.0)),
        "The option `prime_seconds` must be between 0.5 and 600, got -1.",
        id="prime-seconds-negative",
    ),
    pytest.param(
        {"prime_seconds": 0.1},
        Upload("riff.wav", prime_wav(2.0)),
        "The option `prime_seconds` must be between 0.5 and 600, got 0.1.",
        id="prime-seconds-below-the-minimum",
    ),
]


@pytest.mark.parametrize(("options", "prime", "expected"), HOSTILE_PRIMES)
async def test_absurd_primes_get_a_specific_reply(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    options: dict[str, Any],
    prime: Upload,
    expected: str,
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    reply = await _queued(fake_discord, options, attachments={"prime": prime}, forged=True)
    assert reply == expected
    assert await job_count(sqlite_store) == 0
    assert fake_discord.rejections == []


def _no_such(what: str, shown: str) -> str:
    return (
        f"There is no {what} #{shown}: {what} numbers are whole numbers from 1 to {MAX_ID}. "
        "Check the number and try again."
    )


@pytest.mark.parametrize(
    ("command", "options", "expected"),
    [
        ("cancel", {"job": 2**63}, _no_such("job", "9223372036854775808")),
        ("upsample", {"sample": 2**63}, _no_such("sample", "9223372036854775808")),
        ("continue", {"sample": 2**63}, _no_such("sample", "9223372036854775808")),
        # JSON has no integer limit: with orjson installed discord.py parses 80 digits as a float
        # (1.1e79); with the standard library's json they stay an int, quoted shortened.
        (
            "sample",
            {"id": int("1" * 80)},
            _no_such("sample", "1.1111111111111111e+79" if HAS_ORJSON else f"{'1' * 30}… (80 characters)"),
        ),
    ],
    ids=["cancel-2^63", "upsample-2^63", "continue-2^63", "sample-80-digits"],
)
async def test_ids_no_database_can_hold_get_a_specific_reply(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    command: str,
    options: dict[str, Any],
    expected: str,
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    record = await fake_discord.invoke_command(command, options, forged=True)
    assert await reply_of(fake_discord, record) == expected
    assert await job_count(sqlite_store) == 0


@pytest.mark.parametrize(
    ("page", "shown"),
    [(2**63, "9223372036854775808"), (0, "0"), (-5, "-5"), (1001, "1001"), (int("9" * 80), None)],
    ids=["2^63", "0", "negative", "past-the-last", "80-digits"],
)
async def test_history_pages_no_client_can_ask_for_get_a_specific_reply(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, page: int, shown: str | None
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    record = await fake_discord.invoke_command("history", {"page": page}, forged=True)
    if shown is None:  # a float with orjson, an int quoted shortened without it
        expected = (
            "The option `page` must be a whole number."
            if HAS_ORJSON
            else f"The option `page` must be between 1 and 1,000, got {'9' * QUOTE_LIMIT}… (80 characters)."
        )
    else:
        expected = f"The option `page` must be between 1 and 1,000, got {shown}."
    assert await reply_of(fake_discord, record) == expected


@pytest.mark.parametrize("button", ["vote", "upsample", "continue"])
async def test_buttons_with_forged_ids_get_a_specific_reply(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, button: str
) -> None:
    bot = await bot_runner.start(make_bot(fake_discord, sqlite_store))
    await _queued(fake_discord)
    message = await fake_discord.wait_for(when(lambda: progress_message(fake_discord, 1)))
    eighty = "9" * 80
    record = await fake_discord.click(message, f"jukebot:{button}:{eighty}", forged=True)
    assert await reply_of(fake_discord, record) == _no_such("sample", f"{'9' * 30}… (80 characters)")
    record = await fake_discord.click(message, f"jukebot:{button}:{2**63}", forged=True)
    assert await reply_of(fake_discord, record) == _no_such("sample", str(2**63))
    assert await job_count(sqlite_store) == 1 and bot.is_ready()


# ------------------------------------------------------------------ point 2: long text


@pytest.mark.parametrize(
    ("options", "starts"),
    [
        ({"artist": "queen " * 1000}, "Jukebox does not know the artist 'queen queen queen"),
        ({"genre": "rokc " * 1200}, "Jukebox does not know the genre"),
        ({"genre": "rock," * 1200, "model": "1b_lyrics"}, "Too many genres: 'rock, rock, rock"),
    ],
    ids=["artist", "genre", "many-genres"],
)
async def test_long_user_text_is_quoted_shortened_and_the_user_hears_back(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    options: dict[str, Any],
    starts: str,
) -> None:
    """6,000 characters (Discord allows them) quoted whole made the reply too long for Discord (50035):
    the user saw "thinking…" forever."""
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    reply = await _queued(fake_discord, options)
    assert reply.startswith(starts)
    assert re.search(r"…' \([0-9],[0-9]{3} characters\)", reply), reply
    assert len(reply) < 600
    assert fake_discord.rejections == [] and await job_count(sqlite_store) == 0


# ------------------------------------------------------------------ point 11: the store fails


@contextlib.asynccontextmanager
async def _tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[_Proxy]:
    proxy = _Proxy(target_host, target_port)
    await proxy.open()
    try:
        yield proxy
    finally:
        await proxy.cut()


class _Proxy:
    """A TCP forwarder in front of Postgres that the test can cut (connections dropped, new ones
    refused) and restore on the same port: an unreachable database, for real."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.listen_port = host, port, 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(self.host, self.port)
        self.writers |= {client_writer, server_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


def _outage_reply(problem: str, retry: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(f"{problem}. Nothing you made before was lost, and the operators have been told (")
        + r"error [0-9a-f]{8}"
        + re.escape(f"); {retry}.")
    )


UNREACHABLE = _outage_reply(
    "The bot cannot reach its database right now, so this could not be done",
    "please try again in a few minutes",
)
DISK_FULL = _outage_reply("The bot's storage is full, so this could not be saved", "please try again later")


async def test_an_unreachable_database_is_named_and_nothing_is_lost(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    db_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = make_url(db_url)
    async with contextlib.AsyncExitStack() as stack:
        if url.get_backend_name() == "sqlite":
            # The database's folder goes away (an unmounted volume) and comes back.
            folder = tmp_path / "volume"
            folder.mkdir()
            shutil.move(url.database or "", folder / "jukebot.sqlite3")
            url = url.set(database=str(folder / "jukebot.sqlite3"))

            async def cut() -> None:
                folder.rename(tmp_path / "unmounted")

            async def restore() -> None:
                (tmp_path / "unmounted").rename(folder)

        else:
            proxy = await stack.enter_async_context(_tcp_proxy(url.host or "127.0.0.1", url.port or 5432))
            url = url.set(host="127.0.0.1", port=proxy.listen_port)
            cut, restore = proxy.cut, proxy.open
        engine = create_engine(url.render_as_string(hide_password=False))
        stack.push_async_callback(engine.dispose)
        store = JobStore(engine)
        await bot_runner.start(make_bot(fake_discord, store))
        assert (await _queued(fake_discord)).startswith("Queued as job #1.")

        await cut()
        await engine.dispose()  # pooled SQLite connections would keep the moved file open
        with caplog.at_level(logging.ERROR, logger="bot.bot"):
            reply = await _queued(fake_discord, user=fake_discord.user("bob"))
        assert UNREACHABLE.fullmatch(reply), reply
        error_id = reply.split("(error ", 1)[1].split(")", 1)[0]
        assert any(
            f"storage outage: the database cannot be reached (error {error_id})" in r.getMessage()
            and r.exc_info
            for r in caplog.records
        )

        await restore()
        assert (await store.get_job(1)).status == JobStatus.QUEUED  # nothing lost
        assert (await _queued(fake_discord, user=fake_discord.user("bob"))).startswith("Queued as job #2.")


async def test_a_full_disk_is_named_and_nothing_is_lost(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    assert (await _queued(fake_discord)).startswith("Queued as job #1.")
    await recorded_progress_message(sqlite_store, 1)
    first = await sqlite_store.get_job(1)

    def no_room_to_grow(dbapi_connection: Any, _record: Any) -> None:
        # SQLite's own "database or disk is full" (SQLITE_FULL), as on a full volume.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA max_page_count = 1")  # raised to the current size by SQLite
        cursor.close()

    event.listen(sqlite_store.engine.sync_engine, "connect", no_room_to_grow)
    await sqlite_store.engine.dispose()
    with caplog.at_level(logging.ERROR, logger="bot.bot"):
        reply = await _queued(
            fake_discord,
            attachments={"prime": Upload("riff.wav", prime_wav(3.0))},
            user=fake_discord.user("bob"),
        )
    assert DISK_FULL.fullmatch(reply), reply
    assert any("storage outage: the database's disk is full" in r.getMessage() for r in caplog.records)
    assert await sqlite_store.get_job(1) == first and await job_count(sqlite_store) == 1

    event.remove(sqlite_store.engine.sync_engine, "connect", no_room_to_grow)
    await sqlite_store.engine.dispose()
    again = await _queued(
        fake_discord, attachments={"prime": Upload("riff.wav", prime_wav(3.0))}, user=fake_discord.user("bob")
    )
    assert again.startswith("Queued as job #2.")
    await PlayedWorker(sqlite_store).claim()  # the stored jobs are whole and usable


@pytest.mark.parametrize(
    ("command", "options", "expected"),
    [
        ("jukebot-admin limits", {"max_length": 1e9}, "`max_length` must be between 1 and 600, got 1e+09"),
        ("jukebot-admin limits", {"max_length": 0.5}, "`max_length` must be between 1 and 600, got 0.5"),
        (
            "jukebot-admin limits",
            {"max_queued": 2**70},
            f"`max_queued` must be between 1 and 100, got {2**70}",
        ),
        ("jukebox", {"temperature": 100}, "`temperature` must be between 0.1 and 2, got 100"),
        ("jukebox", {"samples": 0}, "`samples` must be between 1 and 16, got 0"),
        ("jukebox", {"model": "6b"}, "`model` is one of 5b_lyrics, 5b, 1b_lyrics, not '6b'"),
        ("jukebox", {"seed": "7"}, "`seed` must be a whole number"),
    ],
    ids=[
        "admin-length-1e9",
        "admin-length-half-second",
        "admin-queued-2^70",
        "temperature",
        "samples",
        "model",
        "seed-text",
    ],
)
async def test_options_outside_what_the_command_declared_are_refused(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    command: str,
    options: dict[str, Any],
    expected: str,
) -> None:
    """discord.py's `Range` and choices only tell Discord's client what to send; a tampered client sends
    anything (a server limit of 10**9 s was saved, and 2**70 queued jobs failed with an apology)."""
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    record = await fake.invoke_command(command, options, user=fake.user("mod"), forged=True)
    assert await reply_of(fake, record) == f"The option {expected}."
    assert await job_count(sqlite_store) == 0
    assert (await sqlite_store.get_guild_settings(fake.default_guild.id)).max_length_seconds is None
