"""The model directory: which files a model needs, where they live, downloading and verifying them.

Layout under `model_dir` (the same relative paths as under a mirror root):

    5b/vqvae.pth.tar, 5b/prior_level_{0,1,2}.pth.tar, 5b_lyrics/prior_level_2.pth.tar,
    1b_lyrics/prior_level_2.pth.tar, ids/v{2,3}_{artist,genre}_ids.txt, .verified.json

Downloads are resumable (`<file>.part` + `Range`), retried with backoff across mirrors, size- and
checksum-checked, verified (keys and shapes) and only then renamed into place, so a file under its final
name is always complete. Everything here is synchronous (`urllib`); async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from sampler.jukebox.registry import CHECKPOINTS, DEFAULT_MIRROR, MODELS

try:  # Advisory locking keeps two processes from writing the same .part; POSIX only.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_IDS_SOURCE = "https://raw.githubusercontent.com/openai/jukebox/master/jukebox/data/ids/"
MIRRORS_ENV = "JUKEBOT_MODEL_MIRRORS"
VERIFIED_CACHE = ".verified.json"
LOCK_FILE = ".download.lock"
USER_AGENT = "jukebot-model-downloader/1"

FileKind = Literal["checkpoint", "ids"]


def default_model_dir() -> Path:
    """Models live under the user's cache directory unless JUKEBOT_MODEL_DIR says otherwise."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("jukebot")) / "models"


# ----------------------------------------------------------------------------- errors


class ModelFilesError(Exception):
    """Base class: something about the model files is wrong; the message says what to do."""


class UnknownModelName(ModelFilesError):
    pass


class DownloadError(ModelFilesError):
    pass


class NotFoundOnMirrors(DownloadError):
    pass


class VerificationError(ModelFilesError):
    pass


class ModelFilesMissing(ModelFilesError):
    def __init__(self, model: str, model_dir: Path, missing: Sequence[str]) -> None:
        self.model, self.model_dir, self.missing = model, model_dir, list(missing)
        files = ", ".join(f"{name} ({MANIFEST[name].relative_path})" for name in self.missing)
        super().__init__(
            f"Model {model} is not fully downloaded: {files} missing from {model_dir}. "
            f"Run `jukebot models download {model}` to fetch them."
        )


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ModelFile:
    """One file in the model directory and where it comes from."""

    name: str
    kind: FileKind
    relative_path: str  # under model_dir
    source_path: str  # under a mirror root (checkpoints) or the ids source root (ids)
    sha256: str | None = None  # unknown for the published checkpoints (never downloaded here)
    size: int | None = None


# sha256 and sizes of the original vocabulary tables (openai/jukebox jukebox/data/ids/, as copied in
# jukebox-infer 0.1.2's package data).
_IDS_FILES: dict[str, tuple[str, int]] = {
    "v2_artist_ids": ("fce2ecc0c7b00838cf8cc90273609c5460fa1ec8d3211ce9f6546ed792feb001", 71676),
    "v2_genre_ids": ("04d7c5e5f0002c74789ee2a72a1e33f11057eb6c183ed0cf8f4b140164197e48", 1216),
    "v3_artist_ids": ("85ab98ca035945a917ec3d3e1f06bcd938767196281cfb8caecf058872a9e9ed", 141064),
    "v3_genre_ids": ("f85f72dca1e6052da129041bb927e29eb143e5f1450951006565f4a8af6f31cb", 9414),
}

MANIFEST: dict[str, ModelFile] = {
    **{name: ModelFile(name, "checkpoint", ckpt.path, ckpt.path) for name, ckpt in CHECKPOINTS.items()},
    **{
        name: ModelFile(name, "ids", f"ids/{name}.txt", f"{name}.txt", sha256=digest, size=size)
        for name, (digest, size) in _IDS_FILES.items()
    },
}


def ids_files_for(model: str) -> tuple[str, ...]:
    """The artist and genre tables a model's labels use.

    Every model's upsamplers use v2; the 1b_lyrics top prior also needs v3.
    """
    versions = ("v2", "v3") if model == "1b_lyrics" else ("v2",)
    return tuple(f"{version}_{table}_ids" for version in versions for table in ("artist", "genre"))


def resolve_names(name: str) -> list[str]:
    """File names for `name`: a model ("1b_lyrics"), a file ("vqvae"), "ids" or "all"."""
    if name == "all":
        return list(MANIFEST)
    if name == "ids":
        return list(_IDS_FILES)
    if name in MODELS:
        return [*MODELS[name].checkpoints, *ids_files_for(name)]
    if name in MANIFEST:
        return [name]
    raise UnknownModelName(
        f"Unknown model or file {name!r}: use one of {', '.join(MODELS)}, a checkpoint "
        f"({', '.join(CHECKPOINTS)}), 'ids' or 'all'."
    )


def model_path(model_dir: Path, checkpoint_name: str) -> Path:
    """Where a checkpoint (or ids table) lives in the model directory."""
    if checkpoint_name not in MANIFEST:
        raise UnknownModelName(f"Unknown checkpoint {checkpoint_name!r}: use one of {', '.join(MANIFEST)}.")
    return Path(model_dir) / MANIFEST[checkpoint_name].relative_path


def missing_checkpoints(model_dir: Path, model: str) -> list[str]:
    """Checkpoint names of `model` whose files are not in the model directory (in cascade order)."""
    if model not in MODELS:
        raise UnknownModelName(f"Unknown model {model!r}: use one of {', '.join(MODELS)}.")
    return [name for name in MODELS[model].checkpoints if not model_path(model_dir, name).is_file()]


def require_checkpoints(model_dir: Path, model: str) -> dict[str, Path]:
    """Paths of every checkpoint `model` needs, or ModelFilesMissing naming the command that fetches them."""
    missing = missing_checkpoints(model_dir, model)
    if missing:
        raise ModelFilesMissing(model, Path(model_dir), missing)
    return {name: model_path(model_dir, name) for name in MODELS[model].checkpoints}


# ----------------------------------------------------------------------------- verification

ShapeMap = Mapping[str, tuple[int, ...]]


def load_state_dict_meta(path: Path) -> Mapping[str, Any]:
    """The `'model'` state dict of a checkpoint, on the meta device (shapes only, no weight memory).

    weights_only=True: a downloaded checkpoint is untrusted input.
    """
    import torch

    checkpoint = torch.load(path, map_location="meta", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError("it is not a Jukebox checkpoint (no 'model' state dict inside)")
    return checkpoint["model"]


@dataclass(frozen=True)
class CheckpointVerifier:
    """Checks a checkpoint's keys and shapes against what the model modules expect.

    `expected_shapes_for(name)` gives the exact key -> shape map for a checkpoint name; when it is None
    a checkpoint is only checked to load as a state dict.
    """

    expected_shapes_for: Callable[[str], ShapeMap] | None = None
    load_state_dict: Callable[[Path], Mapping[str, Any]] = load_state_dict_meta

    @property
    def checks_shapes(self) -> bool:
        return self.expected_shapes_for is not None

    def problems(self, name: str, path: Path) -> list[str]:
        try:
            state = self.load_state_dict(path)
        except Exception as exc:
            return [f"cannot be loaded as a checkpoint ({type(exc).__name__}: {str(exc)[:200]})"]
        found = {
            key.removeprefix("module."): tuple(getattr(value, "shape", ())) for key, value in state.items()
        }
        if self.expected_shapes_for is None:
            return [] if found else ["the state dict is empty"]
        expected = {key: tuple(shape) for key, shape in self.expected_shapes_for(name).items()}
        return _shape_problems(expected, found)


def _shape_problems(expected: ShapeMap, found: ShapeMap, limit: int = 5) -> list[str]:
    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(key for key in set(expected) & set(found) if expected[key] != found[key])
    if missing:
        problems.append(f"{len(missing)} missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {listed(unexpected)}")
    if wrong:
        shown = [f"{key} is {found[key]}, expected {expected[key]}" for key in wrong]
        problems.append(f"{len(wrong)} keys with wrong shapes: {listed(shown)}")
    return problems


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_problems(file: ModelFile, path: Path, verifier: CheckpointVerifier | None) -> list[str]:
    """Everything wrong with `path` as a copy of `file`; [] when it checks out."""
    size = path.stat().st_size
    if file.size is not None and size != file.size:
        return [f"size is {size} bytes, expected {file.size}"]
    if file.sha256 is not None and sha256_of(path) != file.sha256:
        return [f"sha256 differs from the published {file.sha256[:12]}…"]
    if file.kind == "checkpoint":
        return (verifier or CheckpointVerifier()).problems(file.name, path)
    return []


def _checks_done(file: ModelFile, verifier: CheckpointVerifier | None) -> str:
    if file.sha256 is not None:
        return "sha256"
    return "shapes" if verifier is not None and verifier.checks_shapes else "loads"


class VerifiedCache:
    """`.verified.json`: the result of the last check of each file, valid while its size and mtime hold."""

    def __init__(self, model_dir: Path) -> None:
        self.path = Path(model_dir) / VERIFIED_CACHE

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or damaged: it is only a cache
        return data if isinstance(data, dict) else {}

    def get(self, file: ModelFile, path: Path) -> dict[str, Any] | None:
        entry = self._read().get(file.relative_path)
        if not isinstance(entry, dict):
            return None
        try:
            stat = path.stat()
        except OSError:
            return None
        if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            return None
        return entry

    def put(self, file: ModelFile, path: Path, ok: bool, checks: str, problems: Sequence[str] = ()) -> None:
        data = self._read()
        stat = path.stat()
        data[file.relative_path] = dict(
            size=stat.st_size, mtime_ns=stat.st_mtime_ns, ok=ok, checks=checks, problems=list(problems)
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def forget(self, file: ModelFile) -> None:
        data = self._read()
        if data.pop(file.relative_path, None) is not None:
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


@dataclass(frozen=True)
class VerifyResult:
    name: str
    path: Path
    ok: bool
    problems: list[str]
    checks: str  # "sha256", "shapes" or "loads"
    moved_to: Path | None = None  # where a bad file was moved aside

    @property
    def message(self) -> str:
        if self.ok:
            return f"OK  {self.name}: {self.path} ({_CHECK_WORDS[self.checks]})"
        where = f"; moved aside to {self.moved_to}" if self.moved_to else ""
        return (
            f"BAD {self.name}: {self.path}: {'; '.join(self.problems)}{where}. "
            f"Run `jukebot models download {self.name}` to fetch it again."
        )


_CHECK_WORDS = {
    "sha256": "size and sha256 match",
    "shapes": "keys and shapes match",
    "loads": "loads as a state dict; shapes not checked",
}


def _move_aside(bad: Path, final: Path) -> Path:
    """Keep a bad copy of `final` as `<final>.corrupt` (replacing an older one) instead of deleting it."""
    aside = final.with_name(final.name + ".corrupt")
    os.replace(bad, aside)
    return aside


def verify_file(
    name: str, model_dir: Path, verifier: CheckpointVerifier | None = None, move_bad_aside: bool = True
) -> VerifyResult:
    """Check one present file; a bad one is moved aside so the next download fetches it afresh."""
    file = MANIFEST[name]
    path = model_path(model_dir, name)
    checks = _checks_done(file, verifier)
    problems = file_problems(file, path, verifier)
    cache = VerifiedCache(model_dir)
    if not problems:
        cache.put(file, path, ok=True, checks=checks)
        return VerifyResult(name, path, True, [], checks)
    if not move_bad_aside:
        cache.put(file, path, ok=False, checks=checks, problems=problems)
        return VerifyResult(name, path, False, problems, checks)
    cache.forget(file)
    return VerifyResult(name, path, False, problems, checks, moved_to=_move_aside(path, path))


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class FileStatus:
    name: str
    file: ModelFile
    path: Path
    state: Literal["verified", "present", "failed", "partial", "missing"]
    size: int | None  # bytes on disk (of the .part while partial)
    checks: str | None = None

    @property
    def description(self) -> str:
        if self.state == "verified":
            return f"verified ({_CHECK_WORDS[self.checks or 'loads']})"
        if self.state == "present":
            return "present, not verified yet"
        if self.state == "failed":
            return "failed verification: run `jukebot models verify` for details"
        if self.state == "partial":
            return "partly downloaded: `jukebot models download` resumes it"
        return "missing"


def file_status(name: str, model_dir: Path) -> FileStatus:
    """Cheap status of one file: stat calls and the verification cache only."""
    file = MANIFEST[name]
    path = model_path(model_dir, name)
    if path.is_file():
        entry = VerifiedCache(model_dir).get(file, path)
        size = path.stat().st_size
        if entry is None:
            return FileStatus(name, file, path, "present", size)
        return FileStatus(
            name, file, path, "verified" if entry.get("ok") else "failed", size, entry.get("checks")
        )
    part = _part_path(path)
    if part.is_file():
        return FileStatus(name, file, path, "partial", part.stat().st_size)
    return FileStatus(name, file, path, "missing", None)


# ----------------------------------------------------------------------------- download


@dataclass
class DownloadOptions:
    read_timeout: float = 60.0  # no byte for this long (or no connection): the attempt fails
    retries: int = 4  # further rounds over all mirrors after transient failures
    backoff: float = 2.0  # seconds before retry round n is backoff * 2**(n-1)
    chunk_size: int = 1 << 20
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    notify: Callable[[str], None] = field(default=log.info)


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    downloaded: bool  # False when it was already there
    url: str | None = None


class _Unavailable(Exception):
    """This root does not serve the file (404, 403, …): try the next, no point retrying."""


class _Transient(Exception):
    """A failure worth retrying (from the same .part)."""


class _Fatal(Exception):
    """A failure retrying will not fix (disk full, mirror serves a different file)."""


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


def _fetch(url: str, part: Path, expected_size: int | None, options: DownloadOptions, desc: str) -> None:
    """One attempt: bring `part` to the full remote size, resuming from what it holds."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=options.read_timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and have:
                match = _UNSATISFIED_RANGE.match(exc.headers.get("Content-Range", ""))
                total = int(match.group(1)) if match else expected_size
                if total == have:
                    return  # the part already holds the whole file
                part.unlink()  # larger than the remote file: not a prefix of it
                raise _Transient(
                    f"{url}: partial file did not match the remote file; starting over"
                ) from None
            if exc.code in (408, 425, 429) or exc.code >= 500:
                raise _Transient(f"{url}: HTTP {exc.code} {exc.reason}") from None
            raise _Unavailable(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise _Transient(f"{url}: no answer within {options.read_timeout:g} s") from None
        raise _Transient(f"{url}: {reason}") from None

    with response:
        content_length = response.headers.get("Content-Length")
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"{url}: server answered a different range than asked; starting over")
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored Range (or there was none): start over cleanly
            have = 0
            total = int(content_length) if content_length is not None else None
            mode = "wb"
        if total is not None and expected_size is not None and total != expected_size:
            raise _Fatal(
                f"{url} serves {total} bytes but {desc} has {expected_size}; it is not the right file"
            )
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if total - have > free:
                raise _Fatal(
                    f"{desc} needs {_human(total - have)} more but {part.parent} has only {_human(free)} free"
                )

        show = options.progress if options.progress is not None else sys.stderr.isatty()
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=have,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not show,
                file=sys.stderr,
            ) as bar,
        ):
            try:
                # read1: whatever arrived (one socket read), so the timeout is per stall, not per chunk.
                while chunk := response.read1(options.chunk_size):
                    out.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
            except TimeoutError:
                raise _Transient(
                    f"{url}: stalled, no data for {options.read_timeout:g} s after {have} bytes"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"{url}: connection lost after {have} bytes ({exc})") from None
    if total is not None and have < total:
        raise _Transient(f"{url}: the server closed the connection early, after {have} of {total} bytes")
    if total is not None and have > total:
        part.unlink()
        raise _Transient(f"{url}: received more bytes than announced; starting over")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _directory_lock(model_dir: Path, notify: Callable[[str], None]) -> Iterator[None]:
    """One downloader per model directory at a time (two workers starting together, say)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(model_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notify(f"waiting for another download into {model_dir} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_file(
    name: str,
    model_dir: Path,
    mirrors: Sequence[str] = (DEFAULT_MIRROR,),
    ids_sources: Sequence[str] = (DEFAULT_IDS_SOURCE,),
    verifier: CheckpointVerifier | None = None,
    options: DownloadOptions | None = None,
) -> DownloadResult:
    """Fetch one file unless present; it appears under its final name only complete and verified."""
    options = options or DownloadOptions()
    file = MANIFEST[name]
    model_dir = Path(model_dir)
    path = model_path(model_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(model_dir, options.notify):
        if path.is_file():
            return DownloadResult(name, path, downloaded=False)
        roots = list(ids_sources if file.kind == "ids" else mirrors)
        if not roots:
            raise DownloadError(f"No source configured for {name}: set {MIRRORS_ENV}.")
        url = _download_to_part(file, path, roots, options)
        part = _part_path(path)
        problems = file_problems(file, part, verifier)
        if problems:
            aside = _move_aside(part, path)
            raise VerificationError(
                f"{name} downloaded from {url} but is not valid: {'; '.join(problems)}. "
                f"It was moved aside to {aside}; run `jukebot models download {name}` to fetch it again."
            )
        os.replace(part, path)
        VerifiedCache(model_dir).put(file, path, ok=True, checks=_checks_done(file, verifier))
        log.info("%s: downloaded from %s to %s", name, url, path)
        return DownloadResult(name, path, downloaded=True, url=url)


def _download_to_part(file: ModelFile, path: Path, roots: list[str], options: DownloadOptions) -> str:
    """Retry rounds over the roots in order; return the URL that completed the .part."""
    part = _part_path(path)
    failures: list[str] = []
    for round_ in range(options.retries + 1):
        if round_:
            delay = options.backoff * 2 ** (round_ - 1)
            options.notify(f"{file.name}: retrying in {delay:g} s ({failures[-1]})")
            time.sleep(delay)
        not_found: list[str] = []
        for root in roots:
            url = root.rstrip("/") + "/" + file.source_path
            try:
                _fetch(url, part, file.size, options, file.name)
                return url
            except _Unavailable as exc:
                not_found.append(f"{url} ({exc})")
            except _Transient as exc:
                failures.append(str(exc))
            except _Fatal as exc:
                raise DownloadError(f"Download of {file.name} failed: {exc}.") from None
        if len(not_found) == len(roots):
            hint = (
                f"set {MIRRORS_ENV} to a mirror that has it"
                if file.kind == "checkpoint"
                else (
                    "pass --ids-source (or set JUKEBOT_IDS_SOURCE) to a copy of openai/jukebox's "
                    "jukebox/data/ids/"
                )
            )
            raise NotFoundOnMirrors(
                f"{file.name} not found on any mirror: tried {', '.join(not_found)}; {hint}."
            )
    then = (
        f"The partial file {part} is kept: run the download again to resume."
        if part.exists()
        else "Run the download again to retry."
    )
    raise DownloadError(
        f"Download of {file.name} failed after {options.retries + 1} attempts: {failures[-1]}. {then}"
    )


def download(
    name: str,
    model_dir: Path,
    mirrors: Sequence[str] = (DEFAULT_MIRROR,),
    ids_sources: Sequence[str] = (DEFAULT_IDS_SOURCE,),
    verifier: CheckpointVerifier | None = None,
    options: DownloadOptions | None = None,
) -> list[DownloadResult]:
    """Fetch whatever `name` (a model, a file, "ids" or "all") still lacks, in order."""
    return [
        download_file(file_name, model_dir, mirrors, ids_sources, verifier, options)
        for file_name in resolve_names(name)
    ]
