"""Tiny random-weight versions of the five published prior kinds (jukebox-spec §8 step 3).

Shared by the prior tests and the later sampling tests. Every tiny prior has n_ctx 64 and blocks 8
and sits on the tiny 3-level VQ-VAE of spec §8 step 2 (hops 4, 8, 16; 64 codes). Labels use the
real v2/v3 id-table sizes but max_duration 0.1 s and min_duration 0, so timing bins vary for songs
of a few thousand samples.

`TINY_PRIOR_HPARAMS[kind]` holds original hparam names, so the same dict builds the reference
model in the oracle (`setup_hparams('', hparams)` + `make_prior`) and ours (`PriorConfig.from_hparams`).
"""

from __future__ import annotations

from typing import Any

import torch

from sampler.jukebox.prior import JukeboxPrior, PriorConfig
from tests.sampler.jukebox.conftest import TINY_VQVAE_HPARAMS as TINY_VQVAE_BASE
from tests.sampler.jukebox.conftest import redraw_parameters

# The tiny VQ-VAE's hparams, plus the sample_length jukebox-infer's make_vqvae wants.
TINY_VQVAE_HPARAMS: dict[str, Any] = {**TINY_VQVAE_BASE, "sample_length": 1024}

_V2_LABELS: dict[str, Any] = dict(y_bins=(120, 4111), t_bins=128, max_bow_genre_size=5, n_vocab=80)
_V3_LABELS: dict[str, Any] = dict(
    y_bins=(604, 7898), t_bins=64, max_bow_genre_size=1, n_vocab=79, labels_v3=True
)
_TIMING: dict[str, Any] = dict(min_duration=0.0, max_duration=0.1)
_COMMON: dict[str, Any] = dict(n_ctx=64, blocks=8, prior_width=32, heads=2, init_scale=1.0)
_UPSAMPLER: dict[str, Any] = dict(
    **_COMMON,
    **_V2_LABELS,
    prior_depth=6,
    attn_order=2,
    cond_width=16,
    cond_depth=4,
    cond_dilation_growth_rate=3,
    cond_dilation_cycle=2,
    cond_c_res=1,
)

TINY_PRIOR_HPARAMS: dict[str, dict[str, Any]] = {
    "up0": {**_UPSAMPLER, "level": 0},
    "up1": {**_UPSAMPLER, "level": 1, "cond_res_scale": True},
    "top_5b": {
        **_COMMON,
        **_V2_LABELS,
        **_TIMING,
        "level": 2,
        "prior_depth": 6,
        "attn_order": 2,
        "merged_decoder": True,
    },
    "top_5b_lyrics": {
        **_COMMON,
        **_V2_LABELS,
        **_TIMING,
        "level": 2,
        "prior_depth": 19,  # layer 18 is cross-attention
        "attn_order": 10,
        "merged_decoder": True,
        "use_tokens": True,
        "n_tokens": 16,
        "prime_width": 24,
        "prime_depth": 3,
        "prime_heads": 2,
        "prime_attn_order": 2,
        "prime_blocks": 4,
        "prime_init_scale": 0.7,
    },
    "top_1b_lyrics": {
        **_COMMON,
        **_V3_LABELS,
        **_TIMING,
        "level": 2,
        "prior_depth": 16,  # layer 15 is prime attention
        "attn_order": 12,
        "single_enc_dec": True,
        "use_tokens": True,
        "n_tokens": 16,
    },
}
TINY_KINDS = tuple(TINY_PRIOR_HPARAMS)
TINY_SAMPLE_RATE = 44100


def tiny_config(kind: str) -> PriorConfig:
    return PriorConfig.from_hparams(TINY_PRIOR_HPARAMS[kind], TINY_VQVAE_HPARAMS, sr=TINY_SAMPLE_RATE)


def tiny_prior(kind: str, seed: int = 0) -> JukeboxPrior:
    prior = JukeboxPrior(tiny_config(kind)).eval()
    redraw_parameters(prior, seed)
    return prior


def wide_tiny_prior(kind: str, seed: int = 7) -> JukeboxPrior:
    """A tiny prior with 64-slot blocks (n_ctx 256, blocks 4): masked softmax rows as long as the
    published ones, where the static step matches the sliced one to float rounding only."""
    hparams = {**TINY_PRIOR_HPARAMS[kind], "n_ctx": 256, "blocks": 4}
    config = PriorConfig.from_hparams(hparams, TINY_VQVAE_HPARAMS, sr=TINY_SAMPLE_RATE)
    prior = JukeboxPrior(config).eval()
    redraw_parameters(prior, seed)
    return prior


def tiny_labels(kind: str, batch: int = 2, seed: int = 0, total_length: int = 2048) -> torch.Tensor:
    """Label vectors y (batch, label_width) for one window at a varying offset, lyric ids drawn at random.

    Rows use different artists, genre bags (with empty −1 slots) and offsets, so the timing bins differ.
    """
    config = tiny_config(kind)
    gen = torch.Generator().manual_seed(seed)
    genre_bins, artist_bins = config.y_bins
    rows = []
    for i in range(batch):
        offset = (i * 384) % max(1, total_length - config.sample_length + 1)
        artist = int(torch.randint(artist_bins, (1,), generator=gen))
        genres = torch.randint(genre_bins, (config.max_bow_genre_size,), generator=gen)
        genres[1 + i % config.max_bow_genre_size :] = -1
        lyrics = torch.randint(config.n_vocab or 1, (config.n_tokens,), generator=gen)
        rows.append(
            torch.cat([torch.tensor([total_length, offset, config.sample_length, artist]), genres, lyrics])
        )
    return torch.stack(rows).long()


def tiny_codes(kind: str, batch: int = 2, length: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random music codes (batch, length) of this level (default: one full window)."""
    config = tiny_config(kind)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(config.l_bins, (batch, config.n_ctx if length is None else length), generator=gen)


def tiny_z_cond(kind: str, batch: int = 2, seed: int = 1) -> torch.Tensor | None:
    """Codes of the level above for one window of an upsampler, else None."""
    config = tiny_config(kind)
    if not config.is_upsampler:
        return None
    assert config.cond_downsample is not None
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(config.l_bins, (batch, config.n_ctx // config.cond_downsample), generator=gen)
