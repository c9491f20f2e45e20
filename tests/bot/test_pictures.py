"""Each posted sample carries a picture of its sound; a picture never costs the audio its place."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.delivery import AudioFile, with_picture
from bot.pictures import PICTURE_SAMPLE_RATE, picture_for_sample, picture_of_sample, prime_part_seconds
from sampler.audio import SAMPLE_RATE, decode_audio, encode_audio
from sampler.curation import Clip
from sampler.pictures import PICTURE_HEIGHT, PICTURE_WIDTH, render_sample_picture, strip_picture
from storage.records import Job, NewSample, Sample
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeAttachment, FakeDiscord, Upload
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    prime_wav,
    progress_message,
    queue_song,
    relay_of,
    reply_of,
    sample_message,
    tone,
    when,
)


def pictures_of(attachments: list[FakeAttachment]) -> list[FakeAttachment]:
    return [a for a in attachments if a.filename.endswith(".png")]


def decoded(attachment: FakeAttachment) -> np.ndarray:
    assert attachment.content_type == "image/png"
    image = Image.open(io.BytesIO(attachment.data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def expected_picture(audio: bytes, prime_seconds: float | None) -> bytes:
    samples = decode_audio(
        audio, sample_rate=PICTURE_SAMPLE_RATE, max_seconds=None, silence_threshold_db=None
    )
    return render_sample_picture(samples, PICTURE_SAMPLE_RATE, prime_seconds=prime_seconds)


async def test_each_preview_carries_a_picture_with_the_prime_marked(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    bot = await bot_runner.start(make_bot(fake, store))
    record = await fake.invoke_command(
        "jukebox",
        {"samples": 2, "length": 20.0},
        attachments={"prime": Upload("riff.wav", prime_wav(3.0))},
    )
    assert (await reply_of(fake, record)).startswith("Queued as job #1.")
    worker = PlayedWorker(store)
    sample_ids = await worker.complete(await worker.claim(), n=2, full=False, seconds=6.0)
    relay_of(bot).poke()
    progress = await fake.wait_for(when(lambda: progress_message(fake, 1)))
    await fake.wait_for(lambda: progress.content.endswith("✅ Done: 2 samples below."), timeout_s=60)
    for sample_id in sample_ids:
        message = sample_message(fake, sample_id)
        assert message is not None
        stored = await store.get_sample(sample_id)
        audio, picture = message.attachments  # the audio first (the player), then its picture
        assert audio.data == stored.audio
        assert picture.filename == f"jukebot_sample_{sample_id}.png"
        rgb = decoded(picture)
        assert rgb.shape == (PICTURE_HEIGHT, PICTURE_WIDTH, 3) and rgb.astype(float).var() > 100
        # exactly the picture of the stored audio with its first 3 s (the prime) marked
        assert picture.data == expected_picture(stored.audio, 3.0)
        assert picture.data != expected_picture(stored.audio, None)
    assert fake.rejections == []

    # /sample re-sends it with the same picture
    resent = await fake.invoke_command("sample", {"id": sample_ids[0]})
    await fake.wait_for(lambda: resent.original is not None and not resent.original.loading)
    assert resent.original is not None
    (picture,) = pictures_of(resent.original.attachments)
    assert picture.data == expected_picture((await store.get_sample(sample_ids[0])).audio, 3.0)


async def test_under_a_tiny_upload_limit_the_audio_goes_out_without_its_picture(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    # Room for the stored audio (what PlayedWorker stores for a 2 s sample) and a kilobyte more.
    limit = len(encode_audio(tone(2.0, 330.0), SAMPLE_RATE, "ogg", 64_000)) + 1024
    fake.default_guild.attachment_size_limit = limit
    bot = await bot_runner.start(make_bot(fake, store))
    await queue_song(fake, samples=1)
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False, seconds=2.0)
    stored = await store.get_sample(sample_id)
    assert len(expected_picture(stored.audio, None)) > 1024  # the picture does not fit beside it
    relay_of(bot).poke()
    message = await fake.wait_for(when(lambda: sample_message(fake, sample_id)), timeout_s=60)
    (audio,) = message.attachments
    assert audio.data == stored.audio and sum(a.size for a in message.attachments) <= limit
    assert message.custom_ids[0] == f"jukebot:vote:{sample_id}"
    assert fake.rejections == []


def test_with_picture_keeps_every_message_under_the_limit_and_the_file_count() -> None:
    audio = AudioFile("a.ogg", b"a" * 700, "a")
    picture = AudioFile("a.png", b"p" * 200, "p")
    assert with_picture([[audio]], picture, 1000) == [[audio, picture]]
    assert with_picture([[audio]], picture, 899) == [[audio]]
    assert with_picture([[audio], [audio]], picture, 900) == [[audio, picture], [audio]]
    assert with_picture([[audio] * 10], picture, 100_000) == [[audio] * 10]
    assert with_picture([[]], picture, 1000) == [[picture]]  # the audio could not go out: still a picture
    assert with_picture([[audio]], None, 1000) == [[audio]]
    # With `own_message` (a curated piece's order strip), no room beside the audio is a message of its own.
    assert with_picture([[audio]], picture, 899, own_message=True) == [[audio], [picture]]
    assert with_picture([[audio] * 10], picture, 100_000, own_message=True) == [[audio] * 10, [picture]]
    assert with_picture([[audio]], picture, 199, own_message=True) == [[audio]]  # over the limit alone


def test_a_picture_is_skipped_not_fatal_when_the_audio_does_not_decode() -> None:
    assert picture_for_sample(b"not audio at all", "ogg", "jukebot_sample_9", 2.0, None) is None
    good = encode_audio(tone(1.0), SAMPLE_RATE, "ogg", 64_000)
    drawn = picture_for_sample(good, "ogg", "jukebot_sample_9", 1.0, 0.5)
    assert drawn is not None and drawn.filename == "jukebot_sample_9.png"
    # The tinted part is what the model was given: a prime, or the sample a continue extends.
    assert drawn.description.endswith(", the first 0.5 s given to the model (tinted)")
    assert Image.open(io.BytesIO(drawn.data)).size == (PICTURE_WIDTH, PICTURE_HEIGHT)


async def test_the_prime_part_follows_continues_and_upsamples(db_store: JobStore) -> None:
    store = db_store
    worker = PlayedWorker(store)
    pcm = (tone(3.0) * 32767).astype("<i2").tobytes()
    prime_id = await store.store_prime(
        user_id=1, guild_id=2, filename="riff.wav", pcm=pcm, sample_rate=SAMPLE_RATE
    )

    async def made(kind: str, *, prime_seconds: float | None = None, **refs: int) -> int:
        params = {"seconds": 6.0} | ({"prime_seconds": prime_seconds} if prime_seconds else {})
        job_id = await store.enqueue(
            kind=kind, model="5b", params=params, channel_id=3, user_id=1, guild_id=2, **refs
        )
        claimed = await worker.claim()
        assert claimed.id == job_id
        (sample_id,) = await worker.complete(claimed, n=1, full=kind != "generate", seconds=6.0)
        return sample_id

    async def part(sample_id: int) -> float | None:
        return await prime_part_seconds(
            store, await store.get_job((await store.get_sample_info(sample_id)).job_id)
        )

    plain = await made("generate")
    whole_prime = await made("generate", prime_id=prime_id)
    some_prime = await made("generate", prime_id=prime_id, prime_seconds=2.0)
    continued = await made("continue", parent_sample_id=some_prime)
    upsampled = await made("upsample", parent_sample_id=some_prime)
    upsampled_continue = await made("upsample", parent_sample_id=continued)
    assert await part(plain) is None
    assert await part(whole_prime) == pytest.approx(3.0)
    assert await part(some_prime) == pytest.approx(2.0)
    assert await part(continued) == pytest.approx(6.0)  # the whole parent came before the new part
    assert await part(upsampled) == pytest.approx(2.0)
    assert await part(upsampled_continue) == pytest.approx(6.0)


async def test_a_curated_piece_posted_again_carries_its_strip_drawn_from_its_samples(
    db_store: JobStore,
) -> None:
    """Posted by /curate, a piece carries the strip of its samples in playing order. Posted again
    (`/sample`, or the relay taking over a piece whose bot stopped), it carried a spectrogram of the
    piece instead: the strip is drawn again from the stored samples."""
    store = db_store
    worker = PlayedWorker(store)
    await store.enqueue(kind="generate", model="5b", params={}, channel_id=3, user_id=1, guild_id=2)
    first, second, third = await worker.complete(await worker.claim(), n=3, full=False, seconds=2.0)
    piece_audio = encode_audio(tone(3.0), SAMPLE_RATE, "ogg", 64_000)

    async def piece(record: dict[str, object]) -> tuple[Job, Sample]:
        job_id, sample_id = await store.store_curation(
            guild_id=2,
            channel_id=3,
            user_id=1,
            model="5b",
            params={"curation": record},
            sample=NewSample(0, 0, 3.0, piece_audio, "ogg", 64_000, None),
        )
        return await store.get_job(job_id), await store.get_sample(sample_id)

    async def picture(job: Job, sample: Sample) -> AudioFile | None:
        stem = f"jukebot_sample_{sample.id}"
        return await picture_of_sample(store, job, sample.audio, "ogg", stem, sample.duration_seconds)

    job, sample = await piece({"sample_ids": [third, first, second], "join_scores": [0.5, 0.25]})
    strip = await picture(job, sample)
    assert strip is not None and (strip.filename, strip.description) == (
        f"jukebot_sample_{sample.id}_order.png",
        f"jukebot_sample_{sample.id}: the 3 samples in the order they play",
    )
    clips = [await store.get_sample(sample_id) for sample_id in (third, first, second)]
    drawn = strip_picture(
        [
            Clip(f"#{clip.id}", decode_audio(clip.audio, sample_rate=PICTURE_SAMPLE_RATE, max_seconds=None))
            for clip in clips
        ],
        [0.5, 0.25],
        PICTURE_SAMPLE_RATE,
    )
    assert strip.data == drawn

    # A record this bot cannot read, or one naming a sample that is gone: the piece's own picture.
    for record in (
        {"sample_ids": [first, second], "join_scores": []},
        {"sample_ids": [first, 999], "join_scores": [0.5]},
    ):
        job, sample = await piece(record)
        fallback = await picture(job, sample)
        assert fallback is not None and fallback.filename == f"jukebot_sample_{sample.id}.png", record
        assert fallback.data == expected_picture(piece_audio, None)
