"""Model API requests the command line refuses, refused by the API too (`Cascade.check`, which `sample`
runs first, and `load_cascade`): a misspelled artist or genre (sampled as 'unknown' before), a
`continue` request with nothing to add (the codes given came back unchanged), and the meta device
(accepted, then sampling failed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.jukebox.cascade import Cascade, SampleStyle, SamplingError
from sampler.loading import LoadOptionError, load_cascade
from tests.sampler.test_model_api_checks import LENGTH, TOTAL, request
from tests.tiny_model_dir import write_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("models"), models=("1b_lyrics", "5b"))


@pytest.fixture(scope="module")
def cascade(model_dir: Path) -> Cascade:
    return load_cascade(model_dir, "1b_lyrics")


# ---- 1. artists and genres the model does not know


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"artist": "the beatels"},
            r"^1b_lyrics does not know the artist 'the beatels': use one of the closest \('the beatles', ",
        ),
        ({"genre": "rokc"}, r"^1b_lyrics does not know the genre 'rokc': use one of the closest \('rock', "),
        ({"artist": "zzzqqq"}, "^1b_lyrics does not know the artist 'zzzqqq' and none is close"),
        ({"genre": "rock pop"}, "^1b_lyrics does not know the genre 'rock pop'"),  # v3: one genre
        ({"artist": " "}, "^the artist is empty"),
        (
            {"styles": (SampleStyle("the beatles", "rock"), SampleStyle("the beatels", "rock"))},
            r"^style 1: 1b_lyrics does not know the artist 'the beatels': use one of the closest",
        ),
        (
            {"styles": (SampleStyle("queen", "metl"), SampleStyle("the beatles", "rock"))},
            "^style 0: 1b_lyrics does not know the genre 'metl'",
        ),
    ],
)
def test_check_refuses_an_artist_or_genre_the_model_does_not_know(
    cascade: Cascade, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(SamplingError, match=reason) as refused:
        cascade.check(request(**fields))
    assert "'unknown' for none in particular" in str(refused.value)
    with pytest.raises(SamplingError, match=reason):
        cascade.sample(request(**fields))


def test_a_v2_model_says_which_genre_word_it_does_not_know(model_dir: Path) -> None:
    five = load_cascade(model_dir, "5b")
    with pytest.raises(SamplingError, match=r"^5b does not know the genre word 'rokc' in 'pop rokc'"):
        five.check(request(lyrics="", genre="pop rokc", total_length=TOTAL))
    five.check(request(lyrics="", artist="Céline Dion", genre="Pop Rock"))  # v2: up to 5 words


@pytest.mark.parametrize(
    ("artist", "genre"),
    [
        ("unknown", "unknown"),
        ("the beatles", "rock"),
        ("The Beatles", "Rock"),  # case
        ("the  beatles", "hip  hop"),  # spacing
        ("celine dion", "pop"),  # accents
        ("Céline Dion", "POP"),
    ],
)
def test_check_takes_names_the_model_knows_as_the_command_line_does(
    cascade: Cascade, artist: str, genre: str
) -> None:
    cascade.check(request(artist=artist, genre=genre))
    cascade.check(request(styles=(SampleStyle(artist, genre), SampleStyle("unknown", "unknown"))))


def test_a_forgiven_spelling_samples_the_artist_it_names_not_unknown(cascade: Cascade) -> None:
    """'celine dion' passes as the command line's 'céline dion'; the labels looked it up as typed
    (id 0, 'unknown')."""
    canonical = cascade.sample(request(artist="céline dion", genre="pop")).codes[2]
    unknown = cascade.sample(request(artist="unknown", genre="pop")).codes[2]
    assert not torch.equal(canonical, unknown)  # the artist's label changes the codes
    for typed in ("celine dion", "Céline  Dion"):
        assert torch.equal(cascade.sample(request(artist=typed, genre="pop")).codes[2], canonical)
    sweep = request(
        styles=(SampleStyle("celine dion", "POP", "sing"), SampleStyle("céline dion", "pop", "sing"))
    )
    assert torch.equal(cascade.sample(sweep).codes[2], canonical)


# ---- 2. continue with nothing to add


@pytest.fixture(scope="module")
def top_codes(cascade: Cascade) -> torch.Tensor:
    return cascade.sample(request()).codes[2]  # (2, 64): LENGTH samples


@pytest.mark.parametrize(
    ("sample_length", "reason"),
    [
        (
            LENGTH,
            r"^continue mode adds to the codes given, but those of level 2 already cover the 0\.02 s "
            r"of sample_length \(0\.02 s\): ask for a longer sample_length",
        ),
        (
            LENGTH // 2,
            r"^continue mode adds to the codes given, but those of level 2 \(0\.02 s\) are longer than "
            r"sample_length \(0\.01 s\): ask for a longer sample_length",
        ),
    ],
)
def test_continue_refuses_codes_that_leave_nothing_to_add(
    cascade: Cascade, top_codes: torch.Tensor, sample_length: int, reason: str
) -> None:
    wanted = request(mode="continue", sample_length=sample_length, codes=(None, None, top_codes))
    with pytest.raises(SamplingError, match=reason):
        cascade.check(wanted)
    with pytest.raises(SamplingError, match=reason):
        cascade.sample(wanted)


def test_continue_and_upsample_still_take_codes_that_leave_something_to_do(
    cascade: Cascade, top_codes: torch.Tensor
) -> None:
    longer = request(mode="continue", sample_length=2 * LENGTH, codes=(None, None, top_codes))
    assert torch.equal(cascade.sample(longer).codes[2][:, :64], top_codes)
    # the top level is whole, the levels below are sampled in full under it
    cascade.check(request(mode="continue", levels=(0, 1, 2), codes=(None, None, top_codes)))
    cascade.check(request(mode="upsample", levels=(0, 1), codes=(None, None, top_codes)))
    with pytest.raises(SamplingError, match="the codes of level 2 are longer than sample_length"):
        cascade.check(
            request(mode="upsample", levels=(0, 1), sample_length=LENGTH // 2, codes=(None, None, top_codes))
        )


# ---- 3. the meta device


@pytest.mark.parametrize("device", ["meta", torch.device("meta")])
def test_load_cascade_refuses_the_meta_device(model_dir: Path, device: str | torch.device) -> None:
    with pytest.raises(
        LoadOptionError, match=r"^device 'meta' holds no data .*: give e\.g\. 'cpu' or 'cuda'"
    ):
        load_cascade(model_dir, "1b_lyrics", device=device)
