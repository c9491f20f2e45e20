"""Artist and genre autocomplete through the real client: model-aware, typo- and accent-tolerant, ≤ 25."""

from __future__ import annotations

import pytest

from bot import vocab
from bot.errors import UnknownLabel
from sampler.jukebox.registry import MODELS
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import make_bot, reply_of


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


async def test_autocomplete_without_a_model_follows_the_model_the_request_will_run_on(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """With only 1b_lyrics served, a request with no model runs on it: autocomplete suggested
    5b_lyrics' names ('rock, pop', an artist 1b_lyrics lacks), which the request then refused."""
    fake = fake_discord
    await sqlite_store.record_worker("gpu-box/1/cuda:0", ["1b_lyrics"])
    await bot_runner.start(make_bot(fake, sqlite_store))
    genres = await fake.autocomplete("jukebox", "genre", "rock, p")
    assert genres == []  # 1b_lyrics takes one genre
    artists = await fake.autocomplete("jukebox", "artist", "beat")
    assert [c["value"] for c in artists] == vocab.suggest_artists("1b_lyrics", "beat")
    reply = await reply_of(
        fake, await fake.invoke_command("jukebox", {"artist": artists[0]["value"], "samples": 1})
    )
    assert reply.startswith("Queued as job #1."), reply
    assert (await sqlite_store.get_job(1)).model == "1b_lyrics"


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


@pytest.mark.parametrize("model", ["5b", "5b_lyrics"])
@pytest.mark.parametrize("typed", ["hip hop, r&b, ", "rock, pop, jazz, blues, ", "rock, pop, jazz, blues, b"])
def test_every_genre_suggested_is_one_the_model_takes_with_those_before_it(model: str, typed: str) -> None:
    """v2 models take 5 genre words, not 5 genres: 21 of 25 suggestions after 'hip hop, r&b, ' were
    refused ('has 6, this model takes at most 5'), and 'blues, blues' and ', unknown' were offered."""
    suggested = vocab.suggest_genres(model, typed)
    assert suggested, typed
    for choice in suggested:
        vocab.resolve_labels(model, None, choice)  # raises UnknownLabel where the request would
        listed = vocab.split_genres(choice)
        assert len(set(listed)) == len(listed) and "unknown" not in listed[1:], choice


@pytest.mark.parametrize(
    ("model", "typed", "artist"), [("5b", "AC/DC", "ac/dc"), ("1b_lyrics", "to/die/", "to/die/for")]
)
def test_a_style_whose_artist_has_a_slash_is_suggested_whole(model: str, typed: str, artist: str) -> None:
    """The slash was read as the artist / genre separator at once: 'AC/DC' gave 'AC / grindcore' and
    the like, never the artist, and picking one was refused ('does not know the artist AC')."""
    suggested = vocab.suggest_styles(model, f"Ella Fitzgerald / jazz; {typed}")
    assert suggested[0] == f"Ella Fitzgerald / jazz; {artist}", suggested[:3]
    assert [style.artist for style in vocab.resolve_styles(model, suggested[0])][1] == artist
