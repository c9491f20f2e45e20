from __future__ import annotations

import subprocess
import sys

import pytest

from sampler.jobspec import InvalidJobParams, JobParams, Style, min_total_seconds, parse_params


def test_round_trip_through_json() -> None:
    params = JobParams(
        artist="The Beatles", genres=("rock", " ", "pop"), lyrics="la la", seconds=12.5, seed=7
    )
    assert params.genres == ("rock", "pop")
    assert parse_params(params.to_json()) == params


def test_a_style_sweep_labels_each_sample() -> None:
    sweep = JobParams(
        lyrics="la la",
        n_samples=2,
        styles=(Style(artist="ella fitzgerald", genres=("jazz", " ")), Style(artist="metallica", lyrics="")),
    )
    assert parse_params(sweep.to_json()) == sweep
    assert sweep.style_of(0) == Style(artist="ella fitzgerald", genres=("jazz",), lyrics="la la")
    assert sweep.style_of(1) == Style(artist="metallica", genres=("unknown",), lyrics="")
    assert sweep.style_of(0).describe() == "ella fitzgerald / jazz"
    # a continuation of one sample of a sweep keeps that sample's labels only
    narrowed = sweep.for_sample(1).model_copy(update={"n_samples": 1})
    assert (narrowed.artist, narrowed.genres, narrowed.lyrics, narrowed.styles) == (
        "metallica",
        ("unknown",),
        "",
        None,
    )
    plain = JobParams(artist="queen", lyrics="la")
    assert "styles" not in plain.to_json()  # params of a job that is no sweep read as before
    assert plain.style_of(0) == Style(artist="queen", genres=("unknown",), lyrics="la")
    assert plain.for_sample(0) is plain


def test_total_length_defaults_to_the_model_minimum() -> None:
    assert min_total_seconds("5b") == 60.0
    assert min_total_seconds("1b_lyrics") == pytest.approx(17.84)
    assert JobParams(seconds=10).effective_total_seconds("5b_lyrics") == pytest.approx(23.8)
    assert JobParams(seconds=90).effective_total_seconds("5b") == 90
    assert JobParams(seconds=10, total_seconds=200).effective_total_seconds("1b_lyrics") == 200


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seconds": 0}, "seconds: Input should be greater than 0"),
        ({"n_samples": 17}, "n_samples: Input should be less than or equal to 16"),
        ({"genres": ["a", "b", "c", "d", "e", "f"]}, "genres: Tuple should have at most 5 items"),
        ({"seconds": 30, "total_seconds": 20}, "total_seconds (20) must be at least the sample length (30)"),
        ({"hop_fraction": [0.5, 0.5, 0]}, "every hop fraction must be in (0, 1]"),
        ({"levels": "middle"}, "levels: Input should be 'top' or 'all'"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"n_samples": 3, "styles": [{}, {}]}, "styles lists 2 styles for 3 samples: give one per sample"),
        ({"styles": []}, "styles: Tuple should have at least 1 item"),
        ({"styles": [{"artist": "x" * 201}]}, "styles.0.artist: String should have at most 200 characters"),
        (
            {"styles": [{"genres": ["a", "b", "c", "d", "e", "f"]}]},
            "styles.0.genres: Tuple should have at most 5",
        ),
        ({"styles": [{"mood": "sad"}]}, "styles.0.mood: Extra inputs are not permitted"),
    ],
)
def test_bad_params_say_which_and_why(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidJobParams) as info:
        parse_params(raw)
    assert message in str(info.value)


def test_importing_jobspec_does_not_import_torch() -> None:
    code = "import sys, sampler.jobspec; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
