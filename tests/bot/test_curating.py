"""`/curate`'s plain logic (bot/curating.py), without Discord."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from bot.curating import (
    Piece,
    Selection,
    Similarity,
    check_duration,
    order_line,
    parse_sample_ids,
    piece_params,
    piece_text,
)
from bot.errors import MAX_MESSAGE_CHARS, InvalidRequest
from bot.progress import header
from sampler.jobspec import CURATION_KEY, parse_params
from storage.models import JobKind, JobStatus
from storage.records import Job

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def piece(n: int, first_id: int = 1) -> Piece:
    order = list(range(first_id, first_id + n))
    return Piece(
        order=order,
        join_scores=[0.5 + i / (4 * n) for i in range(n - 1)],
        left_out=[],
        similarity=Similarity.CHROMAPRINT,
        audio=b"OggS",
        duration_seconds=61.0,
        top_codes=b"\x01\x00",
        strip=b"",
    )


def job(params: dict[str, object]) -> Job:
    return Job(
        *(1, 2, 3, 4, None, JobKind.GENERATE, "5b_lyrics", params, None, None, JobStatus.SUCCEEDED),
        *(0, 0, 3, None, None, 1.0, None, None, None, None, None, None, None, None, False, None, None),
        *(T0, T0, T0, T0),
    )


@pytest.mark.parametrize(
    ("text", "ids"),
    [("12, 15, 19", [12, 15, 19]), ("#3 #1;2,,3", [3, 1, 2]), (" 7\n8 ", [7, 8])],
)
def test_sample_lists_are_read_in_order_without_repeats(text: str, ids: list[int]) -> None:
    assert parse_sample_ids(text, max_count=50) == ids


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("", "List the samples to join by number"),
        ("12, x1", "x1 is not a sample number"),
        ("12, -3", "-3 is not a sample number"),
        ("12, ٣", "٣ is not a sample number"),  # a digit, but not one the store can hold
        ("12, 0", "There is no sample #0"),
        ("12, " + "9" * 80, "There is no sample #999"),
        ("12", "Curating joins at least two samples, and listed samples come to 1"),
        ("12, 12", "Curating joins at least two samples, and listed samples come to 1"),
        ("1, 2, 3", "That is 3 listed samples; one /curate joins at most 2."),
        ("1," * 600, "That list of samples is 1,200 characters long"),
    ],
)
def test_bad_sample_lists_get_specific_replies(text: str, reply: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_sample_ids(text, max_count=2)
    assert str(refused.value).startswith(reply), str(refused.value)


def test_the_message_lists_the_order_and_scores_and_fits_discord() -> None:
    short = piece_text(60, 9, 5, piece(3))
    assert "Order (similarity of each join): #1 → #2(0.50) → #3(0.58)" in short
    assert "1:01" in short and "`/continue sample:60`" in short
    long = piece_text(10**12, 10**12, 10**18, piece(100, first_id=10**15))  # a raised limit
    assert len(long) <= MAX_MESSAGE_CHARS
    assert "more (in the picture)" in long and long.endswith("extends it from its last sample.")
    unjoinable = piece_text(60, 9, 5, replace(piece(2), top_codes=None, left_out=[7]))
    assert "Left out (silent): #7" in unjoinable and "cannot be continued" in unjoinable
    # Hundreds left out (a raised limit): the list is cut at a whole number, saying how many more,
    # and the /continue line stays (the message's last cut fell mid-number and took it).
    silent = list(range(100_000, 100_300))
    many = piece_text(10**6, 9, 5, replace(piece(3), left_out=silent))
    assert len(many) <= MAX_MESSAGE_CHARS and many.endswith("extends it from its last sample."), many
    line = next(line for line in many.splitlines() if line.startswith("Left out (silent): "))
    assert re.fullmatch(r"Left out \(silent\): #100000(, #\d{6})*, and \d+ more", line), line
    assert len(line) < 300


def test_the_piece_continues_in_the_style_of_its_last_sample() -> None:
    last = job({"artist": "ella fitzgerald", "genres": ["jazz"], "n_samples": 3, "levels": "all", "seed": 7})
    params = piece_params(last, 2, piece(3), Selection(job=4))
    assert params["curation"] == {
        "selection": "job #4",
        "sample_ids": [1, 2, 3],
        "join_scores": piece(3).join_scores,
        "left_out_silent": [],
        "similarity": "chromaprint",
    }
    style = parse_params(params)
    assert (style.artist, style.genres, style.n_samples, style.levels) == (
        "ella fitzgerald",
        ("jazz",),
        1,
        "top",
    )
    # a piece made of pieces: the record of the inner one is not part of the style
    again = piece_params(job(params), 0, piece(2), Selection(sample_ids="1, 2"))
    assert again["curation"]["selection"] == "listed samples" and again["artist"] == "ella fitzgerald"
    # a sweep: the style of the last sample, not the whole sweep
    sweep = job(
        {
            "n_samples": 2,
            "styles": [{"artist": "a", "genres": ["jazz"]}, {"artist": "b", "genres": ["metal"]}],
        }
    )
    swept = parse_params(piece_params(sweep, 1, piece(2), Selection(job=1)))
    assert (swept.artist, swept.genres, swept.styles) == ("b", ("metal",), None)
    # parameters this bot cannot read: the defaults
    assert parse_params(piece_params(job({"bogus": 1}), 0, piece(2), Selection(top="week")))


def test_a_curate_job_has_a_progress_header() -> None:
    curated = replace(job({"artist": "x"}), kind=JobKind.CURATE)
    assert header(curated).startswith("**Job #1** · curated piece for <@4>")


def test_samples_too_long_to_join_in_the_bots_memory_are_refused() -> None:
    check_duration([600.0, 600.0, 600.0])  # 30 minutes: the most
    with pytest.raises(InvalidRequest) as refused:
        check_duration([2999.0, 3000.0, 600.5])  # pieces joined again
    assert str(refused.value) == (
        "Those 3 samples last 1 h 50 min together; one /curate joins at most 30 min of audio. Pick "
        'fewer or shorter samples with `samples:` (e.g. "12, 15, 19").'
    )


@pytest.mark.parametrize(
    "record",
    [
        None,
        "1,2,3",
        {"sample_ids": [1, 2, 3], "join_scores": [0.5]},  # a join's score missing
        {"sample_ids": [1, "2"], "join_scores": [0.5]},
        {"sample_ids": [1, 2], "join_scores": [float("nan")]},
        {"sample_ids": [], "join_scores": []},
        {"sample_ids": [True, 2], "join_scores": [0.5]},
    ],
)
def test_a_curation_record_this_bot_cannot_read_adds_no_order_line(record: object) -> None:
    params = {"artist": "queen"} if record is None else {"artist": "queen", CURATION_KEY: record}
    assert order_line(params, MAX_MESSAGE_CHARS) == ""


def test_a_long_order_line_keeps_to_its_room_and_says_how_many_more() -> None:
    record = {"sample_ids": list(range(1000, 1200)), "join_scores": [0.5] * 199}
    line = order_line({CURATION_KEY: record}, 300)
    assert len(line) <= 300 and line.startswith("\nOrder (similarity of each join): #1000 → #1001(0.50)")
    shown = line.count("#") - 1  # the first sample has no score
    assert line.endswith(f" → … {200 - shown - 1} more"), line
    assert order_line({CURATION_KEY: record}, 20) == ""  # not even the first sample fits
