"""The priors `bench/gpu.py` measures: published sizes with random weights, built as layer slices.

Speed does not depend on the weights, so nothing is downloaded. A slice keeps the published
width, context and attention pattern of a run of consecutive layers whose cost per layer is the
prior's average (GPU-PLAN §5), so that a figure scales to the full depth:

    upsampler   layers 0–5    two of each of block, transpose, previous-block
    5b_lyrics   layers 9–18   nine block-kind layers and one cross-attention layer (7 of 79 are cross)
    1b_lyrics   layers 31–47  a prime-attention layer and the dense layer

`--dry-run` shrinks width and context (`tiny`) but keeps the depth and the layer pattern, so the
same slices are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import cast

import torch

from sampler.jukebox.cascade import SamplingRequest
from sampler.jukebox.prior import Conditioning, JukeboxPrior, PriorConfig
from sampler.jukebox.transformer import (
    BLOCK,
    CROSS,
    DENSE,
    PREV_BLOCK,
    PRIME,
    TRANSPOSE,
    TransformerConfig,
    attn_func_for_layer,
)

# The cascade's default hop per level (1/2, 1/2, 1/8 of a window): new tokens per window.
HOP_FRACTION = cast(tuple[float, ...], SamplingRequest.__dataclass_fields__["hop_fraction"].default)


@dataclass(frozen=True)
class PriorSpec:
    """One prior the bench measures: its published config, the slice and the levels it samples."""

    name: str
    published: str
    layers: range
    levels: tuple[int, ...]
    reference_chunk: int  # the reference's prefill chunk at this prior's level(s)


PRIORS = {
    spec.name: spec
    for spec in (
        PriorSpec("upsampler", "upsampler_level_0", range(0, 6), (1, 0), 32),
        PriorSpec("5b_lyrics", "prior_5b_lyrics", range(9, 19), (2,), 16),
        PriorSpec("1b_lyrics", "prior_1b_lyrics", range(31, 48), (2,), 16),
    )
}
# The priors of each stack, top first; the upsamplers of levels 1 and 0 share one architecture.
STACKS = {"5b_lyrics": ("5b_lyrics", "upsampler"), "1b_lyrics": ("1b_lyrics", "upsampler")}


@dataclass(frozen=True)
class SliceTransformerConfig(TransformerConfig):
    """A transformer of `depth` layers with the attention functions of layers first_layer… of the
    full prior (the base class numbers layers from 0)."""

    first_layer: int = 0

    @property
    def attn_funcs(self) -> list[int]:
        return [attn_func_for_layer(self.attn_order, self.first_layer + d) for d in range(self.depth)]


@dataclass(frozen=True)
class SlicePriorConfig(PriorConfig):
    """A prior whose token model holds only `prior_depth` layers starting at `first_layer`."""

    first_layer: int = 0

    def transformer_config(self) -> TransformerConfig:
        base = super().transformer_config()
        values = {f.name: getattr(base, f.name) for f in fields(base)}
        return SliceTransformerConfig(**values, first_layer=self.first_layer)


def tiny(config: PriorConfig) -> PriorConfig:
    """The same kind of prior for a CPU dry run: narrow and short, with the published depth and layer
    pattern (so the slices exist); block length 16 as blocks of 8 over 128 positions."""
    changes: dict[str, int] = dict(prior_width=32, n_ctx=128, blocks=8)
    if config.is_upsampler:
        changes.update(cond_width=16, cond_depth=2)
    elif config.single_enc_dec:
        changes.update(n_tokens=16)
    elif config.lyric_encoder:
        changes.update(n_tokens=16, prime_width=16, prime_depth=2, prime_blocks=4)
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def prior_config(spec: PriorSpec, dry_run: bool, layers: range | None = None) -> PriorConfig:
    """The published config of `spec` (tiny in a dry run), cut to `layers` when given."""
    config = PriorConfig.published(spec.published)
    if dry_run:
        config = tiny(config)
    if layers is None:
        return config
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values.update(prior_depth=len(layers), first_layer=layers.start)
    return SlicePriorConfig(**values)


def build_prior(
    spec: PriorSpec,
    *,
    dry_run: bool,
    device: torch.device,
    dtype: torch.dtype,
    layers: range | None = None,
    level: int | None = None,
    seed: int = 0,
) -> JukeboxPrior:
    """A prior of `spec` with random weights on `device`; `layers` None: the full published depth.
    `level` picks the other upsampler (same architecture, other weights)."""
    config = prior_config(spec, dry_run, layers)
    if level is not None and level != config.level:
        config = dataclasses.replace(config, level=level)
    torch.manual_seed(seed)
    with torch.device(device):
        prior = JukeboxPrior(config).eval()
    return prior.to_compute_dtype(dtype)


def full_depth(spec: PriorSpec, dry_run: bool) -> int:
    return prior_config(spec, dry_run).prior_depth


def random_conditioning(prior: JukeboxPrior, batch: int, device: torch.device, seed: int = 0) -> Conditioning:
    """Conditioning of the right shapes and a plausible scale; its values do not change the speed."""
    cfg = prior.config
    width = cfg.prior_width
    generator = torch.Generator(device=device).manual_seed(seed)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=generator) * 0.02

    encoder_states = prefix_ids = None
    if cfg.lyric_encoder:
        encoder_states = noise(batch, cfg.n_tokens, width) * 50  # a LayerNorm's output: unit scale
    if cfg.single_enc_dec:
        prefix_ids = torch.randint(0, cfg.n_vocab, (batch, cfg.n_tokens), device=device, generator=generator)
    return Conditioning(
        start=noise(batch, 1, width),
        x_cond=noise(batch, cfg.seq_len, width),
        encoder_states=encoder_states,
        prefix_ids=prefix_ids,
    )


def random_ids(
    prior: JukeboxPrior, batch: int, length: int, device: torch.device, seed: int = 1
) -> torch.Tensor:
    """Known music tokens (N, length) as ids of the prior's vocabulary."""
    generator = torch.Generator(device=device).manual_seed(seed)
    codes = torch.randint(0, prior.config.l_bins, (batch, length), device=device, generator=generator)
    return prior.codes_to_ids(codes)


def window_tokens(config: PriorConfig) -> tuple[int, int]:
    """(known tokens prefilled, new tokens sampled) of one window in the middle of a song."""
    new = int(config.n_ctx * HOP_FRACTION[config.level])
    return config.n_ctx - new, new


# ---- bytes read by one decode step, from the shapes


def layer_weight_bytes(config: PriorConfig, func: int, dtype: torch.dtype) -> int:
    """The matrices and biases one decode step reads in one layer (cross-attention's k, v projection
    runs once per window: not counted)."""
    width, n_state, hidden = (
        config.prior_width,
        int(config.m_attn * config.prior_width),
        int(config.m_mlp * config.prior_width),
    )
    qkv = n_state if func == CROSS else 3 * n_state
    elements = (width + 1) * qkv + (n_state + 1) * width + (width + 1) * hidden + (hidden + 1) * width
    return elements * torch.empty(0, dtype=dtype).element_size()


def head_bytes(config: PriorConfig) -> int:
    """The fp32 output head, read every step."""
    return config.bins * config.prior_width * 4


def layer_kv_slots(config: PriorConfig, func: int, position: int, static: bool) -> int:
    """Keys one step at transformer position `position` reads in a layer of kind `func`: the fixed
    range of the static step, or what the sliced step sees at that position."""
    tc = config.transformer_config()
    b, rows = tc.block_ctx, -(-tc.seq_len // tc.block_ctx)
    if static:
        slots = {DENSE: tc.seq_len, BLOCK: b, TRANSPOSE: rows, PREV_BLOCK: b, PRIME: tc.prime_window}
    else:
        slots = {
            DENSE: position + 1,
            BLOCK: position % b + 1,
            TRANSPOSE: position // b + 1,
            PREV_BLOCK: b,
            PRIME: min(position + 1, tc.prime_window),
        }
    slots[CROSS] = tc.encoder_len
    return slots[func]


def step_bytes(
    config: PriorConfig, funcs: Sequence[int], dtype: torch.dtype, batch: int, static: bool
) -> dict[str, int]:
    """Weights, KV cache and head bytes of one decode step through layers of kinds `funcs`, in the
    middle of a window."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    position = config.prefix_len + config.n_ctx // 2
    n_state = int(config.m_attn * config.prior_width)
    weights = sum(layer_weight_bytes(config, f, dtype) for f in funcs)
    kv = sum(2 * layer_kv_slots(config, f, position, static) * n_state * batch * itemsize for f in funcs)
    return {
        "weights": weights,
        "kv": kv,
        "head": head_bytes(config),
        "total": weights + kv + head_bytes(config),
    }


def attn_funcs(config: PriorConfig) -> list[int]:
    return config.transformer_config().attn_funcs
