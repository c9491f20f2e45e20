"""Logging set-up shared by the bot, the worker pool and every worker process.

One level and one format for all of them (`JUKEBOT_LOG_LEVEL`, `JUKEBOT_LOG_FORMAT`); the pool
passes both to the processes it spawns. Third-party loggers that flood or warn about features we
do not use are held back: alembic's plugin lines, aiosqlite's per-statement debug lines and
discord.py's "voice will NOT be supported" (the bot sends files, it never joins voice).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Loggers that stay at WARNING whatever the level: their INFO/DEBUG lines say nothing an operator needs.
QUIET_LOGGERS = ("alembic", "aiosqlite", "asyncio")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process context, message (and traceback)."""

    def __init__(self, context: str | None) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.context:
            entry["process"] = self.context
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _NoVoiceWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


def log_level_number(level: str | int) -> int:
    """`"INFO"`, `"debug"` or a number as a logging level number."""
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LOG_LEVELS)}")
    return number


# The name of the root handler `configure_logging` installs (tests remove it after a test that ran a
# process's entry point in-process: it writes to that test's captured, then closed, stderr).
HANDLER_NAME = "jukebot"


def configure_logging(
    level: str | int = "INFO", log_format: str = "text", context: str | None = None
) -> None:
    """Set up the root logger once for this process (again replaces the earlier set-up).

    `context` names the process in every line (e.g. "worker cuda:0 pid 123").
    """
    handler = logging.StreamHandler()
    handler.set_name(HANDLER_NAME)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(context))
    else:
        where = f"[{context}] " if context else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"))
    handler.addFilter(_NoVoiceWarning())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    number = log_level_number(level)
    root.setLevel(number)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(number, logging.WARNING))
