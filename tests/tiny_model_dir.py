"""A model directory holding tiny random-weight versions of a published model, with hparams sidecars.

Used by the `jukebot sample`, worker and bot end-to-end tests: the real loading code reads it
exactly as it would read the published checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from sampler.jukebox.checkpoint import save_checkpoint
from sampler.jukebox.registry import MODELS
from sampler.loading import write_sidecar
from sampler.model_files import model_path
from tests.sampler.jukebox.conftest import TINY_VQVAE_HPARAMS, make_tiny_vqvae
from tests.sampler.jukebox.tiny_priors import TINY_PRIOR_HPARAMS, tiny_prior

TOP_KIND = {"5b": "top_5b", "5b_lyrics": "top_5b_lyrics", "1b_lyrics": "top_1b_lyrics"}
# Tiny geometry: hops 4 / 8 / 16 samples, windows of 64 tokens, songs up to 0.1 s.
TINY_SONG_SECONDS = 2048 / 44100


def write_tiny_model_dir(model_dir: Path, models: tuple[str, ...] = ("1b_lyrics",), seed: int = 7) -> Path:
    vqvae_path = model_path(model_dir, "vqvae")
    save_checkpoint(make_tiny_vqvae(seed=seed), vqvae_path)
    write_sidecar(vqvae_path, TINY_VQVAE_HPARAMS)
    for model in models:
        kinds = ("up0", "up1", TOP_KIND[model])
        for level, (name, kind) in enumerate(zip(MODELS[model].priors, kinds, strict=True)):
            path = model_path(model_dir, name)
            save_checkpoint(tiny_prior(kind, seed=seed + level), path)
            write_sidecar(path, TINY_PRIOR_HPARAMS[kind])
    return model_dir
