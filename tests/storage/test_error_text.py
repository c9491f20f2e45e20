"""A worker's reason for a failure or a crash comes from an exception's message, which may hold a NUL
or a lone surrogate (a path, bytes read back). Postgres refuses a NUL in text and neither database
encodes a lone surrogate: `fail` and `retry` raised, and the job stayed running with the reason
never recorded until its lease ran out (then retried, and at last "the worker stopped responding")."""

from __future__ import annotations

import pytest

from storage import JobStatus, JobStore
from tests.storage.helpers import MODEL, enqueue

WORKER = "gpu-box/1/cuda:0"
REASON = "could not read /models/5b\x00x: byte \udcff"


@pytest.mark.parametrize("how", ["fail", "retry"])
async def test_a_reason_with_a_nul_or_a_lone_surrogate_is_recorded(store: JobStore, how: str) -> None:
    job_id = await enqueue(store)
    assert await store.claim(WORKER, [MODEL], lease_seconds=60) is not None
    if how == "fail":
        await store.fail(job_id, WORKER, REASON)
    else:
        await store.retry(job_id, WORKER, REASON)
    job = await store.get_job(job_id)
    assert job.status == (JobStatus.FAILED if how == "fail" else JobStatus.QUEUED)
    assert job.error is not None and "could not read /models/5b\ufffdx: byte ?" in job.error, job.error
