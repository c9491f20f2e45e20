"""The signals that stop a jukebot process gracefully (the bot hands on its results, a worker releases
its job with its checkpoint): SIGTERM (a service manager, Docker), SIGINT (Ctrl-C) and SIGHUP (the
terminal or ssh session it runs in closed, which sends it to the whole process group). Shared by the
bot and the workers; SIGHUP only where the system has it (not on Windows)."""

from __future__ import annotations

import signal

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)
