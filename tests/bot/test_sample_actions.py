"""Upsample and Continue on a posted sample: hours of GPU time each, so what would only repeat work,
or run over the server's limits, is refused with a reason; the Continue form refuses before it
opens, and a form opened before a restart still works."""

from __future__ import annotations

from storage.models import JobKind, JobStatus
from storage.records import GuildSettings
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import CALLBACK_MODAL, FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    job_count,
    make_bot,
    progress_message,
    queue_song,
    relay_of,
    reply_of,
    sample_message,
    when,
)


async def _posted_preview(
    fake: FakeDiscord, store: JobStore, bot: object, seconds: float = 2.0, codes_seconds: float | None = None
) -> int:
    await queue_song(fake, "alice", artist="queen", samples=1)
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(
        await worker.claim(), n=1, full=False, seconds=seconds, codes_seconds=codes_seconds
    )
    relay_of(bot).poke()  # type: ignore[arg-type]
    await fake.wait_for(when(lambda: sample_message(fake, sample_id)))
    return sample_id


async def test_a_preview_is_upsampled_once_however_many_click(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None

    first = await reply_of(
        fake, await fake.click(message, f"jukebot:upsample:{sample_id}", user=fake.user("alice"))
    )
    assert first.startswith("Queued as job #2.") and "Note" not in first  # the preview's worker has the model
    again = await fake.click(message, f"jukebot:upsample:{sample_id}", user=fake.user("bob"))
    assert await reply_of(fake, again) == (
        f"Sample #{sample_id} is already being upsampled as job #2; its full-quality version is posted "
        "when that job ends."
    )
    typed = await fake.invoke_command("upsample", {"sample": sample_id}, user=fake.user("mod"))
    assert (await reply_of(fake, typed)).startswith(f"Sample #{sample_id} is already being upsampled")
    assert await job_count(store) == 2

    worker = PlayedWorker(store)
    (full,) = await worker.complete(await worker.claim(), n=1, full=True)
    late = await fake.click(message, f"jukebot:upsample:{sample_id}", user=fake.user("bob"))
    assert await reply_of(fake, late) == (
        f"Sample #{sample_id} was upsampled already, by job #2: its full-quality version is sample "
        f"#{full} (`/sample {full}` posts it again)."
    )
    assert await job_count(store) == 2


async def test_an_upsample_of_a_failed_upsample_may_run_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot)
    assert (await reply_of(fake, await fake.invoke_command("upsample", {"sample": sample_id}))).startswith(
        "Queued as job #2."
    )
    worker = PlayedWorker(store)
    await store.fail((await worker.claim()).id, worker.worker_id, "the GPU caught fire")
    again = await reply_of(fake, await fake.invoke_command("upsample", {"sample": sample_id}))
    assert again.startswith("Queued as job #3."), again


async def test_a_preview_longer_than_the_servers_longest_song_is_not_upsampled(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Continues can make a preview long; upsampling costs GPU time for every second of it."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot, seconds=45.0)
    guild = fake.default_guild.id
    await store.set_guild_settings(GuildSettings(guild_id=guild, max_length_seconds=30.0))
    refused = await reply_of(fake, await fake.invoke_command("upsample", {"sample": sample_id}))
    assert refused == (
        f"Sample #{sample_id} is 45 s long, and this server takes songs of at most 30 s to full quality. "
        "Ask an admin to raise the longest song (`/jukebot-admin limits max_length`)."
    )
    assert await job_count(store) == 1
    await store.set_guild_settings(GuildSettings(guild_id=guild, max_length_seconds=60.0))
    allowed = await reply_of(fake, await fake.invoke_command("upsample", {"sample": sample_id}))
    assert allowed.startswith("Queued as job #2."), allowed


async def test_the_continue_form_refuses_before_it_opens_and_each_take_is_new(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    await queue_song(fake, "bob")
    await PlayedWorker(store).claim()  # bob's job runs: he is at his running limit (1)

    refused = await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("bob"))
    assert refused.response_type != CALLBACK_MODAL
    assert (await reply_of(fake, refused)).startswith("You have 1 job running")

    takes = []
    for _ in range(2):
        opened = await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("mod"))
        assert opened.response_type == CALLBACK_MODAL
        queued = await reply_of(fake, await fake.submit_modal(opened, {"seconds": "5"}))
        assert queued.startswith("Queued as job #"), queued
        takes.append(int(queued.split("#")[1].split(".")[0]))
    jobs = [await store.get_job(job_id) for job_id in takes]
    assert all(job.kind == JobKind.CONTINUE and job.status == JobStatus.QUEUED for job in jobs)
    assert jobs[0].params["seed"] != jobs[1].params["seed"]  # another take, not the same one again


async def test_the_continue_form_fits_the_servers_longest_song_and_reads_10_seconds(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Where the longest song is 8 s, the form opened filled in with 10, refused as submitted; and
    "10 seconds", which the README says it reads, did not fit its 6 characters."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    await store.set_guild_settings(GuildSettings(guild_id=fake.default_guild.id, max_length_seconds=8.0))

    opened = await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("bob"))
    assert opened.modal is not None
    (field,) = [c for row in opened.modal["components"] for c in row["components"]]
    assert field["value"] == "8", field
    queued = await reply_of(fake, await fake.submit_modal(opened, {"seconds": field["value"]}))
    assert queued.startswith("Queued as job #2."), queued

    await store.set_guild_settings(GuildSettings(guild_id=fake.default_guild.id))
    opened = await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("mod"))
    queued = await reply_of(fake, await fake.submit_modal(opened, {"seconds": "10 seconds"}))
    assert queued.startswith("Queued as job #3."), queued
    assert (await store.get_job(3)).params["seconds"] == 10.0


async def test_a_continue_form_opened_before_a_restart_still_queues(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    opened = await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("bob"))
    assert opened.response_type == CALLBACK_MODAL
    await bot_runner.stop(bot)
    await bot_runner.start(make_bot(fake, store))

    queued = await reply_of(fake, await fake.submit_modal(opened, {"seconds": "7.5"}))
    assert queued.startswith("Queued as job #2."), queued
    job = await store.get_job(2)
    assert (job.kind, job.parent_sample_id, job.params["seconds"]) == (JobKind.CONTINUE, sample_id, 7.5)
    progress = await fake.wait_for(when(lambda: progress_message(fake, 2)))
    assert progress.replied_to == message.id  # under the sample it continues, as before the restart


async def test_a_song_stays_under_the_models_longest_when_continued_or_upsampled(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Every model takes songs shorter than 600 s, and a worker fails a longer job only after its wait in
    the queue: the bot refuses it at once, saying how much fits (a server may allow 600 s songs, and
    continues, or a curated piece, make a sample long)."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await store.set_guild_settings(GuildSettings(guild_id=fake.default_guild.id, max_length_seconds=600.0))
    full = await _posted_preview(fake, store, bot, codes_seconds=599.5)  # 599.498 s of whole codes
    message = sample_message(fake, full)
    assert message is not None
    no_more = (
        f"Sample #{full} is 599.4 s long, and songs stay under 600 s: it cannot be continued any further."
    )
    # No Continue button where no continuation fits; a message posted before that rule still has one.
    assert f"jukebot:continue:{full}" not in message.custom_ids
    assert f"jukebot:vote:{full}" in message.custom_ids
    # As one posted before that rule: the same message with a Continue button (Discord stores it so).
    button = {"type": 2, "custom_id": f"jukebot:continue:{full}", "style": 2, "label": "Continue"}
    message.components.append({"type": 1, "components": [button]})
    refused = await fake.click(message, f"jukebot:continue:{full}", user=fake.user("bob"))
    assert refused.response_type != CALLBACK_MODAL
    assert await reply_of(fake, refused) == no_more
    assert (
        await reply_of(fake, await fake.invoke_command("continue", {"sample": full, "seconds": 1})) == no_more
    )

    almost = await _posted_preview(fake, store, bot, codes_seconds=590.0)
    too_long = await fake.invoke_command("continue", {"sample": almost, "seconds": 20}, user=fake.user("bob"))
    assert await reply_of(fake, too_long) == (
        f"Sample #{almost} is 589.9 s long, and songs stay under 600 s: continue it by at most 10 s."
    )
    fits = await fake.invoke_command("continue", {"sample": almost, "seconds": 10}, user=fake.user("bob"))
    assert (await reply_of(fake, fits)).startswith("Queued as job #3."), await reply_of(fake, fits)

    over = await _posted_preview(fake, store, bot, codes_seconds=600.3)  # continued before this check
    assert await reply_of(fake, await fake.invoke_command("upsample", {"sample": over})) == (
        f"Sample #{over} is 600.2 s long, and the models take songs shorter than 600 s, so it cannot be upsampled."
    )
    assert await job_count(store) == 4
    assert fake.rejections == []


async def test_an_upsampled_sample_says_so_before_any_limit_and_a_cancelled_upsample_promises_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Waiting for a place in the queue, or a longer server limit, would not make the sample upsampled
    again: where its full-quality version is comes first. An upsample being cancelled posts nothing,
    so a second one is not told to wait for it."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _posted_preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    worker = PlayedWorker(store)

    assert (await reply_of(fake, await fake.invoke_command("upsample", {"sample": sample_id}))).startswith(
        "Queued as job #2."
    )
    running = await worker.claim()
    await reply_of(fake, await fake.invoke_command("cancel", {"job": running.id}))
    assert (await store.get_job(running.id)).status == JobStatus.CANCELLING
    stopping = await fake.click(message, f"jukebot:upsample:{sample_id}", user=fake.user("bob"))
    assert await reply_of(fake, stopping) == (
        f"Sample #{sample_id}'s upsample, job #2, is being cancelled and posts nothing: upsample it again "
        "once that job has stopped (its progress message says so)."
    )
    await worker.cancelled(running.id)
    again = await fake.click(message, f"jukebot:upsample:{sample_id}", user=fake.user("bob"))
    assert (await reply_of(fake, again)).startswith("Queued as job #3."), await reply_of(fake, again)
    (full,) = await worker.complete(await worker.claim(), n=1, full=True)

    await queue_song(fake, "bob")
    await worker.claim()  # bob's song runs: he is at his running limit
    guild = fake.default_guild.id
    await store.set_guild_settings(GuildSettings(guild_id=guild, max_length_seconds=1.0))
    done = (
        f"Sample #{sample_id} was upsampled already, by job #3: its full-quality version is sample #{full} "
        f"(`/sample {full}` posts it again)."
    )
    for user in ("bob", "mod"):  # at his running limit; past the server's longest song
        late = await fake.click(message, f"jukebot:upsample:{sample_id}", user=fake.user(user))
        assert await reply_of(fake, late) == done, user
    assert fake.rejections == []
