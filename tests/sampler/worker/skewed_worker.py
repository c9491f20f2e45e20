"""A worker process on a machine whose clock is wrong: `python -m tests.sampler.worker.skewed_worker
SKEW_SECONDS DATABASE_URL` runs the held toy runner (tests/holding.py) until SIGTERM.

Every `datetime.now()` in the process reads a clock SKEW_SECONDS off: the class is replaced before
any of jukebot is imported, as if the machine's clock were set wrong.
"""

from __future__ import annotations

import datetime as datetime_module
import logging
import sys
from datetime import timedelta, tzinfo

REAL_DATETIME = datetime_module.datetime


class SkewedDatetime(REAL_DATETIME):
    skew = timedelta(0)

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> SkewedDatetime:
        return REAL_DATETIME.now(tz) + cls.skew  # type: ignore[return-value]


def main() -> int:
    SkewedDatetime.skew = timedelta(seconds=float(sys.argv[1]))
    datetime_module.datetime = SkewedDatetime  # type: ignore[misc]

    from sampler.worker.runtime import WorkerConfig, run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [skewed worker] %(message)s")
    config = WorkerConfig(
        lease_seconds=5.0,
        poll_seconds=0.05,
        max_poll_seconds=0.2,
        progress_seconds=0.1,
        cancel_poll_seconds=0.1,
        requeue_seconds=0.2,
    )
    return run_worker(sys.argv[2], "cpu", "tests.holding:held_toy_runner", config)


if __name__ == "__main__":
    sys.exit(main())
