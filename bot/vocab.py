"""Artist and genre names for autocomplete and input checks: a thin adapter over `sampler.jukebox.labels`.

The label module knows the published id tables; this module turns its answers into what the
bot needs (at most 25 suggestions, several comma-separated genres, our own error class).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import UnknownLabel
from sampler.jukebox.labels import LabelError, ResolvedGenres, Vocabulary, genre_ids
from sampler.jukebox.registry import DEFAULT_MODEL
from sampler.user_text import plain_words, quote_user_text

MAX_CHOICES = 25  # Discord refuses more autocomplete choices than this
# Genres looked up per choice shown: those the model would refuse beside the genres before them are
# left out, and the rest should still fill the list.
GENRE_CANDIDATES_PER_CHOICE = 4


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
    earlier = split_genres(done)
    vocab = vocabulary(model)
    if len(earlier) >= vocab.max_genres:  # e.g. 1b_lyrics takes one genre: suggest no second
        return []
    prefix = ", ".join(earlier)
    limit = min(limit, MAX_CHOICES)
    # Only what the model takes with the genres before it: a v2 model counts words (5), not genres,
    # and a genre listed already, or 'unknown' beside others, adds nothing.
    found = vocab.suggest_genres(current.strip(), limit * GENRE_CANDIDATES_PER_CHOICE)
    choices = []
    for name in found:
        if earlier and (name in earlier or name == "unknown"):
            continue
        try:
            vocab.resolve_genres([*earlier, name])
        except LabelError:
            continue
        choice = f"{prefix}, {name}" if prefix else name
        if len(choice) <= 100:
            choices.append(choice)
    return choices[:limit]


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
        texts = tuple(_plain_genre(vocab, vocab.resolve_genres(name)) for name in names)
        vocab.resolve_genres(list(texts))  # the limit on genres counts all of them together
    except LabelError as exc:
        raise UnknownLabel(str(exc)) from None
    return ResolvedLabels(resolved_artist, texts)


def _plain_genre(vocab: Vocabulary, genre: ResolvedGenres) -> str:
    """The genre text to store and show. v2 keeps what was typed, read as a bag of words: every other
    character is a separator, so 'pop\\n# ✅ ||rock||' is the genre 'pop rock' and would put a line,
    a heading and a spoiler in public messages. Its words alone name the same genre; a v3 genre is a
    name from the vocabulary already. The words stand in only where the model's own lookup
    (`genre_ids`, which the worker labels with) gives them the same ids as the text: a v3 name such
    as 'soundtrack/musical' stays as it is."""
    labelled = genre_ids(genre.text, vocab.version, vocab.ids_dir)
    for plain in (plain_words(genre.text), plain_words(genre.text.lower())):
        try:
            if (
                plain
                and vocab.resolve_genres(plain).ids == genre.ids
                and genre_ids(plain, vocab.version, vocab.ids_dir) == labelled
            ):
                return plain
        except LabelError:
            pass
    return genre.text


# Style sweeps: `styles` lists several artist / genre pairs, e.g. "Ella Fitzgerald / jazz; Metallica / metal".
STYLE_SEPARATOR = ";"
MAX_NAME_CHARS = 100  # an artist's or genres' text within one style (the longest known name is shorter)


def split_styles(text: str) -> list[str]:
    return [part.strip() for part in text.split(STYLE_SEPARATOR) if part.strip()]


def split_style(text: str) -> tuple[str, str]:
    """One style's artist and genre text: 'artist / genre, genre'. The last ' / ' separates them
    (an artist may have a slash, 'AC/DC / rock'); without one, the last '/'; without any, no genre."""
    for separator in (" / ", "/"):
        artist, found, genres = text.rpartition(separator)
        if found:
            return artist.strip(), genres.strip()
    return text.strip(), ""


def resolve_styles(model: str, text: str) -> tuple[ResolvedLabels, ...]:
    """Each listed style resolved like `artist` and `genre`, or `UnknownLabel` saying which style and why."""
    styles = split_styles(text)
    if not styles:
        raise UnknownLabel(
            "The styles list is empty: write artist / genre pairs separated by ';', "
            "e.g. 'Ella Fitzgerald / jazz; Metallica / metal'."
        )
    resolved = []
    for number, style in enumerate(styles, start=1):
        try:
            resolved.append(_resolve_style(model, style))
        except UnknownLabel as exc:
            raise UnknownLabel(f"Style {number} of {len(styles)} ({quote_user_text(style)}): {exc}") from None
    return tuple(resolved)


def _resolve_style(model: str, style: str) -> ResolvedLabels:
    if " / " not in style and "/" in style:
        try:  # 'AC/DC' alone is an artist, not 'AC' in the genre 'DC'
            return resolve_labels(model, style, None)
        except UnknownLabel:
            pass
    artist, genres = split_style(style)
    for what, text in (("artist", artist), ("genre", genres)):
        if len(text) > MAX_NAME_CHARS:
            raise UnknownLabel(
                f"The {what} is {len(text)} characters long; no name Jukebox knows is longer than "
                f"{MAX_NAME_CHARS}. Did you forget a ';' between two styles?"
            )
    try:
        return resolve_labels(model, artist or None, genres or None)
    except UnknownLabel as exc:
        if style.count("/") > 1:  # e.g. 'Ella Fitzgerald / jazz, Metallica / metal'
            raise UnknownLabel(f"{exc} Is this two styles? Separate styles with ';'.") from None
        raise


def suggest_styles(model: str, typed: str) -> list[str]:
    """Suggestions for the style being typed (its artist, or after ' / ' its genres); the styles
    before it are kept as a prefix. Discord caps a choice at 100 characters: longer lists get none."""
    done, _, current = typed.rpartition(STYLE_SEPARATOR)
    prefix = "".join(f"{style}{STYLE_SEPARATOR} " for style in split_styles(done))
    if "/" in current:
        artist, genres = split_style(current)
        found = [f"{artist} / {genre}" for genre in suggest_genres(model, genres)]
        if " / " not in current:  # 'AC/DC' may be an artist being typed, as `_resolve_style` reads it
            found = [name for name in suggest_artists(model, current) if "/" in name] + found
    else:
        found = suggest_artists(model, current)
    return [prefix + name for name in found if len(prefix + name) <= 100][:MAX_CHOICES]
