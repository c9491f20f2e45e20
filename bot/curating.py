"""`/curate` apart from Discord: which stored samples a selection names, joining them into one piece
(sampler/curation.py: trim, similarity, order, crossfades, even loudness), and what to store and say.

Joining is CPU work (decode every sample, fingerprint, encode, draw): `make_piece` is synchronous and
the cog runs it through `asyncio.to_thread`, one curation at a time per bot (see bot/exts/curate.py).
Every refusal is a `JukebotError` raised before anything is stored.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from bot.errors import (
    MAX_MESSAGE_CHARS,
    InvalidRequest,
    JobNotInServer,
    JukebotError,
    MadeInHiddenChannel,
    listed,
)
from bot.requests import TOP_COUNT, may_continue, stored_id, tokens_seconds, top_since
from jukebot.settings import MAX_USER_SAMPLES
from sampler.audio import SAMPLE_RATE, AudioError, decode_audio, encode_audio
from sampler.curation import MAX_PIECE_SECONDS, Clip, CurationError, FingerprintUnavailable, curate
from sampler.jobspec import CURATION_KEY, InvalidJobParams, JobParams, parse_params
from sampler.jukebox.registry import MAX_SONG_SECONDS
from sampler.pictures import strip_picture
from sampler.user_text import shorten_user_text
from storage.models import JobKind, utcnow
from storage.records import Job, NewSample, RankedSample, Sample, SampleInfo, SampleOrigin, StoredPiece
from storage.store import JobStore

PIECE_FORMAT: Literal["ogg"] = "ogg"  # Opus in Ogg at the workers' stored bitrate (sampler/cascade_runner.py)
PIECE_BITRATE = 160_000
MAX_ID_TEXT_CHARS = 1000

Progress = Callable[[str], None]  # a line saying how far the work is


class Similarity(enum.StrEnum):
    CHROMAPRINT = "chromaprint"
    CODES = "codes"

    @property
    def description(self) -> str:
        if self is Similarity.CHROMAPRINT:
            return "Chromaprint fingerprints"
        return "their stored Jukebox codes (Chromaprint is not installed on the bot's machine)"


@dataclass(frozen=True, slots=True)
class Selection:
    """What `/curate` was asked to join: exactly one of a job, a user, a period's top, or listed ids."""

    job: int | None = None
    user: int | None = None
    top: str | None = None
    sample_ids: str | None = None

    def describe(self) -> str:
        if self.job is not None:
            return f"job #{self.job}"
        if self.user is not None:
            return f"<@{self.user}>'s samples"
        if self.top is not None:
            return f"the top {TOP_COUNT} of {'all time' if self.top == 'all' else 'the ' + self.top}"
        return "listed samples"


def parse_sample_ids(text: str, max_count: int) -> list[int]:
    """`"12, 15, #19"` → [12, 15, 19] (repeats dropped); a specific refusal for anything else."""
    if len(text) > MAX_ID_TEXT_CHARS:
        raise InvalidRequest(
            f"That list of samples is {len(text):,} characters long; list at most {max_count} sample "
            "numbers, separated by commas."
        )
    tokens = [token for token in re.split(r"[\s,;]+", text) if token]
    if not tokens:
        raise InvalidRequest('List the samples to join by number, separated by commas, e.g. "12, 15, 19".')
    ids: list[int] = []
    for token in tokens:
        digits = token.removeprefix("#")
        if not digits.isascii() or not digits.isdigit():
            raise InvalidRequest(
                f"{shorten_user_text(token, limit=30)} is not a sample number: list numbers such as "
                '"12, 15, 19".'
            )
        sample_id = stored_id(int(digits) if len(digits) <= 30 else digits, "sample")
        if sample_id not in ids:
            ids.append(sample_id)
    check_count(len(ids), max_count, "listed samples")
    return ids


def check_count(count: int, max_count: int, what: str) -> None:
    if count > max_count:
        raise InvalidRequest(
            f"That is {count} {what}; one /curate joins at most {max_count}. List the ones you want "
            'with `samples:` (e.g. "12, 15, 19").'
        )
    if count < 2:
        raise InvalidRequest(
            f"Curating joins at least two samples, and {what} come to {count}. Pick more, e.g. with "
            '`samples:` ("12, 15, 19") or `top:`.'
        )


def check_duration(seconds: Sequence[float]) -> None:
    """Refuse samples that together last longer than a piece may (before any is decoded)."""
    total = sum(seconds)
    if total > MAX_PIECE_SECONDS:
        raise InvalidRequest(
            f"Those {len(seconds)} samples last {format_minutes(total)} together; one /curate joins at "
            f"most {format_minutes(MAX_PIECE_SECONDS)} of audio. Pick fewer or shorter samples with "
            '`samples:` (e.g. "12, 15, 19").'
        )


def format_minutes(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


# Whether the member asking may use what a user made in a channel: (channel id, maker's user id).
# The bot decides it from Discord's permissions (`bot.actions.Viewer.may_use`).
MayUse = Callable[[int, int], Awaitable[bool]]
# /top reads the server's most voted samples this many at a time, looking for those the member may
# use, and no further than TOP_SCAN_LIMIT of them: samples of channels not shown here (private ones,
# deleted ones) outranking the rest left /top empty.
TOP_CANDIDATES = 100
TOP_SCAN_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Resolved:
    """The samples a selection names, in order, and those of its samples left out because a curated
    piece also gathered already holds them (`inside`: sample id -> that piece) or, pieces themselves,
    share samples with a piece gathered before them (`sharing`: piece id -> that piece): each is
    heard once."""

    sample_ids: list[int]
    inside: dict[int, int]
    sharing: dict[int, int] = field(default_factory=dict)


async def top_ranked(
    store: JobStore, guild_id: int, since: datetime | None, count: int, may_use: MayUse
) -> list[RankedSample]:
    """The server's `count` most-voted samples (made since `since`) that the member may use, among
    its TOP_SCAN_LIMIT most voted."""
    found: dict[int, RankedSample] = {}  # (a vote between two reads may show a sample twice)
    for offset in range(0, TOP_SCAN_LIMIT, TOP_CANDIDATES):
        page = await store.top_samples(guild_id, since=since, limit=TOP_CANDIDATES, offset=offset)
        for entry in page:
            if entry.sample.id not in found and await may_use(entry.channel_id, entry.user_id):
                found[entry.sample.id] = entry
        if len(found) >= count or len(page) < TOP_CANDIDATES:
            break
    return list(found.values())[:count]


async def resolve(
    store: JobStore,
    guild_id: int,
    selection: Selection,
    max_count: int,
    may_use: MayUse,
    may_gather: MayUse | None = None,
) -> Resolved:
    """The ids of the samples the selection names, all made in this server, in channels the member
    may see (`may_use`: a job or listed samples elsewhere are refused); a user's or the top's are
    gathered by `may_gather` (default `may_use`) and the others left out: the piece is posted
    publicly, so the bot passes `Viewer.may_show_here`. A gathered sample that a gathered piece
    already holds is left out too, and so is a gathered piece sharing samples with one gathered before
    it (listed, either is refused). Refusals are specific."""
    gather = may_use if may_gather is None else may_gather
    given = [
        value is not None for value in (selection.job, selection.user, selection.top, selection.sample_ids)
    ]
    if sum(given) != 1:
        raise InvalidRequest(
            "Say what to curate with exactly one of `job:`, `user:`, `top:` or `samples:`"
            + (" (you gave several)." if sum(given) else ".")
        )
    if selection.job is not None:
        job = await store.get_job(stored_id(selection.job, "job"))
        if job.guild_id != guild_id:
            raise JobNotInServer(job.id)
        if not await may_use(job.channel_id, job.user_id):
            raise MadeInHiddenChannel("job", job.id)
        ids = [info.id for info in await store.samples_for_job(job.id)]
        check_count(len(ids), max_count, f"job #{job.id}'s samples")
        return Resolved(ids, {})
    if selection.user is not None:
        # among the user's first MAX_USER_SAMPLES here (which also bounds JUKEBOT_MAX_CURATE_SAMPLES)
        theirs = await store.user_samples(guild_id, selection.user, limit=MAX_USER_SAMPLES)
        origins = await store.sample_origins(info.id for info in theirs)
        ids = [info.id for info in theirs if await _may_use_sample(origins[info.id], gather)]
        if len(ids) > max_count:
            raise InvalidRequest(
                f"<@{selection.user}> has more than {max_count} samples here; one /curate joins at most "
                f'{max_count}. List the ones you want with `samples:` (e.g. "12, 15, 19").'
            )
        return await _each_once(store, ids, max_count, f"<@{selection.user}>'s samples here")
    if selection.top is not None:
        since = top_since(selection.top, utcnow())
        ranked = await top_ranked(store, guild_id, since, min(TOP_COUNT, max_count), gather)
        ids = [entry.sample.id for entry in ranked]
        return await _each_once(store, ids, max_count, f"this server's samples ({selection.describe()})")
    assert selection.sample_ids is not None
    ids = parse_sample_ids(selection.sample_ids, max_count)
    origins = await store.sample_origins(ids)
    unknown = [sample_id for sample_id in ids if sample_id not in origins]
    if unknown:
        raise InvalidRequest(f"There is no {_numbers('sample', unknown)}; check the numbers (see /top).")
    foreign = [sample_id for sample_id in ids if origins[sample_id].guild_id != guild_id]
    if foreign:
        raise InvalidRequest(
            f"{_numbers('Sample', foreign).capitalize()} {_were(foreign)} made in another server; you can "
            "only curate samples made here."
        )
    hidden = [sample_id for sample_id in ids if not await _may_use_sample(origins[sample_id], may_use)]
    if hidden:
        raise InvalidRequest(
            f"{_numbers('Sample', hidden).capitalize()} {_were(hidden)} made in a channel you cannot see; "
            "you can only curate samples made in channels you can read, and your own."
        )
    held = {sample_id: await _ingredients(store, sample_id) for sample_id in ids}
    inside = pieces_holding(ids, held)
    if inside:
        sample_id, piece = next(iter(inside.items()))
        raise InvalidRequest(
            f"Sample #{sample_id} is already in piece #{piece}, which you listed too: it would play twice. "
            f"List the piece or its samples, not both."
        )
    pieces = [sample_id for sample_id in ids if held[sample_id]]
    for later_index, later in enumerate(pieces):
        for earlier in pieces[:later_index]:
            shared = held[earlier] & held[later]
            if shared:
                raise InvalidRequest(
                    f"Pieces #{earlier} and #{later} both hold sample #{min(shared)}: it would play "
                    "twice. List one of them."
                )
    return Resolved(ids, {})


async def _each_once(store: JobStore, ids: list[int], max_count: int, what: str) -> Resolved:
    """`ids` less the samples a curated piece, an upsample or a continuation among them holds (the
    full-quality version of a preview plays the preview's music again, a continuation plays its
    sample's first) and those sharing samples with one gathered before them, at least two of them."""
    held = {sample_id: await _ingredients(store, sample_id, made_from=True) for sample_id in ids}
    sharing = _sharing(ids, held)
    # The samples only a piece left out for sharing holds are not in the piece: they are joined.
    inside = pieces_holding([sample_id for sample_id in ids if sample_id not in sharing], held)
    kept = [sample_id for sample_id in ids if sample_id not in inside and sample_id not in sharing]
    why = [
        *(["not already in a piece among them"] if inside else []),
        *(["not sharing samples with another piece among them"] if sharing else []),
    ]
    check_count(len(kept), max_count, " ".join([what, " and ".join(why)]) if why else what)
    return Resolved(kept, inside, sharing)


def pieces_holding(ids: Sequence[int], held: Mapping[int, set[int]]) -> dict[int, int]:
    """Those of `ids` that a curated piece among `ids` holds (also inside a piece it holds), each with
    the first such piece: joined with it, they would play twice (`held`: each id's `_ingredients`)."""
    wanted = set(ids)
    holding: dict[int, int] = {}
    for sample_id in ids:
        for inner in held[sample_id]:
            if inner in wanted and inner != sample_id:
                holding.setdefault(inner, sample_id)
    return holding


def _sharing(ids: Sequence[int], held: Mapping[int, set[int]]) -> dict[int, int]:
    """The pieces among `ids` (in gathered order) left out because they share samples with a piece
    kept before them, each with that piece. A piece inside another gathered piece is decided after
    it (and is left out as inside it where that one is kept, not here); the others in gathered order."""
    undecided = [sample_id for sample_id in ids if held[sample_id]]
    kept: list[int] = []
    heard: set[int] = set()  # the pieces kept and all they hold
    sharing: dict[int, int] = {}
    while undecided:
        waiting = set(undecided)
        piece = next(
            (p for p in undecided if not any(p in held[other] for other in waiting if other != p)),
            undecided[0],  # (pieces never hold each other round in a ring; were the store to say so)
        )
        undecided.remove(piece)
        if piece in heard:
            continue  # inside a kept piece
        first = next((other for other in kept if held[other] & held[piece]), None)
        if first is not None:
            sharing[piece] = first
        else:
            kept.append(piece)
            heard |= held[piece] | {piece}
    return {piece: sharing[piece] for piece in ids if piece in sharing}  # in gathered order


async def _ingredients(store: JobStore, sample_id: int, *, made_from: bool = False) -> set[int]:
    """The samples a curated piece was joined from, those of the pieces among them too; none for a
    sample that is not a piece. With `made_from`, also the sample an upsample or a continuation was
    made from (and what that one holds): its music plays in it again."""
    found: set[int] = set()
    pending = [sample_id]
    while pending:
        info = await store.get_sample_info(pending.pop())
        job = await store.get_job(info.job_id)
        inner: list[object] = []
        if job.kind == JobKind.CURATE:
            record = job.params.get(CURATION_KEY)
            inner = _ids(record.get("sample_ids")) if isinstance(record, dict) else []
        elif made_from and job.kind in (JobKind.UPSAMPLE, JobKind.CONTINUE):
            inner = [job.parent_sample_id]
        for held in inner:
            if isinstance(held, int) and held not in found and held != sample_id:
                found.add(held)
                pending.append(held)
    return found


async def _may_use_sample(origin: SampleOrigin, may_use: MayUse) -> bool:
    return await may_use(origin.channel_id, origin.user_id)


def _were(ids: Sequence[int]) -> str:
    return "was" if len(ids) == 1 else "were"


def _numbers(what: str, ids: Sequence[int]) -> str:
    listed = ", ".join(f"#{sample_id}" for sample_id in ids[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return f"{what}{'s' if len(ids) > 1 else ''} {listed}{more}"


async def joined_before(
    store: JobStore, guild_id: int, sample_ids: Sequence[int], similarity: Similarity, may_use: MayUse
) -> StoredPiece | None:
    """The newest piece of this server joined from exactly these samples with this similarity, among
    those the member may use: joining is deterministic, so another would be the same piece again
    (each preview is upsampled once for the same reason). One they may not use is no answer: the
    member gets a piece of their own."""
    wanted = set(sample_ids)
    for piece in await store.curated_pieces(guild_id):
        record = piece.params.get(CURATION_KEY)
        if not isinstance(record, dict) or record.get("similarity") != similarity.value:
            continue
        joined = [*_ids(record.get("sample_ids")), *_ids(record.get("left_out_silent"))]
        if set(joined) == wanted and await may_use(piece.origin.channel_id, piece.origin.user_id):
            return piece
    return None


def _ids(listed: object) -> list[object]:
    return listed if isinstance(listed, list) else []


def joined_before_text(piece: StoredPiece, count: int) -> str:
    """The answer to a /curate of samples `piece` was joined from: where it is, and how to post it."""
    origin = piece.origin
    return (
        f"These {count} samples were joined already: sample #{piece.sample_id} (curated by "
        f"<@{origin.user_id}> in <#{origin.channel_id}>), and joining them again makes the same piece. "
        f"`/sample {piece.sample_id}` posts it here."
    )


def similarity_to_use(samples: Sequence[SampleInfo]) -> Similarity:
    """Chromaprint where it is installed; else the samples' stored top-level codes (all made here)."""
    try:
        import chromaprint  # noqa: F401  (pyacoustid's binding loads libchromaprint on import)
    except (ImportError, OSError) as exc:
        missing = [sample.id for sample in samples if 2 not in sample.levels]
        if missing:  # no similarity without a system library for these: say what to install
            raise InvalidRequest(str(FingerprintUnavailable(str(exc) or type(exc).__name__))) from None
        return Similarity.CODES
    return Similarity.CHROMAPRINT


@dataclass(frozen=True, slots=True)
class Piece:
    """The joined piece and how it was made (ids in the order they play)."""

    order: list[int]
    join_scores: list[float]
    left_out: list[int]  # silent samples
    similarity: Similarity
    audio: bytes
    duration_seconds: float
    top_codes: bytes | None  # the ingredients' top-level codes, concatenated in order
    strip: bytes  # PNG: a picture per ingredient, in order, captioned with the join scores


def make_piece(samples: Sequence[Sample], similarity: Similarity, progress: Progress) -> Piece:
    """Decode, order and join the samples (CPU work: run it in a thread). `CurationError`s (all
    silent, only one with sound) come back as `InvalidRequest`."""
    # In id order, whatever order they were listed in: the order found depends on the clips' places
    # (ties, the first pair's direction), and a listing in another order is "the same piece".
    samples = sorted(samples, key=lambda sample: sample.id)
    clips = []
    for done, sample in enumerate(samples, start=1):
        progress(f"decoding {done}/{len(samples)}…")
        try:
            audio = decode_audio(sample.audio, max_bytes=None, max_seconds=None, silence_threshold_db=None)
        except AudioError as exc:
            raise JukebotError(f"Sample #{sample.id}'s stored audio cannot be read back ({exc}).") from None
        clips.append(Clip(f"#{sample.id}", audio))
    codes = None
    if similarity == Similarity.CODES:
        codes = [np.frombuffer(sample.codes(2) or b"", dtype="<i2") for sample in samples]

    def report(stage: str, done: int, total: int) -> None:
        progress(f"{stage} {done}/{total}…")

    try:
        result = curate(clips, codes=codes, progress=report)
    except CurationError as exc:
        raise InvalidRequest(str(exc)) from None
    progress("encoding the piece…")
    ordered = [samples[i] for i in result.order]
    top = [sample.codes(2) for sample in ordered]
    strip = strip_picture([clips[i] for i in result.order], result.join_scores)
    return Piece(
        order=[sample.id for sample in ordered],
        join_scores=[round(score, 4) for score in result.join_scores],
        left_out=[samples[i].id for i in range(len(samples)) if i not in result.order],
        similarity=similarity,
        audio=encode_audio(result.audio, SAMPLE_RATE, PIECE_FORMAT, PIECE_BITRATE),
        duration_seconds=result.duration_seconds,
        top_codes=b"".join(codes_ for codes_ in top if codes_ is not None) if None not in top else None,
        strip=strip,
    )


def piece_params(last_job: Job, last_index: int, piece: Piece, selection: Selection) -> dict[str, Any]:
    """The curate job's params: the style of the piece's last sample (`last_index` in `last_job`, a
    sweep's own style for that sample), then the record.

    Continuing the piece is fair from here: the continue job gets the ingredients' top-level codes
    concatenated in playing order, and the prior conditions on the last window of them, i.e. the
    last sample(s) the piece ends with; the style (artist, genres, lyrics) is that last sample's
    too. (The continuation is rendered from the codes, so it has hard joins and untrimmed silence
    where the piece has crossfades.)
    """
    try:
        style = parse_params(last_job.params).for_sample(last_index)
    except (InvalidJobParams, IndexError):
        style = JobParams()  # parameters an older bot wrote: continue with the defaults
    style = style.model_copy(
        update={"n_samples": 1, "levels": "top", "prime_seconds": None, "total_seconds": None}
    )
    record = {
        "selection": selection.describe(),
        "sample_ids": piece.order,
        "join_scores": piece.join_scores,
        "left_out_silent": piece.left_out,
        "similarity": piece.similarity.value,
    }
    return {**JobParams.model_validate(style.model_dump()).to_json(), CURATION_KEY: record}


def piece_sample(piece: Piece) -> NewSample:
    return NewSample(
        index=0,
        seed=0,  # no sampling: nothing to reproduce
        duration_seconds=piece.duration_seconds,
        audio=piece.audio,
        audio_format=PIECE_FORMAT,
        audio_bitrate=PIECE_BITRATE,
        codes_level_2=piece.top_codes,
    )


def continuable(piece: Piece) -> bool:
    """Whether a continuation of the piece fits: it starts from all its samples' top-level codes."""
    return may_continue(piece.top_codes)


def piece_header(sample_id: int, job_id: int) -> str:
    """How a curated piece's message begins (the relay finds a piece a stopped bot posted by it)."""
    return f"**Sample #{sample_id}** · job #{job_id} · curated by "


# One "Left out" line's numbers in a piece's message (then how many more): with many samples left out
# (a raised JUKEBOT_MAX_CURATE_SAMPLES) the message's last cut fell mid-number, and took the
# /continue line with it.
LEFT_OUT_CHARS = 240


def piece_text(
    sample_id: int,
    job_id: int,
    user_id: int,
    piece: Piece,
    inside: Mapping[int, int] | None = None,
    sharing: Mapping[int, int] | None = None,
) -> str:
    """The message above the piece: what it is, the order with each join's score, what was left out
    (silent, already `inside` a piece joined, or a piece `sharing` samples with one joined), within
    2,000 chars."""
    minutes, seconds = divmod(round(piece.duration_seconds), 60)
    head = (
        f"{piece_header(sample_id, job_id)}<@{user_id}> from {len(piece.order)} "
        f"samples · {minutes}:{seconds:02d} · similarity: {piece.similarity.description}"
    )
    tail = []
    if piece.left_out:
        tail.append(f"Left out (silent): {listed([f'#{i}' for i in piece.left_out], LEFT_OUT_CHARS)}")
    for held_by in sorted(set((inside or {}).values())):
        held = [f"#{held}" for held, piece_id in (inside or {}).items() if piece_id == held_by]
        tail.append(f"Left out (already in #{held_by}): {listed(held, LEFT_OUT_CHARS)}")
    for shared_with in sorted(set((sharing or {}).values())):
        pieces = [f"#{piece_id}" for piece_id, other in (sharing or {}).items() if other == shared_with]
        tail.append(f"Left out (shares samples with #{shared_with}): {listed(pieces, LEFT_OUT_CHARS)}")
    if piece.top_codes is None:
        tail.append("Some ingredients have no top-level codes stored, so this piece cannot be continued.")
    elif not continuable(piece):
        codes_seconds = tokens_seconds(len(piece.top_codes) // 2)
        tail.append(
            f"A continuation would start from all its samples' codes, {codes_seconds} together, and songs "
            f"stay under {MAX_SONG_SECONDS:g} s: this piece cannot be continued."
        )
    else:
        tail.append(f"`/continue sample:{sample_id}` extends it from its last sample.")
    room = MAX_MESSAGE_CHARS - len(head) - sum(len(line) + 1 for line in tail) - 1
    order = order_text(piece.order, piece.join_scores, room, more=" more (in the picture)")
    return "\n".join([head, order, *tail])[:MAX_MESSAGE_CHARS]


def order_text(order: Sequence[int], join_scores: Sequence[float], room: int, *, more: str = " more") -> str:
    """The piece's samples in the order they play, with each join's score, in `room` characters (the
    first ones, then how many more)."""
    label = "Order (similarity of each join): "
    steps = [f"#{order[0]}"] + [
        f"#{sample}({score:.2f})" for sample, score in zip(order[1:], join_scores, strict=True)
    ]
    shown = " → ".join(steps)
    kept = len(steps)
    while len(label + shown) > room and kept > 1:
        kept -= 1
        shown = " → ".join(steps[:kept]) + f" → … {len(steps) - kept}{more}"
    return label + shown


def order_line(params: Mapping[str, Any], room: int) -> str:
    """For a post of a curated piece other than `/curate`'s own (`/sample`, or the relay posting a
    piece whose bot stopped mid-post): a line with its samples in order, from its job's record, in
    `room` characters. '' for any other job, or a record this bot cannot read."""
    recorded = recorded_order(params)
    if recorded is None:
        return ""
    line = order_text(*recorded, room - 1)
    return "\n" + line if len(line) < room else ""


def recorded_order(params: Mapping[str, Any]) -> tuple[list[int], list[float]] | None:
    """A curated piece's samples in the order they play and each join's score, from its job's record;
    None for any other job, or a record this bot cannot read."""
    record = params.get(CURATION_KEY)
    if not isinstance(record, dict):
        return None
    order, scores = record.get("sample_ids"), record.get("join_scores")
    if not (
        isinstance(order, list)
        and order
        and all(type(sample) is int for sample in order)
        and isinstance(scores, list)
        and len(scores) == len(order) - 1
        and all(type(score) in (int, float) and math.isfinite(score) for score in scores)
    ):
        return None
    return order, [float(score) for score in scores]
