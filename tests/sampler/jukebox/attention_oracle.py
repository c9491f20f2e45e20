"""The slow, obviously-correct single-position attention: the oracle `FactoredAttention.decode`
is checked against bit for bit (the product keeps only the fast path)."""

from __future__ import annotations

import torch
from torch import Tensor

from sampler.jukebox import transformer
from sampler.jukebox.transformer import BLOCK, CROSS, DENSE, PREV_BLOCK, TRANSPOSE, FactoredAttention, LayerKV


def step(self: FactoredAttention, x: Tensor, cache: LayerKV, pos: int) -> Tensor:
    """Output at position `pos` for x (N, 1, width), reading and updating `cache`."""
    f, b = self.attn_func, self.block_ctx
    if f == CROSS:
        q = transformer._split_heads(self.c_attn(x), self.heads)
        return self.c_proj(
            transformer._merge_heads(transformer._attend(q, cache.k, cache.v, None, self.fast))
        )
    q, k, v = self._qkv(x)
    self._write(cache, k, v, pos)
    if f == DENSE:
        keys, values = cache.k[:, :, : pos + 1], cache.v[:, :, : pos + 1]
    elif f == TRANSPOSE:
        col, row = pos % b, pos // b
        keys, values = cache.k[:, :, col, : row + 1], cache.v[:, :, col, : row + 1]
    elif f == BLOCK:
        keys, values = cache.k[:, :, : pos % b + 1], cache.v[:, :, : pos % b + 1]
    elif f == PREV_BLOCK:
        block = pos // b
        if block == 0:  # attends to zero keys and values: the output is exactly zero
            return self.c_proj(torch.zeros_like(x[..., : self.n_state]))
        first = ((block - 1) % 2) * b
        keys, values = cache.k[:, :, first : first + b], cache.v[:, :, first : first + b]
    else:  # PRIME
        held = min(pos + 1, self.prime_window)
        keys, values = cache.k[:, :, :held], cache.v[:, :, :held]
    return self.c_proj(transformer._merge_heads(transformer._attend(q, keys, values, None, self.fast)))
