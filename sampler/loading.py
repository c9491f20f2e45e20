"""Build a sampling cascade from the model directory.

A checkpoint's architecture is the published one for its registry name, unless a sidecar
`<file>.hparams.json` (original hparam names) says otherwise: that is how tiny test models, and
fine-tuned models of another size, live in a model directory. Priors load one level at a time
when asked, so a worker short of memory can keep only the level it samples.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from sampler.batch_sizes import BatchSizes
from sampler.jukebox.cascade import Cascade, PriorSource
from sampler.jukebox.checkpoint import CheckpointError, WeightsOverflow, load_checkpoint
from sampler.jukebox.decoding import DecodeOptions, empty_cuda_cache
from sampler.jukebox.prior import JukeboxPrior, PriorConfig
from sampler.jukebox.registry import MODELS, PRIOR_HPARAMS, VQVAE_HPARAMS
from sampler.jukebox.vqvae import VQVAE, VQVAEConfig
from sampler.model_files import (
    SIDECAR_FIX,
    WEIGHTS_READ,
    ModelFilesError,
    ModelFilesMissing,
    ModelFileUnreadable,
    SidecarError,
    VerifiedCache,
    file_status,
    model_path,
    name_the_checkpoint,
    read_sidecar,
    require_checkpoints,
    sidecar_path,
)
from sampler.residency import ResidentEstimate
from sampler.worker.memory import is_out_of_memory

log = logging.getLogger(__name__)


def write_sidecar(checkpoint: Path, hparams: dict[str, Any]) -> Path:
    path = sidecar_path(checkpoint)
    path.write_text(json.dumps(hparams, indent=1, sort_keys=True))
    return path


class SidecarFault(CheckpointError):
    """A checkpoint's `.hparams.json` sidecar does not describe an architecture: not a JSON object, or
    hparams the model cannot be built from (a key missing, unknown, or of the wrong type). The sidecar
    (`sidecar`) is what to fix, not the checkpoint; the message names it and says how."""

    def __init__(self, sidecar: Path, message: str) -> None:
        self.sidecar = sidecar
        super().__init__(message)


def _hparams(checkpoint: Path, published: dict[str, Any]) -> dict[str, Any]:
    """The architecture in `checkpoint`'s sidecar, or `published` when it has none. ModelFileUnreadable
    when this user may not read the sidecar; SidecarFault (what to fix) when it is malformed."""
    try:
        data = read_sidecar(checkpoint)
    except SidecarError as exc:
        raise SidecarFault(sidecar_path(checkpoint), str(exc)) from None
    return published if data is None else data


_Config = TypeVar("_Config")


def _from_sidecar(name: str, checkpoint: Path, build: Callable[[], _Config]) -> _Config:
    """`build()`, the config of checkpoint `name` from the hparams of its sidecar: SidecarFault naming
    that sidecar, the hparam and the fix when they describe no architecture this code can build."""
    try:
        return build()
    except (ValueError, TypeError, KeyError) as exc:  # PriorConfigError, VQVAEConfigError, …
        sidecar = sidecar_path(checkpoint)
        raise SidecarFault(
            sidecar, f"{sidecar} does not describe the architecture of {name} ({exc}); {SIDECAR_FIX}"
        ) from None


def vqvae_config(checkpoint: Path, hparams: dict[str, Any]) -> VQVAEConfig:
    """The VQ-VAE config of `hparams` (its sidecar's, at `checkpoint`), each value of the type it
    must have; SidecarFault naming the sidecar and the hparam otherwise."""

    if hparams is VQVAE_HPARAMS:
        return VQVAEConfig.from_hparams(hparams)
    return _from_sidecar("vqvae", checkpoint, lambda: VQVAEConfig.from_hparams(hparams))


def prior_config(
    name: str,
    checkpoint: Path,
    hparams: dict[str, Any],
    vqvae_checkpoint: Path,
    vqvae_hparams: dict[str, Any],
) -> PriorConfig:
    """The config of prior `name` from its hparams (its sidecar's, at `checkpoint`, or the published
    ones) on the VQ-VAE of `vqvae_hparams` (checked first: `vqvae_config`). SidecarFault names the
    sidecar at fault: the prior's own, else the VQ-VAE's it cannot be built on."""

    def build() -> PriorConfig:
        return PriorConfig.from_hparams(hparams, vqvae_hparams)

    if hparams is not PRIOR_HPARAMS[name]:
        return _from_sidecar(name, checkpoint, build)
    if vqvae_hparams is not VQVAE_HPARAMS:
        return _from_sidecar("vqvae", vqvae_checkpoint, build)
    return build()


class ModelFileUnusable(CheckpointError):
    """A file of the model is present but cannot be used: damaged, truncated, of another architecture
    than its sidecar (or the published one) says, or its sidecar unreadable. Names the file
    (`name`, the registry's checkpoint name, and `path`) so that the verdict can be recorded;
    `detail` is the reader's own explanation (for the operator: it names paths). `sidecar`: the
    file's sidecar, when it is what is wrong (it describes no architecture), not the checkpoint."""

    def __init__(self, model: str, name: str, path: Path, detail: str, sidecar: Path | None = None) -> None:
        self.model, self.name, self.path, self.detail, self.sidecar = model, name, path, detail, sidecar
        super().__init__(detail)


def record_unusable(model_dir: Path, exc: ModelFileUnusable, detail: str | None = None) -> None:
    """Record in the model directory's verification cache that `exc`'s file failed as sampling loaded
    it (`detail`: how to say why, `exc.detail` by default), so that `jukebot models list`, `doctor`,
    `verify` and every worker on the directory see it failing until it or its sidecars change.
    OSError when the cache cannot be written."""
    # A sidecar `verify` checks itself; a weight overflowing float16 is fine in the file (float32
    # loads it), so `verify` may clear that verdict. NaN in the weights stands until the file changes.
    fine_in_the_file = exc.sidecar is not None or isinstance(exc.__cause__, WeightsOverflow)
    checks = "loads" if fine_in_the_file else WEIGHTS_READ
    # (the file named is the one whose sidecar is at fault: `ModelDirectory.prior_config`)
    sidecar_of = exc.name if exc.sidecar is not None else None
    VerifiedCache(model_dir).put(
        exc.name, exc.path, ok=False, checks=checks, problems=[detail or exc.detail], sidecar_of=sidecar_of
    )


class ModelDirectory:
    """The checkpoints of one published model (e.g. '1b_lyrics') in a model directory.

    A file that went missing since (deleted or moved while a worker serves the model) raises
    `ModelFilesMissing`; one this user may not read, `ModelFileUnreadable` (a ModelFilesMissing: the
    file may be fine); one that is there but cannot be used, `ModelFileUnusable`."""

    def __init__(self, model_dir: Path | str, model: str) -> None:
        self.model_dir = Path(model_dir)
        self.model = model
        self.paths = require_checkpoints(self.model_dir, model)
        self.published = MODELS[model]
        vqvae = self.published.vqvae
        with self._reading(vqvae):
            self.vqvae_hparams = _hparams(self.paths[vqvae], VQVAE_HPARAMS)
            self.vqvae_config = vqvae_config(self.paths[vqvae], self.vqvae_hparams)
        self.prior_names = self.published.priors

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """Tell a file gone (ModelFilesMissing) or one this user may not read (ModelFileUnreadable)
        from one that cannot be used (ModelFileUnusable): only that one is damaged."""
        path = self.paths[name]
        try:
            yield
        except ModelFileUnusable:
            raise
        except CheckpointError as exc:
            self._raise_unless_here(name)
            if exc.__cause__ is not None and is_out_of_memory(exc.__cause__):
                raise exc.__cause__ from None  # the reader ran out of memory: the file may be fine
            sidecar = exc.sidecar if isinstance(exc, SidecarFault) else None
            problem = name_the_checkpoint(str(exc), self.model)  # the advice's placeholder: the model
            raise ModelFileUnusable(self.model, name, path, problem, sidecar) from exc
        except (PermissionError, FileNotFoundError):
            # Gone, or this user may not read it (no verdict on the file): as `file_status` sees it,
            # which also decides whether the model is served.
            self._raise_unless_here(name)
            raise
        # Anything else (EIO on a failing disk; a denial `file_status` does not see, from a security
        # module) is raised as it is: the job crashes, is tried again after a pause, then fails with
        # the reason. Released instead, it was claimed again at once, forever: the model looks served.

    def _raise_unless_here(self, name: str) -> None:
        """ModelFilesMissing when the file is gone, ModelFileUnreadable when this user may not read it."""
        status = file_status(name, self.model_dir)
        if status.state == "unreadable":
            raise ModelFileUnreadable(status.path, status.description, self.model)
        if status.state in ("missing", "partial"):
            raise ModelFilesMissing(self.model, self.model_dir, [name])

    def prior_config(self, level: int) -> PriorConfig:
        name, vqvae = self.prior_names[level], self.published.vqvae
        with self._reading(name):
            hparams = _hparams(self.paths[name], PRIOR_HPARAMS[name])
        # the file whose sidecar is at fault is the one said to be unusable: the VQ-VAE's, when the prior
        # has the published architecture and cannot be built on the VQ-VAE its sidecar describes
        with self._reading(name if hparams is not PRIOR_HPARAMS[name] else vqvae):
            return prior_config(name, self.paths[name], hparams, self.paths[vqvae], self.vqvae_hparams)

    def load_vqvae(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> VQVAE:
        with torch.device("meta"):
            vqvae = VQVAE(self.vqvae_config)
        name = self.published.vqvae
        with self._reading(name):
            load_checkpoint(vqvae, self.paths[name], device=device, name=name)
        if dtype is not None:
            vqvae.to(dtype=dtype)
            vqvae.bottleneck.float()  # codebooks and distances stay fp32
        return vqvae.eval()

    def prior_on_meta(self, level: int, dtype: torch.dtype = torch.float32) -> JukeboxPrior:
        """The level's prior as it loads, without memory: shapes and dtypes, no weights."""
        with torch.device("meta"):
            return JukeboxPrior(self.prior_config(level), dtype=dtype)

    def load_prior(
        self, level: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> JukeboxPrior:
        prior = self.prior_on_meta(level, dtype)
        name = self.prior_names[level]
        with self._reading(name):
            load_checkpoint(prior, self.paths[name], device=device, name=self.model)
        return prior.eval()


class PriorDoesNotFit(torch.OutOfMemoryError):
    """Loading a prior ran out of the device's memory (an out-of-memory error still, for those that
    handle any): not the job's doing, unlike running out while sampling it."""

    def __init__(self, model: str, level: int, device: object, failure: BaseException) -> None:
        super().__init__(
            f"the {model} prior of level {level} does not fit on {device} ({str(failure).strip()[:120]})"
        )
        self.model, self.level = model, level


class LazyPriors(PriorSource):
    """Loads a level's prior on first use; `keep=False` frees each one when its level is done."""

    def __init__(
        self, directory: ModelDirectory, device: torch.device | str, dtype: torch.dtype, keep: bool = True
    ) -> None:
        super().__init__([None, None, None])
        self.directory, self.device, self.dtype, self.keep = directory, device, dtype, keep
        self._configs = [directory.prior_config(level) for level in range(3)]

    def config(self, level: int) -> PriorConfig:
        return self._configs[level]

    def acquire(self, level: int) -> JukeboxPrior:
        prior = self._priors[level]
        if prior is None:
            log.info("loading %s prior of level %d on %s", self.directory.model, level, self.device)
            try:
                prior = self.directory.load_prior(level, self.device, self.dtype)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                raise PriorDoesNotFit(self.directory.model, level, self.device, exc) from exc
            self._priors[level] = prior
        return prior

    def release(self, level: int) -> None:
        if not self.keep:
            self._priors[level] = None
            empty_cuda_cache()  # another level's thread may be capturing its graphs

    @property
    def loaded(self) -> tuple[int, ...]:
        """The levels whose prior is on the device now."""
        return tuple(level for level, prior in enumerate(self._priors) if prior is not None)

    def free(self) -> None:
        """Drop every loaded prior (e.g. to make room for the final decode); a later `acquire` loads
        its level again. Not while the cascade samples."""
        self._priors = [None] * len(self._priors)
        empty_cuda_cache()


def resident_estimate(
    directory: ModelDirectory, dtype: torch.dtype, batch_sizes: BatchSizes
) -> ResidentEstimate:
    """What the model's priors hold on the device when all three stay loaded: their weights as they
    load (the compute dtype, fp32 where the dtype policy keeps it) and each level's KV cache at its
    batch size, as sampling allocates it. Every level's cache counts at once: persistent decode
    buffers and levels sampled side by side keep them all. (A job of more samples than a batch holds
    a second cache for its remainder batch while it runs: the working margin's.) Built on the meta
    device: no memory."""
    weights = kv_caches = 0
    for level, batch in enumerate(batch_sizes):
        prior = directory.prior_on_meta(level, dtype)
        weights += sum(t.nbytes for t in itertools.chain(prior.parameters(), prior.buffers()))
        transformer = prior.prior.transformer
        config = transformer.config
        # cross-attention keys and values are computed from the lyric encoder's states
        states = torch.empty(batch, config.encoder_len, config.width, device="meta")
        cache = transformer.new_cache(batch, encoder_states=states if config.encoder_len else None)
        kv_caches += sum(layer.k.nbytes + layer.v.nbytes for layer in cache.layers)
    return ResidentEstimate(weights=weights, kv_caches=kv_caches)


class LoadOptionError(ModelFilesError, ValueError):
    """`load_cascade` was asked for a dtype or device it cannot load onto (as UnknownModelName is
    raised for a model name it does not know); the message names the argument and what to give."""


LOAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_load_options(device: object, dtype: object) -> torch.device:
    """The torch.device of `device`, checked to exist here, after `dtype` was checked to be one the model
    computes in; LoadOptionError naming the argument otherwise."""
    if not isinstance(dtype, torch.dtype) or dtype not in LOAD_DTYPES:
        names = ", ".join(str(t) for t in LOAD_DTYPES)
        raise LoadOptionError(f"dtype must be one of {names}, got {dtype!r}")
    if not isinstance(device, (str, torch.device)):
        raise LoadOptionError(f"device must be a torch.device or a name like 'cpu' or 'cuda', got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise LoadOptionError(
            f"device {device!r} is not a torch device: give e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from None
    try:  # torch's own failures: "Torch not compiled with CUDA enabled", "invalid device ordinal"
        probe = torch.empty(0, device=parsed)
    except (AssertionError, RuntimeError) as exc:
        raise LoadOptionError(f"device {device!r} is not available here ({str(exc).strip()[:120]})") from None
    if probe.is_meta:  # it takes the probe, but weights there hold no values to sample from
        raise LoadOptionError(
            f"device {str(parsed)!r} holds no data (only shapes), so nothing can be sampled on it: "
            "give e.g. 'cpu' or 'cuda'"
        )
    return parsed


def load_cascade(
    model_dir: Path | str,
    model: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    keep_priors: bool = True,
    decode: DecodeOptions | None = None,
) -> Cascade:
    """The cascade of `model` from the model directory (ModelFilesMissing names the download command).
    `dtype`: float32, float16 or bfloat16; `device` must exist here (LoadOptionError, a ValueError,
    before anything loads). `decode`: the sampling loop (None: the device's default)."""
    check_load_options(device, dtype)
    directory = ModelDirectory(model_dir, model)
    vqvae = directory.load_vqvae(device)
    # the id tables ship with the package (sampler/jukebox/data/ids)
    priors = LazyPriors(directory, device, dtype, keep=keep_priors)
    return Cascade(vqvae, priors, device=device, decode=decode, name=model)


def expected_shapes_for(name: str, model_dir: Path | str | None = None) -> dict[str, tuple[int, ...]]:
    """Every key and shape checkpoint `name` must hold: the published architecture, or the one its
    sidecar describes when `model_dir` has one. Built on the meta device: no memory is allocated."""
    from sampler.jukebox.checkpoint import expected_shapes
    from sampler.jukebox.registry import CHECKPOINTS

    if name not in CHECKPOINTS:
        raise CheckpointError(f"unknown checkpoint {name!r}: use one of {', '.join(CHECKPOINTS)}")

    def hparams(checkpoint: str, published: dict[str, Any]) -> dict[str, Any]:
        return (
            published if model_dir is None else _hparams(model_path(Path(model_dir), checkpoint), published)
        )

    vqvae_path = model_path(Path(model_dir or "."), "vqvae")
    vqvae_hparams = hparams("vqvae", VQVAE_HPARAMS)
    vqvae = vqvae_config(vqvae_path, vqvae_hparams)  # a prior's shapes depend on it too
    with torch.device("meta"):
        if name == "vqvae":
            module: torch.nn.Module = VQVAE(vqvae)
        else:
            path = model_path(Path(model_dir or "."), name)
            config = prior_config(name, path, hparams(name, PRIOR_HPARAMS[name]), vqvae_path, vqvae_hparams)
            module = JukeboxPrior(config)
    return expected_shapes(module)
