"""The whole product: the real discord.py bot against the fake Discord, real workers sampling tiny models.

`/jukebox` with an attached prime -> deferred reply -> a progress message edited as the worker
samples -> preview files with buttons -> a vote -> Upsample -> the final file; the bot restarts
while the upsample job runs: its progress message keeps updating and buttons the first bot
posted still work. The workers are a `python -m sampler.worker.pool` process on the same SQLite file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from bot.bot import JukeBot
from sampler.audio import decode_audio
from sampler.cascade_runner import codes_from_bytes
from sampler.jukebox.windows import prompt_length_samples
from sampler.loading import load_cascade
from storage import JobKind, JobStatus, JobStore
from tests.bot.conftest import BotRunner, bot_runner, fake_discord
from tests.bot.fake_discord import CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE, FakeDiscord, Upload
from tests.bot.harness import make_settings, prime_wav, progress_message, sample_message, when
from tests.e2e.conftest import Services, write_coarse_tiny_model_dir
from tests.holding import release_file

__all__ = ["bot_runner", "fake_discord"]  # fixtures shared with the bot tests
pytestmark = pytest.mark.slow
SAMPLE_TIMEOUT_S = 120.0  # generous: two shared CPU cores, several test runs at once


@pytest.fixture(scope="module")
def coarse_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coarse_tiny_model_dir(tmp_path_factory.mktemp("coarse-models"), models=("1b_lyrics",))


def live_bot(fake: FakeDiscord, store: JobStore) -> JukeBot:
    """A bot whose relay polls the database by itself (no test pokes it): workers drive everything."""
    return JukeBot(make_settings(progress_poll_seconds=0.2), store, sync_guild_ids=[fake.default_guild.id])


def top_codes_of(model_dir: Path, pcm: bytes) -> list[int]:
    """The prime's top-level codes, encoded as the runner encodes a prime (here, in this process)."""
    torch.set_num_threads(1)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    length = prompt_length_samples(len(audio) / 44_100)
    cascade = load_cascade(model_dir, "1b_lyrics")
    prompt = torch.from_numpy(audio[:length].copy()).unsqueeze(0)
    return [int(code) for code in cascade.vqvae.encode(prompt)[2][0]]


def playable_seconds(data: bytes) -> float:
    audio = decode_audio(data, silence_threshold_db=None)
    assert abs(audio).max() > 0
    return audio.size / 44_100


async def test_jukebox_prime_preview_vote_upsample_and_restart_with_real_workers(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    services: Services,
    sqlite_url: str,
    sqlite_store: JobStore,
    coarse_models: Path,
    tmp_path: Path,
) -> None:
    fake, store = fake_discord, sqlite_store
    # Each job holds after its first window until the test lets it go: on any machine, however fast,
    # its progress shows mid-job, and the bot restart lands while the upsample runs.
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    pool = services.pool(sqlite_url, coarse_models, hold_dir=hold_dir)
    bot = await bot_runner.start(live_bot(fake, store))
    alice, bob = fake.user("alice"), fake.user("bob")

    record = await fake.invoke_command(
        "jukebox",
        {
            "artist": "The Beatles",
            "genre": "rock",
            "lyrics": "hello, hello",
            "length": 1.0,
            "samples": 2,
            "seed": 7,
            "model": "1b_lyrics",
        },
        user=alice,
        attachments={"prime": Upload("riff.wav", prime_wav(0.5))},
    )
    assert record.response_type == CALLBACK_DEFERRED_MESSAGE
    assert record.ack_latency is not None and record.ack_latency < 3.0
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    assert record.original is not None and record.original.content.startswith("Queued as job #1.")
    job = await store.get_job(1)
    assert job.prime_id is not None and job.model == "1b_lyrics"

    # The worker's progress reaches the progress message; then one message per preview.
    progress = await fake.wait_for(when(lambda: progress_message(fake, 1)), timeout_s=30)
    await fake.wait_for(
        lambda: "top level (preview)" in progress.content and "window" in progress.content,
        timeout_s=SAMPLE_TIMEOUT_S,
    )
    release_file(hold_dir, 1).touch()
    await fake.wait_for(
        lambda: progress.content.endswith("✅ Done: 2 samples below."), timeout_s=SAMPLE_TIMEOUT_S
    )
    infos = await store.samples_for_job(1)
    assert [info.index for info in infos] == [0, 1]
    previews = [await fake.wait_for(when(lambda i=info.id: sample_message(fake, i))) for info in infos]  # type: ignore[misc]
    for info, message in zip(infos, previews, strict=True):
        stored = await store.get_sample(info.id)
        top = codes_from_bytes(stored.codes(2))
        assert top is not None and top.shape == (44032 // 256,)  # 1 s at the coarse top hop
        # lower levels hold at most the prime's codes: a preview has no upsampled audio yet
        assert all(len(stored.codes(level) or b"") // 2 * 16 // 4**level < 0.6 * 44_100 for level in (0, 1))
        assert message.attachments[0].data == stored.audio
        assert playable_seconds(message.attachments[0].data) == pytest.approx(1.0, abs=0.03)
        assert message.custom_ids == [
            f"jukebot:vote:{info.id}",
            f"jukebot:upsample:{info.id}",
            f"jukebot:continue:{info.id}",
        ]
    # The prime is continued: each preview starts with the prime's own top-level codes.
    assert job.prime_id is not None
    prime_codes = await asyncio.to_thread(
        top_codes_of, coarse_models, (await store.get_prime(job.prime_id)).pcm
    )
    for info in infos:
        top = codes_from_bytes((await store.get_sample(info.id)).codes(2))
        assert top is not None and top[: len(prime_codes)].tolist() == prime_codes
    first, sid = previews[0], infos[0].id

    clicked = await fake.click(first, f"jukebot:vote:{sid}", user=bob)
    assert clicked.response_type == CALLBACK_DEFERRED_UPDATE  # acknowledged before the database
    await fake.wait_for(lambda: first.buttons[0]["label"] == "👍 1")

    # Upsample: a real job of its own, with its progress message replying to the preview.
    upsample_click = await fake.click(first, f"jukebot:upsample:{sid}", user=bob)
    await fake.wait_for(lambda: upsample_click.original is not None and not upsample_click.original.loading)
    assert upsample_click.original is not None and upsample_click.original.content.startswith(
        "Queued as job #2."
    )
    upsample_job = await store.get_job(2)
    assert upsample_job.kind is JobKind.UPSAMPLE and upsample_job.parent_sample_id == sid
    upsample_progress = await fake.wait_for(when(lambda: progress_message(fake, 2)), timeout_s=30)
    assert upsample_progress.replied_to == first.id

    # The bot goes down while the worker is upsampling (held after its first window), and comes back.
    await fake.wait_for(lambda: "window" in upsample_progress.content, timeout_s=SAMPLE_TIMEOUT_S)
    await bot_runner.stop(bot)
    assert (await store.get_job(2)).status is JobStatus.RUNNING, "the restart should land mid-job"
    edits_before = len(upsample_progress.revisions)
    await bot_runner.start(live_bot(fake, store))

    # Buttons the first bot posted work on the second.
    clicked = await fake.click(first, f"jukebot:vote:{sid}", user=alice)
    assert clicked.response_type == CALLBACK_DEFERRED_UPDATE
    await fake.wait_for(lambda: first.buttons[0]["label"] == "👍 2")
    assert await store.vote_count(sid) == 2
    release_file(hold_dir, 2).touch()

    # The same progress message keeps updating until the final file is posted.
    await fake.wait_for(
        lambda: upsample_progress.content.endswith("✅ Done: 1 sample below."), timeout_s=SAMPLE_TIMEOUT_S
    )
    assert len(upsample_progress.revisions) > edits_before
    assert progress_message(fake, 2) is upsample_progress  # edited, never posted again
    (final_info,) = await store.samples_for_job(2)
    final = await fake.wait_for(when(lambda: sample_message(fake, final_info.id)))
    # in the preview's thread: its message, or (when the new bot does not know that message) its job's
    assert final.replied_to in (first.id, progress.id) and "full quality" in final.content
    assert final.custom_ids == [f"jukebot:vote:{final_info.id}", f"jukebot:continue:{final_info.id}"]
    stored_final = await store.get_sample(final_info.id)
    assert stored_final.levels == (0, 1, 2)
    assert final.attachments[0].data == stored_final.audio
    assert playable_seconds(final.attachments[0].data) == pytest.approx(1.0, abs=0.03)
    parent_top = codes_from_bytes((await store.get_sample(sid)).codes(2))
    final_top = codes_from_bytes(stored_final.codes(2))
    assert parent_top is not None and final_top is not None and final_top.tolist() == parent_top.tolist()
    assert fake.unknown_requests == [] and fake.rejections == []
    assert await pool.terminate() == 0
