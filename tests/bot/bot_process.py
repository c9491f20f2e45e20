"""A real bot process against a fake Discord, for tests that kill it: `python -m tests.bot.bot_process`.

The fake runs in the test's process; this one points discord.py at it, opens the test's database and
runs the JukeBot as `jukebot run` does, with the relay polling often (nothing here can poke it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from bot.bot import JukeBot, discord_endpoints
from storage.engine import create_engine
from storage.store import JobStore
from tests.bot.harness import make_settings

POLL_INTERVAL_S = 0.1


async def serve(args: argparse.Namespace) -> None:
    settings = make_settings(
        discord_api_base=args.api_base, discord_gateway=args.gateway, progress_poll_seconds=POLL_INTERVAL_S
    )
    engine = create_engine(args.database_url)
    try:
        bot = JukeBot(
            settings,
            JobStore(engine),
            sync_guild_ids=[args.guild_id],
        )
        bot._connection.guild_ready_timeout = 0.05  # the fake sends every guild right after READY
        with discord_endpoints(settings):  # the settings an operator uses for a proxy
            async with bot:
                await bot.start(args.token)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--guild-id", type=int, required=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
