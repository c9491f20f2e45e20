"""Tiny random-weight Jukebox models shared by the jukebox tests (spec §8)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sampler.jukebox.checkpoint import save_checkpoint
from sampler.jukebox.transformer import StaticRead, TransposeGeometry
from sampler.jukebox.vqvae import VQVAE, VQVAEConfig

# Same architecture as the published VQ-VAE, scaled down: hops 4, 8, 16.
TINY_VQVAE_HPARAMS: dict[str, Any] = dict(
    levels=3,
    downs_t=(2, 1, 1),
    strides_t=(2, 2, 2),
    emb_width=16,
    l_bins=64,
    width=16,
    depth=2,
    m_conv=1.0,
    dilation_growth_rate=3,
    dilation_cycle=None,
    hvqvae_multipliers=(2, 1, 1),
    vqvae_reverse_decoder_dilation=True,
)
TINY_AUDIO_SAMPLES = 2048


def redraw_parameters(module: nn.Module, seed: int, std: float = 0.15) -> None:
    """Re-draw every float parameter from a seeded generator (LayerNorm weights around 1).

    The default init gives near-identity or near-uniform behaviour that hides bugs; these
    weights make every layer matter. Buffers (codebooks) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    layer_norm_weights = {
        id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None
    }
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64) * std
            base = 1.0 if id(param) in layer_norm_weights else 0.0
            param.copy_(base + noise)


def tiny_audio(batch: int = 2, samples: int = TINY_AUDIO_SAMPLES, seed: int = 0) -> torch.Tensor:
    """(batch, samples) sine sweeps plus noise in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / samples
    rows = [
        0.6 * torch.sin(2 * math.pi * (13 + 7 * b) * t * (1 + t))
        + 0.2 * torch.randn(samples, generator=generator, dtype=torch.float64)
        for b in range(batch)
    ]
    return torch.stack(rows).clamp(-1, 1).float()


def make_tiny_vqvae(seed: int = 0, audio: torch.Tensor | None = None) -> VQVAE:
    """A tiny VQ-VAE with re-drawn weights and codebooks set to actual encoder outputs + noise,
    so that (almost) every code is used on `audio`."""
    vqvae = VQVAE(VQVAEConfig.from_hparams(TINY_VQVAE_HPARAMS)).eval()
    redraw_parameters(vqvae, seed)
    audio = tiny_audio(seed=seed) if audio is None else audio
    generator = torch.Generator().manual_seed(seed + 1)
    for level, codebook in enumerate(vqvae.bottleneck.level_blocks):
        latents = vqvae.encode_latents(audio, level, chunk_samples=None)  # (N, C, T)
        rows = latents.permute(0, 2, 1).reshape(-1, latents.shape[1])
        chosen = rows[torch.randperm(rows.shape[0], generator=generator)[: codebook.k.shape[0]]]
        noise = torch.randn(chosen.shape, generator=generator) * 0.01 * rows.std()
        codebook.k.copy_(chosen + noise)
    return vqvae


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One torch thread: tiny convolutions run many times faster than with threads fighting
    over a shared 2-core machine. Use with `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def without_transpose_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control of the static step: transpose layers read their whole column unmasked."""
    masked = TransposeGeometry.static_read

    def unmasked(
        self: TransposeGeometry, pos: torch.Tensor, slots: int, key_index: torch.Tensor
    ) -> StaticRead:
        read = masked(self, pos, slots, key_index)
        return StaticRead(write=read.write, index=read.index)

    monkeypatch.setattr(TransposeGeometry, "static_read", unmasked)


@pytest.fixture
def tiny_vqvae_config() -> VQVAEConfig:
    return VQVAEConfig.from_hparams(TINY_VQVAE_HPARAMS)


@pytest.fixture
def tiny_vqvae() -> VQVAE:
    return make_tiny_vqvae()


@pytest.fixture
def tiny_vqvae_checkpoint(tiny_vqvae: VQVAE, tmp_path: Path) -> Path:
    """The tiny VQ-VAE saved in the original `*.pth.tar` format."""
    return save_checkpoint(tiny_vqvae, tmp_path / "vqvae.pth.tar")
