"""The model directory: which files a model needs, where they live, downloading and verifying them.

Layout under `model_dir` (the same relative paths as under a mirror root):

    5b/vqvae.pth.tar, 5b/prior_level_{0,1,2}.pth.tar, 5b_lyrics/prior_level_2.pth.tar,
    1b_lyrics/prior_level_2.pth.tar, .verified.json

The artist/genre id tables ship with the package (sampler/jukebox/data/ids): nothing to fetch.

Downloads try the mirrors in order. A mirror that cannot be reached (DNS, refused, no answer within the
connect timeout) is reported once and skipped for every later file. One that serves a file far smaller
than the architecture's weights, or a whole copy that fails verification (keys and shapes, by the loader
sampling uses), has a wrong copy: a failed mirror for that file, nothing of it kept to resume, and the
next mirror is tried (when none has a good copy, the last damaged one is kept as `<file>.corrupt`).
Downloads are resumable (`<file>.part` + `Range`), retried with backoff after a transfer breaks off,
verified and only then renamed into place, so a file under its final name is always complete.
Everything here is synchronous (`urllib`); async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from sampler.files import on_read_only_mount
from sampler.jukebox.registry import CHECKPOINTS, DEFAULT_MIRRORS, MODELS
from sampler.units import count_of, format_bytes, format_bytes_pair
from sampler.user_text import shorten_user_text

try:  # Advisory locking keeps two processes from writing the same .part; POSIX only.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MIRRORS_ENV = "JUKEBOT_MODEL_MIRRORS"
VERIFIED_CACHE = ".verified.json"
SIDECAR_SUFFIX = ".hparams.json"
LOCK_FILE = ".download.lock"
USER_AGENT = "jukebot-model-downloader/2"


def default_model_dir() -> Path:
    """The user's cache directory: the settings' default (JUKEBOT_MODEL_DIR overrides it there)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("jukebot")) / "models"


# ----------------------------------------------------------------------------- errors


# What to do about a sidecar that cannot be read: deleting it would make a custom architecture fail
# verification as the published one (and be moved aside).
SIDECAR_FIX = (
    "fix it (delete it only if the checkpoint has the published architecture: without it, it is "
    "checked as one)"
)


class ModelFilesError(Exception):
    """Base class: something about the model files is wrong; the message says what to do."""


class UnknownModelName(ModelFilesError):
    pass


class DownloadError(ModelFilesError):
    pass


class NotFoundOnMirrors(DownloadError):
    pass


class NoMirrorReachable(DownloadError):
    """Every mirror failed to connect: the network (or the mirror list) is the problem, not a file."""

    def __init__(self, down: Mapping[str, str]) -> None:
        self.down = dict(down)
        tried = "; ".join(f"{root} ({reason})" for root, reason in self.down.items())
        super().__init__(
            f"No model mirror could be reached: {tried}. Check this machine's network connection "
            f"(DNS, proxy, firewall), or set {MIRRORS_ENV} to mirrors it can reach; "
            "`jukebot models import` installs files you already have."
        )


class VerificationError(ModelFilesError):
    pass


class ModelDirError(ModelFilesError):
    """The model directory itself cannot be read, created or written (not one of its files)."""


class ModelFilesMissing(ModelFilesError):
    """For the operator (it names paths and commands): users get a message of their own."""

    def __init__(self, model: str, model_dir: Path, missing: Sequence[str]) -> None:
        self.model, self.model_dir, self.missing = model, model_dir, list(missing)
        files = ", ".join(f"{name} ({CHECKPOINTS[name].path})" for name in self.missing)
        super().__init__(
            f"Model {model} is not fully downloaded: {files} missing from {model_dir}. "
            f"Run `jukebot models download {model}` to fetch them."
        )


class ModelFileUnreadable(ModelFilesMissing):
    """A file (or folder) of the model directory is there, but the user running jukebot cannot read it:
    its permissions, most often. Not damage: it is never moved aside, fetched again or recorded as
    failing verification. A ModelFilesMissing because, to this user, the model is not here: a worker
    gives the job back to the queue, for a worker that can read it. `problem` is a clause for longer
    messages."""

    def __init__(self, path: Path, problem: str, model: str = "") -> None:
        self.path, self.problem = Path(path), problem
        self.model, self.model_dir, self.missing = model, self.path.parent, []
        ModelFilesError.__init__(self, problem[:1].upper() + problem[1:] + ".")


def unreadable_problem(path: Path, error: OSError | None = None) -> str:
    """Why `path`, which is there, cannot be read, and what to do (`error`: what reading it raised;
    None: access was refused before trying)."""
    if error is None or isinstance(error, PermissionError):
        return (
            f"cannot read {path} (permission denied): fix its permissions "
            "(the user running jukebot needs read access)"
        )
    return f"cannot read {path} ({error.strerror or error}): check the disk or file system it is on"


def _link_loop_problem(model_dir: Path, path: Path, name: str) -> str | None:
    """Which symbolic link on the way to `path` (itself, or a folder of the model directory) loops, and
    what to do; None when none does."""
    model_dir = Path(model_dir)
    on_the_way = [path, *(folder for folder in path.parents if model_dir in (folder, *folder.parents))]
    for candidate in reversed(on_the_way):  # the outermost first: it is what the ones below go through
        if not os.path.islink(candidate):
            continue
        try:
            os.stat(candidate)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                continue
            if candidate == path:
                return (
                    f"{path} is a symbolic link loop: point the link at the checkpoint file, or remove it "
                    f"and run `jukebot models download {name}`"
                )
            return f"{candidate} in the model directory is a symbolic link loop: point the link at a folder"
    return None


def _folder_problem(folder: Path, error: OSError | None = None) -> str:
    """Why a folder in the model directory cannot be looked into, and what to do."""
    reason = "permission denied" if error is None or isinstance(error, PermissionError) else error.strerror
    return (
        f"cannot read {folder} in the model directory ({reason or error}): fix its permissions or set "
        "JUKEBOT_MODEL_DIR to a folder this user can read"
    )


def require_readable(path: Path) -> None:
    """ModelFileUnreadable when `path` is there but cannot be opened and read; an absent file is the
    caller's to tell apart."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return
    except OSError as exc:
        raise ModelFileUnreadable(path, unreadable_problem(path, exc)) from None


# ----------------------------------------------------------------------------- names and paths


def resolve_names(name: str) -> list[str]:
    """Checkpoint names for `name`: a model ("1b_lyrics"), a checkpoint ("vqvae") or "all"."""
    if name == "all":
        return list(CHECKPOINTS)
    if name in MODELS:
        return list(MODELS[name].checkpoints)
    if name in CHECKPOINTS:
        return [name]
    raise UnknownModelName(
        f"Unknown model or file {name!r}: use one of {', '.join(MODELS)}, a checkpoint "
        f"({', '.join(CHECKPOINTS)}) or 'all'."
    )


def model_path(model_dir: Path, checkpoint_name: str) -> Path:
    """Where a checkpoint lives in the model directory."""
    if checkpoint_name not in CHECKPOINTS:
        raise UnknownModelName(
            f"Unknown checkpoint {checkpoint_name!r}: use one of {', '.join(CHECKPOINTS)}."
        )
    return Path(model_dir) / CHECKPOINTS[checkpoint_name].path


def sidecar_path(checkpoint: Path) -> Path:
    """Where a checkpoint's architecture is written when it is not the published one (see loading)."""
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


class SidecarError(ModelFilesError):
    """A checkpoint's `.hparams.json` sidecar is there but does not hold a JSON object: the sidecar is
    what to fix, not the checkpoint (the message says how)."""


def read_sidecar(checkpoint: Path) -> dict[str, Any] | None:
    """The hparams in `checkpoint`'s sidecar; None when it has none (it has the published architecture).
    ModelFileUnreadable when this user may not read it; SidecarError when it is not a JSON object."""
    sidecar = sidecar_path(checkpoint)
    try:
        data = json.loads(sidecar.read_text())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # none: the published one
        return None
    except PermissionError as exc:  # there but not readable by this user: its permissions, not damage
        raise ModelFileUnreadable(sidecar, unreadable_problem(sidecar, exc)) from None
    except (OSError, ValueError) as exc:  # bad JSON or UTF-8, a failing disk
        raise SidecarError(f"cannot read {sidecar}: {exc}; {SIDECAR_FIX}") from None
    if not isinstance(data, dict):
        raise SidecarError(
            f"{sidecar} holds a JSON {_JSON_TYPES.get(type(data), type(data).__name__)}, not the JSON object "
            f"of hparams a sidecar holds; {SIDECAR_FIX}"
        )
    return data


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"


def model_dir_problem(model_dir: Path, *, choose_another: str = "set JUKEBOT_MODEL_DIR to") -> str | None:
    """Why the model directory cannot be read (a file, no permission), in one sentence; None when it
    can (a directory that does not exist yet is fine: nothing is downloaded). `choose_another` is how
    the reader picks another folder ("pass --model_dir" where a flag chose it)."""
    path = Path(model_dir)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return (
            f"The model directory {path} cannot exist, because a folder above it is a file: "
            f"{choose_another} a folder."
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return (
                f"The model directory {path} is a symbolic link loop (or goes through one): point the link "
                f"at a folder, or {choose_another} a folder."
            )
        return (
            f"Cannot read the model directory {path} ({exc.strerror or exc}): fix its permissions or "
            f"{choose_another} a folder this user can read."
        )
    if not stat.S_ISDIR(mode):
        return f"The model directory {path} is a file, not a folder: {choose_another} a folder."
    if not os.access(path, os.R_OK | os.X_OK):
        return (
            f"Cannot read the model directory {path} (permission denied): fix its permissions or "
            f"{choose_another} a folder this user can read."
        )
    for folder in sorted({(path / entry.path).parent for entry in CHECKPOINTS.values()}):
        if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
            problem = _folder_problem(folder)
            return problem[:1].upper() + problem[1:] + "."
    return None


def prepare_model_dir(model_dir: Path) -> Path:
    """The model directory, created if needed, or ModelDirError saying why it cannot be written."""
    path = Path(model_dir)
    problem = model_dir_problem(path)
    if problem is not None:
        raise ModelDirError(problem)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelDirError(
            f"Cannot create the model directory {path} ({exc.strerror or exc}): create it, or set "
            "JUKEBOT_MODEL_DIR to a folder this user can write."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        if on_read_only_mount(path):
            raise ModelDirError(
                f"Cannot write to the model directory {path}: it is on a read-only file system. Fetch "
                "the files where its source is writable, or set JUKEBOT_MODEL_DIR to a folder this user "
                "can write."
            )
        raise ModelDirError(
            f"Cannot write to the model directory {path} (permission denied): fix its permissions or set "
            "JUKEBOT_MODEL_DIR to a folder this user can write."
        )
    return path


def _file_size(path: Path) -> int | None:
    """The size of the regular file at `path`, or None when there is none; OSError when a folder on the
    way cannot be looked into."""
    try:
        mode_and_size = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return mode_and_size.st_size if stat.S_ISREG(mode_and_size.st_mode) else None


def _closed_folder(model_dir: Path, path: Path) -> Path:
    """The folder that keeps this user from `path`: the model directory, or the file's own folder."""
    return next(
        (folder for folder in (Path(model_dir), path.parent) if not os.access(folder, os.X_OK)), path.parent
    )


def missing_checkpoints(model_dir: Path, model: str) -> list[str]:
    """Checkpoint names of `model` whose files are not in the model directory (in cascade order);
    ModelFileUnreadable when a folder they are in cannot be looked into."""
    if model not in MODELS:
        raise UnknownModelName(f"Unknown model {model!r}: use one of {', '.join(MODELS)}.")
    missing = []
    for name in MODELS[model].checkpoints:
        path = model_path(model_dir, name)
        try:
            size = _file_size(path)
        except OSError as exc:
            loop = _link_loop_problem(model_dir, path, name) if exc.errno == errno.ELOOP else None
            if loop is not None:
                raise ModelFileUnreadable(path, loop, model) from None
            folder = _closed_folder(model_dir, path)
            raise ModelFileUnreadable(folder, _folder_problem(folder, exc), model) from None
        if size is None:
            missing.append(name)
    return missing


def require_checkpoints(model_dir: Path, model: str) -> dict[str, Path]:
    """Paths of every checkpoint `model` needs, or ModelFilesMissing naming the command that fetches them."""
    missing = missing_checkpoints(model_dir, model)
    if missing:
        raise ModelFilesMissing(model, Path(model_dir), missing)
    return {name: model_path(model_dir, name) for name in MODELS[model].checkpoints}


# ----------------------------------------------------------------------------- verification

ShapeMap = Mapping[str, tuple[int, ...]]
VQVAE = "vqvae"  # the checkpoint every prior's architecture depends on
# A file the VQ-VAE's sidecar keeps from being checked: said once, against that sidecar, then this.
NOT_CHECKED_FOR_VQVAE = "its shapes depend on the VQ-VAE's sidecar, which is wrong (see vqvae)"


def load_state_dict_meta(path: Path) -> Mapping[str, Any]:
    """A checkpoint's weights on the meta device (shapes only, no weight memory), read exactly as
    sampling reads them (`sampler.jukebox.checkpoint.read_checkpoint`): one loader, one verdict."""
    from sampler.jukebox.checkpoint import read_checkpoint

    return read_checkpoint(path, device="meta")


@dataclass(frozen=True)
class CheckpointVerifier:
    """Checks a checkpoint's keys and shapes against what the model modules expect.

    `expected_shapes_for(name)` gives the exact key -> shape map for a checkpoint name; when it is None
    a checkpoint is only checked to load as a state dict (and no size is too small).
    """

    expected_shapes_for: Callable[[str], ShapeMap] | None = None
    load_state_dict: Callable[[Path], Mapping[str, Any]] = load_state_dict_meta
    _shapes: dict[str, ShapeMap] = field(default_factory=dict, compare=False, repr=False)

    @property
    def checks_shapes(self) -> bool:
        return self.expected_shapes_for is not None

    def shapes(self, name: str) -> ShapeMap | None:
        if self.expected_shapes_for is None:
            return None
        if name not in self._shapes:
            self._shapes[name] = {key: tuple(shape) for key, shape in self.expected_shapes_for(name).items()}
        return self._shapes[name]

    def architecture_fault(self, name: str) -> tuple[str, str] | None:
        """Whose `.hparams.json` sidecar keeps the architecture `name` is checked against from being
        worked out, and why: (`name`, problem) for its own, ("vqvae", problem) for the VQ-VAE's, which
        every prior's shapes depend on; None when nothing does. Such a problem is the sidecar's, never
        the checkpoint's."""
        if name != VQVAE and (vqvae := self._own_architecture_problem(VQVAE)) is not None:
            return VQVAE, vqvae
        own = self._own_architecture_problem(name)
        return None if own is None else (name, own)

    def architecture_problem(self, name: str) -> str | None:
        """Why the architecture `name` is checked against cannot be worked out (a malformed
        `.hparams.json` sidecar, its own or the VQ-VAE's), or None."""
        fault = self.architecture_fault(name)
        if fault is None:
            return None
        owner, problem = fault
        if owner == name:
            return problem
        return f"its shapes depend on the VQ-VAE's sidecar, which is wrong: {problem}"

    def _own_architecture_problem(self, name: str) -> str | None:
        from sampler.jukebox.checkpoint import CheckpointError

        try:
            self.shapes(name)
        except (CheckpointError, SidecarError) as exc:
            return str(exc)
        except (ValueError, KeyError, TypeError) as exc:
            return f"its .hparams.json sidecar does not describe a {name} ({exc}); {SIDECAR_FIX}"
        return None

    def min_size(self, name: str) -> int | None:
        """No genuine copy is smaller: every weight in fp16, the narrowest type the files use."""
        shapes = self.shapes(name)
        if shapes is None:
            return None
        return 2 * sum(_count(shape) for shape in shapes.values())

    def problems(self, name: str, path: Path) -> list[str]:
        from sampler.jukebox.checkpoint import CheckpointError, check_state_dict

        try:
            state = self.load_state_dict(path)
        except CheckpointError as exc:
            return [name_the_checkpoint(str(exc), name)]
        except OSError as exc:  # opening or reading failed: the file may be fine
            where = Path(exc.filename) if isinstance(exc.filename, str) else path
            raise ModelFileUnreadable(where, unreadable_problem(where, exc)) from None
        except Exception as exc:
            return [f"cannot be loaded as a checkpoint ({type(exc).__name__}: {str(exc)[:200]})"]
        expected = self.shapes(name)
        if expected is None:
            return [] if state else ["the state dict is empty"]
        try:
            check_state_dict(state, expected, what=f"checkpoint {path}")  # type: ignore[arg-type]
        except CheckpointError as exc:
            return [str(exc)]
        return []


def name_the_checkpoint(message: str, name: str) -> str:
    """The checkpoint reader's advice names a placeholder model when it is not told which file it
    reads: put the checkpoint's name in."""
    return message.replace("`jukebot models download <model>`", f"`jukebot models download {name}`")


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def file_problems(name: str, path: Path, verifier: CheckpointVerifier | None) -> list[str]:
    """Everything wrong with `path` as a copy of checkpoint `name`; [] when it checks out.
    ModelFileUnreadable (not a problem of the file) when it, or its sidecar, cannot be read."""
    verifier = verifier or CheckpointVerifier()
    require_readable(path)
    fault = verifier.architecture_fault(name)
    if fault is not None:  # the sidecar's problem, said against the file whose sidecar it is
        owner, problem = fault
        return [problem if owner == name else f"not checked: {NOT_CHECKED_FOR_VQVAE}"]
    size, least = path.stat().st_size, verifier.min_size(name)
    if least is not None and size < least:
        shown, least_shown = format_bytes_pair(size, least)
        return [f"it is {shown}, but a genuine {name} is at least {least_shown}"]
    return verifier.problems(name, path)


def _checks_done(verifier: CheckpointVerifier | None) -> str:
    return "shapes" if verifier is not None and verifier.checks_shapes else "loads"


# The check of a file that failed as sampling loaded it, reading its weights (NaN in them, say): what
# `verify`, reading keys and shapes only, cannot see, so its pass does not replace that verdict.
WEIGHTS_READ = "weights"


def failed_as_weights_were_read(entry: Mapping[str, Any] | None) -> list[str] | None:
    """The problems of a cache entry (`VerifiedCache.get`) recording a failure found as the file's
    weights were read; None for any other entry."""
    if entry is None or entry.get("ok") or entry.get("checks") != WEIGHTS_READ:
        return None
    return [str(problem) for problem in entry.get("problems", [])] or ["its weights failed to load"]


class VerifiedCache:
    """`.verified.json`: the result of the last check of each file, valid while its size and mtime hold,
    and those of the sidecars that say what architecture it was checked against."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.path = self.model_dir / VERIFIED_CACHE

    def _signature(self, name: str, path: Path) -> dict[str, Any]:
        """What a verdict on `path` holds for: its size and mtime, and those of its sidecar and the
        VQ-VAE's (a prior's shapes depend on both), each only when there is one (OSError: no stat)."""
        checkpoint = path.stat()
        sidecars = {}
        for checked_against in dict.fromkeys((name, "vqvae")):
            sidecar = sidecar_path(model_path(self.model_dir, checked_against))
            try:
                sidecar_stat = sidecar.stat()
            except FileNotFoundError:
                continue
            sidecars[CHECKPOINTS[checked_against].path + SIDECAR_SUFFIX] = [
                sidecar_stat.st_size,
                sidecar_stat.st_mtime_ns,
            ]
        signature: dict[str, Any] = dict(size=checkpoint.st_size, mtime_ns=checkpoint.st_mtime_ns)
        if sidecars:  # an entry without sidecars is what verdicts from before sidecars counted look like
            signature["sidecars"] = sidecars
        return signature

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or damaged: it is only a cache
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        """Replace the cache; one that cannot be written (a full disk, a read-only directory) is a
        warning, not a failure: it is only a cache, and the files are checked again next time."""
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning(
                "cannot update %s (%s): it is only a cache; the files will be checked again next time",
                self.path,
                exc.strerror or exc,
            )

    def get(self, name: str, path: Path, data: dict[str, Any] | None = None) -> dict[str, Any] | None:
        entry = (self._read() if data is None else data).get(CHECKPOINTS[name].path)
        if not isinstance(entry, dict):
            return None
        try:
            signature = self._signature(name, path)
        except OSError:
            return None
        if any(entry.get(key) != value for key, value in signature.items()) or (
            "sidecars" in entry and "sidecars" not in signature
        ):
            return None
        return entry

    def put(
        self,
        name: str,
        path: Path,
        ok: bool,
        checks: str,
        problems: Sequence[str] = (),
        *,
        sidecar_of: str | None = None,
    ) -> None:
        """Record a verdict on `name`; `sidecar_of`: the file whose sidecar was found wrong (`name` or
        the VQ-VAE), not the checkpoint: the verdict holds until a sidecar changes (the signature)."""
        data = self._read()
        entry = dict(self._signature(name, path), ok=ok, checks=checks, problems=list(problems))
        if sidecar_of is not None:
            entry["sidecar_of"] = sidecar_of
        data[CHECKPOINTS[name].path] = entry
        self._write(data)

    def forget(self, name: str) -> None:
        data = self._read()
        if data.pop(CHECKPOINTS[name].path, None) is not None:
            self._write(data)


@dataclass(frozen=True)
class VerifyResult:
    name: str
    path: Path
    ok: bool
    problems: list[str]
    checks: str  # "shapes" or "loads" (or WEIGHTS_READ: a failure sampling found, which stands)
    moved_to: Path | None = None  # where a bad file was moved aside
    fix: str | None = None  # what to do, when fetching the file again is not it
    unreadable: bool = False  # it could not be read (the problem says why): nothing known about it
    # whose sidecar is wrong (this file's name, or "vqvae": every prior's shapes depend on its sidecar);
    # the checkpoint was not checked, and is left in place
    sidecar_of: str | None = None

    @property
    def not_checked(self) -> bool:
        """Not checked because another file's sidecar (the VQ-VAE's) is wrong: nothing known about it."""
        return self.sidecar_of is not None and self.sidecar_of != self.name

    @property
    def message(self) -> str:
        if self.ok:
            return f"OK  {self.name}: {self.path} ({_CHECK_WORDS[self.checks]})"
        if self.unreadable:
            return f"UNREADABLE {self.name}: {'; '.join(self.problems)}."
        if self.not_checked:
            return f"NOT CHECKED {self.name}: {self.path}: {'; '.join(self.problems)}. {self.fix}"
        where = f"; moved aside to {self.moved_to}" if self.moved_to else ""
        problems = "; ".join(self.problems)
        fix = self.fix or f"Run `jukebot models download {self.name}` to fetch it again."
        if self.fix is None and f"`jukebot models download {self.name}`" in problems:
            fix = ""  # the problem already says it
        return f"BAD {self.name}: {self.path}: {problems}{where}. {fix}".rstrip()


_CHECK_WORDS = {
    "shapes": "keys and shapes match",
    "loads": "loads as a state dict; shapes not checked",
    WEIGHTS_READ: "its weights read as sampling loaded it",
}


def _move_aside(bad: Path, final: Path) -> Path:
    """Keep a bad copy of `final` as `<final>.corrupt` (replacing an older one) instead of deleting it."""
    aside = final.with_name(final.name + ".corrupt")
    os.replace(bad, aside)
    return aside


def verify_file(
    name: str, model_dir: Path, verifier: CheckpointVerifier | None = None, move_bad_aside: bool = True
) -> VerifyResult:
    """Check one present file; a bad one is moved aside so the next download fetches it afresh. One
    that cannot be read is left alone and nothing is recorded: its permissions are the problem."""
    path = model_path(model_dir, name)
    checks = _checks_done(verifier)
    try:
        require_readable(path)
        fault = verifier.architecture_fault(name) if verifier is not None else None
        problems = [] if fault is not None else file_problems(name, path, verifier)
    except ModelFileUnreadable as exc:
        return VerifyResult(name, path, False, [exc.problem], checks, unreadable=True)
    cache = VerifiedCache(model_dir)
    if fault is not None:  # a sidecar is wrong, not the checkpoint: it stays where it is
        owner = fault[0]
        problem = (verifier.architecture_problem(name) if verifier is not None else None) or fault[1]
        # Kept, so that `models list` (which checks no architecture: that takes torch) says it too.
        cache.put(name, path, ok=False, checks=checks, problems=[problem], sidecar_of=owner)
        return VerifyResult(
            name,
            path,
            False,
            [problem],
            checks,
            fix="The checkpoint itself was left in place.",
            sidecar_of=owner,
        )
    if not problems:
        found_loading = failed_as_weights_were_read(cache.get(name, path))
        if found_loading is None:
            cache.put(name, path, ok=True, checks=checks)
            return VerifyResult(name, path, True, [], checks)
        # its keys and shapes are fine, but sampling found its weights damaged: that verdict stands
        checks, problems = WEIGHTS_READ, found_loading
    if not move_bad_aside:
        cache.put(name, path, ok=False, checks=checks, problems=problems)
        return VerifyResult(name, path, False, problems, checks)
    try:
        aside = _move_aside(path, path)
    except OSError as exc:  # a read-only mount, say: the verdict is still worth keeping
        cache.put(name, path, ok=False, checks=checks, problems=problems)
        fix = (
            f"It could not be moved aside, because {path.parent} cannot be written ({exc.strerror or exc}): "
            "replace it with a good copy where the model directory is writable (for a read-only mount, at "
            f"its source), or make the folder writable and run `jukebot models verify {name}` again."
        )
        return VerifyResult(name, path, False, problems, checks, fix=fix)
    cache.forget(name)
    return VerifyResult(name, path, False, problems, checks, moved_to=aside)


# ----------------------------------------------------------------------------- status


FAILURE_SHOWN_CHARS = 300  # of a recorded verification failure, in a status line
# bad_sidecar: present, but its sidecar (or the VQ-VAE's, which every prior's shapes depend on) is not a
# JSON object: it cannot be used, and there is nothing to fetch: the sidecar is what to fix.
FileState = Literal["verified", "present", "failed", "unreadable", "bad_sidecar", "partial", "missing"]


@dataclass(frozen=True)
class FileStatus:
    name: str
    path: Path
    state: FileState
    size: int | None  # bytes on disk (of the .part while partial)
    checks: str | None = None
    problem: str | None = None  # why it is unreadable, and what to do
    # partial files an interrupted import left beside it (see `leftover_partials`), and their bytes
    leftovers: int = 0
    leftover_bytes: int = 0
    # bad_sidecar as recorded (`VerifiedCache.put`): whose sidecar, this file's or the VQ-VAE's
    sidecar_of: str | None = None

    @property
    def relative_path(self) -> str:
        return CHECKPOINTS[self.name].path

    @property
    def usable(self) -> bool:
        """Present and not known to be bad: a worker may serve it."""
        return self.state in ("verified", "present")

    @property
    def description(self) -> str:
        """Its state, and the partial files an interrupted import left beside it, if any."""
        if not self.leftovers:
            return self.state_description
        files = count_of(self.leftovers, LEFTOVER)
        return (
            f"{self.state_description}; {files} ({format_bytes(self.leftover_bytes)}) from an interrupted "
            "import: removed by the next `jukebot models import` or `jukebot models download`"
        )

    @property
    def state_description(self) -> str:
        if self.state == "verified":
            return f"verified ({_CHECK_WORDS[self.checks or 'loads']})"
        if self.state == "present":
            return "present, not verified yet"
        if self.state == "failed":  # with the reason recorded, which `verify` (or a worker) found
            why = f" ({shorten_user_text(self.problem, FAILURE_SHOWN_CHARS)})" if self.problem else ""
            return f"failed verification{why}: run `jukebot models verify` for details"
        if self.state == "unreadable":
            return self.problem or unreadable_problem(self.path)
        if self.state == "bad_sidecar":
            return self.problem or f"its sidecar {sidecar_path(self.path)} is wrong; {SIDECAR_FIX}"
        if self.state == "partial":
            return "partly downloaded: `jukebot models download` resumes it"
        return "missing"


def file_status(
    name: str, model_dir: Path, cache: dict[str, Any] | None = None, *, leftovers: bool = False
) -> FileStatus:
    """Cheap status of one file: stat and access calls and the verification cache only. Never raises
    for a file or folder this user may not read (workers ask before each claim): that is "unreadable".
    `leftovers`: also count the partial files an interrupted import left beside it (lists its folder)."""
    status = _file_status(name, model_dir, cache)
    if not leftovers:
        return status
    count, size = _leftovers(status.path)
    return dataclasses.replace(status, leftovers=count, leftover_bytes=size) if count else status


def _file_status(name: str, model_dir: Path, cache: dict[str, Any] | None) -> FileStatus:
    path = model_path(model_dir, name)
    try:
        size = _file_size(path)
        part_size = _file_size(_part_path(path)) if size is None else None
    except OSError as exc:
        loop = _link_loop_problem(model_dir, path, name) if exc.errno == errno.ELOOP else None
        if loop is not None:  # not a permission: the link is what to fix
            return FileStatus(name, path, "unreadable", None, problem=loop)
        folder = _closed_folder(model_dir, path)
        return FileStatus(name, path, "unreadable", None, problem=_folder_problem(folder, exc))
    if size is not None:
        # the worker reads the sidecar too: a checkpoint it cannot have the architecture of is no use
        for needed in (path, sidecar_path(path)):
            if os.access(needed, os.F_OK) and not os.access(needed, os.R_OK):
                return FileStatus(name, path, "unreadable", size, problem=unreadable_problem(needed))
        sidecar = _sidecar_status_problem(name, model_dir)
        if sidecar is not None:
            return FileStatus(name, path, "bad_sidecar", size, problem=sidecar)
        entry = VerifiedCache(model_dir).get(name, path, cache)
        if entry is None:
            return FileStatus(name, path, "present", size)
        if entry.get("ok"):
            return FileStatus(name, path, "verified", size, entry.get("checks"))
        recorded = entry.get("problems")
        problem = "; ".join(map(str, recorded)) if isinstance(recorded, list) and recorded else None
        if entry.get("sidecar_of") is not None:  # the checkpoint is not damaged: its sidecar is what to fix
            owner = str(entry["sidecar_of"])
            return FileStatus(name, path, "bad_sidecar", size, entry.get("checks"), problem, sidecar_of=owner)
        return FileStatus(name, path, "failed", size, entry.get("checks"), problem)
    if part_size is not None:
        return FileStatus(name, path, "partial", part_size)
    return FileStatus(name, path, "missing", None)


def _sidecar_status_problem(name: str, model_dir: Path) -> str | None:
    """Why `name` cannot be used for its sidecar's sake, or the VQ-VAE's (read, not yet checked against
    the architecture: that takes torch, and `models verify`); None when neither is malformed. A
    sidecar this user may not read is left to whoever reads it."""
    for owner in dict.fromkeys((name, VQVAE)):
        try:
            read_sidecar(model_path(model_dir, owner))
        except SidecarError as exc:
            if owner == name:
                return str(exc)
            return "cannot be used until the VQ-VAE's sidecar is fixed (see vqvae)"
        except ModelFileUnreadable:
            continue
    return None


@dataclass(frozen=True)
class ModelStatus:
    """One published model in a model directory: whether a worker can serve it, and what to do if not."""

    model: str
    files: tuple[FileStatus, ...]

    @property
    def complete(self) -> bool:
        return all(status.usable for status in self.files)

    @property
    def to_fetch(self) -> list[str]:
        return [status.name for status in self.files if not status.usable]

    @property
    def summary(self) -> str:
        """For the operator: 'ready', or what is missing and the command that fixes it."""
        unreadable = list(
            dict.fromkeys(status.state_description for status in self.files if status.state == "unreadable")
        )
        if unreadable:  # nothing to fetch: the files may well be fine
            return unreadable[0] + (
                f" (and {len(unreadable) - 1} more like it)" if len(unreadable) > 1 else ""
            )
        sidecars = [status for status in self.files if status.state == "bad_sidecar"]
        if sidecars:  # the sidecar is what to fix, and files missing besides are to fetch (as doctor says)
            first = sidecars[0]
            missing = [status for status in self.files if status.state in ("missing", "partial")]
            return (
                f"{first.name}: {first.state_description}"
                + (
                    f" ({', '.join(status.name for status in sidecars[1:])} cannot be used until then)"
                    if len(sidecars) > 1 and first.name == VQVAE
                    else ""
                )
                + (
                    f"; {len(missing)} of {len(self.files)} files to fetch: "
                    f"jukebot models download {self.model}"
                    if missing
                    else ""
                )
            )
        if self.complete:
            unverified = [status.name for status in self.files if status.state == "present"]
            return "ready" + (f" ({', '.join(unverified)} not verified yet)" if unverified else "")
        failed = [status.name for status in self.files if status.state == "failed"]
        fix = f"jukebot models verify {self.model}" if failed else f"jukebot models download {self.model}"
        return f"{len(self.to_fetch)} of {len(self.files)} files to fetch: {fix}"


def model_status(model_dir: Path, *, leftovers: bool = True) -> dict[str, ModelStatus]:
    """Every published model's status in `model_dir` (stat calls, one small JSON read and, with
    `leftovers`, a listing of each folder for partial files an interrupted import left: cheap)."""
    cache = VerifiedCache(model_dir)._read()
    statuses = {
        name: file_status(name, model_dir, cache, leftovers=leftovers)
        for name in dict.fromkeys(file for model in MODELS.values() for file in model.checkpoints)
    }
    return {
        name: ModelStatus(name, tuple(statuses[file] for file in model.checkpoints))
        for name, model in MODELS.items()
    }


def available_models(model_dir: Path) -> frozenset[str]:
    """The models whose every file is present and not known to be bad: what a worker can serve (asked
    before each claim: stat calls only)."""
    return frozenset(
        name for name, status in model_status(model_dir, leftovers=False).items() if status.complete
    )


# ----------------------------------------------------------------------------- download


@dataclass
class DownloadOptions:
    # To connect and to get an answer's headers: a mirror that fails this is down and skipped from then on.
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # no byte for this long mid-transfer: the attempt fails and is retried
    retries: int = 4  # further rounds over the mirrors after a transfer broke off
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


class MirrorHealth:
    """Which mirrors failed to connect in this run: each is reported once and then skipped."""

    def __init__(self, mirrors: Sequence[str], notify: Callable[[str], None]) -> None:
        self.mirrors = list(mirrors)
        self.down: dict[str, str] = {}
        self._notify = notify

    def alive(self) -> list[str]:
        return [root for root in self.mirrors if root not in self.down]

    def mark_down(self, root: str, reason: str) -> None:
        if root not in self.down:
            self.down[root] = reason
            self._notify(f"mirror {root} cannot be reached ({reason}); skipping it")

    def all_down(self) -> bool:
        return bool(self.mirrors) and not self.alive()


class _MirrorDown(Exception):
    """No connection, or no answer to a request: the whole mirror is unusable for now."""


class _Unavailable(Exception):
    """This root does not serve the file (404, 403, a far too small file): try the next, no retry."""


class _WrongCopy(_Unavailable):
    """This root serves a file far too small to be the checkpoint: it has it, but not a good copy."""


class _Transient(Exception):
    """A failure worth retrying (from the same .part)."""


class _Fatal(Exception):
    """A failure retrying will not fix (disk full)."""


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# What `sampler.jukebox.checkpoint.written_in_place` (the import's writer) names the file it writes
# beside `<file>`: `<file>.<8 hex digits>.partial`, a new name each time. A writer killed mid-write
# (SIGKILL, the OOM killer, a power cut) leaves it there: a "leftover".
_PARTIAL_NAME = r"\.[0-9a-f]{8}\.partial"
LEFTOVER = "leftover partial file"


def leftover_partials(path: Path) -> list[Path]:
    """The partial files of `path` that a writer left beside it (see `_PARTIAL_NAME`), sorted; [] when
    its folder cannot be read. Some may be a live writer's: remove them only holding `model_dir_lock`."""
    pattern = re.compile(re.escape(path.name) + _PARTIAL_NAME)
    try:
        with os.scandir(path.parent) as entries:
            return sorted(
                path.parent / entry.name
                for entry in entries
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            )
    except OSError:
        return []


def _leftovers(path: Path) -> tuple[int, int]:
    """How many partial files a killed writer left beside `path`, and their bytes."""
    count = size = 0
    for leftover in leftover_partials(path):
        with contextlib.suppress(OSError):  # gone meanwhile
            size += leftover.lstat().st_size
            count += 1
    return count, size


def _remove_leftover_partials(model_dir: Path, notify: Callable[[str], None]) -> None:
    """Remove what killed writers left of every checkpoint's file. Only under `model_dir_lock`, which
    every writer of the directory holds while it writes: any partial file found then is no live one's."""
    removed, size = 0, 0
    for relative in sorted({entry.path for entry in CHECKPOINTS.values()}):
        for leftover in leftover_partials(Path(model_dir) / relative):
            try:
                bytes_ = leftover.lstat().st_size
                leftover.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning(
                    "cannot remove %s, left by an interrupted import (%s)", leftover, exc.strerror or exc
                )
                continue
            removed, size = removed + 1, size + bytes_
    if removed:
        notify(
            f"removed {count_of(removed, LEFTOVER)} ({format_bytes(size)}) from {model_dir}, left by an "
            "interrupted import"
        )


def _url(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + CHECKPOINTS[name].path


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    """urllib with two timeouts: the request's timeout until the answer's headers arrive (connect,
    send, wait), then `read_timeout` for each read of the body."""

    class Response(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self._socket = sock

        def begin(self) -> None:
            super().begin()
            self._socket.settimeout(read_timeout)

    class Connection(http.client.HTTPConnection):
        response_class = Response

    class TLSConnection(http.client.HTTPSConnection):
        response_class = Response

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Connection, req)

    class TLSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(TLSConnection, req, context=self._context)  # type: ignore[attr-defined]

    return urllib.request.build_opener(Handler, TLSHandler)


def _open(url: str, headers: dict[str, str], options: DownloadOptions, method: str = "GET") -> Any:
    """The response to a request, or _MirrorDown/_Unavailable/_Transient saying why not."""
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}, method=method
    )
    try:
        return _opener(options.read_timeout).open(request, timeout=options.connect_timeout)
    except urllib.error.HTTPError:
        raise  # the caller reads the status
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise _MirrorDown(f"no answer within {options.connect_timeout:g} s") from None
        if isinstance(reason, socket.gaierror):
            raise _MirrorDown(f"host name not resolved: {reason.strerror or reason}") from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise _MirrorDown(text or type(reason).__name__) from None


def _http_status_error(exc: urllib.error.HTTPError) -> Exception:
    if exc.code in (408, 425, 429) or exc.code >= 500:
        return _Transient(f"HTTP {exc.code} {exc.reason}")
    return _Unavailable(f"HTTP {exc.code}")


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


def _too_small(url: str, name: str, total: int, least: int | None) -> _WrongCopy | None:
    if least is not None and total < least:
        shown, least_shown = format_bytes_pair(total, least)
        return _WrongCopy(
            f"serves {shown}, but a genuine {name} is at least {least_shown}: a wrong or truncated copy"
        )
    return None


def _fetch(url: str, part: Path, least: int | None, options: DownloadOptions, name: str) -> bool:
    """One attempt: bring `part` to the full remote size, resuming from what it holds. True when it
    did resume: some of `part` was there before (from this mirror or another, in this run or one before)."""
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, {"Range": f"bytes={have}-"} if have else {}, options)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and have:
                match = _UNSATISFIED_RANGE.match(exc.headers.get("Content-Range", ""))
                if match and int(match.group(1)) == have:
                    return True  # the part already holds the whole file
                part.unlink()  # larger than the remote file: not a prefix of it
                raise _Transient(
                    f"{url}: partial file did not match the remote file; starting over"
                ) from None
            raise _http_status_error(exc) from None

    with response:
        content_length = response.headers.get("Content-Length")
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"{url}: server answered a different range than asked; starting over")
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode, resumed = "ab", True
        else:  # 200: the server ignored Range (or there was none): start over cleanly
            have = 0
            total = int(content_length) if content_length is not None else None
            mode, resumed = "wb", False
        if total is not None and (wrong := _too_small(url, name, total, least)):
            raise wrong  # nothing written: a wrong copy is never resumed
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if total - have > free:
                needed, free_shown = format_bytes_pair(total - have, free)
                raise _Fatal(f"{name} needs {needed} more but {part.parent} has only {free_shown} free")

        show = options.progress if options.progress is not None else sys.stderr.isatty()
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=have,
                desc=name,
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
    if total is None and (wrong := _too_small(url, name, have, least)):
        part.unlink()
        raise wrong
    return resumed


@contextlib.contextmanager
def model_dir_lock(model_dir: Path, notify: Callable[[str], None]) -> Iterator[None]:
    """One writer per model directory at a time (two workers downloading together, an import during a
    download). Every writer holds it while it writes, so the first thing one does with it is remove
    the partial files a killed writer left (see `leftover_partials`): no live writer's is among them.
    OSError when the lock file cannot be opened."""
    if fcntl is None:  # pragma: no cover - no lock: a partial file may be a live writer's; kept
        yield
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notify(f"waiting for another download or import into {model_dir} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            _remove_leftover_partials(model_dir, notify)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_file(
    name: str,
    model_dir: Path,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    verifier: CheckpointVerifier | None = None,
    options: DownloadOptions | None = None,
    health: MirrorHealth | None = None,
) -> DownloadResult:
    """Fetch one checkpoint unless present; it appears under its final name only complete and verified.

    `health` carries which mirrors are down from one file to the next (`download` shares one).
    """
    options = options or DownloadOptions()
    model_dir = Path(model_dir)
    path = model_path(model_dir, name)
    prepare_model_dir(model_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create {path.parent} for {name} ({exc.strerror or exc}).") from None
    health = health or MirrorHealth(mirrors, options.notify)
    with model_dir_lock(model_dir, options.notify):
        if path.is_file():
            return DownloadResult(name, path, downloaded=False)
        architecture = verifier.architecture_problem(name) if verifier is not None else None
        if architecture is not None:
            raise VerificationError(f"{name} cannot be checked once downloaded: {architecture}.")
        if not mirrors:
            raise DownloadError(f"No mirror configured for {name}: set {MIRRORS_ENV}.")
        url = _download_to_part(name, path, list(mirrors), verifier, options, health)
        os.replace(_part_path(path), path)
        VerifiedCache(model_dir).put(name, path, ok=True, checks=_checks_done(verifier))
        log.info("%s: downloaded from %s to %s", name, url, path)
        return DownloadResult(name, path, downloaded=True, url=url)


def _download_to_part(
    name: str,
    path: Path,
    roots: list[str],
    verifier: CheckpointVerifier | None,
    options: DownloadOptions,
    health: MirrorHealth,
) -> str:
    """Retry rounds over the live roots in order; return the URL whose copy completed the .part and
    passed verification.

    A copy that arrives whole but fails verification is that mirror's failure for this file, like one
    far too small: it is said once, moved aside to `<file>.corrupt` (nothing of it is resumed) and the
    next mirror is tried. Only a copy that resumed an earlier partial file is fetched once more, afresh,
    from the same mirror first: the damage may be the earlier file's.
    """
    part = _part_path(path)
    least = (verifier or CheckpointVerifier()).min_size(name)
    failures: list[str] = []
    not_found: dict[str, str] = {}
    wrong_copies: set[str] = set()  # of `not_found`: roots that served a far too small file
    damaged: dict[str, str] = {}  # root -> its URL and what is wrong with its copy
    aside: Path | None = None  # where this call put the last damaged copy

    def candidates() -> list[str]:
        return [root for root in roots if not (root in health.down or root in not_found or root in damaged)]

    for round_ in range(options.retries + 1):
        if round_:
            delay = options.backoff * 2 ** (round_ - 1)
            options.notify(f"{name}: retrying in {delay:g} s ({failures[-1]})")
            time.sleep(delay)
        transient = False
        for root in candidates():
            url = _url(root, name)
            try:
                resumed = _fetch(url, part, least, options, name)
                problems = _copy_problems(name, part, verifier)
                if problems and resumed:
                    aside = _move_aside(part, path)
                    options.notify(
                        f"{name}: the copy resumed from an earlier partial download is damaged "
                        f"({_why(problems)}); fetching it afresh from {root}"
                    )
                    _fetch(url, part, least, options, name)
                    problems = _copy_problems(name, part, verifier)
            except _MirrorDown as exc:
                health.mark_down(root, str(exc))
                continue
            except _Unavailable as exc:
                not_found[root] = f"{url} ({exc})"
                if isinstance(exc, _WrongCopy):
                    wrong_copies.add(root)
                continue
            except _Transient as exc:
                transient = True
                failures.append(str(exc) if str(exc).startswith(url) else f"{url}: {exc}")
                continue
            except _Fatal as exc:
                raise DownloadError(f"Download of {name} failed: {exc}.") from None
            if not problems:
                if aside is not None:  # a damaged copy this call set aside: the good one replaces it
                    aside.unlink(missing_ok=True)
                return url
            aside = _move_aside(part, path)
            damaged[root] = f"{url} served a damaged copy ({_why(problems)})"
            if candidates():
                options.notify(
                    f"mirror {root} served a damaged copy of {CHECKPOINTS[name].path} ({_why(problems)}); "
                    "trying the next mirror"
                )
        if not transient:
            break  # every root is down, lacks the file or has a bad copy: another round changes nothing
    if all(root in health.down for root in roots):
        raise NoMirrorReachable({root: health.down[root] for root in roots})
    if failures:
        then = (
            f"The partial file {part} is kept: run the download again to resume."
            if part.exists()
            else "Run the download again to retry."
        )
        others = f" ({'; '.join(damaged.values())})" if damaged else ""
        raise DownloadError(
            f"Download of {name} failed after {round_ + 1} attempts: {failures[-1]}{others}. {then}"
        )
    reasons = [
        damaged.get(root) or not_found.get(root) or f"{root} (down: {health.down.get(root, 'no answer')})"
        for root in roots
    ]
    if damaged:
        raise VerificationError(
            f"No good copy of {name} on any mirror: {'; '.join(reasons)}. The last damaged copy was moved "
            f"aside to {aside}; set {MIRRORS_ENV} to a mirror with a good copy, or install one you have "
            "with `jukebot models import`."
        )
    if wrong_copies:  # found, but never a good copy: "not found" would send the operator looking
        raise NotFoundOnMirrors(
            f"No good copy of {name} on any mirror: tried {', '.join(reasons)}; set {MIRRORS_ENV} to a "
            "mirror with a good copy, or install one you have with `jukebot models import`."
        )
    raise NotFoundOnMirrors(
        f"{name} not found on any mirror: tried {', '.join(reasons)}; "
        f"set {MIRRORS_ENV} to a mirror that has it."
    )


# The checkpoint reader's advice and file names fit a file in the model directory, not a copy being
# downloaded: its .part is moved aside, and downloading it is what is under way.
_DOWNLOAD_ADVICE = re.compile(r"[;:]?\s*re-download it with `jukebot models download [^`]*`")


def _copy_problems(name: str, part: Path, verifier: CheckpointVerifier | None) -> list[str]:
    """What is wrong with a downloaded copy (in `part`), worded for the mirror that served it."""
    problems = []
    for problem in file_problems(name, part, verifier):
        problem = _DOWNLOAD_ADVICE.sub("", problem)
        for named, plain in ((f"cannot read checkpoint {part}: ", ""), (f"checkpoint {part}: ", "")):
            problem = problem.replace(named, plain)
        problems.append(problem.replace(f"checkpoint {part}", "it").replace(str(part), "the copy"))
    return problems


def _why(problems: Sequence[str]) -> str:
    return "; ".join(problem.rstrip(". ") for problem in problems)


@dataclass(frozen=True)
class PlannedFile:
    name: str
    size: int | None  # from the first mirror that answered; None when none said


def plan_download(
    names: Sequence[str],
    model_dir: Path,
    health: MirrorHealth,
    options: DownloadOptions,
    verifier: CheckpointVerifier | None = None,
) -> list[PlannedFile]:
    """Which of `names` are still missing, and their sizes: one HEAD request per file at the first live
    mirror that has it. A mirror that does not connect is marked down here, before anything is written.
    A size the download would refuse as far too small (see `CheckpointVerifier.min_size`) is that
    mirror's wrong copy, not the file's size: the next mirror is asked; None when none tells one."""
    planned = []
    for name in names:
        if model_path(model_dir, name).is_file():
            continue
        least = _least_size(name, verifier)
        size = None
        for root in health.alive():
            try:
                with _open(_url(root, name), {}, options, method="HEAD") as response:
                    length = response.headers.get("Content-Length")
                    size = int(length) if length is not None and length.isdigit() else None
            except _MirrorDown as exc:
                health.mark_down(root, str(exc))
                continue
            except urllib.error.HTTPError as exc:
                exc.close()  # not here, or no HEAD: the download itself tells
                continue
            if size is not None and least is not None and size < least:
                size = None  # a copy the download refuses from its size
                continue
            break
        planned.append(PlannedFile(name, size))
    return planned


def _least_size(name: str, verifier: CheckpointVerifier | None) -> int | None:
    """The smallest genuine copy of `name`, or None when that is not known (no shapes to go by, or a
    sidecar that does not say them: the download reports that)."""
    if verifier is None or verifier.architecture_problem(name) is not None:
        return None
    return verifier.min_size(name)


@dataclass
class DownloadReport:
    planned: list[PlannedFile]
    results: list[DownloadResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # name -> why


def download(
    name: str,
    model_dir: Path,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    verifier: CheckpointVerifier | None = None,
    options: DownloadOptions | None = None,
) -> DownloadReport:
    """Fetch whatever `name` (a model, a checkpoint or "all") still lacks, in order.

    Says the total size first. Raises NoMirrorReachable as soon as every mirror has failed to connect.
    """
    options = options or DownloadOptions()
    model_dir = Path(model_dir)
    names = resolve_names(name)
    prepare_model_dir(model_dir)  # before any request: a directory that cannot be written stops here
    health = MirrorHealth(mirrors, options.notify)
    planned = plan_download(names, model_dir, health, options, verifier)
    if planned and health.all_down():
        raise NoMirrorReachable(health.down)
    report = DownloadReport(planned)
    if planned:
        known = sum(file.size or 0 for file in planned)
        unknown = sum(file.size is None for file in planned)
        options.notify(
            f"{len(planned)} file(s) to fetch, "
            + (
                f"{format_bytes(known)} in all"
                if not unknown
                else "of unknown size"
                if unknown == len(planned)
                else f"{format_bytes(known)} in all besides {unknown} of unknown size"
            )
            + f", into {model_dir}"
        )
    for file_name in names:
        try:
            report.results.append(download_file(file_name, model_dir, mirrors, verifier, options, health))
        except NoMirrorReachable:
            raise
        except ModelFilesError as exc:
            report.failures[file_name] = str(exc)
    return report
