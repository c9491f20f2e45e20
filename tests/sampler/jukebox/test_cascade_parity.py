"""Sampled codes equal jukebox-infer's `ancestral_sample` / `primed_sample` on the same tiny weights.

fp32 on the CPU, `torch.manual_seed(1234)` in the reference and `rng="reference"` here, so both
draw from the same stream in the same order (level → window → batch chunk → step). The reference
labels each sample from its own meta (artist, genre, lyrics): a style sweep is a list of metas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.jukebox.cascade import Cascade, SampleStyle, SamplingRequest
from tests.sampler.jukebox.conftest import TINY_VQVAE_HPARAMS, make_tiny_vqvae, tiny_audio
from tests.sampler.jukebox.oracle import requires_oracle, run_oracle
from tests.sampler.jukebox.tiny_priors import TINY_PRIOR_HPARAMS, tiny_prior

pytestmark = [requires_oracle, pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

SAMPLE_LENGTH = 2048
TOTAL_LENGTH = 4000
SEED = 1234

_SAMPLE_SCRIPT = """
from jukebox_infer.hparams import Hyperparams, setup_hparams
from jukebox_infer.make_models import make_vqvae, make_prior
import jukebox_infer.prior.autoregressive as autoregressive
from jukebox_infer.sample import ancestral_sample, primed_sample, upsample

def filter_logits_bool_mask(logits, top_k=0, top_p=0.0, filter_value=-float('Inf')):
    # the reference filter, with the bool scatter that modern torch needs (spec §9 item 2)
    logits = logits.clone()
    top_k = min(top_k, logits.size(-1))
    if top_k > 0:
        logits[logits < torch.topk(logits, top_k, dim=-1)[0][..., -1:]] = filter_value
    if top_p > 0.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True, dim=-1)
        remove = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        logits[torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)] = filter_value
    return logits
autoregressive.filter_logits = filter_logits_bool_mask

vqvae = make_vqvae(setup_hparams('', dict(IN['vqvae_hparams'], restore_vqvae='')), 'cpu')
vqvae.load_state_dict(IN['vqvae_state'])
for name, case in IN['cases'].items():
    priors = []
    for hparams, state in zip(case['hparams'], case['states']):
        prior = make_prior(setup_hparams('', dict(hparams, restore_prior='')), vqvae, 'cpu')
        prior.load_state_dict(state)
        priors.append(prior.eval())
    hps = Hyperparams(n_samples=case['n'], sample_length=IN['sample_length'], hop_fraction=case['hop'], sr=44100)
    metas = [dict(meta, total_length=IN['total_length'], offset=0) for meta in case['metas']]
    labels = [prior.labeller.get_batch_labels(metas, 'cpu') for prior in priors]
    kwargs = [dict(temp=case['temps'][level], fp16=False, chunk_size=8, max_batch_size=case['batch'][level],
                   top_k=case['top_k'], top_p=case['top_p']) for level in range(len(priors))]
    torch.manual_seed(IN['seed'])
    with torch.no_grad():
        if case['mode'] == 'primed':
            zs = primed_sample(case['prompt'].unsqueeze(-1), labels, kwargs, priors, hps, device='cpu')
        else:
            zs = ancestral_sample(labels, kwargs, priors, hps, device='cpu')
    OUT[name] = [z.clone() for z in zs]
"""

CASES: dict[str, dict[str, Any]] = {
    "5b": dict(top="top_5b", artist="the beatles", genre="rock", lyrics=""),
    "5b_lyrics": dict(
        top="top_5b_lyrics", artist="céline dion", genre="pop", lyrics="Near, far, wherever you are"
    ),
    "1b_lyrics": dict(
        top="top_1b_lyrics", artist="alan jackson", genre="country", lyrics="Chattahoochee, it gets hotter"
    ),
    "1b_lyrics_primed": dict(
        top="top_1b_lyrics", artist="unknown", genre="unknown", lyrics="la la", mode="primed"
    ),
    "5b_top_k": dict(top="top_5b", artist="queen", genre="rock", lyrics="", top_k=5, levels=(2,)),
    "5b_top_p": dict(top="top_5b", artist="queen", genre="rock", lyrics="", top_p=0.8, levels=(2,)),
}


# Style sweeps: each row its own artist, genre(s) and lyrics (lyrics of different lengths, so each
# row's lyric window moves differently). Three rows with max_batch_size (1, 2, 2): every level
# splits the batch, and each part must keep its rows' labels.
SWEEP_CASES: dict[str, dict[str, Any]] = {
    "5b_lyrics_sweep": dict(
        top="top_5b_lyrics",
        styles=(
            SampleStyle(
                "céline dion", "pop", "Near, far, wherever you are, I believe that the heart does go on"
            ),
            SampleStyle("the beatles", "rock pop", "Yesterday"),
            SampleStyle("unknown", "unknown", ""),
        ),
    ),
    "1b_lyrics_sweep": dict(
        top="top_1b_lyrics",
        styles=(
            SampleStyle("alan jackson", "country", "Chattahoochee, it gets hotter than a hoochie coochie"),
            SampleStyle("ella fitzgerald", "jazz", "A-tisket, a-tasket"),
            SampleStyle(
                "metallica", "thrash metal", "Exit light, enter night, take my hand, off to never never land"
            ),
        ),
    ),
}


def _compare_with_reference(cases: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    vqvae = make_tiny_vqvae(seed=5)
    ours: dict[str, list[torch.Tensor]] = {}
    oracle_cases: dict[str, dict[str, Any]] = {}
    for index, (name, case) in enumerate(cases.items()):
        styles: tuple[SampleStyle, ...] = (
            case.get("styles") or (SampleStyle(case["artist"], case["genre"], case["lyrics"]),) * 2
        )
        n = len(styles)
        prompt = tiny_audio(batch=n, samples=512, seed=3)
        kinds = ["up0", "up1", case["top"]]
        priors = [tiny_prior(kind, seed=20 + 3 * index + level) for level, kind in enumerate(kinds)]
        levels = case.get("levels", (0, 1, 2))
        request = SamplingRequest(
            mode=case.get("mode", "ancestral"),
            sample_length=SAMPLE_LENGTH,
            total_length=TOTAL_LENGTH,
            n_samples=n,
            # one style for all goes the single-label way, as every job without a sweep does
            artist=styles[0].artist,
            genre=styles[0].genre,
            lyrics=styles[0].lyrics,
            styles=styles if "styles" in case else None,
            levels=levels,
            temperature=(0.99, 0.99, 0.98),
            hop_fraction=(0.5, 0.5, 0.25),
            top_k=case.get("top_k", 0),
            top_p=case.get("top_p", 0.0),
            max_batch_size=(1, 2, 2),
            chunk_size=(8, 8, 8),
            seed=SEED,
            rng="reference",
            prompt=prompt if case.get("mode") == "primed" else None,
        )
        ours[name] = Cascade(vqvae, priors).sample(request).codes
        # The reference samples every level it is given: hand it only the levels we sample.
        top_only = levels == (2,)
        oracle_cases[name] = dict(
            hparams=[TINY_PRIOR_HPARAMS[kind] for kind in kinds][2 if top_only else 0 :],
            states=[prior.state_dict() for prior in priors][2 if top_only else 0 :],
            n=n,
            hop=(0.5, 0.5, 0.25)[2 if top_only else 0 :] if not top_only else (0.25,),
            temps=(0.99, 0.99, 0.98)[2:] if top_only else (0.99, 0.99, 0.98),
            batch=(2,) if top_only else (1, 2, 2),
            metas=[dict(artist=s.artist, genre=s.genre, lyrics=s.lyrics) for s in styles],
            mode=case.get("mode", "ancestral"),
            prompt=prompt,
            top_k=case.get("top_k", 0),
            top_p=case.get("top_p", 0.0),
        )
    theirs = run_oracle(
        _SAMPLE_SCRIPT,
        {
            "vqvae_hparams": {**TINY_VQVAE_HPARAMS, "sample_length": SAMPLE_LENGTH},
            "vqvae_state": vqvae.state_dict(),
            "cases": oracle_cases,
            "sample_length": SAMPLE_LENGTH,
            "total_length": TOTAL_LENGTH,
            "seed": SEED,
        },
        tmp_path,
        timeout=900,
    )
    for name, codes in ours.items():
        reference = theirs[name]
        levels = cases[name].get("levels", (0, 1, 2))
        ref_by_level = {2: reference[-1]} if levels == (2,) else dict(enumerate(reference))
        for level in levels:
            assert codes[level].shape == ref_by_level[level].shape, (name, level)
            mismatch = (codes[level] != ref_by_level[level]).float().mean().item()
            assert mismatch == 0.0, f"{name} level {level}: {mismatch:.1%} of the codes differ"


def test_sampled_codes_equal_the_reference(tmp_path: Path) -> None:
    _compare_with_reference(CASES, tmp_path)


def test_a_batch_of_styles_samples_as_the_reference(tmp_path: Path) -> None:
    _compare_with_reference(SWEEP_CASES, tmp_path)
