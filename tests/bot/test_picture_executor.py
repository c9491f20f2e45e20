"""Pictures are drawn one at a time on a thread of their own: a burst of /sample waits in that
thread's queue, never in the threads the event loop shares (name lookups, curation)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bot import pictures
from sampler.audio import SAMPLE_RATE, encode_audio
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, InteractionRecord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    queue_song,
    relay_of,
    sample_message,
    tone,
    when,
)
from tests.waiting import wait_until


class HeldDecode:
    """`pictures.decode_audio` that holds every call until the test lets them go, counting how many
    run at once."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.inside = self.most = 0
        self.entered = threading.Event()
        self.may_go = threading.Event()
        self._count = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        self.entered.set()
        try:
            assert self.may_go.wait(timeout=30)
            return self.real(*args, **kwargs)
        finally:
            with self._count:
                self.inside -= 1


@pytest.fixture
def held_decode(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldDecode]:
    held = HeldDecode(pictures.decode_audio)
    monkeypatch.setattr(pictures, "decode_audio", held)
    try:
        yield held
    finally:
        held.may_go.set()  # a failed test leaves no thread waiting


async def test_pictures_are_drawn_one_at_a_time_and_leave_the_shared_threads_free(
    held_decode: HeldDecode,
) -> None:
    audio = encode_audio(tone(1.0), SAMPLE_RATE, "ogg", 64_000)
    loop = asyncio.get_running_loop()
    shared = ThreadPoolExecutor(4)  # the loop's default threads, fewer than the pictures asked for
    loop.set_default_executor(shared)
    try:
        burst = [
            asyncio.create_task(pictures.picture_in_turn(audio, "ogg", f"s{n}", 1.0, None)) for n in range(8)
        ]
        # While the first picture is drawn and seven wait, other thread work still gets a thread.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), timeout=10) == 42
        held_decode.may_go.set()
        drawn = await asyncio.gather(*burst)
    finally:
        held_decode.may_go.set()
        shared.shutdown(wait=True)
    assert held_decode.most == 1
    assert [picture.filename if picture else None for picture in drawn] == [f"s{n}.png" for n in range(8)]
    # Too long to draw: no picture, and no waiting for a turn.
    assert await pictures.picture_in_turn(audio, "ogg", "s", pictures.PICTURE_MAX_SECONDS + 1, None) is None


async def test_a_burst_of_sample_commands_leaves_the_shared_threads_free(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, held_decode: HeldDecode
) -> None:
    fake, store = fake_discord, sqlite_store
    held_decode.may_go.set()  # the relay draws the first picture as usual
    bot = await bot_runner.start(make_bot(fake, store))
    await queue_song(fake, samples=1)
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False)
    relay_of(bot).poke()
    await fake.wait_for(when(lambda: sample_message(fake, sample_id)), timeout_s=60)

    held_decode.may_go.clear()
    held_decode.entered.clear()
    # Fewer shared threads than requests; the loop shuts them down when it closes.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    # Four members (one /sample in preparation per member), each deferred at once.
    burst = [
        await fake.invoke_command("sample", {"id": sample_id}, user=fake.user(name))
        for name in ("alice", "bob", "mod", "moderator")
    ]

    async def drawing() -> bool:
        return held_decode.entered.is_set()

    await wait_until(drawing, within=10, what="the first picture of the burst to be drawn")
    # While one picture is drawn and three wait their turn, other thread work still gets a thread.
    assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), timeout=10) == 42
    held_decode.may_go.set()

    def with_picture(record: InteractionRecord) -> bool:
        message = record.original
        return (
            message is not None
            and not message.loading
            and any(a.filename == f"jukebot_sample_{sample_id}.png" for a in message.attachments)
        )

    await fake.wait_for(lambda: all(with_picture(record) for record in burst), timeout_s=60)
    assert held_decode.most == 1
