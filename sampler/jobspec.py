"""What a job asks the sampler to do: the JSON `params` of a job row, shared by bot and workers.

No torch here: the bot builds and validates these; a worker reads them back. Job kind,
model, parent sample and prime live in their own job columns; everything else is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sampler.jukebox.registry import MAX_SONG_SECONDS, MODELS, PRIOR_HPARAMS
from sampler.units import count_of

Levels = Literal["top", "all"]

# Reference defaults (openai sample.py / Colab): hop fractions and temperatures by level 0, 1, 2.
DEFAULT_HOP_FRACTION = (0.5, 0.5, 0.125)
DEFAULT_TEMPERATURE = 0.98
DEFAULT_SAMPLES = 3  # samples a /jukebox job makes unless asked: one batch at every level
MAX_LYRICS_CHARS = 6000
# The shortest prime clip (and `prime_seconds`) the bot accepts. The sampler itself needs only one
# top-level token (128 samples), so a clip the bot accepts never fails later in a worker.
MIN_PRIME_SECONDS = 0.5
# The shortest length or continuation asked for.
MIN_LENGTH_SECONDS = 1.0
MAX_PRIME_SECONDS = 600.0
# A curated piece's job keeps the record of what it joined under this params key, beside the style
# a continuation of it uses; the record is not a parameter, and reading params leaves it out.
CURATION_KEY = "curation"


class InvalidJobParams(ValueError):
    """Job parameters that cannot be sampled; the message says which and why."""


def min_total_seconds(model: str) -> float:
    """The shortest song length the model's timing conditioning accepts (spec §2.4)."""
    minimum = PRIOR_HPARAMS[MODELS[model].top_prior]["min_duration"]
    return float(minimum or 0.0)


def _clean_genres(genres: tuple[str, ...]) -> tuple[str, ...]:
    cleaned = tuple(genre.strip() for genre in genres if genre.strip())
    return cleaned or ("unknown",)


class Style(BaseModel):
    """One sample's labels in a style sweep: artist, genres and (None: the job's) lyrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artist: str = Field(default="unknown", max_length=200)
    genres: tuple[str, ...] = Field(default=("unknown",), max_length=5)
    lyrics: str | None = Field(default=None, max_length=MAX_LYRICS_CHARS)

    _non_empty_genres = field_validator("genres")(_clean_genres)

    def describe(self) -> str:
        """How people read it, e.g. 'ella fitzgerald / jazz, swing'."""
        return f"{self.artist} / {', '.join(self.genres)}"


# The most samples one job makes: a worker never samples more at once, whatever its batch sizes.
MAX_SAMPLES_PER_JOB = 16


class JobParams(BaseModel):
    """Parameters of a generate, continue or upsample job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artist: str = Field(default="unknown", max_length=200)
    genres: tuple[str, ...] = Field(default=("unknown",), max_length=5)
    lyrics: str = Field(default="", max_length=MAX_LYRICS_CHARS)
    # A style sweep: one style per sample (sample i has styles[i]), sampled in one batch;
    # None: every sample has `artist`, `genres` and `lyrics`.
    styles: tuple[Style, ...] | None = Field(default=None, min_length=1, max_length=16)
    # generate: length of the sample; continue: seconds to add to the parent; upsample: ignored
    # (the parent's length is upsampled).
    seconds: float = Field(default=20.0, gt=0, le=MAX_SONG_SECONDS)
    # The song length the labels claim (timing conditioning). None: max(seconds, the model minimum).
    total_seconds: float | None = Field(default=None, gt=0, le=MAX_SONG_SECONDS)
    n_samples: int = Field(default=1, ge=1, le=MAX_SAMPLES_PER_JOB)
    temperature: float = Field(default=DEFAULT_TEMPERATURE, gt=0, le=2)
    seed: int = Field(default=0, ge=0, lt=2**63)
    # "top": a lo-fi preview of the top level only; "all": straight to full quality.
    levels: Levels = "top"
    # Seconds of the prime clip (job.prime_id) to continue; None = all of it.
    prime_seconds: float | None = Field(default=None, gt=0, le=MAX_PRIME_SECONDS)
    hop_fraction: tuple[float, float, float] = DEFAULT_HOP_FRACTION

    _non_empty_genres = field_validator("genres")(_clean_genres)

    @field_validator("hop_fraction")
    @classmethod
    def _hop_in_range(cls, hop: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 < fraction <= 1 for fraction in hop):
            raise ValueError("every hop fraction must be in (0, 1]")
        return hop

    @model_validator(mode="after")
    def _total_covers_sample(self) -> JobParams:
        if self.total_seconds is not None and self.total_seconds < self.seconds:
            raise ValueError(
                f"total_seconds ({self.total_seconds:g}) must be at least the sample length "
                f"({self.seconds:g})"
            )
        return self

    @model_validator(mode="after")
    def _one_style_per_sample(self) -> JobParams:
        if self.styles is not None and len(self.styles) != self.n_samples:
            raise ValueError(
                f"styles lists {len(self.styles)} styles for {self.n_samples} samples: give one per sample"
            )
        return self

    def style_of(self, index: int) -> Style:
        """The labels of sample `index` (the job's own when it is not a sweep)."""
        if self.styles is None:
            return Style(artist=self.artist, genres=self.genres, lyrics=self.lyrics)
        style = self.styles[index]
        return style if style.lyrics is not None else style.model_copy(update={"lyrics": self.lyrics})

    def describe_labels(self) -> str:
        """What the job is conditioned on, as people read it: 'the beatles / rock', or for a style
        sweep 'a sweep of 3 styles' (its own artist and genres are only the defaults)."""
        if self.styles is not None:
            return f"a sweep of {count_of(len(self.styles), 'style')}"
        return self.style_of(0).describe()

    def describe_sample_labels(self, index: int) -> str:
        """Sample `index`'s labels as people read them (a sweep's sample has its own style)."""
        if self.styles is not None and not 0 <= index < len(self.styles):
            return self.describe_labels()
        return self.style_of(index).describe()

    def for_sample(self, index: int) -> JobParams:
        """These params narrowed to sample `index`'s labels, for a job that continues or upsamples it."""
        if self.styles is None:
            return self
        style = self.style_of(index)
        return self.model_copy(
            update={"artist": style.artist, "genres": style.genres, "lyrics": style.lyrics, "styles": None}
        )

    def effective_total_seconds(self, model: str) -> float:
        return max(self.total_seconds or self.seconds, min_total_seconds(model))

    def to_json(self) -> dict[str, Any]:
        # a job that is no sweep stores no `styles` key: its params read as they always did
        return self.model_dump(mode="json", exclude={"styles"} if self.styles is None else None)


def parse_params(params: Any) -> JobParams:
    """Read a job row's params back (a curation record left out), or raise InvalidJobParams with the
    first problem."""
    if isinstance(params, Mapping) and CURATION_KEY in params:
        params = {key: value for key, value in params.items() if key != CURATION_KEY}
    try:
        return JobParams.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "params"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidJobParams(f"{where}: {message}") from None


def sweep_style(params: Mapping[str, Any], index: int) -> str | None:
    """How sample `index` of a style sweep reads ('ella fitzgerald / jazz'); None for a job that is no
    sweep, or whose params cannot be read (the post goes out without it)."""
    if not params.get("styles"):
        return None
    try:
        parsed = parse_params(params)
        return parsed.style_of(index).describe()
    except (InvalidJobParams, IndexError):
        return None


def params_or_defaults(params: Any) -> JobParams:
    """A stored job's params for display; params this version cannot read show as the defaults."""
    try:
        return parse_params(params)
    except InvalidJobParams:
        return JobParams()


def is_full_quality(params: JobParams) -> bool:
    """Whether a job's samples are full quality (every level sampled), by what the job asked for.

    Not by the codes a sample stores: a primed preview also stores the prime's lower-level codes.
    """
    return params.levels == "all"
