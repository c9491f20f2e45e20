"""A server's settings change in one transaction under the enqueue lock (`change_guild_settings`), and
a job queued with `server_overrides` takes the server's limits as they are in its own transaction: no
change lands half-way, whatever runs at once. A job for a server the bot left is not queued."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from storage import JobStatus, JobStore
from storage.errors import InvalidGuildSettings, ServerLeft, UserJobLimitReached
from storage.records import GuildSettings
from tests.storage.helpers import GUILD, USER, enqueue

OTHER_GUILD = GUILD + 1


async def test_changes_at_once_each_see_the_one_before(store: JobStore) -> None:
    def add(channel_id: int) -> Callable[[GuildSettings], GuildSettings]:
        return lambda current: dataclasses.replace(
            current, allowed_channel_ids=(*(current.allowed_channel_ids or ()), channel_id)
        )

    await asyncio.gather(*(store.change_guild_settings(GUILD, add(channel)) for channel in range(1, 9)))
    stored = await store.get_guild_settings(GUILD)
    assert sorted(stored.allowed_channel_ids or ()) == list(range(1, 9))


async def test_a_change_that_raises_writes_nothing(store: JobStore) -> None:
    await store.set_guild_settings(GuildSettings(guild_id=GUILD, max_samples_per_job=4))
    job_id = await enqueue(store, max_running_per_user=2)

    def refuse(current: GuildSettings) -> GuildSettings:
        raise LookupError("no such channel")

    with pytest.raises(LookupError):
        await store.change_guild_settings(GUILD, refuse, bot_wide_running_limit=1)
    with pytest.raises(InvalidGuildSettings, match="given for server"):
        await store.change_guild_settings(GUILD, lambda _: GuildSettings(guild_id=OTHER_GUILD))
    with pytest.raises(InvalidGuildSettings, match="max_samples_per_job"):
        await store.change_guild_settings(GUILD, lambda now: dataclasses.replace(now, max_samples_per_job=99))
    assert (await store.get_guild_settings(GUILD)).max_samples_per_job == 4
    assert (await store.get_job(job_id)).max_running_per_user == 2


async def test_a_changed_running_limit_reaches_the_servers_unfinished_jobs_only(store: JobStore) -> None:
    mine = await enqueue(store, max_running_per_user=3)
    others = await enqueue(store, guild_id=OTHER_GUILD, max_running_per_user=3)

    def lower(now: GuildSettings) -> GuildSettings:
        return dataclasses.replace(now, max_running_jobs_per_user=1)

    await store.change_guild_settings(GUILD, lower, bot_wide_running_limit=3)
    assert [(await store.get_job(j)).max_running_per_user for j in (mine, others)] == [1, 3]

    def reset(now: GuildSettings) -> GuildSettings:
        return dataclasses.replace(now, max_running_jobs_per_user=None)

    await store.change_guild_settings(GUILD, reset, bot_wide_running_limit=2)  # the bot-wide one again
    assert (await store.get_job(mine)).max_running_per_user == 2


async def test_a_job_queued_with_server_overrides_gets_the_servers_limits(store: JobStore) -> None:
    await store.set_guild_settings(
        GuildSettings(guild_id=GUILD, max_running_jobs_per_user=1, max_queued_jobs_per_user=2)
    )
    first = await enqueue(store, max_running_per_user=5, max_queued_per_user=9, server_overrides=True)
    assert (await store.get_job(first)).max_running_per_user == 1
    await enqueue(store, max_running_per_user=5, max_queued_per_user=9, server_overrides=True)
    with pytest.raises(UserJobLimitReached, match="the limit is 2"):  # the server's, not the 9 given
        await enqueue(store, max_running_per_user=5, max_queued_per_user=9, server_overrides=True)
    # Without overrides of its own, a server's jobs get the limits given (the bot-wide settings).
    elsewhere = await enqueue(store, guild_id=OTHER_GUILD, max_running_per_user=5, server_overrides=True)
    assert (await store.get_job(elsewhere)).max_running_per_user == 5
    # Without `server_overrides`, the limits given stand, as before.
    plain = await enqueue(store, user_id=USER + 1, max_running_per_user=5)
    assert (await store.get_job(plain)).max_running_per_user == 5


async def test_no_job_is_queued_for_a_server_the_bot_left_until_it_is_back(store: JobStore) -> None:
    queued = await enqueue(store)
    assert await store.cancel_guild_jobs(GUILD) == [(queued, JobStatus.CANCELLED)]
    with pytest.raises(ServerLeft, match=f"removed from server {GUILD}"):
        await enqueue(store)
    assert [job.id for job in await store.unfinished_jobs()] == []
    await enqueue(store, guild_id=OTHER_GUILD)  # other servers go on
    await enqueue(store, guild_id=None)  # as do jobs of no server (the command line)

    await store.mark_guilds_present([GUILD])
    back = await enqueue(store)
    assert (await store.get_job(back)).status is JobStatus.QUEUED
