"""Bad input gets a specific, readable error and writes nothing."""

from __future__ import annotations

import pytest

from storage import (
    MAX_PARAMS_BYTES,
    InvalidJob,
    JobAlreadyFinished,
    JobKind,
    JobNotFound,
    JobStatus,
    JobStore,
    LeaseLost,
    NotJobOwner,
    OversizeParameters,
    PrimeNotFound,
    SampleNotFound,
    StorageError,
)
from tests.storage.helpers import MODEL, USER, enqueue, finished_job, row_counts


async def test_unknown_kind_is_rejected(store: JobStore) -> None:
    before = await row_counts(store.engine)
    with pytest.raises(
        InvalidJob, match="Unknown job kind 'remix'; use one of: generate, upsample, continue"
    ):
        await enqueue(store, kind="remix")
    assert await row_counts(store.engine) == before


async def test_oversize_parameters_are_rejected(store: JobStore) -> None:
    before = await row_counts(store.engine)
    with pytest.raises(OversizeParameters, match="limit is 65,536 bytes") as error:
        await enqueue(store, params={"lyrics": "la " * (MAX_PARAMS_BYTES // 3 + 1)})
    assert isinstance(error.value, InvalidJob) and isinstance(error.value, StorageError)
    assert await row_counts(store.engine) == before
    # Just under the limit is fine.
    overhead = len('{"lyrics":""}')
    await enqueue(store, params={"lyrics": "x" * (MAX_PARAMS_BYTES - overhead)})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"params": {"seed": float("nan")}}, "plain JSON"),
        ({"params": {"when": object()}}, "plain JSON"),
        ({"params": ["not", "a", "mapping"]}, "JSON object"),
        ({"model": ""}, "model name"),
        ({"user_id": -1}, "user_id must be a Discord id"),
        ({"channel_id": "123"}, "channel_id must be a Discord id"),
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 2,147,483,647"),
        ({"max_running_per_user": 2**31}, "max_running_per_user must be an integer from 1 to 2,147,483,647"),
        ({"kind": JobKind.UPSAMPLE}, "needs the sample to upsample"),
    ],
)
async def test_malformed_jobs_are_rejected(store: JobStore, fields: dict[str, object], message: str) -> None:
    before = await row_counts(store.engine)
    with pytest.raises(InvalidJob, match=message):
        await enqueue(store, **fields)
    assert await row_counts(store.engine) == before


async def test_missing_parent_sample_or_prime(store: JobStore) -> None:
    before = await row_counts(store.engine)
    with pytest.raises(SampleNotFound, match="no sample #77"):
        await enqueue(store, kind="continue", parent_sample_id=77)
    with pytest.raises(PrimeNotFound, match="clip #5"):
        await enqueue(store, prime_id=5)
    assert await row_counts(store.engine) == before

    _, (sample_id,) = await finished_job(store)
    upsample = await enqueue(store, kind="upsample", parent_sample_id=sample_id)
    assert (await store.get_job(upsample)).parent_sample_id == sample_id


async def test_unknown_job_ids(store: JobStore) -> None:
    missing = 9_999
    for call in (
        store.get_job(missing),
        store.get_checkpoint(missing),
        store.queue_position(missing),
        store.is_cancel_requested(missing),
        store.replace_progress_message(missing, 1, replacing=None),
        store.request_cancel(missing, USER),
        store.heartbeat(missing, "w", 30),
        store.save_checkpoint(missing, "w", b""),
        store.fail(missing, "w", "boom"),
        store.release(missing, "w"),
        store.samples_for_job(missing),
    ):
        with pytest.raises(JobNotFound, match="no job #9999"):
            await call
    with pytest.raises(SampleNotFound):
        await store.get_sample(missing)
    with pytest.raises(PrimeNotFound):
        await store.get_prime(missing)


async def test_only_the_owner_cancels_and_finished_jobs_stay_finished(store: JobStore) -> None:
    job_id = await enqueue(store)
    with pytest.raises(NotJobOwner, match="belongs to someone else"):
        await store.request_cancel(job_id, USER + 1)
    assert (await store.get_job(job_id)).status is JobStatus.QUEUED

    claimed = await store.claim("gpu-0", [MODEL], lease_seconds=30)
    assert claimed is not None
    await store.fail(job_id, "gpu-0", "CUDA out of memory")
    with pytest.raises(JobAlreadyFinished, match="already finished \\(failed\\)"):
        await store.request_cancel(job_id, USER)
    job = await store.get_job(job_id)
    assert job.status is JobStatus.FAILED and job.error == "CUDA out of memory"
    with pytest.raises(LeaseLost, match="already failed"):
        await store.release(job_id, "gpu-0")
    with pytest.raises(JobAlreadyFinished, match="already finished \\(failed\\)"):
        await store.request_cancel(job_id, None)  # a moderator's cancel does not reopen it either


async def test_a_moderators_cancel_stops_anyones_job(store: JobStore) -> None:
    running, queued = await enqueue(store), await enqueue(store)
    claimed = await store.claim("gpu-0", [MODEL], lease_seconds=30)
    assert claimed is not None and claimed.id == running
    assert await store.request_cancel(running, None) is JobStatus.CANCELLING
    assert await store.request_cancel(queued, None) is JobStatus.CANCELLED


async def test_bad_pages(store: JobStore) -> None:
    with pytest.raises(StorageError, match="1 to 1000 rows"):
        await store.recent_jobs(USER, limit=0)
    with pytest.raises(StorageError, match="offset >= 0"):
        await store.recent_jobs(USER, offset=-1)


async def test_bad_leases(store: JobStore) -> None:
    job_id = await enqueue(store)
    for lease in (0, -5, float("nan")):
        with pytest.raises(StorageError, match="positive number of seconds"):
            await store.claim("gpu-0", [MODEL], lease_seconds=lease)
    assert (await store.get_job(job_id)).status is JobStatus.QUEUED
    with pytest.raises(StorageError, match="non-empty worker id"):
        await store.claim("", [MODEL], lease_seconds=30)
