"""Artist and genre ids, lyric tokens and the label vector `y` of the Jukebox priors.

No torch here: the Discord bot imports this module for autocomplete and input
checks. Two layers:

* The reference layer (`artist_id`, `genre_ids`, `LyricsVocab`, `Labeller`, ...)
  reproduces the original mapping exactly, including its habit of mapping anything
  unknown to id 0, so the published priors see the ids they were trained with.
* The user layer (`Vocabulary`, `resolve_artist`, `resolve_genres`) refuses what the
  model does not know (`UnknownArtist`, `UnknownGenre`, with the closest matches)
  and returns the canonical text to store, which the reference layer maps back to
  the same ids.

Label versions: v2 (5b and 5b_lyrics top priors, and every upsampler) normalises
names to `[a-z0-9_]` and treats a genre as a bag of up to 5 words; v3 (the 1b_lyrics
top prior only) matches lower-cased names exactly and takes a single genre.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from unidecode import unidecode

from sampler.jukebox.registry import MODELS, PRIOR_HPARAMS, VQVAE_HPARAMS
from sampler.user_text import quote_user_text


class LabelVersion(StrEnum):
    V2 = "v2"
    V3 = "v3"


BUNDLED_IDS_DIR = Path(__file__).parent / "data" / "ids"
# Genre slots of the published priors (`max_bow_genre_size`).
MAX_GENRES: Mapping[LabelVersion, int] = MappingProxyType({LabelVersion.V2: 5, LabelVersion.V3: 1})
# Discord shows at most 25 autocomplete choices.
DEFAULT_SUGGESTIONS = 25
# Invisible direction marks that end 31 v3 genre names (each a twin of a plain name).
_DIRECTION_MARKS = "\u200e\u200f"


# --------------------------------------------------------------------------------------------------
# Errors: each message says what was wrong and what to type instead.


class LabelError(ValueError):
    """A label input a person has to fix; `str(error)` tells them how."""


class IdTableError(LabelError):
    """An artist/genre id table is missing or malformed."""


class UnknownModel(LabelError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"Unknown model {quote_user_text(name)}: choose one of {', '.join(sorted(MODELS))}.")


class UnknownArtist(LabelError):
    def __init__(
        self, name: str, version: LabelVersion, suggestions: Sequence[str], reason: str = ""
    ) -> None:
        self.name, self.version, self.suggestions = name, version, list(suggestions)
        what = reason or f"Jukebox does not know the artist {quote_user_text(name)} ({version} labels)."
        if self.suggestions:
            hint = "Closest matches: " + ", ".join(repr(s) for s in self.suggestions) + "."
        else:
            hint = "No close match in the artist list."
        super().__init__(f"{what} {hint} Pick a listed artist, or type 'unknown' for no particular artist.")


class UnknownGenre(LabelError):
    def __init__(
        self, name: str, version: LabelVersion, suggestions: Sequence[str], unknown_word: str | None = None
    ) -> None:
        self.name, self.version, self.suggestions = name, version, list(suggestions)
        self.unknown_word = unknown_word
        if unknown_word is not None and unknown_word != name:
            what = (
                f"Jukebox does not know the genre word {quote_user_text(unknown_word)} in "
                f"{quote_user_text(name)} ({version} labels)."
            )
        elif not name.strip():
            what = "The genre is empty."
        else:
            what = f"Jukebox does not know the genre {quote_user_text(name)} ({version} labels)."
        if self.suggestions:
            hint = "Closest matches: " + ", ".join(repr(s) for s in self.suggestions) + "."
        else:
            hint = "No close match in the genre list."
        super().__init__(f"{what} {hint} Pick a listed genre, or type 'unknown' for no particular genre.")


class TooManyGenres(LabelError):
    def __init__(self, count: int, limit: int, version: LabelVersion, what: str) -> None:
        self.count, self.limit, self.version = count, limit, version
        unit = "genre words" if version is LabelVersion.V2 else "genres"
        extra = " (every word counts: 'hip hop' is two)" if version is LabelVersion.V2 else ""
        super().__init__(
            f"Too many {unit}: {what} has {count}, this model takes at most {limit}{extra}. Remove some."
        )


class InvalidTiming(LabelError):
    """total_length/offset outside what the label conditioner accepts."""


class InvalidLyrics(LabelError):
    """Lyric text with characters outside the vocabulary reached the tokeniser uncleaned."""


# --------------------------------------------------------------------------------------------------
# Id tables: `name;id` per line, names lower-cased, later duplicates overwrite earlier ones.


@dataclass(frozen=True)
class IdTable:
    path: Path
    ids: Mapping[str, int]

    def get(self, key: str) -> int:
        """The reference lookup: unknown names map to id 0."""
        return self.ids.get(key, 0)


@lru_cache(maxsize=32)
def load_id_table(path: Path) -> IdTable:
    if not path.is_file():
        raise IdTableError(
            f"Id table {path} is missing: download the model again or point at its ids/ folder."
        )
    ids: dict[str, int] = {}
    # Iterate the file like the reference does (universal newlines, then strip()).
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.strip().split(";")
            if len(fields) != 2 or not fields[1].strip().isdigit():
                raise IdTableError(f"{path}:{number}: expected 'name;id', got {line.rstrip()!r}.")
            ids[fields[0].lower()] = int(fields[1])
    return IdTable(path, MappingProxyType(ids))


def id_tables(version: LabelVersion | str, ids_dir: Path | str | None = None) -> tuple[IdTable, IdTable]:
    """(artists, genres) for a label version, from the bundled copies or `ids_dir`."""
    version = LabelVersion(version)
    folder = Path(ids_dir) if ids_dir is not None else BUNDLED_IDS_DIR
    return (
        load_id_table(folder / f"{version}_artist_ids.txt"),
        load_id_table(folder / f"{version}_genre_ids.txt"),
    )


# --------------------------------------------------------------------------------------------------
# Reference mapping (unknown -> 0).

_NOT_V2_CHAR = re.compile(r"[^a-z0-9]")
_UNDERSCORE_RUN = re.compile(r"_+")


def normalize_v2(text: str) -> str:
    """v2 key: lower-case, every char outside [a-z0-9] -> '_', runs collapsed, '_' stripped."""
    # Lower-case first: 'İ'.lower() is two chars, and the reference counts them both.
    return _UNDERSCORE_RUN.sub("_", _NOT_V2_CHAR.sub("_", text.lower())).strip("_")


def artist_key(name: str, version: LabelVersion | str) -> str:
    return normalize_v2(name) if LabelVersion(version) is LabelVersion.V2 else name.lower()


def genre_keys(genre: str, version: LabelVersion | str) -> list[str]:
    """v2: the bag of words of the normalised genre; v3: the lower-cased genre itself."""
    return normalize_v2(genre).split("_") if LabelVersion(version) is LabelVersion.V2 else [genre.lower()]


def artist_id(name: str, version: LabelVersion | str, ids_dir: Path | str | None = None) -> int:
    artists, _ = id_tables(version, ids_dir)
    return artists.get(artist_key(name, version))


def genre_ids(genre: str, version: LabelVersion | str, ids_dir: Path | str | None = None) -> list[int]:
    """Unpadded genre ids as the reference computes them (unknown words -> 0)."""
    _, genres = id_tables(version, ids_dir)
    return [genres.get(key) for key in genre_keys(genre, version)]


def pad_genre_ids(ids: Sequence[int], max_bow_genre_size: int, version: LabelVersion | str) -> list[int]:
    if len(ids) > max_bow_genre_size:
        raise TooManyGenres(len(ids), max_bow_genre_size, LabelVersion(version), "the genre")
    return [*ids, *([-1] * (max_bow_genre_size - len(ids)))]


# --------------------------------------------------------------------------------------------------
# Lyrics.

_V3_LYRIC_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,:;!?-'\"()[] \t\n"
_V2_LYRIC_CHARS = _V3_LYRIC_CHARS.replace("-", "-+")  # v2 also knows '+', right after '-'


class LyricsVocab:
    """Character vocabulary: id 0 is padding/<unk>, ids 1.. are the characters in order."""

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.n_vocab = len(chars) + 1
        self._ids = {char: index + 1 for index, char in enumerate(chars)}

    def clean(self, text: str) -> str:
        """To ASCII (“ ” -> ", — -> --, é -> e), '\\' -> newline, and drop chars outside the vocab."""
        ascii_text = unidecode(text).replace("\\", "\n")
        return "".join(char for char in ascii_text if char in self._ids)

    def tokenise(self, cleaned: str) -> list[int]:
        try:
            return [self._ids[char] for char in cleaned]
        except KeyError as error:
            raise InvalidLyrics(
                f"Lyrics contain {error.args[0]!r}, which the {self.n_vocab}-token vocabulary lacks: clean "
                "them first."
            ) from None

    def encode(self, text: str) -> list[int]:
        return self.tokenise(self.clean(text))

    def decode(self, tokens: Sequence[int]) -> str:
        """Padding (0) decodes to nothing."""
        return "".join(self.chars[token - 1] for token in tokens if token > 0)


LYRICS_VOCAB: Mapping[LabelVersion, LyricsVocab] = MappingProxyType(
    {LabelVersion.V2: LyricsVocab(_V2_LYRIC_CHARS), LabelVersion.V3: LyricsVocab(_V3_LYRIC_CHARS)}
)


def _lyric_midpoint(n_full: int, total_length: int, offset: int, duration: int, exact_float32: bool) -> int:
    if exact_float32:
        # The sampler does this with 0-d int64 tensors, so torch promotes to float32 at every step.
        f32 = np.float32
        return int(f32(n_full) * (f32(offset) + f32(duration) / f32(2.0)) / f32(total_length))
    return int(n_full * (offset + duration / 2.0) / total_length)


def relevant_lyric_tokens(
    full_tokens: Sequence[int],
    n_tokens: int,
    total_length: int,
    offset: int,
    duration: int,
    *,
    exact_float32: bool = True,
) -> list[int]:
    """The `n_tokens` lyric tokens for a window: a linear guess of where in the lyrics it falls.

    Shorter lyrics are left-padded with 0. `exact_float32` mirrors the sampler's float32 tensor
    maths bit for bit; False mirrors the reference's first label (Python floats).
    """
    if len(full_tokens) < n_tokens:
        return [0] * (n_tokens - len(full_tokens)) + list(full_tokens)
    if not 0 <= offset < total_length:
        raise InvalidTiming(f"Offset {offset} must lie in [0, total_length={total_length}) samples.")
    half = n_tokens // 2
    midpoint = _lyric_midpoint(len(full_tokens), total_length, offset, duration, exact_float32)
    midpoint = min(max(midpoint, half), len(full_tokens) - half)
    return list(full_tokens[midpoint - half : midpoint + half])


# --------------------------------------------------------------------------------------------------
# The label vector: [total_length, offset, sample_length, artist_id, genre ids (-1 padded), lyric tokens].


@dataclass(frozen=True)
class LabelConfig:
    """The label layout of one prior."""

    version: LabelVersion
    max_bow_genre_size: int
    n_tokens: int  # lyric tokens per window (0: no lyrics)
    n_ctx: int  # music tokens per window
    raw_to_tokens: int  # audio samples per token at this prior's level

    def __post_init__(self) -> None:
        if self.n_tokens < 0 or self.n_tokens % 2:
            raise LabelError(f"n_tokens must be even and >= 0, got {self.n_tokens}.")
        if self.max_bow_genre_size < 1 or self.n_ctx < 1 or self.raw_to_tokens < 1:
            raise LabelError(f"Invalid label layout {self}.")

    @property
    def sample_length(self) -> int:
        """Audio samples covered by one window."""
        return self.n_ctx * self.raw_to_tokens

    @property
    def label_length(self) -> int:
        return 4 + self.max_bow_genre_size + self.n_tokens

    @classmethod
    def from_hparams(cls, prior: Mapping[str, Any], vqvae: Mapping[str, Any] = VQVAE_HPARAMS) -> LabelConfig:
        """From hparams with the original names (`registry.PRIOR_HPARAMS[...]`, `VQVAE_HPARAMS`)."""
        level = int(prior["level"])
        raw_to_tokens = 1
        for stride, down in zip(vqvae["strides_t"][: level + 1], vqvae["downs_t"][: level + 1], strict=True):
            raw_to_tokens *= int(stride) ** int(down)
        return cls(
            version=LabelVersion.V3 if prior.get("labels_v3") else LabelVersion.V2,
            max_bow_genre_size=int(prior["max_bow_genre_size"]),
            n_tokens=int(prior.get("n_tokens", 0)) if prior.get("use_tokens") else 0,
            n_ctx=int(prior["n_ctx"]),
            raw_to_tokens=raw_to_tokens,
        )

    @classmethod
    def published(cls, prior_name: str) -> LabelConfig:
        """For a published prior, e.g. 'prior_1b_lyrics' or 'upsampler_level_0'."""
        return cls.from_hparams(PRIOR_HPARAMS[prior_name])


@dataclass(frozen=True)
class Label:
    """One sample's label: the base vector and the full lyric tokens kept for per-window slicing."""

    y: np.ndarray  # int64, (label_length,)
    full_tokens: tuple[int, ...]
    artist: str
    genre: str
    lyrics: str  # cleaned


class Labeller:
    """Builds a prior's label vectors from artist, genre and lyrics, as the reference does."""

    def __init__(self, config: LabelConfig, ids_dir: Path | str | None = None) -> None:
        self.config = config
        self.ids_dir = ids_dir
        self.vocab = LYRICS_VOCAB[config.version]
        id_tables(config.version, ids_dir)  # fail now, not at the first sample, if a table is broken

    def label(self, artist: str, genre: str, lyrics: str, total_length: int, offset: int = 0) -> Label:
        """The reference label: unknown artist/genre words map to 0. Validate user input first
        (`Vocabulary.resolve_*`)."""
        ids = genre_ids(genre, self.config.version, self.ids_dir)
        return self._label(
            artist_id(artist, self.config.version, self.ids_dir),
            ids,
            artist,
            genre,
            lyrics,
            total_length,
            offset,
        )

    def label_from_ids(
        self, artist: int, genres: Sequence[int], lyrics: str, total_length: int, offset: int = 0
    ) -> Label:
        """A label from ids already looked up (unpadded genre ids); `Label.artist/genre` hold them as text."""
        return self._label(artist, genres, str(artist), str(list(genres)), lyrics, total_length, offset)

    def _label(
        self,
        artist: int,
        genres: Sequence[int],
        artist_name: str,
        genre_name: str,
        lyrics: str,
        total_length: int,
        offset: int,
    ) -> Label:
        config = self.config
        total_length, offset = int(total_length), int(offset)
        if total_length <= 0:
            raise InvalidTiming(f"total_length must be a positive number of samples, got {total_length}.")
        if not 0 <= offset < total_length:
            raise InvalidTiming(f"Offset {offset} must lie in [0, total_length={total_length}) samples.")
        padded = pad_genre_ids(list(genres), config.max_bow_genre_size, config.version)
        cleaned = self.vocab.clean(lyrics)
        full_tokens = self.vocab.tokenise(cleaned)
        # The reference's first label uses Python floats; every window recomputes in float32.
        window = relevant_lyric_tokens(
            full_tokens, config.n_tokens, total_length, offset, config.sample_length, exact_float32=False
        )
        y = np.array([total_length, offset, config.sample_length, artist, *padded, *window], dtype=np.int64)
        y.flags.writeable = False  # windows copy it; the base label stays as built
        return Label(y, tuple(full_tokens), artist_name, genre_name, cleaned)

    def window_y(self, label: Label, start: int) -> np.ndarray:
        """The vector for the window starting at music token `start`: sample_length set to the window's,
        offset advanced by start * raw_to_tokens, lyric tokens re-sliced (float32, as the sampler)."""
        config = self.config
        if label.y.shape != (config.label_length,):
            raise LabelError(
                f"This label has {label.y.shape[0]} entries but this prior's labels have "
                f"{config.label_length}: "
                "build it with this prior's Labeller."
            )
        y = label.y.copy()
        y[2] = config.sample_length
        y[1] += start * config.raw_to_tokens
        if config.n_tokens:
            total_length, offset, duration = (int(v) for v in y[:3])
            y[-config.n_tokens :] = relevant_lyric_tokens(
                label.full_tokens, config.n_tokens, total_length, offset, duration
            )
        return y

    def batch_y(self, labels: Sequence[Label], start: int | None = None) -> np.ndarray:
        """(N, label_length) int64: the base vectors, or the window's when `start` is given."""
        rows = [label.y if start is None else self.window_y(label, start) for label in labels]
        return np.stack(rows).astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------
# The user layer: autocomplete and validation for the bot.


def fold(text: str) -> str:
    """Matching key: ASCII, lower-case, words of [a-z0-9] separated by single spaces."""
    return " ".join(re.findall(r"[a-z0-9]+", unidecode(text).lower()))


def _visible(name: str) -> str:
    """A name as a person sees it: no trailing direction marks, single spaces."""
    return " ".join(name.rstrip(_DIRECTION_MARKS).split())


@dataclass(frozen=True)
class _Entry:
    display: str  # what the user sees and what is stored; the reference maps it to `id`
    folded: str
    compact: str  # folded without spaces: "acdc" finds "ac/dc"


def _bigrams(text: str) -> set[str]:
    return {text[i : i + 2] for i in range(len(text) - 1)} if len(text) > 1 else {text}


class _SearchIndex:
    """Ranks names for a typed query: exact > prefix > word prefix > substring > fuzzy."""

    _FUZZY_CANDIDATES = 30
    _FUZZY_MIN_RATIO = 0.6

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = list(entries)
        self._by_folded: dict[str, list[int]] = {}
        for index, entry in enumerate(self.entries):
            self._by_folded.setdefault(entry.folded, []).append(index)
            if entry.compact != entry.folded:
                self._by_folded.setdefault(entry.compact, []).append(index)
        # Newline-led keys joined in one string per key kind, so str.find scans all names in C.
        self._blob, self._starts = self._join(entry.folded for entry in self.entries)
        self._compact_blob, self._compact_starts = self._join(entry.compact for entry in self.entries)
        postings: dict[str, list[int]] = {}
        for index, entry in enumerate(self.entries):
            for gram in _bigrams(f" {entry.folded} "):
                postings.setdefault(gram, []).append(index)
        self._postings = {gram: np.array(found, dtype=np.int32) for gram, found in postings.items()}
        self._lengths = np.array([len(entry.folded) for entry in self.entries], dtype=np.int64)

    @staticmethod
    def _join(keys: Iterable[str]) -> tuple[str, list[int]]:
        """'\nkey0\nkey1...' and the offset of each key's leading newline."""
        starts, position = [], 0
        parts = list(keys)
        for key in parts:
            starts.append(position)
            position += len(key) + 1
        return "".join("\n" + key for key in parts), starts

    def exact(self, query: str) -> list[_Entry]:
        folded = fold(query)
        found = self._by_folded.get(folded, []) + self._by_folded.get(folded.replace(" ", ""), [])
        return [self.entries[i] for i in dict.fromkeys(found)]

    @staticmethod
    def _hits(needle: str, blob: str, starts: list[int]) -> list[int]:
        """Indices of the entries whose '\n'-led key contains `needle`, each once."""
        hits, position = [], blob.find(needle)
        while position >= 0:
            index = bisect.bisect_right(starts, position) - 1
            hits.append(index)
            next_start = starts[index + 1] if index + 1 < len(starts) else len(blob)
            position = blob.find(needle, max(next_start, position + 1))
        return hits

    def search(self, query: str, limit: int) -> list[str]:
        limit = max(0, min(limit, len(self.entries)))
        folded = fold(query)
        if not folded:
            return [entry.display for entry in self.entries[:limit]]
        compact = folded.replace(" ", "")
        tiers: list[Callable[[], list[int]]] = [
            lambda: self._by_folded.get(folded, []) + self._by_folded.get(compact, []),
            lambda: (
                self._hits("\n" + folded, self._blob, self._starts)
                + self._hits("\n" + compact, self._compact_blob, self._compact_starts)
            ),
            lambda: self._hits(" " + folded, self._blob, self._starts),
            lambda: self._hits(folded, self._blob, self._starts),
        ]
        ranked: dict[int, None] = {}
        for tier in tiers:
            # Within a tier: shorter names first (closer to what was typed), then table order.
            for index in sorted(set(tier()), key=lambda i: (len(self.entries[i].folded), i)):
                ranked.setdefault(index, None)
            if len(ranked) >= limit:
                break
        if len(ranked) < limit:
            for index in self._fuzzy(folded):
                ranked.setdefault(index, None)
        return [self.entries[i].display for i in list(ranked)[:limit]]

    def _fuzzy(self, folded: str) -> list[int]:
        """Typos: shortlist by shared character bigrams (word edges count), then rank by difflib's
        ratio against each word-suffix of the name cut to the query's length plus one, so that
        'beatels' meets 'beatles' in 'the beatles' and 'metalica' meets 'metallica'."""
        found = [self._postings[gram] for gram in _bigrams(f" {folded} ") if gram in self._postings]
        if not found:
            return []
        shared = np.bincount(np.concatenate(found), minlength=len(self.entries))
        # Most shared bigrams first, then shorter names, then table order.
        score = shared * 1024 - np.minimum(self._lengths, 1023)
        shortlist = np.argsort(-score, kind="stable")[: min(self._FUZZY_CANDIDATES, int((shared > 0).sum()))]
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(folded)
        width = len(folded) + 1
        scored: list[tuple[float, int, int]] = []
        for index in shortlist.tolist():
            name = self.entries[index].folded
            best = 0.0
            for start in [0, *(i + 1 for i, char in enumerate(name) if char == " ")]:
                matcher.set_seq1(name[start : start + width])
                if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
                    best = max(best, matcher.ratio())
            if best >= self._FUZZY_MIN_RATIO:
                scored.append((-best, len(name), index))
        return [index for *_, index in sorted(scored)]


@dataclass(frozen=True)
class ResolvedArtist:
    name: str  # canonical text to store and hand to `Labeller.label`
    id: int


@dataclass(frozen=True)
class ResolvedGenres:
    text: str  # canonical genre text to store and hand to `Labeller.label`
    ids: tuple[int, ...]  # unpadded


class Vocabulary:
    """The artists and genres one label version knows, for autocomplete and input checks.

    Display names: v3 names exactly as in the table (lower-case, accents kept). v2 names are
    shown as the v3 spelling when one normalises to the same v2 key ('céline dion' for
    `c_line_dion`), else with underscores as spaces. v2 genres are single words in the table;
    suggestions offer the v3 genre phrases made only of v2 words ('hip hop', 'r&b') plus the
    words that stand alone as genres. The 31 v3 genres that end in invisible U+200E/U+200F marks,
    and the 4 with a double space, all have a plain twin with another id: suggestions show only
    the plain one (the twins look identical in Discord and cannot be told apart), though typing a
    twin exactly still resolves to its own id.
    Empty queries list names in table (id) order.
    """

    def __init__(self, version: LabelVersion | str, ids_dir: Path | str | None = None) -> None:
        self.version = LabelVersion(version)
        self.ids_dir = ids_dir
        self.max_genres = MAX_GENRES[self.version]
        self.artists, self.genres = id_tables(self.version, ids_dir)
        self._v2_display: dict[str, str] = {}  # v2 artist key -> display name
        if self.version is LabelVersion.V2:
            artist_entries, genre_entries = self._v2_entries()
        else:
            artist_entries = self._entries(sorted(self.artists.ids, key=self.artists.ids.__getitem__))
            plain = [
                name
                for name in sorted(self.genres.ids, key=self.genres.ids.__getitem__)
                if _visible(name) == name or _visible(name) not in self.genres.ids
            ]
            genre_entries = self._entries(plain)
        self._artist_index = _SearchIndex(artist_entries)
        self._genre_index = _SearchIndex(genre_entries)

    @staticmethod
    def _entries(names: Sequence[str]) -> list[_Entry]:
        entries: list[_Entry] = []
        for name in names:
            folded = fold(name)
            if folded:  # the empty name is an alias of 'unknown'
                entries.append(_Entry(name, folded, folded.replace(" ", "")))
        return entries

    def _v2_entries(self) -> tuple[list[_Entry], list[_Entry]]:
        try:
            v3_artists, v3_genres = id_tables(LabelVersion.V3, self.ids_dir)
            v3_artist_names, v3_genre_names = list(v3_artists.ids), list(v3_genres.ids)
        except IdTableError:  # a model folder with only v2 tables: plain names
            v3_artist_names, v3_genre_names = [], []
        pretty: dict[str, str] = {}
        for name in v3_artist_names:
            pretty.setdefault(normalize_v2(name), name)
        for key in sorted(self.artists.ids, key=self.artists.ids.__getitem__):
            name = pretty.get(key, key.replace("_", " "))
            if key and normalize_v2(name) == key:  # 'beyonc_' cannot be reached: its key is not normal
                self._v2_display[key] = name
        artist_names = list(self._v2_display.values())

        words = self.genres.ids
        phrases: dict[str, tuple[int, ...]] = {}
        seen: set[str] = set()
        for name in map(_visible, v3_genre_names):
            keys = normalize_v2(name).split("_")
            if all(key in words for key in keys) and len(keys) <= self.max_genres and fold(name) not in seen:
                seen.add(fold(name))
                phrases[name] = tuple(words[key] for key in keys)
        in_phrases = {word for ids in phrases.values() if len(ids) > 1 for word in ids}
        standalone = {name for name, ids in phrases.items() if len(ids) == 1}
        for word, word_id in words.items():
            # A word that only occurs inside phrases ('hip', 'r') is not offered on its own.
            if word and word not in standalone and word_id not in in_phrases and word not in seen:
                phrases.setdefault(word, (word_id,))
        genre_names = sorted(phrases, key=lambda name: (min(phrases[name]), len(phrases[name]), name))
        return self._entries(artist_names), self._entries(genre_names)

    @classmethod
    def for_version(cls, version: LabelVersion | str, ids_dir: Path | str | None = None) -> Vocabulary:
        return _vocabulary(LabelVersion(version), None if ids_dir is None else str(ids_dir))

    @classmethod
    def for_model(cls, model: str, ids_dir: Path | str | None = None) -> Vocabulary:
        """The top prior's vocabulary: v2 for '5b' and '5b_lyrics', v3 for '1b_lyrics'.
        (The upsamplers always use v2 and map unknown names to 0, as the reference does.)"""
        if model not in MODELS:
            raise UnknownModel(model)
        top = PRIOR_HPARAMS[MODELS[model].top_prior]
        return cls.for_version(LabelVersion.V3 if top.get("labels_v3") else LabelVersion.V2, ids_dir)

    # Autocomplete -----------------------------------------------------------------------------

    def suggest_artists(self, query: str, limit: int = DEFAULT_SUGGESTIONS) -> list[str]:
        return self._artist_index.search(query, limit)

    def suggest_genres(self, query: str, limit: int = DEFAULT_SUGGESTIONS) -> list[str]:
        return self._genre_index.search(query, limit)

    # Validation -------------------------------------------------------------------------------

    def resolve_artist(self, name: str) -> ResolvedArtist:
        """The artist's id, or `UnknownArtist` with up to 5 closest matches. 'unknown' gives id 0."""
        if not name.strip():
            raise UnknownArtist(name, self.version, [], reason="The artist is empty.")
        key = artist_key(name, self.version)
        if key and key in self.artists.ids:
            canonical = key if self.version is LabelVersion.V3 else self._v2_display.get(key, name.strip())
            return ResolvedArtist(canonical, self.artists.ids[key])
        # Forgive accents, case and punctuation when that leaves exactly one artist.
        matches = {
            self.artists.get(artist_key(e.display, self.version)): e for e in self._artist_index.exact(name)
        }
        if len(matches) == 1:
            ((found_id, entry),) = matches.items()
            return ResolvedArtist(entry.display, found_id)
        if len(matches) > 1:
            reason = f"{quote_user_text(name)} matches several artists ({self.version} labels)."
            raise UnknownArtist(name, self.version, [e.display for e in matches.values()][:5], reason=reason)
        raise UnknownArtist(name, self.version, self.suggest_artists(name, 5))

    def resolve_genres(self, names: str | Sequence[str], max_genres: int | None = None) -> ResolvedGenres:
        """Genre ids for one genre or several (v2: all their words count towards the limit).

        Raises `UnknownGenre` (with up to 5 closest matches) or `TooManyGenres`; 'unknown' gives 0."""
        limit = self.max_genres if max_genres is None else max_genres
        given = [names] if isinstance(names, str) else list(names)
        if not any(name.strip() for name in given):
            raise UnknownGenre("", self.version, [])
        given = [name for name in given if name.strip()]
        if self.version is LabelVersion.V3 and len(given) > limit:
            raise TooManyGenres(len(given), limit, self.version, quote_user_text(", ".join(given)))
        texts: list[str] = []
        ids: list[int] = []
        for name in given:
            text, found = self._resolve_genre(name)
            texts.append(text)
            ids.extend(found)
        if len(ids) > limit:
            raise TooManyGenres(len(ids), limit, self.version, quote_user_text(" ".join(texts)))
        return ResolvedGenres(" ".join(texts), tuple(ids))

    def label_spellings(self, artist: str, genre: str) -> tuple[str, str]:
        """The artist and genre to hand to `Labeller.label`: each as given when the reference looks it
        up to the id it resolves to, else the table's spelling (the reference reads 'celine dion' as
        'unknown', id 0, where `resolve_artist` forgave the accent). Raises what `resolve_artist` and
        `resolve_genres` raise."""
        found_artist = self.resolve_artist(artist)
        found_genre = self.resolve_genres(genre)
        if artist_id(artist, self.version, self.ids_dir) != found_artist.id:
            artist = found_artist.name
        if genre_ids(genre, self.version, self.ids_dir) != list(found_genre.ids):
            genre = found_genre.text
        return artist, genre

    def _resolve_genre(self, name: str) -> tuple[str, list[int]]:
        keys = genre_keys(name, self.version)
        if all(key in self.genres.ids for key in keys) and keys != [""]:
            text = keys[0] if self.version is LabelVersion.V3 else name.strip()
            return text, [self.genres.ids[key] for key in keys]
        if self.version is LabelVersion.V3:
            matches = {self.genres.get(e.display): e for e in self._genre_index.exact(name)}
            if len(matches) == 1:
                ((found_id, entry),) = matches.items()
                return entry.display, [found_id]
            raise UnknownGenre(name, self.version, self.suggest_genres(name, 5))
        unknown = next(key for key in keys if key not in self.genres.ids)
        raise UnknownGenre(name, self.version, self.suggest_genres(name, 5), unknown_word=unknown or name)


@lru_cache(maxsize=8)
def _vocabulary(version: LabelVersion, ids_dir: str | None) -> Vocabulary:
    return Vocabulary(version, ids_dir)


def resolve_artist(
    name: str, version: LabelVersion | str, ids_dir: Path | str | None = None
) -> ResolvedArtist:
    return Vocabulary.for_version(version, ids_dir).resolve_artist(name)


def resolve_genres(
    names: str | Sequence[str],
    version: LabelVersion | str,
    max_genres: int | None = None,
    ids_dir: Path | str | None = None,
) -> ResolvedGenres:
    return Vocabulary.for_version(version, ids_dir).resolve_genres(names, max_genres)
