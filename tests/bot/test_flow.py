"""End to end: the real discord.py client against the fake Discord, a real store, the test as the worker."""

from __future__ import annotations

from storage.models import JobKind, JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import CALLBACK_DEFERRED_MESSAGE, CALLBACK_DEFERRED_UPDATE, FakeDiscord, Upload
from tests.bot.harness import (
    PlayedWorker,
    answered_before_posted,
    make_bot,
    prime_wav,
    progress_message,
    recorded_progress_message,
    relay_of,
    reply_of,
    sample_message,
    when,
)


async def test_jukebox_preview_vote_upsample_final(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    store, fake = db_store, fake_discord
    bot = await bot_runner.start(make_bot(fake, store))
    alice, bob = fake.user("alice"), fake.user("bob")
    await PlayedWorker(store).start()  # a worker is up, waiting for jobs

    # /jukebox with a prime: deferred at once, then an ephemeral confirmation.
    record = await fake.invoke_command(
        "jukebox",
        {
            "artist": "The Beatles",
            "genre": "rock",
            "lyrics": "hello, hello",
            "length": 20.0,
            "samples": 2,
            "seed": 7,
        },
        user=alice,
        attachments={"prime": Upload("riff.wav", prime_wav(3.0))},
    )
    assert record.response_type == CALLBACK_DEFERRED_MESSAGE
    assert record.ack_latency is not None and record.ack_latency < 3.0
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    assert record.original is not None and record.original.ephemeral
    assert record.original.content.startswith("Queued as job #1.")

    job = await store.get_job(1)
    assert job.kind == JobKind.GENERATE and job.model == "5b_lyrics" and job.user_id == alice.id
    assert job.params["artist"] == "the beatles" and job.params["genres"] == ["rock"]
    assert job.params["lyrics"] == "hello, hello" and job.params["n_samples"] == 2 and job.params["seed"] == 7
    assert job.prime_id is not None
    prime = await store.get_prime(job.prime_id)
    assert prime.filename == "riff.wav" and abs(prime.duration_seconds - 3.0) < 0.01

    # One progress message, posted with the bot token (not a webhook), its id in the store.
    progress = await fake.wait_for(when(lambda: progress_message(fake, 1)))
    assert progress.webhook_id is None and progress.interaction_id is None
    await recorded_progress_message(store, 1)
    assert (await store.get_job(1)).progress_message_id == progress.id
    assert "Queued: position 1 in the queue." in progress.content
    # The user hears "Queued as job #1" first; the progress message follows it.
    assert answered_before_posted(record.original, progress)

    # The test is the worker: progress edits show stage, level, window, bar, tokens/s and an ETA.
    worker = PlayedWorker(store)
    claimed = await worker.claim()
    await worker.progress(claimed.id, window=1, of=4)
    relay_of(bot).poke()
    await fake.wait_for(lambda: "window 1/4" in progress.content)
    assert "top level (preview)" in progress.content and "123 tokens/s" in progress.content
    assert "`[█████░░░░░░░░░░░░░░░]  25%`" in progress.content and ":R>" in progress.content
    await worker.progress(claimed.id, window=3, of=4)
    relay_of(bot).poke()
    await fake.wait_for(lambda: "window 3/4" in progress.content)

    # Done: one message per preview, each with vote, upsample and continue buttons.
    sample_ids = await worker.complete(claimed, n=2, full=False)
    relay_of(bot).poke()
    await fake.wait_for(lambda: progress.content.endswith("✅ Done: 2 samples below."))
    previews = [sample_message(fake, sample_id) for sample_id in sample_ids]
    assert all(previews)
    # The store knows the results are out and which message carries each sample.
    await relay_of(bot).run_pass()  # waits out the pass that posted them: it marks them posted last
    assert (await store.get_job(1)).results_posted_at is not None
    assert [(await store.get_sample(s)).message_id for s in sample_ids] == [p.id for p in previews if p]
    assert await store.finished_jobs_unposted() == []
    first = previews[0]
    assert first is not None
    assert first.attachments[0].content_type == "audio/ogg" and first.attachments[0].filename.endswith(".ogg")
    stored = await store.get_sample(sample_ids[0])
    assert first.attachments[0].data == stored.audio
    assert first.replied_to == progress.id
    sid = sample_ids[0]
    assert first.custom_ids == [f"jukebot:vote:{sid}", f"jukebot:upsample:{sid}", f"jukebot:continue:{sid}"]
    assert first.buttons[0]["label"] == "👍 0"

    # Votes toggle, one per user, and the button shows the count.
    # The click is acknowledged before the vote is written (a write may wait), then the buttons change.
    clicked = await fake.click(first, f"jukebot:vote:{sid}", user=bob)
    assert clicked.response_type == CALLBACK_DEFERRED_UPDATE
    await fake.wait_for(lambda: first.buttons[0]["label"] == "👍 1")
    await fake.click(first, f"jukebot:vote:{sid}", user=alice)
    await fake.wait_for(lambda: first.buttons[0]["label"] == "👍 2")
    await fake.click(first, f"jukebot:vote:{sid}", user=bob)
    await fake.wait_for(lambda: first.buttons[0]["label"] == "👍 1")
    assert await store.vote_count(sid) == 1
    assert first.attachments  # editing the buttons keeps the audio

    # Upsample: a new job, its progress message replying to the preview.
    upsample_click = await fake.click(first, f"jukebot:upsample:{sid}", user=bob)
    await fake.wait_for(lambda: upsample_click.original is not None and not upsample_click.original.loading)
    assert upsample_click.original is not None and upsample_click.original.ephemeral
    assert upsample_click.original.content.startswith("Queued as job #2.")
    upsample_job = await store.get_job(2)
    assert upsample_job.kind == JobKind.UPSAMPLE and upsample_job.parent_sample_id == sid
    assert upsample_job.params["levels"] == "all" and upsample_job.user_id == bob.id
    upsample_progress = await fake.wait_for(when(lambda: progress_message(fake, 2)))
    assert upsample_progress.replied_to == first.id and "upsample of sample #" in upsample_progress.content
    assert answered_before_posted(upsample_click.original, upsample_progress)

    claimed = await worker.claim()
    assert claimed.id == 2
    await worker.progress(2, window=1, of=10, level=0)
    relay_of(bot).poke()
    await fake.wait_for(lambda: "bottom level (full quality)" in upsample_progress.content)
    (final_id,) = await worker.complete(claimed, n=1, full=True, seconds=3.0)
    relay_of(bot).poke()
    final = await fake.wait_for(when(lambda: sample_message(fake, final_id)))
    assert final.replied_to == first.id and "full quality" in final.content
    assert final.custom_ids == [
        f"jukebot:vote:{final_id}",
        f"jukebot:continue:{final_id}",
    ]  # nothing to upsample
    await fake.wait_for(lambda: upsample_progress.content.endswith("✅ Done: 1 sample below."))
    assert (await store.get_job(2)).status == JobStatus.SUCCEEDED
    assert (await store.get_sample(final_id)).message_id == final.id

    # /upsample by number (no button to reply to): progress and result reply to that sample's message.
    second_preview = previews[1]
    assert second_preview is not None
    record = await fake.invoke_command("upsample", {"sample": sample_ids[1]}, user=alice)
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    assert record.original is not None and record.original.content.startswith("Queued as job #3.")
    progress3 = await fake.wait_for(when(lambda: progress_message(fake, 3)))
    assert progress3.replied_to == second_preview.id
    assert answered_before_posted(record.original, progress3)
    claimed = await worker.claim()
    (third_id,) = await worker.complete(claimed, n=1, full=True, seconds=2.0)
    relay_of(bot).poke()
    third = await fake.wait_for(when(lambda: sample_message(fake, third_id)))
    assert third.replied_to == second_preview.id
    assert fake.unknown_requests == [] and fake.rejections == []


async def test_style_sweep_labels_each_result_and_its_continuations(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    store, fake = db_store, fake_discord
    bot = await bot_runner.start(make_bot(fake, store))
    choices = await fake.autocomplete("jukebox", "styles", "Ella Fitzgerald / jaz")
    assert choices[0]["value"] == "Ella Fitzgerald / jazz"
    choices = await fake.autocomplete("jukebox", "styles", "Ella Fitzgerald / jazz; metalica")
    assert choices[0]["value"] == "Ella Fitzgerald / jazz; metallica"

    # samples defaults to one per style, each style resolved like artist and genre
    reply = await reply_of(
        fake,
        await fake.invoke_command(
            "jukebox", {"styles": "Ella Fitzgerald / jazz; Metallica / metal", "lyrics": "la la", "seed": 3}
        ),
    )
    assert reply.startswith("Queued as job #1."), reply
    job = await store.get_job(1)
    assert job.params["n_samples"] == 2 and job.params["lyrics"] == "la la"
    assert job.params["styles"] == [
        {"artist": "ella fitzgerald", "genres": ["jazz"], "lyrics": None},
        {"artist": "metallica", "genres": ["metal"], "lyrics": None},
    ]
    progress = await fake.wait_for(when(lambda: progress_message(fake, 1)))
    assert "a sweep of 2 styles" in progress.content

    worker = PlayedWorker(store)
    sample_ids = await worker.complete(await worker.claim(), n=2, full=False)
    relay_of(bot).poke()
    posted = [await fake.wait_for(when(lambda s=s: sample_message(fake, s))) for s in sample_ids]
    assert "Style: **ella fitzgerald / jazz**" in posted[0].content
    assert "Style: **metallica / metal**" in posted[1].content

    # Continuing or upsampling one sample of the sweep keeps that sample's style only.
    cont = await fake.invoke_command("continue", {"sample": sample_ids[1], "seconds": 5.0})
    assert (await reply_of(fake, cont)).startswith("Queued as job #2.")
    up = await fake.click(posted[0], f"jukebot:upsample:{sample_ids[0]}")
    assert (await reply_of(fake, up)).startswith("Queued as job #3.")
    for job_id, artist, genres in ((2, "metallica", ["metal"]), (3, "ella fitzgerald", ["jazz"])):
        params = (await store.get_job(job_id)).params
        assert (params["artist"], params["genres"], params["lyrics"]) == (artist, genres, "la la")
        assert "styles" not in params and params["n_samples"] == 1
