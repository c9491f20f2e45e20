"""Helpers for the bot tests: a bot factory, a worker played by the test through the real store, audio."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from bot.bot import JukeBot
from bot.relay import ProgressRelay
from jukebot.settings import Settings
from sampler.audio import SAMPLE_RATE, encode_audio, wav_bytes
from sampler.jukebox.registry import MODELS
from storage.models import JobRow, utcnow
from storage.records import ClaimedJob, NewSample
from storage.store import JobStore
from tests.bot.fake_discord import FLAG_LOADING, FakeDiscord, FakeMessage, InteractionRecord
from tests.waiting import wait_until

ALL_MODELS = tuple(MODELS)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_length_seconds": 60.0,
        "max_samples_per_job": 3,
        "max_running_jobs_per_user": 1,
        "max_queued_jobs_per_user": 3,
        "allowed_channels": [],
        "max_prime_bytes": 2 * 1024 * 1024,
        "max_prime_seconds": 30.0,
        # The relay polls rarely, so tests drive it with `relay_of(bot).poke()`; edits are not throttled.
        "progress_poll_seconds": 30.0,
        "progress_min_edit_seconds": 0.0,
    } | overrides
    return Settings(**values)


def make_bot(fake: FakeDiscord, store: JobStore, settings: Settings | None = None) -> JukeBot:
    """Commands synced to the test guild (settings from `make_settings` unless given)."""
    return JukeBot(settings or make_settings(), store, sync_guild_ids=[fake.default_guild.id])


def relay_of(bot: JukeBot) -> ProgressRelay:
    """The progress relay, which the progress extension owns."""
    # by name: `load_extension` executes the extension module afresh, so its classes are not importable
    relay = getattr(bot.get_cog("Progress"), "relay", None)
    assert isinstance(relay, ProgressRelay), "the progress extension is not loaded"
    return relay


def tone(seconds: float, hz: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def prime_wav(seconds: float = 3.0) -> bytes:
    return wav_bytes(tone(seconds, 220.0))


def codes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 2048, n).astype("<i2").tobytes()


async def job_count(store: JobStore) -> int:
    async with store.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(JobRow)) or 0)


@dataclass
class PlayedWorker:
    """The test plays a worker through the real store: claim, report progress, complete."""

    store: JobStore
    worker_id: str = "test-worker"
    claimed: list[ClaimedJob] = field(default_factory=list)

    async def start(self) -> None:
        """Say it is alive and serves every model, as a worker does before it claims: the queue
        places the bot shows count only jobs some live worker can take."""
        await self.store.record_worker(self.worker_id, ALL_MODELS)

    async def claim(self) -> ClaimedJob:
        """The next queued job (after `start`). Polled, as a worker does: on Postgres a claim skips a
        row locked for a moment (the bot recording the job's progress message)."""
        await self.start()
        job = await wait_until(
            lambda: self.store.claim(self.worker_id, ALL_MODELS, lease_seconds=600),
            within=10.0,
            what="a queued job to claim",
        )
        self.claimed.append(job)
        return job

    async def progress(self, job_id: int, *, window: int, of: int, level: int = 2) -> None:
        await self.store.report_progress(
            job_id,
            self.worker_id,
            stage="sampling",
            progress=window / of,
            level=level,
            window=window,
            window_count=of,
            tokens_done=window * 100,
            tokens_total=of * 100,
            tokens_per_second=123.4,
            eta_at=utcnow() + timedelta(minutes=5),
        )

    async def cancelled(self, job_id: int) -> None:
        """Stop a job being cancelled after the current step, as a worker does."""
        await self.store.mark_cancelled(job_id, self.worker_id)

    async def complete(
        self, job: ClaimedJob, *, n: int, full: bool, seconds: float = 2.0, codes_seconds: float | None = None
    ) -> list[int]:
        """Store `n` samples of `seconds` of audio, with codes for `codes_seconds` (the audio's length
        unless given: a curated piece's codes outlast its crossfaded audio)."""
        samples = []
        length = int((seconds if codes_seconds is None else codes_seconds) * SAMPLE_RATE)
        for index in range(n):
            audio = encode_audio(tone(seconds, 330.0 + 110 * index), SAMPLE_RATE, "ogg", 64_000)
            samples.append(
                NewSample(
                    index=index,
                    seed=1000 + index,
                    duration_seconds=seconds,
                    audio=audio,
                    audio_format="ogg",
                    audio_bitrate=64_000,
                    codes_level_2=codes(length // 128, index),
                    codes_level_1=codes(length // 32, index) if full else None,
                    codes_level_0=codes(length // 8, index) if full else None,
                )
            )
        return await self.store.complete(job.id, self.worker_id, samples)


async def queued_song(fake: FakeDiscord, store: JobStore, channel: str = "general") -> int:
    """A one-sample 1b_lyrics preview job by alice in `channel`, queued straight in the store; its id."""
    return await store.enqueue(
        kind="generate",
        model="1b_lyrics",
        params={"artist": "queen", "genres": ["pop"], "seconds": 10, "n_samples": 1, "seed": 1},
        channel_id=fake.channel(channel).id,
        user_id=fake.user("alice").id,
        guild_id=fake.default_guild.id,
    )


def bot_messages(fake: FakeDiscord, channel: str = "general") -> list[FakeMessage]:
    return [m for m in fake.channel_messages(fake.channel(channel)) if m.author.id == fake.bot_user.id]


def progress_message(fake: FakeDiscord, job_id: int, channel: str = "general") -> FakeMessage | None:
    """The job's progress message: the bot's message about it that is still there."""
    return next(
        (
            m
            for m in bot_messages(fake, channel)
            if m.content.startswith(f"**Job #{job_id}**") and not m.deleted
        ),
        None,
    )


def sample_message(fake: FakeDiscord, sample_id: int, channel: str = "general") -> FakeMessage | None:
    return next(
        (m for m in bot_messages(fake, channel) if f"**Sample #{sample_id}**" in m.content and m.attachments),
        None,
    )


async def recorded_progress_message(store: JobStore, job_id: int) -> int:
    """The id of the job's progress message once the store has it (it is posted after the reply)."""

    async def recorded() -> int | None:
        return (await store.get_job(job_id)).progress_message_id

    return await wait_until(recorded, 10.0, f"job #{job_id}'s progress message in the store")


def answered_before_posted(reply: FakeMessage | None, posted: FakeMessage) -> bool:
    """Whether a deferred reply stopped "thinking" (got its answer) before `posted` was created."""
    assert reply is not None
    answered = next(revision.at for revision in reply.revisions if not revision.flags & FLAG_LOADING)
    return answered <= posted.revisions[0].at


def when(predicate: Callable[[], Any]) -> Callable[[], Any]:
    """Swallow lookups that fail while the state is still building (for `fake.wait_for`)."""

    def check() -> Any:
        try:
            return predicate()
        except (LookupError, AttributeError):
            return None

    return check


def answer_of(record: InteractionRecord) -> FakeMessage | None:
    """The bot's answer to an interaction once given: its response, or its first followup where the
    response is the clicked public message (a deferred update, whose answer to the clicker follows)
    or was taken away (a public "thinking…" message making way for a private refusal)."""
    original = record.original
    clicked = original is record.source_message and original is not None and not original.ephemeral
    if original is not None and (original.deleted or clicked):
        return next((message for message in record.followups if not message.loading), None)
    return original if original is not None and not original.loading else None


async def reply_of(fake: FakeDiscord, record: InteractionRecord) -> str:
    """The text of the (ephemeral) answer to an interaction, once the bot has given it."""
    message = await fake.wait_for(lambda: answer_of(record))
    assert message.ephemeral, f"the reply {message.content!r} is public"
    return message.content


async def queue_song(fake: FakeDiscord, user: str = "alice", **options: Any) -> str:
    """`/jukebox` as `user` with `options`; returns the bot's "Queued as job #N…" reply."""
    reply = await reply_of(fake, await fake.invoke_command("jukebox", options, user=fake.user(user)))
    assert reply.startswith("Queued as job #"), reply
    return reply


def sample_posts(fake: FakeDiscord, sample_id: int, channel: str = "general") -> list[FakeMessage]:
    """Every message in `channel` that shows sample `sample_id` (exactly one once it is posted once)."""
    return [
        m for m in fake.channel_messages(fake.channel(channel)) if f"**Sample #{sample_id}**" in m.content
    ]


async def assert_posted_once(
    fake: FakeDiscord,
    store: JobStore,
    job_id: int,
    sample_ids: list[int],
    first: FakeMessage,
    progress: FakeMessage,
) -> None:
    """Each sample of the job posted exactly once (the first in `first`) and recorded as such, and the
    job's progress message still `progress`: what a bot that stopped or died mid-post must leave."""
    assert [len(sample_posts(fake, sample_id)) for sample_id in sample_ids] == [1] * len(sample_ids)
    posted = [sample_message(fake, sample_id) for sample_id in sample_ids]
    assert posted[0] is first
    assert [info.message_id for info in await store.samples_for_job(job_id)] == [
        message.id for message in posted if message is not None
    ]
    assert progress_message(fake, job_id) is progress


async def posted_preview(fake: FakeDiscord, store: JobStore, bot: JukeBot, seconds: float = 20.0) -> int:
    """A one-sample preview job by alice, played to success and posted by the relay; its sample's id."""
    await queue_song(fake, "alice", artist="queen", samples=1, length=seconds)
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False, seconds=seconds)
    relay_of(bot).poke()
    await fake.wait_for(when(lambda: sample_posts(fake, sample_id) or None))
    return sample_id
