"""The plain modules without Discord: requests (validation → params), progress rendering, delivery."""

from __future__ import annotations

import asyncio
import errno
import random
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import storage.engine
from bot import delivery
from bot.actions import parse_seconds
from bot.delivery import AudioFile, files_for_sample, group_for_messages, upload_limit
from bot.errors import (
    AttachmentRejected,
    ChannelNotAllowed,
    InvalidRequest,
    LimitReached,
    StorageOutage,
    UnknownLabel,
    fit_line,
    fit_message,
    listed,
)
from bot.progress import MARK_CANCELLED, MARK_DONE, MARK_FAILED, progress_bar, render_job, render_queue
from bot.requests import (
    MIN_LENGTH_SECONDS,
    GenerateOptions,
    Limits,
    availability_note,
    build_continue,
    build_generate,
    build_upsample,
    check_channel,
    check_continuable,
    check_prime_metadata,
    default_model,
    stored_id,
)
from sampler.audio import SAMPLE_RATE, decode_audio, encode_audio
from sampler.jukebox.windows import (
    TOP_HOP,
    longest_song_samples,
    prompt_length_samples,
    sample_length_samples,
)
from sampler.user_text import quote_user_text, shorten_user_text
from storage.models import JobKind, JobStatus
from storage.records import GuildSettings, Job, LevelWindow
from storage.store import QueuePlaces
from tests.bot.harness import make_settings, tone

LIMITS = Limits.resolve(make_settings())
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def parse_progress_message(content: str) -> tuple[int, bool] | None:
    """(job id, finished) read back from a progress message: its header and its last line's mark."""
    match = re.match(r"^\*\*Job #(?P<job_id>[0-9]+)\*\*", content)
    if match is None:
        return None
    last_line = content.rstrip().rsplit("\n", 1)[-1]
    return int(match["job_id"]), last_line.startswith((MARK_DONE, MARK_FAILED, MARK_CANCELLED))


def make_job(**overrides: object) -> Job:
    values: dict[str, object] = dict(
        id=12, guild_id=1, channel_id=2, user_id=3, progress_message_id=None, kind=JobKind.GENERATE,
        model="5b_lyrics", params={"artist": "the beatles", "genres": ["rock"], "seconds": 20.0, "n_samples": 2,
                                   "levels": "top"},
        parent_sample_id=None, prime_id=None, status=JobStatus.QUEUED, priority=0, attempts=0, max_attempts=3,
        lease_owner=None, lease_expires_at=None, progress=0.0, stage=None, level=None, window=None,
        window_count=None, tokens_done=None, tokens_total=None, tokens_per_second=None, eta_at=None,
        has_checkpoint=False, checkpoint_updated_at=None, error=None, created_at=T0, started_at=None,
        finished_at=None, updated_at=T0,
    )  # fmt: skip
    values.update(overrides)
    return Job(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------ requests


def test_limits_take_server_overrides_over_settings() -> None:
    guild = GuildSettings(guild_id=1, max_length_seconds=30.0, allowed_channel_ids=(5,))
    limits = Limits.resolve(make_settings(max_samples_per_job=4), guild)
    assert limits.max_length_seconds == 30.0 and limits.max_samples_per_job == 4
    assert limits.allowed_channel_ids == (5,)
    check_channel(limits, 5)
    with pytest.raises(ChannelNotAllowed, match="Use it in <#5>"):
        check_channel(limits, 6)
    check_channel(LIMITS, 6)  # no allow-list: everywhere
    check_channel(limits, 7, parent_id=5)  # a thread of an allowed channel
    with pytest.raises(ChannelNotAllowed):
        check_channel(limits, 7, parent_id=6)


def test_build_generate_defaults_and_canonical_labels() -> None:
    job = build_generate(LIMITS, GenerateOptions(model="5b_lyrics", artist="CÉLINE DION"), random.Random(0))
    params = job.params
    assert params.artist == "céline dion" and params.genres == ("unknown",)
    assert params.seconds == 20.0 and params.n_samples == 3 and params.levels == "top"
    assert params.seed == random.Random(0).randint(0, 2**31 - 1) and job.notes == ()
    full = build_generate(LIMITS, GenerateOptions(model="5b", full=True, seed=5, genres="rock, pop"))
    assert full.params.levels == "all" and full.params.seed == 5 and full.params.genres == ("rock", "pop")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (GenerateOptions(model="7b"), InvalidRequest, "Unknown model '7b'"),
        (GenerateOptions(model="5b", artist="zzzzqqq"), UnknownLabel, "does not know the artist"),
        (GenerateOptions(model="5b", length=61), LimitReached, "limit in this server is 60 s"),
        (GenerateOptions(model="5b", samples=4), LimitReached, "at most 3"),
        (GenerateOptions(model="5b", temperature=3.0), InvalidRequest, "temperature"),
        (GenerateOptions(model="5b", prime_seconds=1.0), InvalidRequest, "needs a prime"),
        (GenerateOptions(model="5b_lyrics", lyrics="x" * 7000), InvalidRequest, "7,000 characters"),
        # Values a tampered client can send (NaN only where orjson is not installed).
        (
            GenerateOptions(model="5b", prime_seconds=float("nan"), prime_duration=3.0),
            InvalidRequest,
            "got nan",
        ),
        (GenerateOptions(model="5b", prime_seconds=-1.0, prime_duration=3.0), InvalidRequest, "got -1"),
        (GenerateOptions(model="x" * 6000), InvalidRequest, r"Unknown model 'x{60}…' \(6,000 characters\)"),
    ],
)
def test_build_generate_refusals(options: GenerateOptions, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build_generate(LIMITS, options)


def test_a_length_is_longer_than_its_prime_as_the_worker_measures_both() -> None:
    """Both in whole top-level hops, rounded down (`sampler.jukebox.windows`): 10.001 s after a 10 s
    prime passed here and then failed in the worker, "must be longer than it"."""
    with pytest.raises(InvalidRequest, match=r"The length \(10\.001 s\) includes the prime \(10\.0 s\)"):
        build_generate(LIMITS, GenerateOptions(model="5b", length=10.001, prime_duration=10.0))
    one_hop_more = 10.0 + 2 * TOP_HOP / SAMPLE_RATE
    accepted = build_generate(LIMITS, GenerateOptions(model="5b", length=one_hop_more, prime_duration=10.0))
    assert sample_length_samples(accepted.params.seconds) > prompt_length_samples(10.0)


def test_a_prime_that_fills_the_servers_longest_song_is_told_what_it_can_change() -> None:
    """With 10 s the longest song here, a 12 s clip was told to "raise `length`" (past the limit),
    naming a length the member never gave."""
    tight = replace(LIMITS, max_length_seconds=10.0)
    for length in (None, 10.0):
        with pytest.raises(InvalidRequest) as refused:
            build_generate(tight, GenerateOptions(model="5b", length=length, prime_duration=12.0))
        assert str(refused.value) == (
            "The prime (12.0 s) leaves no room for new music in this server's longest song (10 s), which "
            "includes it: set `prime_seconds` under 10 s to continue from the clip's first seconds, or "
            "attach a shorter clip."
        )
    with pytest.raises(
        InvalidRequest, match=r"^The length \(20 s, the default\) includes the prime \(25\.0 s\)"
    ):
        build_generate(LIMITS, GenerateOptions(model="5b", prime_duration=25.0))
    assert build_generate(tight, GenerateOptions(model="5b", prime_duration=12.0, prime_seconds=6.0))


def test_a_continuation_without_a_length_keeps_to_the_servers_longest_song() -> None:
    """/continue without `seconds` added 10 s, refused where the longest song is 8 s."""
    parent = build_generate(LIMITS, GenerateOptions(model="5b_lyrics", artist="queen")).params
    tight = replace(LIMITS, max_length_seconds=8.0)
    made = build_continue(tight, parent, None, sample_id=1, parent_tokens=PREVIEW_TOKENS)
    assert made.params.seconds == 8.0


def test_prime_metadata_checks() -> None:
    check_prime_metadata(LIMITS, "a.wav", 1000)
    with pytest.raises(AttachmentRejected, match="empty"):
        check_prime_metadata(LIMITS, "a.wav", 0)
    with pytest.raises(AttachmentRejected, match=r"larger than the 2\.0 MiB limit"):
        check_prime_metadata(LIMITS, "a.wav", 3 * 1024 * 1024)


PREVIEW_TOKENS = 20 * SAMPLE_RATE // TOP_HOP  # a 20 s preview's top-level codes


def test_continue_and_upsample_keep_the_labels() -> None:
    parent = build_generate(LIMITS, GenerateOptions(model="5b_lyrics", artist="queen", lyrics="la")).params
    cont = build_continue(LIMITS, parent, 8.0, sample_id=1, parent_tokens=PREVIEW_TOKENS).params
    assert (cont.artist, cont.lyrics, cont.seconds, cont.n_samples) == ("queen", "la", 8.0, 1)
    assert (
        build_continue(LIMITS, parent, None, sample_id=1, parent_tokens=PREVIEW_TOKENS).params.seconds == 10.0
    )
    with pytest.raises(LimitReached, match="continuation is 90 s"):
        build_continue(LIMITS, parent, 90.0, sample_id=1, parent_tokens=PREVIEW_TOKENS)
    up = build_upsample(parent).params
    assert up.levels == "all" and up.n_samples == 1 and up.artist == "queen"
    assert up.seed == parent.seed  # the preview's own codes, upsampled
    # each Continue is another take: a seed of its own, not the parent's (which would repeat it)
    takes = {
        build_continue(
            LIMITS, parent, 8.0, sample_id=1, parent_tokens=PREVIEW_TOKENS, rng=random.Random(n)
        ).params.seed
        for n in range(3)
    }
    assert len(takes) == 3 and parent.seed not in takes


def test_a_continuation_keeps_the_song_under_the_models_longest() -> None:
    """Every published model takes songs shorter than 600 s: a continuation past that is refused here,
    saying how much still fits, instead of failing in a worker after its wait in the queue."""
    limits = replace(LIMITS, max_length_seconds=600.0)
    parent = build_generate(limits, GenerateOptions(model="5b_lyrics", artist="queen")).params
    tokens = 590 * SAMPLE_RATE // TOP_HOP  # 589.99 s
    assert build_continue(limits, parent, 10.0, sample_id=7, parent_tokens=tokens).params.seconds == 10.0
    with pytest.raises(LimitReached) as refused:
        build_continue(limits, parent, 10.1, sample_id=7, parent_tokens=tokens)
    assert str(refused.value) == (
        "Sample #7 is 589.9 s long, and songs stay under 600 s: continue it by at most 10 s."
    )
    full = longest_song_samples() // TOP_HOP
    with pytest.raises(
        LimitReached, match=r"^Sample #7 is 599.9 s long, .*: it cannot be continued any further\.$"
    ):
        check_continuable(7, full)
    check_continuable(7, full - int(MIN_LENGTH_SECONDS * SAMPLE_RATE) // TOP_HOP - 1)
    with pytest.raises(InvalidRequest, match="no top-level codes"):
        check_continuable(7, None)


# ------------------------------------------------------------------ progress


def test_the_default_model_is_one_a_worker_serves() -> None:
    assert default_model({"5b", "1b_lyrics"}) == "1b_lyrics"
    assert default_model({"5b"}) == "5b"
    assert default_model({"5b", "1b_lyrics", "5b_lyrics"}) == "5b_lyrics"
    assert default_model(set()) == "5b_lyrics"  # none served yet: the usual default (and a note)
    assert availability_note("1b_lyrics", {"1b_lyrics"}) is None
    note = availability_note("5b", {"1b_lyrics"})
    assert note == (
        "No worker has the 5b model yet, so your job waits in the queue until one does "
        "(available now: 1b_lyrics)."
    )
    assert "/" not in note and "jukebot " not in note  # no server path, no operator command


def test_progress_bar() -> None:
    assert progress_bar(0.0) == "`[░░░░░░░░░░░░░░░░░░░░]   0%`"
    assert progress_bar(0.5) == "`[██████████░░░░░░░░░░]  50%`"
    assert progress_bar(1.7) == "`[████████████████████] 100%`"


def test_render_job_in_each_state() -> None:
    queued = render_job(make_job(), places=QueuePlaces({12: 3}, frozenset()))
    assert queued.startswith(
        "**Job #12** · new song for <@3>\n5b_lyrics · the beatles · rock · 20 s · 2 samples"
    )
    assert queued.endswith("⏳ Queued: position 3 in the queue.")
    held = render_job(make_job(), places=QueuePlaces({}, frozenset({12})))
    assert held.endswith("⏳ Queued: waiting until an earlier job of yours here ends.")
    unserved = render_job(make_job(), places=QueuePlaces({}, frozenset(), frozenset({12})))
    assert unserved.endswith(
        "⏳ Queued: waiting for a worker with the 5b_lyrics model (none is running now)."
    )
    eta = datetime(2025, 1, 1, 12, 5, tzinfo=UTC)
    running = render_job(
        make_job(status=JobStatus.RUNNING, stage="sampling", level=2, window=2, window_count=8, progress=0.25,
                 tokens_per_second=412.3, eta_at=eta),
        now=eta - timedelta(minutes=5),
    )  # fmt: skip
    assert "🎛️ Running: sampling · top level (preview) · window 2/8" in running
    both = (LevelWindow(1, 3, 5), LevelWindow(0, 2, 20))
    overlapping = render_job(
        make_job(
            status=JobStatus.RUNNING,
            stage="upsampling",
            level=0,
            window=2,
            window_count=20,
            level_windows=both,
        )
    )
    assert (
        "Running: upsampling · middle level window 3/5 · bottom level (full quality) window 2/20\n"
        in overlapping
    )
    assert f"`[█████░░░░░░░░░░░░░░░]  25%` · 412 tokens/s · done <t:{int(eta.timestamp())}:R>" in running
    assert parse_progress_message(running) == (12, False)
    done = render_job(make_job(status=JobStatus.SUCCEEDED), sample_count=2)
    assert done.endswith("✅ Done: 2 samples below.") and parse_progress_message(done) == (12, True)
    failed = render_job(make_job(status=JobStatus.FAILED, error="out of memory"))
    assert failed.endswith("❌ Failed: out of memory") and parse_progress_message(failed) == (12, True)
    upsample = render_job(make_job(kind=JobKind.UPSAMPLE, parent_sample_id=7))
    assert upsample.startswith("**Job #12** · upsample of sample #7")
    assert parse_progress_message("hello") is None


def test_render_queue() -> None:
    mine = [
        make_job(id=4),
        make_job(id=5, status=JobStatus.RUNNING, progress=0.5, eta_at=T0.replace(hour=13)),
    ]
    places = QueuePlaces({4: 2}, frozenset())
    text = render_queue(mine, places, [mine[1]], T0)
    assert "• Job #4 (generate, 5b_lyrics): queued, position 2 in the queue" in text
    assert "• Job #5 (generate, 5b_lyrics): running, 50%, done <t:" in text
    assert "You have no job" in render_queue([], places, [], T0)
    # an ETA already past reads "finishing", in both lists, not "done 7 minutes ago"
    late = render_queue(mine, places, [mine[1]], T0.replace(hour=14))
    assert (
        "running, 50%, finishing" in late
        and f"for <@{mine[1].user_id}> (generate, 5b_lyrics): 50%, finishing" in late
    )
    running = render_job(make_job(id=6, status=JobStatus.RUNNING, progress=0.5, eta_at=T0), now=T0)
    assert running.endswith("50%` · finishing"), running


# ------------------------------------------------------------------ delivery


def test_upload_limit_prefers_the_interaction() -> None:
    assert upload_limit(25_000_000, 10_000_000) == 25_000_000
    assert upload_limit(None, 8_000_000) == 8_000_000
    assert upload_limit(None, None) == 10 * 1024 * 1024


def test_stored_audio_that_fits_is_sent_as_is() -> None:
    audio = encode_audio(tone(2.0), SAMPLE_RATE, "ogg", 64_000)
    (file,) = files_for_sample(audio, "ogg", len(audio), "s1", 2.0)
    assert file.data == audio and file.filename == "s1.ogg"


def test_audio_too_big_is_reencoded_or_split_never_dropped() -> None:
    audio = encode_audio(tone(20.0), SAMPLE_RATE, "ogg", 192_000)
    smaller = files_for_sample(audio, "ogg", len(audio) // 2, "s1", 20.0)
    assert len(smaller) == 1 and len(smaller[0].data) <= len(audio) // 2
    parts = files_for_sample(audio, "ogg", 30_000, "s1", 20.0)  # 30 kB: 20 s cannot fit even at 32 kbit/s
    assert len(parts) > 1 and all(len(p.data) <= 30_000 for p in parts)
    assert parts[0].filename in (f"s1_part1of{len(parts)}.ogg", f"s1_part1of{len(parts)}.mp3")
    total = sum(len(decode_audio(p.data, max_seconds=None)) for p in parts) / SAMPLE_RATE
    assert abs(total - 20.0) < 0.2


async def test_reencodes_run_one_at_a_time_and_leave_the_shared_threads_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of /sample of a long sample decodes it one request at a time, and the requests waiting
    their turn hold none of the threads the event loop shares (name lookups, pictures, curation)."""
    audio = encode_audio(tone(4.0), SAMPLE_RATE, "ogg", 192_000)
    real_decode, inside, most, count = delivery.decode_audio, [0], [0], threading.Lock()
    first_may_go = threading.Event()

    def held_decode(*args: Any, **kwargs: Any) -> Any:
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            assert first_may_go.wait(timeout=30)  # the first re-encode runs until the test lets it go
            return real_decode(*args, **kwargs)
        finally:
            with count:
                inside[0] -= 1

    monkeypatch.setattr(delivery, "decode_audio", held_decode)
    loop = asyncio.get_running_loop()
    shared = ThreadPoolExecutor(4)  # the loop's default threads, fewer than the requests
    loop.set_default_executor(shared)
    try:
        burst = [
            asyncio.create_task(delivery.files_in_turn(audio, "ogg", len(audio) // 2, f"s{n}", 4.0))
            for n in range(8)
        ]
        # While the first re-encode runs and seven wait, other thread work still gets a thread.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), timeout=10) == 42
        first_may_go.set()
        results = await asyncio.gather(*burst)
    finally:
        first_may_go.set()
        shared.shutdown(wait=True)
    assert most[0] == 1 and all(len(files) == 1 for files in results)
    fits = await delivery.files_in_turn(audio, "ogg", len(audio), "s", 4.0)  # fits: no re-encode at all
    assert fits[0].data == audio


def test_group_for_messages_respects_size_and_count() -> None:
    files = [AudioFile(f"f{i}", b"x" * 40, "") for i in range(12)]
    groups = group_for_messages(files, 100)
    assert [len(g) for g in groups] == [2, 2, 2, 2, 2, 2]
    assert [len(g) for g in group_for_messages(files, 10_000)] == [10, 2]
    assert group_for_messages([replace(files[0], data=b"x" * 500)], 100)[0][0].filename == "f0"


def test_bot_never_imports_torch() -> None:
    root = Path(__file__).resolve().parents[2]
    modules = sorted(
        ".".join(path.relative_to(root).with_suffix("").parts) for path in (root / "bot").rglob("*.py")
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False", modules
    assert "bot.exts.jukebox" in modules and "bot.relay" in modules


def test_user_text_is_quoted_whole_when_short_and_shortened_with_its_length_when_long() -> None:
    assert quote_user_text("queen") == "'queen'"
    assert quote_user_text("a\nb") == "'a\\nb'"  # control characters show
    assert quote_user_text("ab" * 3000, limit=4) == "'abab…' (6,000 characters)"
    assert shorten_user_text("9" * 80, limit=3) == "999… (80 characters)"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0"), (2**63, "9223372036854775808"), (1.5, "1.5"), (True, "True"), ("12", "12")],
)
def test_stored_ids_are_whole_numbers_a_database_can_hold(value: object, shown: str) -> None:
    assert stored_id(2**63 - 1, "job") == 2**63 - 1
    with pytest.raises(InvalidRequest, match=rf"^There is no job #{shown}: job numbers are whole numbers"):
        stored_id(value, "job")


def test_storage_outages_are_recognised_through_the_errors_that_wrap_them() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert StorageOutage.of(full) is StorageOutage.DISK_FULL
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except ConnectionRefusedError as refused:
            raise RuntimeError("while loading the guild settings") from refused
    except RuntimeError as wrapped:
        assert StorageOutage.of(wrapped) is StorageOutage.UNREACHABLE
    assert StorageOutage.of(RuntimeError("a bug")) is None
    assert StorageOutage.of(OSError(errno.EACCES, "Permission denied")) is None


def test_a_sqlite_file_locked_past_the_busy_timeout_is_a_busy_database(tmp_path: Path) -> None:
    import sqlite3

    holder = sqlite3.connect(tmp_path / "jukebot.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(tmp_path / "jukebot.sqlite3", timeout=0.05, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        waiter.close()
        holder.close()
    try:
        raise RuntimeError("while voting") from locked.value
    except RuntimeError as wrapped:
        assert StorageOutage.of(wrapped) is StorageOutage.BUSY
    assert StorageOutage.BUSY.reply("error 1f2e").startswith("The bot's database is busy")


async def test_a_statement_that_outlives_its_time_limit_is_a_database_outage(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that went silent ends a call with TimeoutError: the user hears the database is away,
    not an apology for a bug; a timeout of anything else is not blamed on the database."""
    if not db_url.startswith("postgresql"):
        pytest.skip("statements have a time limit on Postgres (SQLite is a local file)")
    monkeypatch.setattr(storage.engine, "POSTGRES_STATEMENT_TIMEOUT_SECONDS", 0.2)
    engine = storage.engine.create_engine(db_url)
    try:
        with pytest.raises(TimeoutError) as timed_out:
            async with engine.connect() as connection:
                await connection.exec_driver_sql("SELECT pg_sleep(2)")
    finally:
        await engine.dispose()
    assert StorageOutage.of(timed_out.value) is StorageOutage.UNREACHABLE
    assert StorageOutage.of(TimeoutError()) is None


def test_a_reply_is_cut_to_discords_limit() -> None:
    assert fit_message("x" * 2000) == "x" * 2000
    assert fit_message("x" * 6000) == "x" * 1999 + "…"


def test_lists_keep_whole_items_and_lines_shorten_their_middle() -> None:
    ids = [f"#{n}" for n in range(10, 30)]
    assert listed(ids[:3], 100) == "#10, #11, #12"
    assert listed(ids, 30) == "#10, #11, #12, and 17 more"
    assert len(listed(ids, 30)) <= 30
    assert listed(ids, 32) == "#10, #11, #12, #13, and 16 more"
    assert listed(["a-long-first-item"], 5) == "a-long-first-item"  # one item is never dropped
    assert listed([], 10) == ""
    line = fit_line("• Job #1 · ", "queen / rock, pop, jazz", " · <t:1:R>", 35)
    assert line == "• Job #1 · queen / rock,… · <t:1:R>" and len(line) == 35
    assert fit_line("a ", "b", " c", 30) == "a b c"
    assert fit_line("start ", "x" * 40, " end", 10) == "start " + "x" * 11 + "…" + " end"  # never below 12


@pytest.mark.parametrize(
    ("typed", "seconds"),
    [
        ("10", 10.0),
        (" 12.5 ", 12.5),
        ("12,5", 12.5),
        ("5s", 5.0),
        ("10 sec", 10.0),
        ("10 Seconds", 10.0),
        ("1e1", 10.0),
        ("٥", 5.0),
        ("", None),
        (" s ", None),
    ],
)
def test_the_continue_form_reads_the_seconds_as_people_type_them(typed: str, seconds: float | None) -> None:
    assert parse_seconds(typed) == seconds


@pytest.mark.parametrize(
    ("typed", "refusal"),
    [
        (
            "1,000",
            "'1,000' could be read two ways; type the seconds without a thousands separator, e.g. 10 or 12.5.",
        ),
        ("10 seconds please", "'10 seconds please' is not a number of seconds; type e.g. 10 or 12.5."),
        ("-5 s", "The seconds to add must be a positive number, got '-5 s'."),
        ("nan", "The seconds to add must be a positive number, got 'nan'."),
    ],
)
def test_the_continue_form_refuses_what_it_cannot_read_quoting_it_whole(typed: str, refusal: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_seconds(typed)
    assert str(refused.value) == refusal


def test_a_job_that_crashed_on_every_attempt_shows_no_operator_detail_in_public() -> None:
    """The worker's last exception (a model path in the operator's home, a database host) was shown in
    the public progress message; the operator reads it in `jukebot jobs list`."""
    crashed = make_job(
        status=JobStatus.FAILED,
        attempts=3,
        error="The sampler crashed on all 3 attempts; the last error was: FileNotFoundError: [Errno 2] No "
        "such file or directory: '/home/op/.cache/jukebot/models/5b/prior_level_2.pth.tar'",
    )
    shown = render_job(crashed)
    assert shown.endswith(
        f"{MARK_FAILED} Failed: the sampler crashed on every attempt (3); the bot's operator can see why."
    )
    assert "/home/op" not in shown
    refused = make_job(status=JobStatus.FAILED, error="This job cannot be sampled: the prompt is too short.")
    assert render_job(refused).endswith("Failed: This job cannot be sampled: the prompt is too short.")
