"""Artist and genre names for autocomplete and input checks: a thin adapter over `sampler.jukebox.labels`.

The label module knows the published id tables; this module turns its answers into what the
bot needs (at most 25 suggestions, several comma-separated genres, our own error class).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import UnknownLabel
from sampler.jukebox.labels import LabelError, Vocabulary

MAX_CHOICES = 25  # Discord refuses more autocomplete choices than this
MODELS = ("5b_lyrics", "5b", "1b_lyrics")
DEFAULT_MODEL = "5b_lyrics"


def vocabulary(model: str) -> Vocabulary:
    """The chosen model's vocabulary (cached by the label module); unknown models read as the default."""
    try:
        return Vocabulary.for_model(model)
    except LabelError:
        return Vocabulary.for_model(DEFAULT_MODEL)


def split_genres(text: str) -> list[str]:
    """Several genres are typed separated by commas: 'rock, pop'."""
    return [part.strip() for part in text.split(",") if part.strip()]


def suggest_artists(model: str, typed: str, limit: int = MAX_CHOICES) -> list[str]:
    return vocabulary(model).suggest_artists(typed.strip(), min(limit, MAX_CHOICES))[:MAX_CHOICES]


def suggest_genres(model: str, typed: str, limit: int = MAX_CHOICES) -> list[str]:
    """Suggestions for the genre being typed; earlier comma-separated genres are kept as a prefix."""
    done, _, current = typed.rpartition(",")
    prefix = ", ".join(split_genres(done))
    found = vocabulary(model).suggest_genres(current.strip(), min(limit, MAX_CHOICES))
    choices = [f"{prefix}, {name}" if prefix else name for name in found]
    return [choice for choice in choices if len(choice) <= 100][:MAX_CHOICES]


@dataclass(frozen=True)
class ResolvedLabels:
    artist: str
    genres: tuple[str, ...]


def resolve_labels(model: str, artist: str | None, genres: str | None) -> ResolvedLabels:
    """Canonical artist and genre texts for `model`, or `UnknownLabel` naming the closest matches."""
    vocab = Vocabulary.for_model(model)
    try:
        resolved_artist = vocab.resolve_artist(artist).name if artist and artist.strip() else "unknown"
        names = split_genres(genres or "") or ["unknown"]
        texts = tuple(vocab.resolve_genres(name).text for name in names)
        vocab.resolve_genres(list(texts))  # the limit on genres counts all of them together
    except LabelError as exc:
        raise UnknownLabel(str(exc)) from None
    return ResolvedLabels(resolved_artist, texts)
