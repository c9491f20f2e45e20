"""Artist and genre autocomplete through the real client: model-aware, typo- and accent-tolerant, ≤ 25."""

from __future__ import annotations

import pytest

from bot import vocab
from bot.errors import UnknownLabel
from sampler.jukebox.registry import MODELS
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import make_bot


async def test_autocomplete_ranks_typos_and_accents_and_never_exceeds_25(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    typo = await fake.autocomplete("jukebox", "artist", "beatls")
    assert typo[0] == {"name": "the beatles", "value": "the beatles"}
    accents = await fake.autocomplete("jukebox", "artist", "celine dion")
    assert accents[0]["value"] == "céline dion"
    upper_accented = await fake.autocomplete("jukebox", "artist", "CÉLINE")
    assert upper_accented[0]["value"] == "céline dion"
    for typed in ("", "a", "the", "e"):
        choices = await fake.autocomplete("jukebox", "artist", typed)
        assert 1 <= len(choices) <= 25
        choices = await fake.autocomplete("jukebox", "genre", typed)
        assert 1 <= len(choices) <= 25
    genres = await fake.autocomplete("jukebox", "genre", "rok")
    assert genres[0]["value"] == "rock"
    several = await fake.autocomplete("jukebox", "genre", "rock, jaz")
    assert several[0]["value"] == "rock, jazz" and all(c["value"].startswith("rock, ") for c in several)


async def test_autocomplete_follows_the_chosen_model(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    v2 = await fake.autocomplete("jukebox", "artist", "beat", options={"model": "5b"})
    v3 = await fake.autocomplete("jukebox", "artist", "beat", options={"model": "1b_lyrics"})
    assert [c["value"] for c in v2] == vocab.suggest_artists("5b", "beat")
    assert [c["value"] for c in v3] == vocab.suggest_artists("1b_lyrics", "beat")
    assert v2 != v3  # the two label versions know different artists


@pytest.mark.parametrize("model", MODELS)
def test_suggestions_are_capped_and_resolvable(model: str) -> None:
    for typed in ("", "x", "rock", "hip hop, j"):
        genres = vocab.suggest_genres(model, typed)
        assert len(genres) <= 25 and all(len(g) <= 100 for g in genres)
    artists = vocab.suggest_artists(model, "the")
    assert 0 < len(artists) <= 25
    resolved = vocab.resolve_labels(model, artists[0], vocab.suggest_genres(model, "rock")[0])
    assert resolved.artist == artists[0]


def test_genres_are_suggested_only_up_to_what_the_model_takes() -> None:
    assert vocab.suggest_genres("1b_lyrics", "rock")  # its one genre
    assert vocab.suggest_genres("1b_lyrics", "rock, po") == []  # no second: 1b_lyrics takes one
    assert vocab.suggest_genres("5b", "rock, po")[0].startswith("rock, po")


def test_styles_are_split_resolved_and_suggested() -> None:
    resolved = vocab.resolve_styles("5b", "AC/DC / rock; AC/DC; Ella Fitzgerald/jazz, blues; unknown")
    assert [(r.artist, r.genres) for r in resolved] == [
        ("ac/dc", ("rock",)),
        ("ac/dc", ("unknown",)),  # a slash inside a known artist name is no separator
        ("ella fitzgerald", ("jazz", "blues")),
        ("unknown", ("unknown",)),
    ]
    done = "ella fitzgerald / jazz; " * 3
    assert vocab.suggest_styles("5b", done + "metall")[0] == done + "metallica"
    assert vocab.suggest_styles("5b", "metallica / rock, hea")[0] == "metallica / rock, heavy metal"
    # Discord takes choices of at most 100 characters: a longer list gets no suggestions, not cut ones
    assert vocab.suggest_styles("5b", done * 2 + "metall") == []
    # two styles joined by another separator than ';'
    for joined in ("Ella Fitzgerald / jazz, Metallica / metal", "Ella Fitzgerald / jazz | Metallica / metal"):
        with pytest.raises(UnknownLabel, match=r"Is this two styles\? Separate styles with ';'\.$"):
            vocab.resolve_styles("5b", joined)
    with pytest.raises(UnknownLabel) as one_style:
        vocab.resolve_styles("5b", "Ella Fitzgerald / jazzz")
    assert "two styles" not in str(one_style.value)
