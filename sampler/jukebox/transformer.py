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

Incremental decoding uses a `KVCache` preallocated once per window (`Transformer.new_cache`). Each layer
keeps only what its attention function can ever read again:

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
"""

from __future__ import annotations

import math
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


class LayerNorm(nn.LayerNorm):
    """LayerNorm (eps 1e-5) computed in fp32 whatever the input dtype; returns the input dtype."""

    def __init__(self, width: int) -> None:
        super().__init__(width, eps=1e-5)

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
    """One layer's cached keys and values; the layout depends on the layer's attention function.

    `k_flat`/`v_flat` (N·H, slots, D) view the same storage with the slot dims flattened (a transpose
    column is contiguous in it), so a decoding step reads its keys with one slice and one `bmm`.
    """

    k: Tensor
    v: Tensor
    k_flat: Tensor = field(init=False, repr=False)
    v_flat: Tensor = field(init=False, repr=False)
    k_slots: Tensor = field(init=False, repr=False)  # (N, H, slots, D): where a step writes
    v_slots: Tensor = field(init=False, repr=False)
    # The layer's weights as `decode` reads them, fetched from the modules on the cache's first
    # step (a cache lives one window): attribute lookups on modules cost microseconds a token.
    attn_weights: tuple[Tensor, ...] | None = field(default=None, init=False, repr=False)
    block_weights: tuple[Any, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n, h, d = self.k.shape[0], self.k.shape[1], self.k.shape[-1]
        # A view for the caches made here (contiguous); a copy only for given cross-attention k, v,
        # which are never written again.
        self.k_flat = self.k.reshape(n * h, -1, d)
        self.v_flat = self.v.reshape(n * h, -1, d)
        self.k_slots = self.k_flat.view(n, h, -1, d)
        self.v_slots = self.v_flat.view(n, h, -1, d)


@dataclass
class KVCache:
    """Static per-window cache for incremental decoding. `pos` = positions already processed."""

    layers: list[LayerKV]
    batch: int
    max_len: int
    dtype: torch.dtype
    pos: int = 0
    owner: int = field(default=0, repr=False)  # id() of the transformer that made it


class FactoredAttention(nn.Module):
    """One attention layer with the attention function `attn_func` (keys: c_attn, c_enc_kv, c_proj)."""

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
        width, n_state, scale = config.width, config.n_state, config.init_scale
        if attn_func == CROSS:
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
        length = x.shape[1]
        if self.attn_func == CROSS:
            q = _split_heads(self.c_attn(x), self.heads)
            if cache is not None:
                k, v = cache.k, cache.v
            else:
                if encoder_states is None:
                    raise KVCacheError(
                        "a cross-attention layer needs the lyric encoder's states (encoder_kv)"
                    )
                k, v = self.encoder_kv(encoder_states)
            return self.c_proj(_merge_heads(_attend(q, k, v, None, self.fast)))
        q, k, v = self._qkv(x)
        if cache is not None:
            self._write_prefix(cache, k, v)
        f, b = self.attn_func, self.block_ctx
        if f == DENSE:
            a = _attend(q, k, v, _causal_mask(length, length, x.device), self.fast)
        elif f == PRIME:
            window = min(self.prime_window, length)
            a = _attend(
                q, k[:, :, :window], v[:, :, :window], _causal_mask(length, window, x.device), self.fast
            )
        else:
            q, k, v = (_pad_positions(t, b) for t in (q, k, v))
            n, h, padded, d = q.shape
            rows = padded // b
            if f == BLOCK:
                grid = (n, h * rows, b, d)
                a = _attend(
                    q.reshape(grid), k.reshape(grid), v.reshape(grid), _causal_mask(b, b, x.device), self.fast
                )
                a = a.view(n, h, padded, d)
            elif f == TRANSPOSE:

                def columns(t: Tensor) -> Tensor:
                    return t.view(n, h, rows, b, d).transpose(2, 3).reshape(n, h * b, rows, d)

                mask = _causal_mask(rows, rows, x.device)
                a = _attend(columns(q), columns(k), columns(v), mask, self.fast)
                a = a.view(n, h, b, rows, d).transpose(2, 3).reshape(n, h, padded, d)
            else:  # PREV_BLOCK: block j sees all of block j-1; block 0 sees zeros (output = c_proj bias)

                def previous(t: Tensor) -> Tensor:
                    t = t.view(n, h, rows, b, d)
                    return torch.cat([torch.zeros_like(t[:, :, :1]), t[:, :, :-1]], dim=2).view(
                        n, h * rows, b, d
                    )

                a = _attend(q.reshape(n, h * rows, b, d), previous(k), previous(v), None, self.fast)
                a = a.view(n, h, padded, d)
            a = a[:, :, :length]
        return self.c_proj(_merge_heads(a))

    # ---- cache layout

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LayerKV:
        h, d, b = self.heads, self.n_state // self.heads, self.block_ctx
        if self.attn_func == DENSE:
            shape: tuple[int, ...] = (batch, h, max_len, d)
        elif self.attn_func == TRANSPOSE:
            shape = (batch, h, b, -(-max_len // b), d)
        elif self.attn_func == BLOCK:
            shape = (batch, h, b, d)
        elif self.attn_func == PREV_BLOCK:
            shape = (batch, h, 2 * b, d)
        elif self.attn_func == PRIME:
            shape = (batch, h, self.prime_window, d)
        else:  # CROSS: filled by Transformer.new_cache from the encoder states
            shape = (batch, h, self.encoder_len, d)
        return LayerKV(
            torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)
        )

    def _write(self, cache: LayerKV, k: Tensor, v: Tensor, start: int) -> None:
        """Store k, v (N, H, c, D) of positions start..start+c-1 where this layer keeps them."""
        f, b, c = self.attn_func, self.block_ctx, k.shape[2]
        end = start + c
        if c == 1 and f in (TRANSPOSE, BLOCK, PREV_BLOCK):  # decoding step: plain integer slots
            if f == TRANSPOSE:
                cache.k[:, :, start % b, start // b] = k[:, :, 0]
                cache.v[:, :, start % b, start // b] = v[:, :, 0]
            else:
                slot = start % cache.k.shape[2]
                cache.k[:, :, slot] = k[:, :, 0]
                cache.v[:, :, slot] = v[:, :, 0]
            return
        if f == DENSE:
            cache.k[:, :, start:end] = k
            cache.v[:, :, start:end] = v
        elif f == PRIME:
            stop = min(end, self.prime_window)
            if stop > start:
                cache.k[:, :, start:stop] = k[:, :, : stop - start]
                cache.v[:, :, start:stop] = v[:, :, : stop - start]
        elif f == TRANSPOSE:
            pos = torch.arange(start, end, device=k.device)
            cache.k[:, :, pos % b, pos // b] = k
            cache.v[:, :, pos % b, pos // b] = v
        else:  # BLOCK / PREV_BLOCK ring buffers: only the newest `slots` positions matter
            slots = cache.k.shape[2]
            first = max(start, end - slots)
            pos = torch.arange(first, end, device=k.device)
            cache.k[:, :, pos % slots] = k[:, :, first - start :]
            cache.v[:, :, pos % slots] = v[:, :, first - start :]

    def _write_prefix(self, cache: LayerKV, k: Tensor, v: Tensor) -> None:
        self._write(cache, k, v, 0)

    # ---- one new position

    def decode(self, x: Tensor, cache: LayerKV, pos: int) -> Tensor:
        """The hot path: x (N, width) normed input at position `pos` → output (N, width).

        Same maths and kernels as the module path (tests keep a slow single-position oracle) with
        the fewest tensor ops: 2-D activations, the new k, v written into their slot, keys read as
        one contiguous slice of the flat cache.
        """
        weights = cache.attn_weights
        if weights is None:
            weights = cache.attn_weights = (
                self.c_attn.w,
                self.c_attn.b,
                self.c_proj.w,
                self.c_proj.b,
                _cpu_scalar(_score_scale(self.head_dim)),
            )
        attn_w, attn_b, proj_w, proj_b, score_scale = weights
        n, heads, head_dim, f = x.shape[0], self.heads, self.head_dim, self.attn_func
        if f == CROSS:
            q = torch.addmm(attn_b, x, attn_w)
            keys, values = cache.k_flat, cache.v_flat
        else:
            qkv = torch.addmm(attn_b, x, attn_w).view(n, 3, heads, head_dim)
            b = self.block_ctx
            if f == TRANSPOSE:
                rows = cache.k.shape[3]
                slot = (pos % b) * rows + pos // b
                first, last = slot - pos // b, slot + 1  # the column so far
            elif f == DENSE:
                slot, first, last = pos, 0, pos + 1
            elif f == BLOCK:
                slot = pos % b
                first, last = 0, slot + 1
            elif f == PREV_BLOCK:
                slot = pos % (2 * b)
                first = ((pos // b - 1) % 2) * b
                last = first + b
            else:  # PRIME: stops storing once the window is full
                slot = pos if pos < self.prime_window else -1
                first, last = 0, min(pos + 1, self.prime_window)
            if slot >= 0:
                cache.k_slots.select(2, slot).copy_(qkv.select(1, 1))
                cache.v_slots.select(2, slot).copy_(qkv.select(1, 2))
            if f == PREV_BLOCK and pos < b:  # attends to zero keys and values: the output is exactly zero
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
        f, b, c = self.attn_func, self.block_ctx, x.shape[1]
        device = x.device
        if f == CROSS:
            q = _split_heads(self.c_attn(x), self.heads)
            return self.c_proj(_merge_heads(_attend(q, cache.k, cache.v, None, self.fast)))
        q, k, v = self._qkv(x)
        end = start + c
        q_pos = torch.arange(start, end, device=device)
        # Gather the keys this chunk may read (older ones from the cache, before the ring is overwritten).
        if f in (DENSE, TRANSPOSE):
            self._write(cache, k, v, start)
            if f == DENSE:
                keys, values = cache.k[:, :, :end], cache.v[:, :, :end]
            else:
                n, h, _, rows, d = cache.k.shape
                keys = cache.k.transpose(2, 3).reshape(n, h, rows * b, d)[:, :, :end]
                values = cache.v.transpose(2, 3).reshape(n, h, rows * b, d)[:, :, :end]
            k_pos = torch.arange(end, device=device)
        else:
            if f == PRIME:
                first = 0
                old = torch.arange(0, min(start, self.prime_window), device=device)
                old_k, old_v = cache.k[:, :, old], cache.v[:, :, old]
            else:
                first = (start // b) * b if f == BLOCK else max(0, (start // b - 1) * b)
                old = torch.arange(first, start, device=device)
                slots = cache.k.shape[2]
                old_k, old_v = cache.k[:, :, old % slots], cache.v[:, :, old % slots]
            keys, values = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
            k_pos = torch.cat([old, q_pos])
            self._write(cache, k, v, start)
        qp, kp = q_pos[:, None], k_pos[None, :]
        if f == DENSE:
            mask = kp <= qp
        elif f == TRANSPOSE:
            mask = (kp <= qp) & (kp % b == qp % b)
        elif f == BLOCK:
            mask = (kp <= qp) & (kp // b == qp // b)
        elif f == PREV_BLOCK:
            mask = kp // b == qp // b - 1
        else:  # PRIME
            mask = (kp <= qp) & (kp < self.prime_window)
        a = _attend(q, keys, values, mask, self.fast)
        if f == PREV_BLOCK:  # queries of block 0 attend to zeros in the reference: exactly 0
            a = torch.where((q_pos // b == 0)[:, None], 0.0, a)
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
        a = attn.decode(_norm(x, shape, ln0_w, ln0_b, eps), cache, pos)
        s = x + a
        h = torch.addmm(fc_b, _norm(s, shape, ln1_w, ln1_b, eps), fc_w)
        g = h.mul(gelu_scale)
        g.sigmoid_()
        g.mul_(h)
        return s.add_(torch.addmm(proj_b, g, proj_w))


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

    def new_cache(
        self, batch: int, max_len: int | None = None, encoder_states: Tensor | None = None
    ) -> KVCache:
        """An empty cache for `batch` sequences of up to `max_len` positions (default: seq_len).

        Cross-attention layers need the lyric encoder's states (N, n_enc, width) now: their keys and
        values are computed once here.
        """
        max_len = self.config.seq_len if max_len is None else max_len
        if not 0 < max_len <= self.config.seq_len:
            raise KVCacheError(f"max_len must be in 1..{self.config.seq_len}, got {max_len}")
        param = self._blocks[0].attn.c_attn.w
        layers = []
        for block in self._blocks:
            attn = block.attn
            if attn.attn_func == CROSS:
                if encoder_states is None or encoder_states.shape[0] != batch:
                    raise KVCacheError(
                        f"this transformer has cross-attention layers: pass the lyric encoder's states "
                        f"for all {batch} sequences"
                    )
                k, v = attn.encoder_kv(encoder_states)
                layers.append(LayerKV(k, v))
            else:
                layers.append(attn.new_cache(batch, max_len, param.dtype, param.device))
        return KVCache(layers, batch, max_len, param.dtype, owner=id(self))

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
        pos = cache.pos
        h = x.to(cache.dtype)
        for block, layer in zip(self._blocks, cache.layers, strict=True):
            h = block.decode(h, layer, pos)
        cache.pos = pos + 1
        return h.float()
