"""The Jukebox transformer: Conv1D, fp32 LayerNorm, MLP, factored attention with a static KV cache.

Numbers and quirks follow jukebox-spec §2.1 and §3 (the key names match the published checkpoints):

* `Conv1D` holds its weight as (n_in, n_out), the transpose of `nn.Linear`.
* `LayerNorm` always computes in fp32 and returns the input dtype.
* MLP hidden size = width (m_mlp = 1), attention inner size = width / 4 (m_attn = 0.25), quick_gelu.
* Attention functions by layer (`attn_order`): 0 dense, 1 block, 2 transpose-block, 3 previous-block,
  6 cross-attention to the lyric encoder, 7 prime attention over the lyric prefix (+ one block).
* Reference arithmetic (`fast_attention = False`, the default): scores `q·kᵀ` in the activation dtype,
  then scaled, then cast to fp32, masked additively with −1e9, softmaxed in fp32 and cast back.
  `fast_attention = True` uses `F.scaled_dot_product_attention` with boolean masks instead (same maths,
  different rounding), for speed on accelerators.

A model's compute dtype is the dtype of its Conv1D weights, chosen once (`Transformer.to_compute_dtype`):
the residual stream runs in it, LayerNorm and softmax in fp32, and the output is returned in fp32.

Incremental decoding uses a `KVCache` preallocated once per window (`Transformer.new_cache`), or once
for many windows (`new_cache(reusable=True)`, emptied by `reuse`: sampler/jukebox/decoding.py). Each layer
keeps only what its attention function can ever read again; one `AttentionGeometry` per kind owns that
layout (cache shape, slot of a position, keys it reads, masks), and the attention paths ask it:

=========== ================================== ========================================
attn_func   cache shape (per k and v)          slot of position p
=========== ================================== ========================================
dense       (N, H, max_len, D)                 p
transpose   (N, H, block_ctx, rows, D)         (p % block_ctx, p // block_ctx): a column is contiguous
block       (N, H, block_ctx, D)               p % block_ctx (the current block)
prev-block  (N, H, 2·block_ctx, D)             p % (2·block_ctx) (the previous and current blocks)
prime       (N, H, prime_window, D)            p, for p < prime_window only
cross       (N, H, n_enc, D)                   k, v of the encoder states, computed once
=========== ================================== ========================================

`Transformer.forward(x, cache=...)` runs x as the next positions of the cache: one full structured
pass when the cache is empty (prefill), a single-token fast path, or a masked chunk path otherwise.
All three give the full forward pass's outputs up to float rounding.

`Transformer.set_static_decode(True)` swaps the single-token path for a static-shape step (a fixed key
range per kind under a mask, the position as a device tensor, nothing read back): the same keys, the
same tokens, logits bit for bit at 8-slot blocks and within float rounding at 64-slot blocks. Off by
default until it is measured faster (on the CPU it is slower: `bench/sampling.py --static-decode`).
Each residual block of that step is one function of tensors (`static_block_step`), so that
`torch.compile` can make one graph per attention kind of it (`Transformer.decode_static(step=…)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DENSE, BLOCK, TRANSPOSE, PREV_BLOCK, CROSS, PRIME = 0, 1, 2, 3, 6, 7
ATTN_NAMES = {
    DENSE: "dense",
    BLOCK: "block",
    TRANSPOSE: "transpose-block",
    PREV_BLOCK: "previous-block",
    CROSS: "cross",
    PRIME: "prime",
}
SUPPORTED_ATTN_ORDERS = (0, 2, 10, 12)
MASK_VALUE = -1e9  # the reference's additive mask value (not -inf)


class TransformerConfigError(ValueError):
    """A transformer configuration that the published Jukebox architecture does not allow."""


class KVCacheError(RuntimeError):
    """A KV cache used out of order: too many positions, a wrong batch, or another model's cache."""


def attn_func_for_layer(attn_order: int, layer: int) -> int:
    """The attention function of layer `layer` under `attn_order` (spec §3.1)."""
    if attn_order == 0:
        return DENSE
    if attn_order == 2:
        return (BLOCK, TRANSPOSE, PREV_BLOCK)[layer % 3]
    if attn_order == 10:
        # 9 layers cycling 1,2,3, then seven groups of (1,2,3)x3 followed by one cross-attention layer.
        pattern = [BLOCK, TRANSPOSE, PREV_BLOCK] * 3 + ([BLOCK, TRANSPOSE, PREV_BLOCK] * 3 + [CROSS]) * 7
        return pattern[layer % 79]
    if attn_order == 12:
        if layer % 16 == 15:
            return (PRIME, PRIME, DENSE)[layer % 3]
        return (BLOCK, TRANSPOSE, PREV_BLOCK)[layer % 3]
    raise TransformerConfigError(
        f"attn_order {attn_order} is not used by any published Jukebox prior; "
        f"supported orders are {SUPPORTED_ATTN_ORDERS}"
    )


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of one Jukebox transformer (names follow the original hparams where they exist)."""

    width: int
    depth: int
    heads: int
    seq_len: int  # positions per window (n_ctx, or n_tokens + n_ctx for the single enc-dec prior)
    attn_order: int = 0
    blocks: int | None = None  # block_ctx = seq_len // blocks
    m_attn: float = 0.25
    m_mlp: float = 1.0
    init_scale: float = 1.0
    encoder_len: int = 0  # key positions of cross-attention layers (lyric tokens of the encoder)
    prime_len: int | None = None  # lyric prefix length, for prime-attention layers

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads", "seq_len"):
            if getattr(self, name) <= 0:
                raise TransformerConfigError(
                    f"transformer {name} must be positive, got {getattr(self, name)}"
                )
        funcs = self.attn_funcs
        if self.n_state % self.heads != 0:
            raise TransformerConfigError(
                f"attention width {self.n_state} (width {self.width} × m_attn {self.m_attn}) "
                f"is not divisible by heads={self.heads}"
            )
        needs_blocks = any(f in (BLOCK, TRANSPOSE, PREV_BLOCK, PRIME) for f in funcs)
        if needs_blocks:
            if not self.blocks or self.seq_len % self.blocks != 0:
                raise TransformerConfigError(
                    f"attn_order {self.attn_order} needs `blocks` dividing seq_len {self.seq_len}, got "
                    f"{self.blocks}"
                )
        if CROSS in funcs and self.encoder_len <= 0:
            raise TransformerConfigError(
                "cross-attention layers need encoder_len > 0 (the lyric encoder length)"
            )
        if PRIME in funcs and self.prime_len is None:
            raise TransformerConfigError("prime-attention layers need prime_len (the lyric prefix length)")

    @property
    def attn_funcs(self) -> list[int]:
        return [attn_func_for_layer(self.attn_order, d) for d in range(self.depth)]

    @property
    def n_state(self) -> int:
        return int(self.m_attn * self.width)

    @property
    def head_dim(self) -> int:
        return self.n_state // self.heads

    @property
    def block_ctx(self) -> int:
        return self.seq_len // self.blocks if self.blocks else self.seq_len

    @property
    def prime_window(self) -> int:
        """Keys seen by prime attention: the lyric prefix rounded past the next multiple of `blocks`.

        The reference rounds with `blocks` (not block_ctx): (384 // 64 + 1) · 64 = 448 for 1b_lyrics,
        so prime layers also see the first 64 music positions.
        """
        if self.prime_len is None or not self.blocks:
            return 0
        return (self.prime_len // self.blocks + 1) * self.blocks


# --------------------------------------------------------------------------------------------------
# Layers


class Conv1D(nn.Module):
    """`y = x @ w + b` with `w` of shape (n_in, n_out), as in the checkpoints."""

    def __init__(self, n_in: int, n_out: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.w = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02 * init_scale))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.addmm(self.b, x.reshape(-1, self.n_in), self.w)
        return out.view(*x.shape[:-1], self.n_out)


LAYER_NORM_EPS = 1e-5


class LayerNorm(nn.LayerNorm):
    """LayerNorm (eps 1e-5) computed in fp32 whatever the input dtype; returns the input dtype."""

    def __init__(self, width: int) -> None:
        super().__init__(width, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return _norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def _norm(x: Tensor, shape: tuple[int, ...], weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """`LayerNorm.forward` from its parts (the decode path holds them): fp32 maths, x's dtype out."""
    if x.dtype == torch.float32:
        return torch.layer_norm(x, shape, weight, bias, eps)
    return torch.layer_norm(x.float(), shape, weight, bias, eps).to(x.dtype)


GELU_SCALE = 1.702  # quick GELU: x·sigmoid(1.702·x)


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(GELU_SCALE * x)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, init_scale: float) -> None:
        super().__init__()
        self.c_fc = Conv1D(width, hidden, init_scale)
        self.c_proj = Conv1D(hidden, width, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(quick_gelu(self.c_fc(x)))


# --------------------------------------------------------------------------------------------------
# Attention maths


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, fast: bool) -> Tensor:
    """Softmax attention over the last two dims. `mask` is boolean (True = may attend), broadcastable."""
    head_dim = q.shape[-1]
    if fast:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(head_dim))
    w = torch.matmul(q, k.transpose(-1, -2))
    w.mul_(_score_scale(head_dim))
    w32 = w.float()
    if mask is not None:
        w32 = torch.where(mask, w32, MASK_VALUE)
    probs = torch.softmax(w32, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def _score_scale(head_dim: int) -> float:
    """The reference splits 1/sqrt(head_dim) into two fourth roots and multiplies by their product."""
    root = 1.0 / math.sqrt(math.sqrt(head_dim))
    return root * root


def _causal_mask(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """Top-left aligned causal mask: query i sees keys j <= i."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()


def _split_heads(x: Tensor, heads: int) -> Tensor:
    n, length, n_state = x.shape
    return x.view(n, length, heads, n_state // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    n, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * head_dim)


def _pad_positions(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad dim 2 (positions) of (N, H, L, D) to a multiple of `multiple`."""
    pad = (-x.shape[2]) % multiple
    return F.pad(x, (0, 0, 0, pad)) if pad else x


@dataclass
class LayerKV:
    """One layer's cached keys and values; the layout is its attention kind's (`AttentionGeometry`).

    `k_flat`/`v_flat` (N·H, slots, D) view the same storage with the slot dims flattened (a transpose
    column is contiguous in it), so a decoding step reads its keys with one slice and one `bmm`.
    """

    k: Tensor
    v: Tensor
    k_flat: Tensor = field(init=False, repr=False)
    v_flat: Tensor = field(init=False, repr=False)
    k_slots: Tensor = field(init=False, repr=False)  # (N, H, slots, D): where a step writes
    v_slots: Tensor = field(init=False, repr=False)
    slots: int = field(init=False, repr=False)
    # The layer's weights as `decode` reads them, fetched from the modules on the cache's first
    # step (a cache lives one window): attribute lookups on modules cost microseconds a token.
    attn_weights: tuple[Tensor, ...] | None = field(default=None, init=False, repr=False)
    block_weights: tuple[Any, ...] | None = field(default=None, init=False, repr=False)
    static_weights: tuple[Tensor, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n, h, d = self.k.shape[0], self.k.shape[1], self.k.shape[-1]
        # A view for the caches made here (contiguous); a copy only for given cross-attention k, v,
        # which are never written again.
        self.k_flat = self.k.reshape(n * h, -1, d)
        self.v_flat = self.v.reshape(n * h, -1, d)
        self.k_slots = self.k_flat.view(n, h, -1, d)
        self.v_slots = self.v_flat.view(n, h, -1, d)
        self.slots = self.k_flat.shape[1]


@dataclass
class KVCache:
    """Static per-window cache for incremental decoding. `pos` = positions already processed."""

    layers: list[LayerKV]
    batch: int
    max_len: int
    dtype: torch.dtype
    pos: int = 0
    owner: int = field(default=0, repr=False)  # id() of the transformer that made it
    # The static step's position on the cache's device, valid while `_pos_tensor_at == pos`
    # (prefill advances `pos` on the host; the next static step copies it over once).
    _pos_tensor: Tensor | None = field(default=None, repr=False)
    _pos_tensor_at: int = field(default=-1, repr=False)
    key_index: Tensor | None = field(default=None, repr=False)  # arange over the most slots a layer has
    kind_slots: dict[int, int] | None = field(default=None, repr=False)  # slots of each attention kind

    def position(self) -> Tensor:
        """`pos` as a 0-dim int64 tensor on the cache's device (written, never read back)."""
        if self._pos_tensor is None:
            device = self.layers[0].k.device
            self._pos_tensor = torch.zeros((), dtype=torch.int64, device=device)
            self.key_index = torch.arange(max(layer.slots for layer in self.layers), device=device)
        if self._pos_tensor_at != self.pos:
            self._pos_tensor.fill_(self.pos)
            self._pos_tensor_at = self.pos
        return self._pos_tensor

    def restart(self) -> None:
        """Back to position 0 for a new window; the device position is written by the next static step."""
        self.pos = 0
        self._pos_tensor_at = -1

    def moved_on_device(self, steps: int) -> None:
        """A replayed CUDA graph advanced the device position by `steps`: the host follows."""
        self.pos += steps
        self._pos_tensor_at = self.pos

    def advance_position(self) -> None:
        """One static step done: the host and the device position move on together."""
        assert self._pos_tensor is not None
        self._pos_tensor.add_(1)
        self.pos += 1
        self._pos_tensor_at = self.pos


@dataclass(frozen=True)
class StaticRead:
    """What every layer of one attention kind does at one position in the static step, as device
    tensors of fixed shapes (computed once per kind and step from the position tensor).

    write: (1,) the slot the new k, v go to; None: nothing is written (cross-attention).
    keep_old: 0-dim bool, True when the position is past what the layer keeps: the slot's old value is
        written back (prime attention past its window).
    index: (K,) the flat slots read, in the order the sliced path reads them; None: every slot.
    mask: (K,) bool, True for the keys the position sees; None: all of them.
    empty: 0-dim bool, True when no key is visible (the output is the c_proj bias); None: never.
    """

    write: Tensor | None = None
    keep_old: Tensor | None = None
    index: Tensor | None = None
    mask: Tensor | None = None
    empty: Tensor | None = None


class AttentionGeometry:
    """Where one attention kind keeps its keys and which ones each position reads: the one place that
    knows the kind's layout. Positions are window positions; slots index the layer's flat cache
    (N·H, slots, D), `slots` being how many the cache holds (it depends on max_len for some kinds).

    The sliced decode step reads the contiguous slot range `visible(pos)`; the chunk path reads the key
    positions of `chunk_keys` under `mask`; the static step reads a fixed range under `static_read`'s
    mask; the full pass uses `full`. All of them see the same keys.
    """

    kind = DENSE

    def __init__(self, block_ctx: int, prime_window: int, encoder_len: int) -> None:
        self.block_ctx = block_ctx
        self.prime_window = prime_window
        self.encoder_len = encoder_len

    def cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        return (batch, heads, max_len, head_dim)

    def slot(self, pos: int, slots: int) -> int:
        """The flat slot that keeps position `pos`'s k, v; -1 when it is not kept."""
        return pos

    def visible(self, pos: int, slots: int) -> tuple[int, int]:
        """The flat slots [first, last) position `pos` reads (every key it sees, in order).
        An empty range means the position sees no key: the attention output is exactly zero."""
        return 0, pos + 1

    def mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Which key positions (1, K) each query position (Q, 1) sees."""
        return k_pos <= q_pos

    def no_keys(self, q_pos: Tensor) -> Tensor | None:
        """Query positions (Q,) that see no key at all (their output is zero); None if there are none."""
        return None

    def write(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> None:
        """Store k, v (N, H, c, D) of positions start..start+c-1 where this kind keeps them."""
        end = start + k.shape[2]
        cache.k[:, :, start:end] = k
        cache.v[:, :, start:end] = v

    def chunk_keys(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """Store the chunk's k, v (N, H, c, D) at start.. and return the keys, values and key positions
        (K,) the chunk may read: older ones from the cache (before a ring is overwritten) and its own."""
        self.write(cache, k, v, start)
        end = start + k.shape[2]
        return cache.k[:, :, :end], cache.v[:, :, :end], torch.arange(end, device=k.device)

    def full(self, q: Tensor, k: Tensor, v: Tensor, fast: bool) -> Tensor:
        """Attention over positions 0..L-1 of q, k, v (N, H, L, D)."""
        length = q.shape[2]
        return _attend(q, k, v, _causal_mask(length, length, q.device), fast)

    def static_read(self, pos: Tensor, slots: int, key_index: Tensor) -> StaticRead:
        """This kind's `StaticRead` at the position tensor `pos`; `key_index` is an arange of ≥ slots."""
        return StaticRead(write=pos.view(1), mask=key_index[:slots] <= pos)


class DenseGeometry(AttentionGeometry):
    """Every earlier position: (N, H, max_len, D), position p in slot p."""


class PrimeGeometry(AttentionGeometry):
    """The lyric prefix (+ one block): (N, H, prime_window, D), position p in slot p while p fits."""

    kind = PRIME

    def cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        return (batch, heads, self.prime_window, head_dim)

    def slot(self, pos: int, slots: int) -> int:
        return pos if pos < self.prime_window else -1

    def visible(self, pos: int, slots: int) -> tuple[int, int]:
        return 0, min(pos + 1, self.prime_window)

    def mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return (k_pos <= q_pos) & (k_pos < self.prime_window)

    def write(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> None:
        stop = min(start + k.shape[2], self.prime_window)
        if stop > start:
            cache.k[:, :, start:stop] = k[:, :, : stop - start]
            cache.v[:, :, start:stop] = v[:, :, : stop - start]

    def chunk_keys(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        device = k.device
        old = torch.arange(0, min(start, self.prime_window), device=device)
        keys, values = torch.cat([cache.k[:, :, old], k], dim=2), torch.cat([cache.v[:, :, old], v], dim=2)
        self.write(cache, k, v, start)
        return keys, values, torch.cat([old, torch.arange(start, start + k.shape[2], device=device)])

    def full(self, q: Tensor, k: Tensor, v: Tensor, fast: bool) -> Tensor:
        length = q.shape[2]
        window = min(self.prime_window, length)
        mask = _causal_mask(length, window, q.device)
        return _attend(q, k[:, :, :window], v[:, :, :window], mask, fast)

    def static_read(self, pos: Tensor, slots: int, key_index: Tensor) -> StaticRead:
        window = self.prime_window
        return StaticRead(
            write=pos.clamp(max=window - 1).view(1), keep_old=pos >= window, mask=key_index[:window] <= pos
        )


class _BlockedGeometry(AttentionGeometry):
    """Kinds that work on blocks of block_ctx positions (the full pass pads to whole blocks)."""

    def full(self, q: Tensor, k: Tensor, v: Tensor, fast: bool) -> Tensor:
        length, b = q.shape[2], self.block_ctx
        q, k, v = (_pad_positions(t, b) for t in (q, k, v))
        return self._blocks(q, k, v, fast, q.shape[2] // b)[:, :, :length]

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, fast: bool, rows: int) -> Tensor:
        raise NotImplementedError


class BlockGeometry(_BlockedGeometry):
    """The current block so far: a ring of block_ctx slots, position p in slot p % block_ctx."""

    kind = BLOCK

    def cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        return (batch, heads, self.block_ctx, head_dim)

    def slot(self, pos: int, slots: int) -> int:
        return pos % slots

    def visible(self, pos: int, slots: int) -> tuple[int, int]:
        return 0, pos % self.block_ctx + 1

    def mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        b = self.block_ctx
        return (k_pos <= q_pos) & (k_pos // b == q_pos // b)

    def write(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> None:
        c, slots = k.shape[2], cache.slots
        if c == 1:  # a decoding step: a plain integer slot
            slot = start % slots
            cache.k[:, :, slot] = k[:, :, 0]
            cache.v[:, :, slot] = v[:, :, 0]
            return
        end = start + c
        first = max(start, end - slots)  # only the newest `slots` positions matter
        pos = torch.arange(first, end, device=k.device)
        cache.k[:, :, pos % slots] = k[:, :, first - start :]
        cache.v[:, :, pos % slots] = v[:, :, first - start :]

    def _first_kept(self, start: int) -> int:
        """The oldest position a chunk starting at `start` may read."""
        return (start // self.block_ctx) * self.block_ctx

    def chunk_keys(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        device = k.device
        old = torch.arange(self._first_kept(start), start, device=device)
        ring = old % cache.slots
        keys, values = torch.cat([cache.k[:, :, ring], k], dim=2), torch.cat([cache.v[:, :, ring], v], dim=2)
        self.write(cache, k, v, start)
        return keys, values, torch.cat([old, torch.arange(start, start + k.shape[2], device=device)])

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, fast: bool, rows: int) -> Tensor:
        n, h, padded, d = q.shape
        b = self.block_ctx
        grid = (n, h * rows, b, d)
        a = _attend(q.reshape(grid), k.reshape(grid), v.reshape(grid), _causal_mask(b, b, q.device), fast)
        return a.view(n, h, padded, d)

    def static_read(self, pos: Tensor, slots: int, key_index: Tensor) -> StaticRead:
        in_block = pos % self.block_ctx
        return StaticRead(write=in_block.view(1), mask=key_index[:slots] <= in_block)


class PrevBlockGeometry(BlockGeometry):
    """All of the previous block: a ring of 2·block_ctx slots, position p in slot p % (2·block_ctx).
    Block 0 sees no key (the reference attends to zeros: the output is the c_proj bias)."""

    kind = PREV_BLOCK

    def cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        return (batch, heads, 2 * self.block_ctx, head_dim)

    def visible(self, pos: int, slots: int) -> tuple[int, int]:
        b = self.block_ctx
        if pos < b:
            return 0, 0
        first = ((pos // b - 1) % 2) * b
        return first, first + b

    def mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        b = self.block_ctx
        return k_pos // b == q_pos // b - 1

    def no_keys(self, q_pos: Tensor) -> Tensor | None:
        return q_pos // self.block_ctx == 0

    def _first_kept(self, start: int) -> int:
        return max(0, (start // self.block_ctx - 1) * self.block_ctx)

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, fast: bool, rows: int) -> Tensor:
        n, h, padded, d = q.shape
        b = self.block_ctx

        def previous(t: Tensor) -> Tensor:
            t = t.view(n, h, rows, b, d)
            return torch.cat([torch.zeros_like(t[:, :, :1]), t[:, :, :-1]], dim=2).view(n, h * rows, b, d)

        a = _attend(q.reshape(n, h * rows, b, d), previous(k), previous(v), None, fast)
        return a.view(n, h, padded, d)

    def static_read(self, pos: Tensor, slots: int, key_index: Tensor) -> StaticRead:
        b = self.block_ctx
        first = (pos // b - 1).remainder(2) * b
        return StaticRead(write=(pos % slots).view(1), index=key_index[:b] + first, empty=pos < b)


class TransposeGeometry(_BlockedGeometry):
    """The same offset in every earlier block: (N, H, block_ctx, rows, D), position p at
    (p % block_ctx, p // block_ctx), so that a column is contiguous in the flat cache."""

    kind = TRANSPOSE

    def cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        return (batch, heads, self.block_ctx, -(-max_len // self.block_ctx), head_dim)

    def slot(self, pos: int, slots: int) -> int:
        b = self.block_ctx
        return (pos % b) * (slots // b) + pos // b

    def visible(self, pos: int, slots: int) -> tuple[int, int]:
        slot = self.slot(pos, slots)
        return slot - pos // self.block_ctx, slot + 1  # the column so far

    def mask(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        b = self.block_ctx
        return (k_pos <= q_pos) & (k_pos % b == q_pos % b)

    def write(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> None:
        b, c = self.block_ctx, k.shape[2]
        if c == 1:  # a decoding step: plain integer slots
            cache.k[:, :, start % b, start // b] = k[:, :, 0]
            cache.v[:, :, start % b, start // b] = v[:, :, 0]
            return
        pos = torch.arange(start, start + c, device=k.device)
        cache.k[:, :, pos % b, pos // b] = k
        cache.v[:, :, pos % b, pos // b] = v

    def chunk_keys(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        self.write(cache, k, v, start)
        end, b = start + k.shape[2], self.block_ctx
        n, h, _, rows, d = cache.k.shape
        keys = cache.k.transpose(2, 3).reshape(n, h, rows * b, d)[:, :, :end]
        values = cache.v.transpose(2, 3).reshape(n, h, rows * b, d)[:, :, :end]
        return keys, values, torch.arange(end, device=k.device)

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, fast: bool, rows: int) -> Tensor:
        n, h, padded, d = q.shape
        b = self.block_ctx

        def columns(t: Tensor) -> Tensor:
            return t.view(n, h, rows, b, d).transpose(2, 3).reshape(n, h * b, rows, d)

        a = _attend(columns(q), columns(k), columns(v), _causal_mask(rows, rows, q.device), fast)
        return a.view(n, h, b, rows, d).transpose(2, 3).reshape(n, h, padded, d)

    def static_read(self, pos: Tensor, slots: int, key_index: Tensor) -> StaticRead:
        b = self.block_ctx
        rows = slots // b
        row, column_start = pos // b, (pos % b) * rows
        return StaticRead(
            write=(column_start + row).view(1),
            index=key_index[:rows] + column_start,
            mask=key_index[:rows] <= row,
        )


class CrossGeometry(AttentionGeometry):
    """The lyric encoder's states: (N, H, n_enc, D), computed once per window, all read, none written."""

    kind = CROSS

    def cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        return (batch, heads, self.encoder_len, head_dim)

    def slot(self, pos: int, slots: int) -> int:
        return -1

    def visible(self, pos: int, slots: int) -> tuple[int, int]:
        return 0, slots

    def full(self, q: Tensor, k: Tensor, v: Tensor, fast: bool) -> Tensor:
        return _attend(q, k, v, None, fast)

    def static_read(self, pos: Tensor, slots: int, key_index: Tensor) -> StaticRead:
        return StaticRead()


GEOMETRIES: dict[int, type[AttentionGeometry]] = {
    g.kind: g
    for g in (
        DenseGeometry,
        BlockGeometry,
        TransposeGeometry,
        PrevBlockGeometry,
        PrimeGeometry,
        CrossGeometry,
    )
}


class FactoredAttention(nn.Module):
    """One attention layer with the attention function `attn_func` (keys: c_attn, c_enc_kv, c_proj).

    Which positions it keeps and reads is its `geometry`'s; only cross-attention's projections differ.
    """

    def __init__(self, config: TransformerConfig, attn_func: int) -> None:
        super().__init__()
        self.attn_func = attn_func
        self.heads = config.heads
        self.n_state = config.n_state
        self.block_ctx = config.block_ctx
        self.encoder_len = config.encoder_len
        self.prime_window = config.prime_window
        self.head_dim = config.head_dim
        self.fast = False
        self.geometry = GEOMETRIES[attn_func](config.block_ctx, config.prime_window, config.encoder_len)
        self.cross = attn_func == CROSS
        width, n_state, scale = config.width, config.n_state, config.init_scale
        if self.cross:
            self.c_attn = Conv1D(width, n_state, scale)  # queries only
            self.c_enc_kv = Conv1D(width, 2 * n_state, scale)
        else:
            self.c_attn = Conv1D(width, 3 * n_state, scale)
        self.c_proj = Conv1D(n_state, width, scale)

    # ---- projections

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        return _split_heads(q, self.heads), _split_heads(k, self.heads), _split_heads(v, self.heads)

    def encoder_kv(self, encoder_states: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values (N, H, n_enc, D) from the lyric encoder's states."""
        k, v = self.c_enc_kv(encoder_states.to(self.c_enc_kv.w.dtype)).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    # ---- full sequence from position 0

    def forward(
        self, x: Tensor, encoder_states: Tensor | None = None, cache: LayerKV | None = None
    ) -> Tensor:
        """Attention over positions 0..L-1 of `x` (N, L, width); fills `cache` with them when given."""
        if self.cross:
            q = _split_heads(self.c_attn(x), self.heads)
            if cache is not None:
                k, v = cache.k, cache.v
            else:
                if encoder_states is None:
                    raise KVCacheError(
                        "a cross-attention layer needs the lyric encoder's states (encoder_kv)"
                    )
                k, v = self.encoder_kv(encoder_states)
        else:
            q, k, v = self._qkv(x)
            if cache is not None:
                self._write_prefix(cache, k, v)
        return self.c_proj(_merge_heads(self.geometry.full(q, k, v, self.fast)))

    # ---- cache layout

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKV:
        shape = self.geometry.cache_shape(batch, self.heads, max_len, self.head_dim)
        return LayerKV(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    def _write(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> None:
        """Store k, v (N, H, c, D) of positions start..start+c-1 where this layer keeps them."""
        self.geometry.write(cache, k, v, start)

    def _write_prefix(self, cache: LayerKV, k: Tensor, v: Tensor) -> None:
        self._write(cache, k, v, 0)

    # ---- one new position

    def _decode_weights(self, cache: LayerKV) -> tuple[Tensor, ...]:
        weights = cache.attn_weights
        if weights is None:
            weights = cache.attn_weights = (
                self.c_attn.w,
                self.c_attn.b,
                self.c_proj.w,
                self.c_proj.b,
                _cpu_scalar(_score_scale(self.head_dim)),
            )
        return weights

    def decode(self, x: Tensor, cache: LayerKV, pos: int) -> Tensor:
        """The hot path: x (N, width) normed input at position `pos` → output (N, width).

        Same maths and kernels as the module path (tests keep a slow single-position oracle) with
        the fewest tensor ops: 2-D activations, the new k, v written into their slot, keys read as
        one contiguous slice of the flat cache.
        """
        attn_w, attn_b, proj_w, proj_b, score_scale = self._decode_weights(cache)
        n, heads, head_dim, geometry = x.shape[0], self.heads, self.head_dim, self.geometry
        slots = cache.slots
        first, last = geometry.visible(pos, slots)
        if self.cross:
            q = torch.addmm(attn_b, x, attn_w)
        else:
            qkv = torch.addmm(attn_b, x, attn_w).view(n, 3, heads, head_dim)
            slot = geometry.slot(pos, slots)
            if slot >= 0:
                cache.k_slots.select(2, slot).copy_(qkv.select(1, 1))
                cache.v_slots.select(2, slot).copy_(qkv.select(1, 2))
            if first == last:  # attends to zero keys and values: the output is exactly zero
                return proj_b.expand(n, proj_b.shape[0])
            q = qkv.select(1, 0)  # (N, H, D): already (N·H, 1, D) for one head
        keys, values = cache.k_flat[:, first:last], cache.v_flat[:, first:last]
        if heads != 1 or q.dim() != 3:
            q = q.reshape(n * heads, 1, head_dim)
        if self.fast:
            a = F.scaled_dot_product_attention(q, keys, values, scale=1.0 / math.sqrt(head_dim))
        else:  # the reference arithmetic of `_attend`, on 3-D batches
            w = torch.bmm(q, keys.transpose(1, 2))
            w.mul_(score_scale)
            if w.dtype == torch.float32:
                probs = torch.softmax(w, dim=-1)
            else:
                probs = torch.softmax(w.float(), dim=-1).to(values.dtype)
            a = torch.bmm(probs, values)
        return torch.addmm(proj_b, a.view(n, heads * head_dim), proj_w)

    # ---- several new positions after a non-empty cache

    def chunk(self, x: Tensor, cache: LayerKV, start: int) -> Tensor:
        """Outputs at positions start..start+c-1 for x (N, c, width), given everything before in `cache`."""
        if self.cross:
            q = _split_heads(self.c_attn(x), self.heads)
            return self.c_proj(_merge_heads(_attend(q, cache.k, cache.v, None, self.fast)))
        q, k, v = self._qkv(x)
        geometry = self.geometry
        keys, values, k_pos = geometry.chunk_keys(cache, k, v, start)
        q_pos = torch.arange(start, start + x.shape[1], device=x.device)
        a = _attend(q, keys, values, geometry.mask(q_pos[:, None], k_pos[None, :]), self.fast)
        empty = geometry.no_keys(q_pos)
        if empty is not None:  # those queries attend to zeros in the reference: exactly 0
            a = torch.where(empty[:, None], 0.0, a)
        return self.c_proj(_merge_heads(a))


class ResidualBlock(nn.Module):
    """`h = x + a + m` with `a = attn(ln_0(x))` and `m = mlp(ln_1(x + a))` (keys: attn, ln_0, mlp, ln_1)."""

    def __init__(self, config: TransformerConfig, attn_func: int) -> None:
        super().__init__()
        self.attn = FactoredAttention(config, attn_func)
        self.ln_0 = LayerNorm(config.width)
        self.mlp = MLP(config.width, int(config.m_mlp * config.width), config.init_scale)
        self.ln_1 = LayerNorm(config.width)

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        """Finish the block given the attention output `a` (computed by the caller's chosen path)."""
        m = self.mlp(self.ln_1(x + a))
        return x + a + m

    def decode(self, x: Tensor, cache: LayerKV, pos: int) -> Tensor:
        """One position, x (N, width): `forward` after `attn.decode`, with in-place ops where the
        result is the same bits (x·sigmoid(1.702x) = sigmoid(1.702x)·x; (x + a) + m)."""
        weights = cache.block_weights
        if weights is None:
            fc, proj = self.mlp.c_fc, self.mlp.c_proj
            weights = cache.block_weights = (
                self.attn,
                self.ln_0.weight,
                self.ln_0.bias,
                self.ln_1.weight,
                self.ln_1.bias,
                fc.w,
                fc.b,
                proj.w,
                proj.b,
                self.ln_0.normalized_shape,
                self.ln_0.eps,
                _cpu_scalar(GELU_SCALE),
            )
        attn, ln0_w, ln0_b, ln1_w, ln1_b, fc_w, fc_b, proj_w, proj_b, shape, eps, gelu_scale = weights
        s = x + attn.decode(_norm(x, shape, ln0_w, ln0_b, eps), cache, pos)
        return _add_mlp(s, shape, ln1_w, ln1_b, eps, fc_w, fc_b, proj_w, proj_b, gelu_scale)

    def static_weights(self) -> tuple[Tensor, ...]:
        """The tensors `static_block_step` reads, in its order (detached: no autograd in decoding)."""
        attn, mlp = self.attn, self.mlp
        tensors = (
            self.ln_0.weight,
            self.ln_0.bias,
            attn.c_attn.w,
            attn.c_attn.b,
            attn.c_proj.w,
            attn.c_proj.b,
            self.ln_1.weight,
            self.ln_1.bias,
            mlp.c_fc.w,
            mlp.c_fc.b,
            mlp.c_proj.w,
            mlp.c_proj.b,
        )
        return tuple(t.detach() for t in tensors)

    def decode_static(
        self, x: Tensor, cache: LayerKV, read: StaticRead, step: BlockStep | None = None
    ) -> Tensor:
        """`decode` as the static step: `static_block_step` (or `step`, e.g. a compiled form of it)."""
        weights = cache.static_weights
        if weights is None:
            weights = cache.static_weights = self.static_weights()
        attn = self.attn
        return (step or static_block_step)(
            x, cache.k_flat, cache.v_flat, weights, read, attn.heads, attn.cross, attn.fast
        )


def static_block_step(
    x: Tensor,
    k_flat: Tensor,
    v_flat: Tensor,
    weights: tuple[Tensor, ...],
    read: StaticRead,
    heads: int,
    cross: bool,
    fast: bool,
) -> Tensor:
    """One residual block at one position with shapes that do not depend on the position: x (N, width)
    → (N, width), the ops of `ResidualBlock.decode` with `FactoredAttention.decode`'s sliced key range
    replaced by the keys of a fixed slot range under `read.mask`, the position only in device tensors,
    and k, v written by `index_copy_`. Scalars are Python floats (no CPU tensors: it may be captured
    in a CUDA graph or compiled).

    Tensors only, one per buffer (`k_flat`, `v_flat`: the layer's (N·H, slots, D) cache), so that
    `torch.compile` makes one graph per attention kind whatever the layer. Masked keys get zero
    probability (−1e9 before the softmax), so they add exact zeros to p·v; caches are zeroed when
    made, so whatever they hold is finite.
    """
    ln0_w, ln0_b, attn_w, attn_b, attn_proj_w, attn_proj_b, ln1_w, ln1_b, fc_w, fc_b, proj_w, proj_b = weights
    n, width = x.shape
    head_dim = k_flat.shape[2]
    shape = (width,)
    normed = _norm(x, shape, ln0_w, ln0_b, LAYER_NORM_EPS)
    if cross:
        q = torch.addmm(attn_b, normed, attn_w)
    else:
        qkv = torch.addmm(attn_b, normed, attn_w).view(n, 3, heads, head_dim)
        if read.write is not None:
            k_slots, v_slots = k_flat.view(n, heads, -1, head_dim), v_flat.view(n, heads, -1, head_dim)
            new_k, new_v = qkv.select(1, 1).unsqueeze(2), qkv.select(1, 2).unsqueeze(2)
            if read.keep_old is not None:
                new_k = torch.where(read.keep_old, k_slots.index_select(2, read.write), new_k)
                new_v = torch.where(read.keep_old, v_slots.index_select(2, read.write), new_v)
            k_slots.index_copy_(2, read.write, new_k)
            v_slots.index_copy_(2, read.write, new_v)
        q = qkv.select(1, 0)
    if read.index is None:
        keys, values = k_flat, v_flat
    else:
        keys, values = k_flat.index_select(1, read.index), v_flat.index_select(1, read.index)
    if heads != 1 or q.dim() != 3:
        q = q.reshape(n * heads, 1, head_dim)
    if fast:
        scale = 1.0 / math.sqrt(head_dim)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=read.mask, scale=scale)
    else:
        w = torch.bmm(q, keys.transpose(1, 2))
        w.mul_(_score_scale(head_dim))
        if w.dtype != torch.float32:
            w = w.float()
        if read.mask is not None:
            w = torch.where(read.mask, w, MASK_VALUE)
        probs = torch.softmax(w, dim=-1)
        if values.dtype != torch.float32:
            probs = probs.to(values.dtype)
        a = torch.bmm(probs, values)
    attended = torch.addmm(attn_proj_b, a.view(n, heads * head_dim), attn_proj_w)
    if read.empty is not None:
        attended = torch.where(read.empty, attn_proj_b, attended)
    s = x + attended
    return _add_mlp(s, shape, ln1_w, ln1_b, LAYER_NORM_EPS, fc_w, fc_b, proj_w, proj_b, GELU_SCALE)


def _add_mlp(
    s: Tensor,
    shape: tuple[int, ...],
    ln_w: Tensor,
    ln_b: Tensor,
    eps: float,
    fc_w: Tensor,
    fc_b: Tensor,
    proj_w: Tensor,
    proj_b: Tensor,
    gelu_scale: Tensor | float,
) -> Tensor:
    """`s + mlp(ln_1(s))` of one position (N, width), with in-place ops where the result is the same
    bits (x·sigmoid(1.702x) = sigmoid(1.702x)·x); `s` is overwritten."""
    h = torch.addmm(fc_b, _norm(s, shape, ln_w, ln_b, eps), fc_w)
    g = h.mul(gelu_scale)
    g.sigmoid_()
    g.mul_(h)
    return s.add_(torch.addmm(proj_b, g, proj_w))


BlockStep = Callable[[Tensor, Tensor, Tensor, tuple[Tensor, ...], StaticRead, int, bool, bool], Tensor]


def _encoder_states_for(encoder_states: Tensor | None, batch: int) -> Tensor:
    """The lyric encoder's states a cross-attention layer needs, for all `batch` sequences."""
    if encoder_states is None or encoder_states.shape[0] != batch:
        raise KVCacheError(
            f"this transformer has cross-attention layers: pass the lyric encoder's states for all {batch} "
            "sequences"
        )
    return encoder_states


def _cpu_scalar(value: float) -> Tensor:
    """A Python float as a 0-dim fp32 CPU tensor. Multiplying by it computes exactly as by the float
    (both reach the kernel as an fp32 scalar, for CUDA tensors too) without wrapping and converting
    a new scalar tensor on every call."""
    return torch.tensor(value, dtype=torch.float32)


class Transformer(nn.Module):
    """A stack of `ResidualBlock`s (key `_attn_mods`), no final LayerNorm.

    Inputs are cast to the compute dtype at entry (the residual stream runs in it); the output is fp32.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        blocks = [ResidualBlock(config, f) for f in config.attn_funcs]
        self._attn_mods = nn.ModuleList(blocks)  # the checkpoints' key name
        self._blocks: list[ResidualBlock] = blocks  # typed view of the same modules
        self.static_decode = False
        # one geometry per attention kind, in the order the kinds first appear
        self._geometries = list({b.attn.attn_func: b.attn.geometry for b in blocks}.values())

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the dtype of the Conv1D weights."""
        return self._blocks[0].attn.c_attn.w.dtype

    def to_compute_dtype(self, dtype: torch.dtype) -> None:
        """Cast every Conv1D (weights and biases) to `dtype` once; LayerNorms stay fp32."""
        for module in self.modules():
            if isinstance(module, Conv1D):
                module.to(dtype)

    def set_fast_attention(self, fast: bool) -> None:
        """Use `F.scaled_dot_product_attention` (True) or the reference arithmetic (False)."""
        for block in self._blocks:
            block.attn.fast = fast

    def set_static_decode(self, static: bool) -> None:
        """Decode with the static-shape step (True: `decode_static`) or the sliced one (False, the
        default). Same keys, same tokens; the static step's logits match to float rounding (bit for
        bit at small blocks) and it reads nothing back, so it can be captured in a CUDA graph."""
        self.static_decode = static

    def new_cache(
        self,
        batch: int,
        max_len: int | None = None,
        encoder_states: Tensor | None = None,
        *,
        reusable: bool = False,
    ) -> KVCache:
        """An empty cache for `batch` sequences of up to `max_len` positions (default: seq_len).

        Cross-attention layers need the lyric encoder's states (N, n_enc, width) now: their keys and
        values are computed once here. `reusable`: a cache to `reuse` for many windows, whose
        cross-attention keys and values are zeroed buffers that each window's states are copied into.
        """
        max_len = self.config.seq_len if max_len is None else max_len
        if not 0 < max_len <= self.config.seq_len:
            raise KVCacheError(f"max_len must be in 1..{self.config.seq_len}, got {max_len}")
        param = self._blocks[0].attn.c_attn.w
        layers = []
        for block in self._blocks:
            attn = block.attn
            if attn.attn_func == CROSS and reusable:
                layers.append(attn.new_cache(batch, max_len, param.dtype, param.device))
            elif attn.attn_func == CROSS:
                k, v = attn.encoder_kv(_encoder_states_for(encoder_states, batch))
                layers.append(LayerKV(k, v))
            else:
                layers.append(attn.new_cache(batch, max_len, param.dtype, param.device))
        return KVCache(layers, batch, max_len, param.dtype, owner=id(self))

    def reuse(self, cache: KVCache, max_len: int, encoder_states: Tensor | None = None) -> None:
        """Empty a `reusable` cache for a new window of up to `max_len` positions, in place (same
        buffers: what earlier windows wrote stays, finite, and is never read unmasked).

        Cross-attention layers take `encoder_states`' keys and values: the full pass and the chunk path
        read them as computed (`k`, `v`), the decode steps from the cache's own buffers (`k_flat`).
        """
        if cache.owner != id(self):
            raise KVCacheError("this KV cache was made by another transformer")
        if not 0 < max_len <= cache.max_len:
            raise KVCacheError(f"max_len must be in 1..{cache.max_len} for this cache, got {max_len}")
        for block, layer in zip(self._blocks, cache.layers, strict=True):
            if block.attn.attn_func != CROSS:
                continue
            layer.k, layer.v = block.attn.encoder_kv(_encoder_states_for(encoder_states, cache.batch))
            layer.k_slots.copy_(layer.k)
            layer.v_slots.copy_(layer.v)
        cache.restart()

    def forward(
        self, x: Tensor, encoder_states: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """Run x (N, L, width) as positions 0..L-1, or as the next L positions of `cache`. Returns fp32."""
        length = x.shape[1]
        if cache is not None:
            if cache.owner != id(self):
                raise KVCacheError("this KV cache was made by another transformer")
            if x.shape[0] != cache.batch:
                raise KVCacheError(f"the cache holds {cache.batch} sequences but got a batch of {x.shape[0]}")
            if cache.pos + length > cache.max_len:
                raise KVCacheError(
                    f"the cache holds {cache.max_len} positions; {cache.pos} are used and {length} more "
                    "were given"
                )
        if cache is not None and length == 1:
            return self.decode(x[:, 0], cache).unsqueeze(1)
        h = x.to(self.dtype)
        for i, block in enumerate(self._blocks):
            attn = block.attn
            normed = block.ln_0(h)
            if cache is None:
                a = attn(normed, encoder_states)
            elif cache.pos == 0:
                a = attn(normed, encoder_states, cache.layers[i])
            else:
                a = attn.chunk(normed, cache.layers[i], cache.pos)
            h = block(h, a)
        if cache is not None:
            cache.pos += length
        return h.float()

    def decode(self, x: Tensor, cache: KVCache) -> Tensor:
        """The next position of `cache` for x (N, width): the sampling hot path. Returns (N, width) fp32.

        The caller guarantees the cache is this transformer's, for this batch, with room left
        (`forward` checks; `JukeboxPrior.step` checks once per call).
        """
        if self.static_decode:
            return self.decode_static(x, cache)
        pos = cache.pos
        h = x.to(cache.dtype)
        for block, layer in zip(self._blocks, cache.layers, strict=True):
            h = block.decode(h, layer, pos)
        cache.pos = pos + 1
        return h.float()

    def decode_static(self, x: Tensor, cache: KVCache, step: BlockStep | None = None) -> Tensor:
        """`decode` with no shape that depends on the position and no value read back: the position
        is `cache.position()`, a device tensor, and each attention kind's reads are worked out from it
        once per step (`AttentionGeometry.static_read`) and shared by its layers. `step` replaces
        `static_block_step` (a compiled form of it)."""
        pos = cache.position()
        key_index = cache.key_index
        assert key_index is not None
        slots = cache.kind_slots
        if slots is None:
            slots = cache.kind_slots = {
                b.attn.attn_func: kv.slots for b, kv in zip(self._blocks, cache.layers, strict=True)
            }
        h = self.static_layers(x.to(cache.dtype), pos, key_index, slots, cache.layers, step)
        cache.advance_position()
        return h.float()

    def static_layers(
        self,
        h: Tensor,
        pos: Tensor,
        key_index: Tensor,
        slots: dict[int, int],
        layers: list[LayerKV],
        step: BlockStep | None = None,
    ) -> Tensor:
        """Every block's static step at the device position `pos`, h (N, width) in the cache dtype.
        It reads and writes no host state (the caller moves the position on), so the whole stack can
        be one compiled graph (bench/gpu.py's whole-slice row compiles it)."""
        reads = {g.kind: g.static_read(pos, slots[g.kind], key_index) for g in self._geometries}
        for block, layer in zip(self._blocks, layers, strict=True):
            h = block.decode_static(h, layer, reads[block.attn.attn_func], step)
        return h
