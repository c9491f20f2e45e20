"""What a member types, echoed by the bot in public under its own name, against the real bot.

The v2 label vocabulary (5b, 5b_lyrics) reads a genre as a bag of words: every character other than
a-z and 0-9 separates words. A typed genre such as "pop\\n# ✅ ||rock||" therefore resolved, and its
text was stored as typed, then shown in the public progress message, in a sweep's sample posts and in
/top: a forged line, a heading, a spoiler, an open code fence, or 5,000 separators that made the
progress message too long for Discord (50035), so it was never posted. The genre is now stored as its
words, and labels already stored are shown on one line with their markup escaped.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.errors import MAX_MESSAGE_CHARS
from bot.vocab import resolve_labels
from sampler.jobspec import JobParams
from sampler.jukebox.labels import LabelVersion, Vocabulary, genre_ids
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    answer_of,
    make_bot,
    progress_message,
    queue_song,
    relay_of,
    sample_message,
    when,
)

# A genre of known words joined by what Discord reads as markup: a forged status line, a heading, a
# spoiler, a code fence left open, a right-to-left override and a zero-width space.
FORGING_GENRE = "pop\n# ✅ rock ||jazz|| ```\u202e\u200b"
# What a bot before the fix stored for such genres (and for links and mentions typed by hand).
STORED_HOSTILE = "pop\n✅ Done: by <@&1> ||[free nitro](https://evil.example)|| `code` *x* ~~y~~ \u202eblues"
PADDED_GENRE = "pop" + "*" * 5000 + "rock"  # the genre option takes 6,000 characters


async def _progress_or_rejection(fake: FakeDiscord, job_id: int) -> FakeMessage | None:
    """The job's progress message once posted; None when Discord refused it."""
    await fake.wait_for(when(lambda: progress_message(fake, job_id) or fake.rejections))
    return progress_message(fake, job_id)


async def _stored_job(store: JobStore, fake: FakeDiscord, params: JobParams) -> int:
    return await store.enqueue(
        kind="generate",
        model="5b_lyrics",
        params=params.to_json(),
        channel_id=fake.channel("general").id,
        user_id=fake.user("alice").id,
        guild_id=fake.default_guild.id,
    )


def _labels_line(message: FakeMessage) -> str:
    lines = message.content.splitlines()
    assert len(lines) == 3 and lines[0].startswith("**Job #") and lines[2].startswith("⏳"), message.content
    return lines[1]


async def test_a_genre_typed_with_markup_is_stored_and_shown_as_its_words(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    await queue_song(fake_discord, artist="the beatles", genre=FORGING_GENRE, model="5b_lyrics")

    assert (await sqlite_store.get_job(1)).params["genres"] == ["pop rock jazz"]
    progress = await _progress_or_rejection(fake_discord, 1)
    assert progress is not None, fake_discord.rejections
    assert _labels_line(progress).startswith("5b_lyrics · the beatles · pop rock jazz · 20 s · ")


async def test_a_genre_padded_past_discords_limit_still_gets_its_progress_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    await queue_song(fake_discord, artist="the beatles", genre=PADDED_GENRE, model="5b_lyrics")

    progress = await _progress_or_rejection(fake_discord, 1)
    assert progress is not None and fake_discord.rejections == [], fake_discord.rejections
    assert _labels_line(progress).startswith("5b_lyrics · the beatles · pop rock · 20 s · ")


async def test_a_style_sweeps_sample_post_names_its_style_on_one_line(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    bot = make_bot(fake_discord, sqlite_store)
    await bot_runner.start(bot)
    styles = "the beatles / pop\n✅ rock; the beatles / jazz ||blues||"
    await queue_song(fake_discord, styles=styles, model="5b_lyrics")
    worker = PlayedWorker(sqlite_store)
    await worker.complete(await worker.claim(), n=2, full=False, seconds=0.5)
    relay_of(bot).poke()

    posts = [await fake_discord.wait_for(when(lambda i=i: sample_message(fake_discord, i))) for i in (1, 2)]
    assert [post.content.splitlines()[1:] for post in posts] == [
        ["Style: **the beatles / pop rock**"],
        ["Style: **the beatles / jazz blues**"],
    ]


async def test_labels_stored_before_the_fix_show_on_one_line_without_markup(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Jobs already in the database keep their genres: the progress message and /top show them
    escaped on one line, and within Discord's limit."""
    fake, store = fake_discord, sqlite_store
    bot = make_bot(fake, store)
    await bot_runner.start(bot)
    hostile = await _stored_job(store, fake, JobParams(artist="*nsync", genres=(STORED_HOSTILE,)))
    padded = await _stored_job(store, fake, JobParams(genres=(PADDED_GENRE,)))
    relay_of(bot).poke()

    for job_id in (hostile, padded):
        progress = await _progress_or_rejection(fake, job_id)
        assert progress is not None and fake.rejections == [], fake.rejections
        assert len(progress.content) <= MAX_MESSAGE_CHARS
    line = _labels_line(_present(progress_message(fake, hostile)))
    assert line.startswith(
        r"5b_lyrics · \*nsync · pop ✅ Done: by \<@&1> \|\|\[free nitro](https://evil.example)\|\| "
        r"\`code\` \*x\* \~\~y\~\~ blues · 20 s"
    ), line

    worker = PlayedWorker(store)
    await worker.complete(await worker.claim(), n=1, full=False, seconds=0.5)
    top = await fake.invoke_command("top", {"period": "day"})
    listing = _present(await fake.wait_for(lambda: answer_of(top))).content.splitlines()
    assert len(listing) == 2 and not _present(answer_of(top)).ephemeral, listing
    assert listing[1].startswith(r"1. Sample #1 · 👍 0 · \*nsync / pop ✅ Done: by \<@&1> \|\|"), listing


def _present(message: Any) -> FakeMessage:
    assert message is not None
    return message


@pytest.mark.parametrize("typed", ["soundtrack/musical", "soundtrack/television", "Soundtrack/Musical"])
def test_a_1b_lyrics_genre_with_a_slash_is_stored_as_the_name_the_model_is_labelled_with(typed: str) -> None:
    """1b_lyrics (v3 labels) knows 'soundtrack/musical' (id 306). Stored as its plain words it would be
    'soundtrack musical', which the forgiving `resolve_genres` maps to the same id but the worker's
    labelling (`Labeller.label` -> `genre_ids`: the exact table key, unknown -> 0) does not: the job
    would be sampled with genre 0 ('unknown'), silently."""
    vocab = Vocabulary.for_model("1b_lyrics")
    assert vocab.version is LabelVersion.V3
    chosen = vocab.resolve_genres(typed).ids
    assert chosen != (0,)
    stored = resolve_labels("1b_lyrics", None, typed).genres
    # what sampler/cascade_runner.py hands the Labeller: " ".join(params.genres)
    assert tuple(genre_ids(" ".join(stored), LabelVersion.V3)) == chosen, stored
