"""The signals that stop a jukebot process gracefully (the bot hands on its results, a worker releases
its job with its checkpoint): SIGTERM (a service manager, Docker), SIGINT (Ctrl-C) and SIGHUP (the
terminal or ssh session it runs in closed, which sends it to the whole process group). Shared by the
bot and the workers; SIGHUP only where the system has it (not on Windows)."""

from __future__ import annotations

import signal

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


def handled_stop_signals() -> tuple[signal.Signals, ...]:
    """The stop signals to install a handler for: all but a SIGHUP ignored (SIG_IGN), which stays ignored.

    `nohup` starts a command with SIGHUP ignored so that it outlives its session; child processes
    inherit that. (SIGINT and SIGTERM are always handled: a shell script's `cmd &` also starts with
    SIGINT ignored, and whoever sends it one means it.) Call it before installing any handler: the
    disposition then is still the one the process started with."""
    hangup = getattr(signal, "SIGHUP", None)
    return tuple(
        signum
        for signum in STOP_SIGNALS
        if not (signum == hangup and signal.getsignal(signum) is signal.SIG_IGN)
    )
