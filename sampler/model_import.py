"""`jukebot models import`: install checkpoints obtained elsewhere into the model directory.

Two sources:

* Hugging Face copies (`openai/jukebox-1b-lyrics`, `openai/jukebox-5b-lyrics`): one `JukeboxModel`
  state dict, renamed keys, maybe sharded. Split into the original parts (VQ-VAE, upsamplers, top prior)
  and written in the original format, so everything else reads them as if downloaded.
* Original `*.pth.tar` files (a copy of the published files, or a folder of them): copied as they are.

Every part is checked against the architecture it is for (the published one, or a sidecar's) before
anything is written, and verified again from disk afterwards (the loader sampling uses).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sampler.files import not_a_file
from sampler.jukebox.checkpoint import (
    PRIOR_PARTS,
    VQVAE_PART,
    CheckpointError,
    check_state_dict,
    load_hf_checkpoint,
    read_checkpoint,
    save_checkpoint,
    split_hf_state_dict,
    written_in_place,
)
from sampler.jukebox.registry import CHECKPOINTS, MODELS
from sampler.loading import expected_shapes_for
from sampler.model_files import (
    LOCK_FILE,
    CheckpointVerifier,
    ModelFilesError,
    model_dir_lock,
    model_dir_problem,
    model_path,
    prepare_model_dir,
    verify_file,
)

StateDict = Mapping[str, torch.Tensor]
_HF_KEY = re.compile(r"^(vqvae|priors\.\d+)\.")


class ModelImportError(ModelFilesError):
    """A source that cannot be imported; the message says why and what to do. Nothing was written."""


@dataclass(frozen=True)
class ImportResult:
    name: str
    path: Path
    outcome: Literal["imported", "kept"]  # kept: a file was already there (see `replace`)


def import_checkpoints(
    source: Path,
    model_dir: Path,
    *,
    model: str | None = None,
    name: str | None = None,
    replace: bool = False,
    notify: Callable[[str], None] = lambda message: None,
) -> list[ImportResult]:
    """Import `source` (an HF folder or file, a `.pth.tar` file, or a folder of them) into `model_dir`.

    `model` picks the top prior of an HF copy (found from its shapes otherwise); `name` says which
    checkpoint a single original file is (found from its path or shapes otherwise).
    """
    source, model_dir = Path(source), Path(model_dir)
    try:
        found = not_a_file(source)
    except OSError as exc:  # a folder on the way that cannot be entered
        raise ModelImportError(
            f"{source} cannot be read ({exc.strerror or exc}): fix its permissions."
        ) from None
    if found is not None and found.what != "a folder":
        if found.missing:
            raise ModelImportError(f"{source} does not exist.")
        target = f" (to {found.link_target}, which does not exist)" if found.broken_link else ""
        raise ModelImportError(
            f"{source} is {found.what}{target}: give a checkpoint file, or a folder of them."
        )
    if model is not None and model not in MODELS:
        raise ModelImportError(f"Unknown model {model!r}: use one of {', '.join(MODELS)}.")
    if name is not None and name not in CHECKPOINTS:
        raise ModelImportError(f"Unknown checkpoint {name!r}: use one of {', '.join(CHECKPOINTS)}.")
    problem = model_dir_problem(model_dir)
    if problem is not None:
        raise ModelImportError(problem)
    originals = sorted(source.rglob("*.pth.tar")) if source.is_dir() else []
    if source.is_dir() and not originals and not _hf_weight_files(source):
        raise ModelImportError(
            f"{source} holds no checkpoint files: give original *.pth.tar files (one, or a folder of them) "
            "or a Hugging Face copy's folder (pytorch_model*.bin or model*.safetensors)."
        )
    try:
        if originals:
            if name is not None and len(originals) > 1:
                raise ModelImportError(f"--name fits one file, but {source} holds {len(originals)}.")
            planned = [(_original_name(file, model_dir, name), file) for file in originals]
            prepare_model_dir(model_dir)
            _require_writable(model_dir, [n for n, _ in planned], replace)
            with _writer(model_dir, notify):
                return [_install_copy(n, file, model_dir, replace, notify) for n, file in planned]
        if source.is_file():
            state = read_checkpoint(source, device="meta")
            if not any(_HF_KEY.match(key) for key in state):
                chosen = _original_name(source, model_dir, name)
                prepare_model_dir(model_dir)
                _require_writable(model_dir, [chosen], replace)
                with _writer(model_dir, notify):
                    return [_install_copy(chosen, source, model_dir, replace, notify)]
            parts = split_hf_state_dict(read_checkpoint(source))
        else:
            parts = load_hf_checkpoint(source)
    except CheckpointError as exc:
        why = _import_advice(str(exc)).rstrip(".")
        if source.is_dir():
            raise ModelImportError(f"Nothing in {source} could be imported: {why}.") from None
        raise ModelImportError(f"Cannot import {source}: {why}.") from None
    if not parts:  # never "ready" after importing nothing
        raise ModelImportError(f"Nothing in {source} could be imported: it holds no Jukebox weights.")
    return _install_parts(parts, source, model_dir, model, replace, notify)


def _hf_weight_files(folder: Path) -> list[Path]:
    """The files of a Hugging Face copy's weights in `folder` (sharded or not), of either format."""
    return [path for pattern in ("*.bin", "*.safetensors") for path in folder.glob(pattern) if path.is_file()]


# The checkpoint reader's advice for a bad file: right for the model directory, not for a file to import.
_DOWNLOAD_ADVICE = re.compile(r"re-download it with `jukebot models download <model>`")


def _import_advice(message: str) -> str:
    """A reader's error about a file being imported: a good copy of it is what to import instead."""
    return _DOWNLOAD_ADVICE.sub("import a good copy of it instead", message)


# ----------------------------------------------------------------------------- original files


def _fits(state: StateDict, name: str, model_dir: Path) -> bool:
    try:
        check_state_dict(state, expected_shapes_for(name, model_dir))
    except CheckpointError:
        return False
    return True


def _original_name(file: Path, model_dir: Path, name: str | None) -> str:
    """Which checkpoint `file` is: as told, by its path in the published layout, or by its shapes."""
    state = read_checkpoint(file, device="meta")
    if name is None:
        by_path = [n for n, ckpt in CHECKPOINTS.items() if file.as_posix().endswith("/" + ckpt.path)]
        candidates = by_path or [n for n in CHECKPOINTS if _fits(state, n, model_dir)]
        if not candidates:
            raise ModelImportError(
                f"{file} fits none of the Jukebox checkpoints ({', '.join(CHECKPOINTS)}): "
                "it is another model, or damaged."
            )
        if len(candidates) > 1:
            raise ModelImportError(
                f"{file} could be any of {', '.join(candidates)} (their shapes are the same): "
                "say which with --name."
            )
        name = candidates[0]
    try:
        check_state_dict(state, expected_shapes_for(name, model_dir), what=f"{file} (as {name})")
    except CheckpointError as exc:
        raise ModelImportError(f"{_import_advice(str(exc))} Nothing was imported.") from None
    return name


def _install_copy(
    name: str, file: Path, model_dir: Path, replace: bool, notify: Callable[[str], None]
) -> ImportResult:
    target = model_path(model_dir, name)
    if target.exists() and not replace:
        notify(f"{name}: {target} is already there; kept (--replace overwrites it)")
        return ImportResult(name, target, "kept")
    with _writing(target, source=file):
        target.parent.mkdir(parents=True, exist_ok=True)
        with written_in_place(target) as tmp:  # a downloaded file's mode (the umask's), not 0600
            shutil.copyfile(file, tmp)
    return _verified(name, model_dir, f"{file}")


# ----------------------------------------------------------------------------- writing


def _unwritable(folder: Path) -> ModelImportError:
    return ModelImportError(
        f"Cannot write to {folder} in the model directory (permission denied): fix its permissions "
        "(the user running jukebot needs write access)."
    )


def _require_writable(model_dir: Path, names: list[str], replace: bool) -> None:
    """Before anything is written: every folder a file will be written into can be (the nearest one
    there, for one still to be created); ModelImportError naming the first that cannot."""
    for name in names:
        target = model_path(model_dir, name)
        if target.exists() and not replace:
            continue  # kept: nothing written
        folder = target.parent
        while not folder.exists() and folder != model_dir and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise _unwritable(folder)


@contextlib.contextmanager
def _writer(model_dir: Path, notify: Callable[[str], None]) -> Iterator[None]:
    """Holding the model directory's lock, as downloads do: one writer at a time, and the partial files
    an earlier import left when it was killed are removed first (none is a live writer's then)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(model_dir_lock(model_dir, notify))
        except OSError as exc:
            lock = model_dir / LOCK_FILE
            raise ModelImportError(
                f"Cannot lock {lock} ({exc.strerror or exc}), which keeps writers of the model directory "
                "from writing at once: fix its permissions (the user running jukebot needs write access); "
                "nothing was imported."
            ) from None
        yield


@contextlib.contextmanager
def _writing(target: Path, source: Path | None = None) -> Iterator[None]:
    """Writing `target` (beside it, then renamed), maybe copying `source`: an OSError is one sentence,
    and the partial file is gone already (the writer removes it)."""
    try:
        yield
    except OSError as exc:
        if source is not None and exc.filename == str(source):
            raise ModelImportError(
                f"Cannot read {source} ({exc.strerror or exc}): fix its permissions; nothing was imported "
                "from it."
            ) from None
        if isinstance(exc, PermissionError):
            raise _unwritable(target.parent) from None
        raise ModelImportError(
            f"Cannot write {target} ({exc.strerror or exc}): check the disk or file system it is on; "
            "nothing was written in its place."
        ) from None


# ----------------------------------------------------------------------------- Hugging Face copies


def _install_parts(
    parts: Mapping[str, StateDict],
    source: Path,
    model_dir: Path,
    model: str | None,
    replace: bool,
    notify: Callable[[str], None],
) -> list[ImportResult]:
    names = {VQVAE_PART: "vqvae", PRIOR_PARTS[0]: "upsampler_level_0", PRIOR_PARTS[1]: "upsampler_level_1"}
    if PRIOR_PARTS[2] in parts:
        names[PRIOR_PARTS[2]] = _top_prior(parts[PRIOR_PARTS[2]], source, model_dir, model)
    planned = [(names[part], state) for part, state in parts.items()]
    for name, state in planned:  # every part checked before any is written
        try:
            check_state_dict(state, expected_shapes_for(name, model_dir), what=f"{source}'s {name}")
        except CheckpointError as exc:
            raise ModelImportError(f"{_import_advice(str(exc))} Nothing was imported.") from None
    prepare_model_dir(model_dir)
    _require_writable(model_dir, [name for name, _ in planned], replace)
    with _writer(model_dir, notify):
        return _write_parts(planned, source, model_dir, replace, notify)


def _write_parts(
    planned: list[tuple[str, StateDict]],
    source: Path,
    model_dir: Path,
    replace: bool,
    notify: Callable[[str], None],
) -> list[ImportResult]:
    results = []
    for name, state in planned:
        target = model_path(model_dir, name)
        if target.exists() and not replace:
            notify(f"{name}: {target} is already there; kept (--replace overwrites it)")
            results.append(ImportResult(name, target, "kept"))
            continue
        with _writing(target):
            save_checkpoint(state, target)  # the original format, atomically, with a download's mode
        results.append(_verified(name, model_dir, f"{source}"))
    return results


def _top_prior(state: StateDict, source: Path, model_dir: Path, model: str | None) -> str:
    if model is not None:
        return MODELS[model].top_prior
    tops = [m.top_prior for m in MODELS.values() if _fits(state, m.top_prior, model_dir)]
    if len(tops) != 1:
        raise ModelImportError(
            f"The top prior in {source} fits {'none' if not tops else ' and '.join(tops)} of the Jukebox "
            f"models; say which with --model ({', '.join(MODELS)})."
        )
    return tops[0]


def _verified(name: str, model_dir: Path, source: str) -> ImportResult:
    """Read the installed file back as sampling will; a bad one is moved aside and reported."""
    verifier = CheckpointVerifier(expected_shapes_for=lambda n: expected_shapes_for(n, model_dir))
    result = verify_file(name, model_dir, verifier)
    if not result.ok:
        raise ModelImportError(
            f"{name} from {source} failed verification once written: {'; '.join(result.problems)}."
        )
    return ImportResult(name, result.path, "imported")
