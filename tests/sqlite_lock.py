"""Another process's write transaction on a SQLite file, held until the test releases it: SQLite's
outage (a writer past the busy timeout) or a wait for its lock, at a moment the test chooses."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class WriteLock:
    """`take()` holds the file's write lock (BEGIN IMMEDIATE) from a thread until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._taken, self._release = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._thread is not None and not self._release.is_set()

    def take(self) -> None:
        self._thread = threading.Thread(target=self._hold, daemon=True)
        self._thread.start()
        assert self._taken.wait(10), "the write lock was not taken"

    def _hold(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        self._taken.set()
        self._release.wait(120)
        connection.execute("COMMIT")
        connection.close()

    def release(self) -> None:
        self._release.set()
        if self._thread is not None:
            self._thread.join(10)
