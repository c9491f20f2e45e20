"""Reading, checking and writing Jukebox checkpoints, for the VQ-VAE and the priors alike.

Two on-disk formats:

* The original `*.pth.tar` files: a `torch.save` dict with the weights under `'model'`, keys
  possibly prefixed with `module.`. Written back the same way by `save_checkpoint`.
* HuggingFace's `openai/jukebox-{1b,5b}-lyrics`: one `JukeboxModel` state dict, maybe sharded
  (`pytorch_model-0000k-of-0000n.bin`, or `.safetensors` when that package is installed). Its keys
  are renamed by rules (`hf_key_to_original`, `original_key_to_hf`) and split into parts.

A checkpoint is untrusted input: it is loaded with `weights_only=True`, so a file that carries any
object other than tensors and plain containers is refused before that object is built. Loading
into a model validates every key and shape first and only then copies, so a bad file never leaves
a half-loaded model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sampler.files import not_a_file

Shape = tuple[int, ...]
StateDict = dict[str, torch.Tensor]

# Parts of a published cascade, named as in the original file layout.
VQVAE_PART = "vqvae"
PRIOR_PARTS = ("prior_level_0", "prior_level_1", "prior_level_2")
_EXAMPLES = 3  # how many offending keys an error message names per kind


class CheckpointError(Exception):
    """A checkpoint file cannot be read or used."""


class WeightsOverflow(CheckpointError):
    """A weight that is a number in the file but past the range of the dtype it loads in (float16):
    the file is fine, the dtype is not."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint's keys or shapes do not fit the model it is loaded into."""

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        wrong_shapes: list[tuple[str, Shape, Shape]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.wrong_shapes = wrong_shapes


def _redownload_hint(name: str | None) -> str:
    return f"re-download it with `jukebot models download {name or '<model>'}`"


# ----------------------------------------------------------------------------------------------
# Original format


class _PickledHyperparams:
    """Stand-in for `jukebox.hparams.Hyperparams` (a dict subclass) that rebuilds it as a plain dict.

    Training checkpoints may carry their hparams beside the weights; allow-listing this one name
    (mapped to a plain dict) lets such a file load without unpickling arbitrary classes.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[misc]
        return {}


_ALLOWED_GLOBALS: list[Any] = [(_PickledHyperparams, "jukebox.hparams.Hyperparams")]
_ZIP_MAGIC = b"PK\x03\x04"


def _torch_load(path: Path, device: str = "cpu") -> Any:
    """torch.load with weights_only, memory-mapped when the file is in the zip format."""
    use_mmap = zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be memory-mapped
    with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
        try:
            return torch.load(path, map_location=device, weights_only=True, mmap=use_mmap)
        except RuntimeError:
            if not use_mmap:
                raise
            # some zip writers do not align records for mmap; a plain read still works
            return torch.load(path, map_location=device, weights_only=True)


def _explain_load_failure(path: Path, error: Exception, name: str | None) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    size = path.stat().st_size
    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(
        r"(?:Unsupported class|Trying to load unsupported GLOBAL) ([\w.]+)", text
    )
    if size == 0:
        why = "the file is empty"
    elif refused or ("weights_only" in text.lower() and "global" in text.lower()):
        obj = refused.group(1) if refused else "an object that is not a tensor"
        return CheckpointError(
            f"checkpoint {path} carries a Python object ({obj}) besides tensors; it was not unpickled, "
            "because loading it could run code from the file. Official checkpoints hold only tensors: "
            f"{_redownload_hint(name)}. For a file of your own, re-save it with save_checkpoint()."
        )
    elif head == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        why = f"the file is truncated ({size} bytes; the download was probably interrupted)"
    elif head[:1] != b"\x80" and head != _ZIP_MAGIC:
        why = "it is not a PyTorch checkpoint (no zip or pickle header)"
    else:
        why = f"the file is corrupt or not a checkpoint ({type(error).__name__}: {load_error_cause(error)})"
    return CheckpointError(f"cannot read checkpoint {path}: {why}; {_redownload_hint(name)}")


# Sentences of torch's own text that are advice, not a cause: chiefly to load the file again without
# weights_only, which would run whatever code a file from the internet carries. Never passed on.
_TORCH_ADVICE = re.compile(
    r"weights.only|arbitrary code|trusted source|file an issue|documentation|pytorch\.org", re.IGNORECASE
)
_TORCH_OPCODE = re.compile(r"^Unsupported operand (\d+)$")


def load_error_cause(error: Exception) -> str:
    """The technical cause in an error `torch.load` raised, without torch's advice (see `_TORCH_ADVICE`):
    what to put in a message about a file that could not be loaded."""
    text = str(error)
    if not text.strip():
        return "the file ends early" if isinstance(error, EOFError) else "no detail"
    kept = []
    for line in text.splitlines():
        for sentence in re.split(r"(?<=[.:])\s+", line.strip()):
            sentence = sentence.strip()
            if not sentence or _TORCH_ADVICE.search(sentence) or sentence.endswith("Unpickler error:"):
                continue
            opcode = _TORCH_OPCODE.match(sentence)
            kept.append(f"unsupported pickle opcode {opcode[1]}" if opcode else sentence)
    cause = " ".join(kept).strip()
    if len(cause) > 200:
        cause = cause[:199] + "…"
    return cause or "it holds something other than tensors and plain containers"


def read_checkpoint(
    path: str | os.PathLike[str], *, name: str | None = None, device: str = "cpu"
) -> StateDict:
    """The weights of an original-format checkpoint, with any `module.` prefix removed.

    `name` (the registry name, e.g. "vqvae") only improves the advice in error messages. `device="meta"`
    reads only the keys and shapes: `jukebot models verify` takes the same path as sampling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            not_a_file_problem(path)
            or f"checkpoint {path} does not exist; download it with "
            f"`jukebot models download {name or '<model>'}`"
        )
    try:
        payload = _torch_load(path, device)
    except Exception as e:  # unpickling garbage raises anything (a text file: IndexError)
        raise _explain_load_failure(path, e, name) from e
    return _weights_of(payload, path, name)


def not_a_file_problem(path: Path) -> str | None:
    """Why `path`, which is not a regular file, is not one: something else by that name, a symbolic link
    to nothing or a link loop (what to do included); None when nothing is there. PermissionError (or
    another OSError) when that cannot be told."""
    found = not_a_file(path)
    if found is None or found.missing:
        return None
    if found.broken_link:
        return (
            f"{path} is a broken symbolic link (to {found.link_target}, which does not exist): point it at "
            "the checkpoint file, or remove it"
        )
    if found.link_loop:
        return f"{path} is a symbolic link loop: point the link at the checkpoint file, or remove it"
    return (
        f"{path} is {found.what}, not a checkpoint file: put the checkpoint file itself there, or remove it"
    )


def _weights_of(payload: Any, path: Path, name: str | None) -> StateDict:
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(payload).__name__}, not a dict of weights; "
            f"{_redownload_hint(name)}"
        )
    weights = payload.get("model", payload)  # a bare state dict is accepted too
    if not isinstance(weights, Mapping) or not weights:
        raise CheckpointError(f"checkpoint {path} has no weights under 'model'; {_redownload_hint(name)}")
    state: StateDict = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"{_redownload_hint(name)}"
            )
        state[key.removeprefix("module.")] = value
    return state


@contextlib.contextmanager
def written_in_place(path: Path) -> Iterator[Path]:
    """A new, empty file beside `path` to write; renamed to `path` when the block ends, removed if it
    fails, so an interrupted write never replaces a good file.

    Named `<path>.<8 hex digits>.partial`, a new name each time. A process killed mid-write (SIGKILL:
    no clean-up runs) leaves it: `sampler.model_files.leftover_partials` finds such files, and a writer
    of the model directory removes them once it holds the directory's lock (`model_dir_lock`).

    Created with the mode any new file gets (0666 less the umask), as a downloaded checkpoint is, not
    `tempfile.mkstemp`'s 0600: the file keeps it once renamed, and a worker running as another user
    must be able to read the model. OSError (PermissionError: the folder cannot be written) when it
    cannot be created; then nothing was.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(tempfile.TMP_MAX):
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"no unused name for a partial file beside {path}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(
    module_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str]
) -> Path:
    """Write weights in the original format (`{'model': state_dict}`), atomically."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else dict(module_or_state)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_in_place(path) as tmp:
        torch.save({"model": state}, tmp)
    return path


# ----------------------------------------------------------------------------------------------
# Validation and loading


def expected_shapes(module: nn.Module) -> dict[str, Shape]:
    """Every state-dict key of `module` with its shape (works on the meta device)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Run `factory` with `meta` as the default device: the module has shapes but no memory."""
    with torch.device("meta"):
        return factory()


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, Shape], *, what: str = "checkpoint"
) -> None:
    """Raise `CheckpointMismatch` naming the first few missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        (k, tuple(v.shape), tuple(expected[k]))
        for k, v in state.items()
        if k in expected
        if tuple(v.shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'missing key')} (e.g. {', '.join(missing[:_EXAMPLES])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:_EXAMPLES])})")
    if wrong:
        shown = ", ".join(
            f"{k}: file {_fmt(got)} vs model {_fmt(want)}" for k, got, want in wrong[:_EXAMPLES]
        )
        parts.append(f"{_count(len(wrong), 'wrong shape')} ({shown})")
    message = (
        f"{what} does not fit the model: {', '.join(parts)}. "
        "Check that the file and the model configuration are for the same model."
    )
    raise CheckpointMismatch(message, missing, unexpected, wrong)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def first_non_finite(state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> str | None:
    """The key of the first floating-point tensor (of `keys`, default all) holding NaN or an infinity:
    a damaged file passes the keys-and-shapes check, then samples all-zero codes or crashes mid-job."""
    for key in state if keys is None else keys:
        tensor = state[key]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def non_finite_problem(key: str) -> str:
    return (
        f"holds weights that are not numbers (NaN or infinite values, first in {key}): the file is "
        f"damaged; {_redownload_hint(None)}"
    )


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def load_state_dict_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    expected: Mapping[str, Shape] | None = None,
    device: torch.device | str = "cpu",
    what: str = "checkpoint",
) -> nn.Module:
    """Validate `state` against the module (and `expected`, if given), then load it.

    Each tensor is cast to the dtype of the module's tensor it replaces, whatever the file holds.
    A module built on the meta device gets the tensors assigned on `device` instead of copied.
    """
    own = expected_shapes(module)
    if expected is not None:
        check_state_dict(state, expected, what=what)
    check_state_dict(state, own, what=what)
    targets = module.state_dict()
    on_meta = any(t.is_meta for t in targets.values())
    if on_meta:
        # assign only replaces what the state dict holds; anything else would stay without memory
        left = [n for n, b in module.named_buffers() if b.is_meta and n not in targets]
        if left:
            raise CheckpointError(
                f"cannot load into {type(module).__name__} built on the meta device: its non-persistent "
                f"buffers ({', '.join(left[:_EXAMPLES])}) are not in any checkpoint; build it on a real "
                "device"
            )
    with torch.no_grad():
        if on_meta:
            cast = {
                k: _owned(state[k].to(device=device, dtype=t.dtype), state[k]) for k, t in targets.items()
            }
            module.load_state_dict(cast, strict=True, assign=True)
        else:
            # copy_ casts dtype and device tensor by tensor, without a second full copy
            for key, target in targets.items():
                target.copy_(state[key])
    loaded = module.state_dict()
    bad = first_non_finite(loaded, [key for key in loaded if key in state])  # (buffers may hold -inf masks)
    if bad is not None:
        if first_non_finite(state, [bad]) is None:
            raise WeightsOverflow(
                f"{what}: weight {bad} is too large for {loaded[bad].dtype} (it overflows to infinity): "
                "load the model in float32 or bfloat16"
            )
        raise CheckpointError(f"{what} {non_finite_problem(bad)}")
    return module


def _owned(tensor: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """`tensor` in memory of its own: a cast that changed nothing returns the tensor read, which is
    memory-mapped to the file (`_torch_load`), and a model keeping it would change with the file, or
    die of SIGBUS once the file is cut short in place."""
    return tensor.clone() if tensor is read else tensor


def load_checkpoint(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    expected: Mapping[str, Shape] | None = None,
    device: torch.device | str = "cpu",
    name: str | None = None,
) -> nn.Module:
    """Read an original-format checkpoint and load it into `module` (strictly; see `load_state_dict_into`)."""
    state = read_checkpoint(path, name=name)
    return load_state_dict_into(module, state, expected=expected, device=device, what=f"checkpoint {path}")


# ----------------------------------------------------------------------------------------------
# HuggingFace format: key renaming rules (spec §6.3)


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]


def _rule(pattern: str, replace: str | Callable[[re.Match[str]], str]) -> _Rule:
    if isinstance(replace, str):
        template = replace
        return _Rule(re.compile(pattern), lambda m: m.expand(template))
    return _Rule(re.compile(pattern), replace)


def _apply(rules: Iterable[_Rule], key: str) -> str:
    for rule in rules:
        key = rule.pattern.sub(rule.replace, key, count=1)
    return key


_ENC = r"^(encoders\.\d+\.level_blocks\.)(\d+)\."
_DEC = r"^(decoders\.\d+\.level_blocks\.\d+\.)"
_CONV_NAMES = r"(c_attn|c_proj|c_fc|c_enc_kv)"
_RES_HF = {"1": "1", "3": "2"}  # conv3 (model.1) -> conv1d_1, conv1x1 (model.3) -> conv1d_2
_RES_ORIG = {v: k for k, v in _RES_HF.items()}

# original -> HF, applied in order to the key within its part
_VQVAE_TO_HF = [
    _rule(
        _ENC + r"model\.(\d+)\.1\.model\.(\d+)\.model\.([13])\.",
        lambda m: (
            f"{m[1]}{m[2]}.downsample_block.{2 * int(m[3]) + 1}.resnet_block.{m[4]}.conv1d_{_RES_HF[m[5]]}."
        ),
    ),
    _rule(_ENC + r"model\.(\d+)\.0\.", lambda m: f"{m[1]}{m[2]}.downsample_block.{2 * int(m[3])}."),
    _rule(_ENC + r"model\.\d+\.(weight|bias)$", r"\1\2.proj_out.\3"),
    _rule(_DEC + r"model\.0\.(weight|bias)$", r"\1proj_in.\2"),
    _rule(
        _DEC + r"model\.(\d+)\.0\.model\.(\d+)\.model\.([13])\.",
        lambda m: f"{m[1]}upsample_block.{2 * int(m[2]) - 2}.resnet_block.{m[3]}.conv1d_{_RES_HF[m[4]]}.",
    ),
    _rule(_DEC + r"model\.(\d+)\.1\.", lambda m: f"{m[1]}upsample_block.{2 * int(m[2]) - 1}."),
    _rule(r"^(bottleneck\.level_blocks\.\d+\.)k$", r"\1codebook"),
]
_PRIOR_TO_HF = [
    _rule(
        r"^conditioner_blocks\.0\.cond\.model\.(\d+)\.0\.blocks\.(\d+)\.model\.([13])\.",
        lambda m: (
            f"conditioner_blocks.upsampler.upsample_block.{2 * int(m[1]) - 2}"
            f".resnet_block.{m[2]}.conv1d_{_RES_HF[m[3]]}."
        ),
    ),
    _rule(r"^conditioner_blocks\.0\.cond\.model\.0\.", "conditioner_blocks.upsampler.proj_in."),
    _rule(
        r"^conditioner_blocks\.0\.cond\.model\.(\d+)\.1\.",
        lambda m: f"conditioner_blocks.upsampler.upsample_block.{2 * int(m[1]) - 1}.",
    ),
    _rule(r"^conditioner_blocks\.0\.x_emb\.", "conditioner_blocks.embed_tokens."),
    _rule(r"^conditioner_blocks\.0\.ln\.", "conditioner_blocks.layer_norm."),
    _rule(r"^y_emb\.(bow_genre_emb|artist_emb)\.emb\.weight$", r"metadata_embedding.\1.weight"),
    _rule(r"^y_emb\.", "metadata_embedding."),
    _rule(r"^prime_state_proj\.w$", "encoder.proj_in.weight"),
    _rule(r"^prime_state_proj\.b$", "encoder.proj_in.bias"),
    _rule(r"^prime_state_ln\.", "encoder.final_layer_norm."),
    _rule(r"^prime_x_out\.", "encoder.lm_head."),
    _rule(r"^prime_prior\.", "encoder."),
    _rule(r"^(prior|encoder)\.x_emb\.", r"\1.embed_tokens."),
    _rule(r"^prior\.x_out\.", "prior.fc_proj_out."),
    _rule(r"\.ln_([01])\.", r".layer_norm_\1."),
    _rule(r"\." + _CONV_NAMES + r"\.w$", r".\1.weight"),
    _rule(r"\." + _CONV_NAMES + r"\.b$", r".\1.bias"),
]


# HF -> original. proj_out needs the stage's downs_t, which the caller supplies.
def _vqvae_from_hf(downs_t: tuple[int, ...]) -> list[_Rule]:
    return [
        _rule(
            _ENC + r"downsample_block\.(\d+)\.resnet_block\.(\d+)\.conv1d_([12])\.",
            lambda m: f"{m[1]}{m[2]}.model.{int(m[3]) // 2}.1.model.{m[4]}.model.{_RES_ORIG[m[5]]}.",
        ),
        _rule(_ENC + r"downsample_block\.(\d+)\.", lambda m: f"{m[1]}{m[2]}.model.{int(m[3]) // 2}.0."),
        _rule(_ENC + r"proj_out\.", lambda m: f"{m[1]}{m[2]}.model.{downs_t[int(m[2])]}."),
        _rule(_DEC + r"proj_in\.", r"\1model.0."),
        _rule(
            _DEC + r"upsample_block\.(\d+)\.resnet_block\.(\d+)\.conv1d_([12])\.",
            lambda m: f"{m[1]}model.{int(m[2]) // 2 + 1}.0.model.{m[3]}.model.{_RES_ORIG[m[4]]}.",
        ),
        _rule(_DEC + r"upsample_block\.(\d+)\.", lambda m: f"{m[1]}model.{(int(m[2]) + 1) // 2}.1."),
        _rule(r"^(bottleneck\.level_blocks\.\d+\.)codebook$", r"\1k"),
    ]


_PRIOR_FROM_HF = [
    _rule(
        r"^conditioner_blocks\.upsampler\.upsample_block\.(\d+)\.resnet_block\.(\d+)\.conv1d_([12])\.",
        lambda m: (
            f"conditioner_blocks.0.cond.model.{int(m[1]) // 2 + 1}.0.blocks.{m[2]}.model.{_RES_ORIG[m[3]]}."
        ),
    ),
    _rule(
        r"^conditioner_blocks\.upsampler\.upsample_block\.(\d+)\.",
        lambda m: f"conditioner_blocks.0.cond.model.{(int(m[1]) + 1) // 2}.1.",
    ),
    _rule(r"^conditioner_blocks\.upsampler\.proj_in\.", "conditioner_blocks.0.cond.model.0."),
    _rule(r"^conditioner_blocks\.embed_tokens\.", "conditioner_blocks.0.x_emb."),
    _rule(r"^conditioner_blocks\.layer_norm\.", "conditioner_blocks.0.ln."),
    _rule(r"^metadata_embedding\.(bow_genre_emb|artist_emb)\.weight$", r"y_emb.\1.emb.weight"),
    _rule(r"^metadata_embedding\.", "y_emb."),
    _rule(r"^encoder\.proj_in\.weight$", "prime_state_proj.w"),
    _rule(r"^encoder\.proj_in\.bias$", "prime_state_proj.b"),
    _rule(r"^encoder\.final_layer_norm\.", "prime_state_ln."),
    _rule(r"^encoder\.lm_head\.", "prime_x_out."),
    _rule(r"^encoder\.", "prime_prior."),
    _rule(r"^(prior|prime_prior)\.embed_tokens\.", r"\1.x_emb."),
    _rule(r"^prior\.fc_proj_out\.", "prior.x_out."),
    _rule(r"\.layer_norm_([01])\.", r".ln_\1."),
    _rule(r"\." + _CONV_NAMES + r"\.weight$", r".\1.w"),
    _rule(r"\." + _CONV_NAMES + r"\.bias$", r".\1.b"),
]

# HF numbers the priors top first: priors.0 is original level 2.
_HF_PART = re.compile(r"^(vqvae|priors\.(\d+))\.(.+)$")


def _published_downs_t() -> tuple[int, ...]:
    from sampler.jukebox.registry import VQVAE_HPARAMS

    return tuple(VQVAE_HPARAMS["downs_t"])


def original_key_to_hf(part: str, key: str) -> str:
    """`part` ("vqvae" or "prior_level_L") and its original key -> the HF `JukeboxModel` key."""
    if part == VQVAE_PART:
        return "vqvae." + _apply(_VQVAE_TO_HF, key)
    if part in PRIOR_PARTS:
        level = PRIOR_PARTS.index(part)
        return f"priors.{len(PRIOR_PARTS) - 1 - level}." + _apply(_PRIOR_TO_HF, key)
    raise CheckpointError(
        f"unknown checkpoint part {part!r}; expected one of {VQVAE_PART}, {', '.join(PRIOR_PARTS)}"
    )


def hf_key_to_original(hf_key: str, downs_t: tuple[int, ...] | None = None) -> tuple[str, str]:
    """An HF `JukeboxModel` key -> (part, original key). `downs_t` defaults to the published VQ-VAE's."""
    match = _HF_PART.match(hf_key)
    if not match or (match[2] is not None and int(match[2]) >= len(PRIOR_PARTS)):
        raise CheckpointError(
            f"unexpected key {hf_key!r} in a HuggingFace Jukebox checkpoint: keys start with "
            f"'vqvae.' or 'priors.0.' .. 'priors.{len(PRIOR_PARTS) - 1}.'"
        )
    if match[2] is None:
        return VQVAE_PART, _apply(_vqvae_from_hf(downs_t or _published_downs_t()), match[3])
    level = len(PRIOR_PARTS) - 1 - int(match[2])
    return PRIOR_PARTS[level], _apply(_PRIOR_FROM_HF, match[3])


def _infer_downs_t(hf_keys: Iterable[str]) -> tuple[int, ...] | None:
    """Each encoder stage's downs_t, read from its highest `downsample_block` index."""
    highest: dict[int, int] = {}
    pattern = re.compile(r"^vqvae\.encoders\.\d+\.level_blocks\.(\d+)\.downsample_block\.(\d+)\.")
    for key in hf_keys:
        if m := pattern.match(key):
            stage, index = int(m[1]), int(m[2])
            highest[stage] = max(highest.get(stage, 0), index)
    if not highest:
        return None
    return tuple(highest.get(stage, 1) // 2 + 1 for stage in range(max(highest) + 1))


def split_hf_state_dict(hf_state: Mapping[str, torch.Tensor]) -> dict[str, StateDict]:
    """One HF `JukeboxModel` state dict -> {part: state dict with original keys}."""
    downs_t = _infer_downs_t(hf_state)
    parts: dict[str, StateDict] = {}
    for hf_key, value in hf_state.items():
        part, key = hf_key_to_original(hf_key, downs_t)
        parts.setdefault(part, {})[key] = value
    return parts


_SHARD = re.compile(r"^(pytorch_model|model)-(\d+)-of-(\d+)\.(bin|safetensors)$")


def _safetensors_available() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _hf_files(root: Path) -> list[Path]:
    """The weight files of an HF checkpoint directory, checked complete."""
    kinds = ["safetensors", "bin"] if _safetensors_available() else ["bin"]
    for kind in kinds:
        base = "model.safetensors" if kind == "safetensors" else "pytorch_model.bin"
        index = root / f"{base}.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{index} is not a valid shard index ({e}); re-download the model"
                ) from e
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(
                    f"{index} is not a valid shard index (its weight_map is not a map of keys to shard "
                    "file names); re-download the model"
                )
            if not weight_map:
                raise CheckpointError(
                    f"{index} is not a valid shard index: its weight_map is empty, so it names no weights "
                    "and no shard file to read them from; re-download the model"
                )
            files = [root / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(
                    f"{root} lacks shard(s) {', '.join(absent)} named in {index.name}; re-download the model"
                )
            return files
        shards = sorted(p for p in root.iterdir() if (m := _SHARD.match(p.name)) and m[4] == kind)
        if shards:
            total = int(_SHARD.match(shards[0].name)[3])  # type: ignore[index]
            stem = _SHARD.match(shards[0].name)[1]  # type: ignore[index]
            wanted = [root / f"{stem}-{i:05d}-of-{total:05d}.{kind}" for i in range(1, total + 1)]
            absent = [f.name for f in wanted if not f.is_file()]
            if absent:
                raise CheckpointError(f"{root} lacks shard(s) {', '.join(absent)}; re-download the model")
            return wanted
        if (root / base).is_file():
            return [root / base]
    raise CheckpointError(
        f"{root} holds no HuggingFace weights (pytorch_model*.bin"
        f"{' or model*.safetensors' if _safetensors_available() else ''})"
        + ("" if _safetensors_available() else "; install `safetensors` to read .safetensors files")
    )


def _read_hf_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path}: {e}; re-download the model") from e
    return read_checkpoint(path)


def load_hf_checkpoint(path: str | os.PathLike[str]) -> dict[str, StateDict]:
    """Read an HF Jukebox checkpoint (directory, possibly sharded, or one file) into parts.

    Returns {"vqvae": ..., "prior_level_0": ..., ...} with original keys, ready for
    `load_state_dict_into`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"HuggingFace checkpoint {path} does not exist")
    files = _hf_files(path) if path.is_dir() else [path]
    merged: StateDict = {}
    for file in files:
        for key, value in _read_hf_file(file).items():
            if key in merged:
                raise CheckpointError(
                    f"key {key!r} appears in more than one shard ({file.name}); re-download the model"
                )
            merged[key] = value
    if not merged:
        raise CheckpointError(f"{path} holds no weights; re-download the model")
    return split_hf_state_dict(merged)
