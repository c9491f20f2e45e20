"""Decoding untrusted audio in a child process: a crash or a hang inside FFmpeg costs one reply, not the bot.

A user can always find the next file that crashes some decoder (an 8-channel clip segfaulted PyAV),
so the bot never opens an attachment in its own process. Each call starts a fresh interpreter
(`python -m sampler.audio_process OP`), writes the file to its stdin and reads the answer from its
stdout: one JSON line, then for a decode the samples as raw float32. No pickle crosses the
boundary, since the child handles hostile bytes. A child that dies (a signal, an exit code) or
outlives its timeout becomes `DecoderFailed`, an `AudioError` like any other refusal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from sampler import audio
from sampler.audio import AudioError, AudioInfo

log = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 30.0
# Children at once; more wait their turn. Each is an interpreter with FFmpeg holding a whole file:
# a burst of attachments must not start a hundred of them.
MAX_CONCURRENT_DECODERS = max(2, os.cpu_count() or 2)
# The longest wait for a free child: files made to take the whole time limit, sent in turn from a few
# accounts, kept every child busy while everyone else's clips (and their downloaded bytes) waited.
DECODER_WAIT_S = 2 * DECODE_TIMEOUT_S
_decoder_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # so the child imports this very code
_STDERR_TAIL_CHARS = 2000
# What the child's environment keeps: what an interpreter needs, not the bot's secrets (DISCORD_TOKEN,
# DATABASE_URL), since the child runs FFmpeg on hostile bytes.
_CHILD_ENVIRONMENT = (
    "PATH",
    "PYTHONHOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
)
# The child's data memory: an interpreter with FFmpeg and numpy writes ~0.1 GiB, decoding keeps the file
# and a few float copies of the clip. A file that would take more (a decoder bomb the checks missed) meets
# MemoryError in the child, not the machine's OOM killer, which might pick a GPU worker. RLIMIT_DATA, not
# RLIMIT_AS: thread arenas and stacks reserve address space by the core count without using it.
_CHILD_BASE_BYTES = 2 << 30
_CHILD_BYTES_PER_SECOND = audio.SAMPLE_RATE * 4 * 16
_CHILD_COPIES_OF_FILE = 4
# One thread for BLAS: the child sums a clip, it needs no pool (nor its per-thread buffers).
_CHILD_SETTINGS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The errors a child may report by name; anything else it raises is a crash.
_ERRORS: dict[str, type[AudioError]] = {
    cls.__name__: cls
    for cls in (
        audio.NotAudio,
        audio.CorruptAudio,
        audio.ImpossibleSampleRate,
        audio.UnsupportedAudio,
        audio.EmptyAudio,
        audio.SilentAudio,
        audio.AudioTooLong,
        audio.AudioTooLarge,
    )
}


class DecodersBusy(AudioError):
    """Every decoder process stayed busy with other files for `DECODER_WAIT_S`."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(
            f"I am busy decoding other members' clips (none of them finished within {waited_s:g} s). "
            "Attach it again in a minute."
        )


class DecoderFailed(AudioError):
    """The decoder process died or hung on this file; the bot itself is unharmed."""

    def __init__(self, why: str) -> None:
        self.why = why
        super().__init__(
            f"{why[:1].upper()}{why[1:]}. Convert it to a mono or stereo WAV, FLAC or MP3 and attach it "
            "again."
        )


async def probe_in_child(
    data: bytes, *, max_seconds: float | None = None, prefix: bool = False, timeout_s: float | None = None
) -> AudioInfo:
    """`audio.probe` of `data` (with `prefix=True`, only a file's first bytes), run in a child process."""
    header, _ = await _run("probe", {"max_seconds": max_seconds, "prefix": prefix}, data, timeout_s)
    return AudioInfo(**header["info"])


async def decode_in_child(
    data: bytes,
    *,
    max_bytes: int | None = audio.DEFAULT_MAX_BYTES,
    max_seconds: float | None = audio.DEFAULT_MAX_SECONDS,
    silence_threshold_db: float | None = audio.DEFAULT_SILENCE_DB,
    timeout_s: float | None = None,
) -> np.ndarray:
    """`audio.decode_audio` of `data` (mono float32 at 44.1 kHz), run in a child process."""
    options = {
        "max_bytes": max_bytes,
        "max_seconds": max_seconds,
        "silence_threshold_db": silence_threshold_db,
    }
    header, payload = await _run("decode", options, data, timeout_s)
    samples = np.frombuffer(payload, dtype="<f4")
    if samples.shape[0] != header["samples"]:
        raise DecoderFailed(
            f"the decoder returned {samples.shape[0]} of the {header['samples']} samples of this file"
        )
    return samples.astype(np.float32)


async def _run(
    op: str, options: dict[str, Any], data: bytes, timeout_s: float | None
) -> tuple[dict[str, Any], bytes]:
    loop = asyncio.get_running_loop()
    slots = _decoder_slots.get(loop)
    if slots is None:
        slots = _decoder_slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_DECODERS)
    try:
        async with asyncio.timeout(DECODER_WAIT_S):
            await slots.acquire()
    except TimeoutError:
        raise DecodersBusy(DECODER_WAIT_S) from None
    try:  # the child's time limit counts from its start, not from the wait for a slot
        return await _run_child(op, options, data, timeout_s)
    finally:
        slots.release()


async def _run_child(
    op: str, options: dict[str, Any], data: bytes, timeout_s: float | None
) -> tuple[dict[str, Any], bytes]:
    timeout = DECODE_TIMEOUT_S if timeout_s is None else timeout_s
    inherited = os.environ.get("PYTHONPATH")
    env = {key: os.environ[key] for key in _CHILD_ENVIRONMENT if key in os.environ}
    env |= _CHILD_SETTINGS | {"PYTHONPATH": os.pathsep.join(p for p in (inherited, _PACKAGE_ROOT) if p)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sampler.audio_process",
        op,
        json.dumps(options),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd="/",  # not the bot's folder, where its `.env` may be
    )
    try:
        try:
            out, err = await asyncio.wait_for(child.communicate(data), timeout)
        except TimeoutError:
            log.warning("audio decoder (pid %s) still busy after %g s: killed", child.pid, timeout)
            raise DecoderFailed(
                f"decoding this file took longer than {timeout:g} s, so it was stopped"
            ) from None
    finally:
        if child.returncode is None:  # timed out, or the caller was cancelled
            child.kill()
            await child.wait()
    returncode = await child.wait()  # already exited: communicate() waits for it
    if returncode != 0:
        tail = err.decode("utf-8", "replace")[-_STDERR_TAIL_CHARS:]
        why = _exit_reason(returncode)
        log.warning("audio decoder (pid %s) %s on a %d-byte file:\n%s", child.pid, why, len(data), tail)
        raise DecoderFailed(f"the decoder {why} on this file")
    line, _, payload = out.partition(b"\n")
    try:
        header = json.loads(line)
    except ValueError:
        raise DecoderFailed("the decoder gave an unreadable answer for this file") from None
    if "error" in header:
        raise _ERRORS.get(header["error"], AudioError).from_message(str(header["message"]))
    return header, payload


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed ({name})"
    return f"failed (exit status {returncode})"


def memory_limit_bytes(max_seconds: float | None, file_bytes: int) -> int | None:
    """The child's data-memory limit for a file of `file_bytes` and clips of at most `max_seconds`
    (None: no limit)."""
    if max_seconds is None:
        return None
    return (
        _CHILD_BASE_BYTES
        + _CHILD_COPIES_OF_FILE * file_bytes
        + math.ceil(max_seconds * _CHILD_BYTES_PER_SECOND)
    )


def _limit_memory(limit: int | None) -> None:
    try:  # Unix only
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if limit is None or (soft != resource.RLIM_INFINITY and soft <= limit):
        return  # a tighter limit set by the operator stays
    resource.setrlimit(
        resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard)
    )


def _child_main(op: str, options_json: str) -> None:
    """In the child: decode stdin, answer on stdout. Unexpected exceptions exit non-zero with a traceback."""
    options = json.loads(options_json)
    data = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    _limit_memory(memory_limit_bytes(options.get("max_seconds"), len(data)))
    try:
        if op == "probe":
            info = audio.probe(data, max_seconds=options["max_seconds"], prefix=options["prefix"])
            out.write(json.dumps({"info": dataclasses.asdict(info)}).encode() + b"\n")
        elif op == "decode":
            samples = audio.decode_audio(data, **options).astype("<f4")
            out.write(json.dumps({"samples": int(samples.shape[0])}).encode() + b"\n")
            out.write(samples.tobytes())
        else:
            raise SystemExit(f"unknown operation {op!r}")
    except AudioError as exc:
        out.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}).encode() + b"\n")
    except MemoryError:
        out.write(json.dumps({"error": "CorruptAudio", "message": _TOO_MUCH_MEMORY}).encode() + b"\n")
    out.flush()


_TOO_MUCH_MEMORY = (
    "Decoding this file took far more memory than a clip of its length needs: it is damaged or "
    "crafted. Export it again and re-attach it."
)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
