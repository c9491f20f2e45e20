"""The other commands and buttons: continue (button + modal), lyrics modal, /queue, /history, /top,
/sample, /cancel of a running job, failures, admin settings, and splitting under a small upload limit."""

from __future__ import annotations

from bot.bot import JukeBot
from storage.models import JobKind, JobStatus
from storage.records import GuildSettings
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import (
    CALLBACK_MODAL,
    FakeAttachment,
    FakeDiscord,
    FakeMessage,
    InteractionRecord,
    InvalidOptionError,
    Upload,
)
from tests.bot.harness import (
    PlayedWorker,
    answer_of,
    job_count,
    make_bot,
    make_settings,
    prime_wav,
    progress_message,
    queue_song,
    relay_of,
    reply_of,
    sample_message,
    when,
)


async def _preview(fake: FakeDiscord, store: JobStore, bot: JukeBot, user: str = "alice") -> int:
    await queue_song(fake, user, artist="queen", samples=1)
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False)
    relay_of(bot).poke()
    await fake.wait_for(when(lambda: sample_message(fake, sample_id)))
    return sample_id


async def _continue_form(
    fake: FakeDiscord, bot_runner: BotRunner, store: JobStore
) -> tuple[int, FakeMessage, InteractionRecord]:
    """A posted preview, and the Continue form bob opened from its message."""
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    return (
        sample_id,
        message,
        await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("bob")),
    )


async def test_continue_button_opens_a_modal_and_queues_a_continuation(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    sample_id, message, opened = await _continue_form(fake, bot_runner, sqlite_store)
    assert opened.response_type == CALLBACK_MODAL
    bad = await fake.submit_modal(opened, {"seconds": "soon"})
    assert await reply_of(fake, bad) == "'soon' is not a number of seconds; type e.g. 10 or 12.5."
    assert await job_count(sqlite_store) == 1
    reopened = await fake.click(message, f"jukebot:continue:{sample_id}", user=fake.user("bob"))
    submitted = await fake.submit_modal(reopened, {"seconds": "12.5"})
    assert (await reply_of(fake, submitted)).startswith("Queued as job #2.")
    job = await sqlite_store.get_job(2)
    assert (
        job.kind == JobKind.CONTINUE and job.parent_sample_id == sample_id and job.params["seconds"] == 12.5
    )
    progress = await fake.wait_for(when(lambda: progress_message(fake, 2)))
    assert progress.replied_to == message.id
    # /continue does the same from a command.
    command = await fake.invoke_command(
        "continue", {"sample": sample_id, "seconds": 5.0}, user=fake.user("mod")
    )
    assert (await reply_of(fake, command)).startswith("Queued as job #3.")


async def test_the_continue_form_refuses_less_than_a_second(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The form is free text: a length the command's option would refuse is refused here too, not
    queued as a job that adds no music."""
    fake = fake_discord
    _, _, opened = await _continue_form(fake, bot_runner, sqlite_store)
    refused = await fake.submit_modal(opened, {"seconds": "0.001"})
    assert await reply_of(fake, refused) == "The continuation must be at least 1 s, got 0.001 s."
    assert await job_count(sqlite_store) == 1


async def test_a_forged_continue_form_replies_to_the_message_it_was_opened_from(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The form's custom_id keeps the message to reply to; a tampered client may send any number
    there (80 digits, which no Discord id is): the job's posts reply to the button's own message."""
    fake = fake_discord
    sample_id, message, opened = await _continue_form(fake, bot_runner, sqlite_store)
    assert opened.modal is not None
    opened.modal["custom_id"] = f"jukebot:continue-modal:{sample_id}:" + "9" * 80
    submitted = await fake.submit_modal(opened, {"seconds": "5"})
    assert (await reply_of(fake, submitted)).startswith("Queued as job #2.")
    progress = await fake.wait_for(when(lambda: progress_message(fake, 2)))
    assert progress.replied_to == message.id


async def test_lyrics_modal(fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    opened = await fake.invoke_command("jukebox", {"lyrics_modal": True, "lyrics": "first line"})
    assert opened.modal is not None and opened.modal["title"] == "Lyrics"
    long_lyrics = "\n".join(f"line {i} of a long song" for i in range(100))
    submitted = await fake.submit_modal(opened, {"lyrics": long_lyrics})
    assert (await reply_of(fake, submitted)).startswith("Queued as job #1.")
    assert (await sqlite_store.get_job(1)).params["lyrics"] == long_lyrics


async def test_queue_history_top_and_sample(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    bot = await bot_runner.start(make_bot(fake, sqlite_store))
    sample_id = await _preview(fake, sqlite_store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    await fake.click(message, f"jukebot:vote:{sample_id}", user=fake.user("bob"))
    await fake.wait_for(
        lambda: message.buttons[0]["label"] == "👍 1"
    )  # the click answers before the vote is stored

    await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    queue = await reply_of(fake, await fake.invoke_command("queue", user=fake.user("alice")))
    assert "• Job #2 (generate, 5b_lyrics): queued, position 1" in queue and "Nothing is running" in queue

    history = await reply_of(
        fake, await fake.invoke_command("history", {"user": fake.user("alice")}, user=fake.user("bob"))
    )
    assert (
        "Job #2 · generate" in history
        and "Job #1 · generate · 5b_lyrics · queen / unknown · succeeded" in history
    )
    assert f"→ samples #{sample_id}" in history

    asked = await fake.invoke_command("top", {"period": "all"})
    top = await fake.wait_for(lambda: answer_of(asked))
    assert f"1. Sample #{sample_id} · 👍 1 · queen" in top.content

    resent = await fake.invoke_command("sample", {"id": sample_id})
    await fake.wait_for(lambda: resent.original is not None and not resent.original.loading)
    assert resent.original is not None and not resent.original.ephemeral
    assert resent.original.attachments[0].data == (await sqlite_store.get_sample(sample_id)).audio
    assert resent.original.buttons[0]["label"] == "👍 1"


async def test_history_and_top_name_each_style_of_a_sweep(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A sweep's own artist and genres are only defaults ("unknown"): what each sample was made
    with is its style."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    record = await fake.invoke_command("jukebox", {"model": "5b", "styles": "queen / rock; abba / pop"})
    assert (await reply_of(fake, record)).startswith("Queued as job #1.")
    worker = PlayedWorker(store)
    first, second = await worker.complete(await worker.claim(), n=2, full=False)
    relay_of(bot).poke()
    message = await fake.wait_for(when(lambda: sample_message(fake, second)))
    await fake.click(message, f"jukebot:vote:{second}", user=fake.user("bob"))
    await fake.wait_for(
        lambda: message.buttons[0]["label"] == "👍 1"
    )  # the click answers before the vote is stored

    history = await reply_of(fake, await fake.invoke_command("history"))
    assert "Job #1 · generate · 5b · a sweep of 2 styles · succeeded" in history, history
    asked = await fake.invoke_command("top", {"period": "all"})
    top = await fake.wait_for(lambda: answer_of(asked))
    assert f"1. Sample #{second} · 👍 1 · abba / pop · " in top.content, top.content
    assert f"2. Sample #{first} · 👍 0 · queen / rock · " in top.content, top.content


async def test_sample_of_a_primed_preview_offers_upsample(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A primed preview also stores the prime's lower-level codes: /sample must still call it a
    preview and offer Upsample, as the message the relay posted does."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    record = await fake.invoke_command(
        "jukebox",
        {"samples": 1, "length": 10.0},
        attachments={"prime": Upload("riff.wav", prime_wav(3.0))},
    )
    assert (await reply_of(fake, record)).startswith("Queued as job #1.")
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=True)  # codes at every level
    assert 0 in (await store.get_sample(sample_id)).levels
    relay_of(bot).poke()
    posted = await fake.wait_for(when(lambda: sample_message(fake, sample_id)))
    assert "preview (top level only)" in posted.content
    assert f"jukebot:upsample:{sample_id}" in posted.custom_ids

    resent = await fake.invoke_command("sample", {"id": sample_id})
    await fake.wait_for(lambda: resent.original is not None and not resent.original.loading)
    assert resent.original is not None and "preview (top level only)" in resent.original.content
    assert resent.original.custom_ids == [
        f"jukebot:vote:{sample_id}",
        f"jukebot:upsample:{sample_id}",
        f"jukebot:continue:{sample_id}",
    ]


async def test_running_job_cancel_and_failure_edit_the_progress_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("bob")))
    first, second = await worker.claim(), await worker.claim()
    cancel = await fake.invoke_command("cancel", {"job": first.id}, user=fake.user("alice"))
    assert (
        await reply_of(fake, cancel)
        == f"Job #{first.id} is stopping after its current step; nothing of it is posted, unless it finishes "
        "first."
    )
    progress1 = await fake.wait_for(when(lambda: progress_message(fake, first.id)))
    await fake.wait_for(lambda: "✋ Cancelling" in progress1.content)
    await store.mark_cancelled(first.id, worker.worker_id)
    await store.fail(second.id, worker.worker_id, "The GPU ran out of memory; try fewer samples.")
    relay_of(bot).poke()
    await fake.wait_for(lambda: progress1.content.endswith("🛑 Cancelled."))
    progress2 = await fake.wait_for(when(lambda: progress_message(fake, second.id)))
    await fake.wait_for(
        lambda: progress2.content.endswith("❌ Failed: The GPU ran out of memory; try fewer samples.")
    )
    assert (await store.get_job(first.id)).status == JobStatus.CANCELLED


async def test_samples_over_the_upload_limit_are_split(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    fake.default_guild.attachment_size_limit = 20_000
    bot = await bot_runner.start(make_bot(fake, store))
    await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}))
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False, seconds=12.0)
    assert len((await store.get_sample(sample_id)).audio) > 20_000
    relay_of(bot).poke()
    # Encoding a 12 s sample into parts is CPU work: generous bounds for a loaded 2-core machine.
    posted = await fake.wait_for(when(lambda: sample_message(fake, sample_id)), timeout_s=120)
    total = int(posted.attachments[0].filename.split("of")[1].split(".")[0])

    def parts() -> list[FakeAttachment]:
        messages = fake.channel_messages(fake.channel("general"))
        return [a for m in messages for a in m.attachments if "_part" in a.filename]

    await fake.wait_for(lambda: len(parts()) == total, timeout_s=120)
    assert total >= 2 and all(a.size <= 20_000 for a in parts())
    assert [a.filename.split("_part")[1].split(".")[0] for a in parts()] == [
        f"{i}of{total}" for i in range(1, total + 1)
    ]
    assert posted.custom_ids[0] == f"jukebot:vote:{sample_id}"
    assert fake.rejections == []


async def test_admin_sets_limits_and_channels(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    try:
        await fake.invoke_command("jukebot-admin show", user=fake.user("alice"))
        raise AssertionError("a member without Manage Server must not see the admin commands")
    except InvalidOptionError:
        pass
    mod = fake.user("mod")
    saved = await reply_of(
        fake, await fake.invoke_command("jukebot-admin limits", {"max_length": 30.0}, user=mod)
    )
    assert "Longest song: 30 s" in saved
    music = fake.channel("music")
    saved = await reply_of(
        fake,
        await fake.invoke_command("jukebot-admin channels", {"action": "allow", "channel": music}, user=mod),
    )
    assert f"Allowed channels: <#{music.id}>" in saved
    refused = await reply_of(fake, await fake.invoke_command("jukebox", {"length": 40.0}, channel=music))
    assert "the limit in this server is 30 s" in refused
    last = await reply_of(
        fake,
        await fake.invoke_command("jukebot-admin channels", {"action": "remove", "channel": music}, user=mod),
    )
    assert last.startswith(f"<#{music.id}> is the only allowed channel: without it the jukebox would work ")
    assert (await sqlite_store.get_guild_settings(fake.default_guild.id)).allowed_channel_ids == (music.id,)
    everywhere = await reply_of(
        fake, await fake.invoke_command("jukebot-admin channels", {"action": "all"}, user=mod)
    )
    assert "Allowed channels: every channel" in everywhere

    # reset with a limit given: every limit back to the bot's but that one (it was dropped, "Saved.")
    await reply_of(fake, await fake.invoke_command("jukebot-admin limits", {"max_samples": 2}, user=mod))
    reset = await reply_of(
        fake, await fake.invoke_command("jukebot-admin limits", {"reset": True, "max_length": 20.0}, user=mod)
    )
    assert "Longest song: 20 s\nSamples per job: 3\n" in reset, reset
    stored = await sqlite_store.get_guild_settings(fake.default_guild.id)
    assert (stored.max_length_seconds, stored.max_samples_per_job) == (20.0, None)


async def test_jukebox_defaults_to_a_served_model_and_says_when_no_worker_has_one(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    await bot_runner.start(make_bot(fake, sqlite_store))
    await sqlite_store.record_worker("gpu-box/1/cuda:0", ["1b_lyrics"])  # as a worker with only 1b_lyrics
    plain = await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}))
    assert plain.startswith("Queued as job #1.") and "Note" not in plain
    assert (await sqlite_store.get_job(1)).model == "1b_lyrics"

    chosen = await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1, "model": "5b"}))
    assert chosen.startswith("Queued as job #2.")  # queued all the same: a worker may get it later
    assert chosen.endswith(
        "Note: No worker has the 5b model yet, so your job waits in the queue until one does "
        "(available now: 1b_lyrics)."
    )
    assert (await sqlite_store.get_job(2)).model == "5b"


async def test_a_job_no_live_worker_can_take_says_so_and_the_jobs_behind_it_move_up(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await store.record_worker("gpu-box/1/cuda:0", ["1b_lyrics"])  # as a worker with only 1b_lyrics
    await reply_of(fake, await fake.invoke_command("jukebox", {"model": "5b"}, user=fake.user("alice")))
    await reply_of(fake, await fake.invoke_command("jukebox", {"model": "1b_lyrics"}, user=fake.user("bob")))
    await relay_of(bot).run_pass()
    waiting, next_up = progress_message(fake, 1), progress_message(fake, 2)
    assert waiting is not None and waiting.content.endswith(
        "⏳ Queued: waiting for a worker with the 5b model (none is running now)."
    ), waiting.content
    assert next_up is not None and next_up.content.endswith("⏳ Queued: position 1 in the queue.")
    queue = await reply_of(fake, await fake.invoke_command("queue", user=fake.user("alice")))
    assert "• Job #1 (generate, 5b): queued, waiting for a worker with the 5b model" in queue
    await store.record_worker("gpu-box/2/cuda:0", ["5b"])  # a worker with 5b starts: job 1 goes first
    await relay_of(bot).run_pass()
    shown = await fake.wait_for(lambda: progress_message(fake, 1))
    assert shown.content.endswith("⏳ Queued: position 1 in the queue."), shown.content


async def test_a_changed_running_limit_applies_to_the_jobs_already_waiting(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await store.set_guild_settings(GuildSettings(guild_id=fake.default_guild.id, max_running_jobs_per_user=1))
    await bot_runner.start(make_bot(fake, store, make_settings(max_running_jobs_per_user=3)))
    for _ in range(3):
        await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    saved = await reply_of(
        fake, await fake.invoke_command("jukebot-admin limits", {"max_running": 2}, user=fake.user("mod"))
    )
    assert "Running jobs per user: 2" in saved
    claims = [await store.claim(f"worker-{n}", ["5b_lyrics"], 60) for n in range(3)]
    assert [job.id if job else None for job in claims] == [1, 2, None]  # two of alice's three at once


async def test_jobs_held_by_their_users_running_limit_say_so_and_others_pass_them(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    for _ in range(3):
        await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    await PlayedWorker(store).claim()  # alice's first job runs: her limit is one
    await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("bob")))
    await relay_of(bot).run_pass()
    for job_id in (2, 3):
        held = progress_message(fake, job_id)
        assert held is not None and held.content.endswith(
            "⏳ Queued: waiting until an earlier job of yours here ends."
        ), held.content
    bobs = progress_message(fake, 4)
    assert bobs is not None and bobs.content.endswith("⏳ Queued: position 1 in the queue.")
    queue = await reply_of(fake, await fake.invoke_command("queue", user=fake.user("alice")))
    assert "• Job #2 (generate, 5b_lyrics): queued, waiting until an earlier job of yours here ends" in queue


async def test_a_server_may_tighten_the_operators_limits_but_not_loosen_them(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A server's admin raised every limit past the operator's (600 s songs of 16 samples, 100 jobs
    running per member) and took the GPUs every server shares."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))  # the operator's: 60 s, 3 samples, 1 running, 3 queued
    loosened = await reply_of(
        fake,
        await fake.invoke_command(
            "jukebot-admin limits", {"max_length": 600.0, "max_running": 100}, user=fake.user("mod")
        ),
    )
    assert loosened == (
        "Nothing was changed: `max_length` 600 is over this bot's 60 (JUKEBOT_MAX_LENGTH_SECONDS); "
        "`max_running` 100 is over this bot's 1 (JUKEBOT_MAX_RUNNING_JOBS_PER_USER). A server may "
        "tighten the limits its bot's operator set, not loosen them."
    )
    assert (await store.get_guild_settings(fake.default_guild.id)).max_running_jobs_per_user is None
    # Stored before this rule (or written to the database by hand): held to the operator's all the same.
    await store.set_guild_settings(
        GuildSettings(guild_id=fake.default_guild.id, max_running_jobs_per_user=5, max_queued_jobs_per_user=9)
    )
    for _ in range(3):
        await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    refused = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=fake.user("alice")))
    assert refused.startswith("You have 3 jobs waiting in the queue"), refused
    claims = [await store.claim(f"worker-{n}", ["5b_lyrics"], 60) for n in range(2)]
    assert [job.id if job else None for job in claims] == [1, None]  # one at a time, as the operator's
