"""The permissions the README's invite asks for are those the bot checks before it queues a job: the
invite asked for Embed Links, which nothing uses, and not Send Messages in Threads, without which every
request in a thread was refused."""

from __future__ import annotations

import re
from pathlib import Path

import discord

from bot.actions import POSTING_PERMISSIONS, missing_posting_permissions

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_invite_asks_for_what_posting_needs_in_channels_and_threads() -> None:
    text = README.read_text()
    (integer,) = set(re.findall(r"permissions integer `(\d+)`", text))
    assert f"&permissions={integer}`" in text  # the direct link asks for the same
    invited = discord.Permissions(int(integer))
    for in_thread in (False, True):
        assert missing_posting_permissions(invited, in_thread=in_thread) == [], in_thread
    needed = discord.Permissions(**dict.fromkeys(POSTING_PERMISSIONS, True), send_messages_in_threads=True)
    assert invited == needed  # and nothing more
