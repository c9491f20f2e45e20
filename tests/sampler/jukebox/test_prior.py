"""The priors: published configs and keys, parity with jukebox-infer, the incremental decoding API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.jukebox.prior import (
    JukeboxPrior,
    LabelConditioner,
    LabelVectorError,
    PriorConfig,
    PriorConfigError,
    PriorInputError,
)
from sampler.jukebox.registry import PRIOR_HPARAMS
from tests.sampler.jukebox.oracle import requires_oracle, run_oracle
from tests.sampler.jukebox.tiny_priors import (
    TINY_KINDS,
    TINY_PRIOR_HPARAMS,
    TINY_VQVAE_HPARAMS,
    tiny_codes,
    tiny_labels,
    tiny_prior,
    tiny_z_cond,
)

PUBLISHED = ("upsampler_level_0", "upsampler_level_1", "prior_5b", "prior_5b_lyrics", "prior_1b_lyrics")
EXPECTED_KEYS = {
    "upsampler_level_0": 1006,
    "upsampler_level_1": 1006,
    "prior_5b": 872,
    "prior_5b_lyrics": 1194,
    "prior_1b_lyrics": 872,
}


def _meta_prior(name: str) -> JukeboxPrior:
    with torch.device("meta"):
        return JukeboxPrior(PriorConfig.published(name))


# ---------------------------------------------------------------------------------------------
# Configs


def test_published_geometry_matches_the_spec() -> None:
    up0, up1 = PriorConfig.published("upsampler_level_0"), PriorConfig.published("upsampler_level_1")
    five, lyr, one = (PriorConfig.published(n) for n in ("prior_5b", "prior_5b_lyrics", "prior_1b_lyrics"))
    assert (up0.raw_to_tokens, up1.raw_to_tokens, five.raw_to_tokens) == (8, 32, 128)
    assert (up0.sample_length, up1.sample_length, five.sample_length, one.sample_length) == (
        65536,
        262144,
        1048576,
        786432,
    )
    assert (up0.cond_downsample, up1.cond_downsample, five.cond_downsample) == (4, 4, None)
    assert (up0.label_width, five.label_width, lyr.label_width, one.label_width) == (9, 9, 521, 389)
    assert (one.seq_len, one.bins, one.prefix_len) == (6528, 2127, 384)
    assert (lyr.seq_len, lyr.bins, lyr.prefix_len) == (8192, 2048, 0)
    assert one.transformer_config().block_ctx == 102 and one.transformer_config().prime_window == 448
    assert lyr.lyric_encoder and not one.lyric_encoder and one.single_enc_dec
    assert lyr.encoder_config().block_ctx == 16 and lyr.encoder_config().head_dim == 80


def test_config_errors_are_specific() -> None:
    with pytest.raises(PriorConfigError, match="unknown prior 'prior_9b'"):
        PriorConfig.published("prior_9b")
    with pytest.raises(PriorConfigError, match="unknown prior hparam 'prior_widht'"):
        PriorConfig.from_hparams({**PRIOR_HPARAMS["prior_5b"], "prior_widht": 3})
    with pytest.raises(PriorConfigError, match="res_scale=True is not supported"):
        PriorConfig.from_hparams({**PRIOR_HPARAMS["prior_5b"], "res_scale": True})
    with pytest.raises(PriorConfigError, match="missing 'heads'"):
        PriorConfig.from_hparams({k: v for k, v in PRIOR_HPARAMS["prior_5b"].items() if k != "heads"})
    with pytest.raises(PriorConfigError, match="upsampler"):
        PriorConfig.from_hparams({**PRIOR_HPARAMS["upsampler_level_0"], "cond_width": 0})
    with pytest.raises(PriorConfigError, match="min_duration"):
        PriorConfig.from_hparams({**PRIOR_HPARAMS["prior_5b"], "min_duration": None})


# ---------------------------------------------------------------------------------------------
# Keys and shapes of the published checkpoints


_KEYS_SCRIPT = """
from jukebox_infer.hparams import setup_hparams
from jukebox_infer.make_models import make_vqvae, make_prior
with torch.device('meta'):
    vqvae = make_vqvae(setup_hparams('vqvae', dict(sample_length=1048576, restore_vqvae='')), 'meta')
    for name in IN['names']:
        prior = make_prior(setup_hparams(name, dict(restore_prior='')), vqvae, 'meta')
        OUT[name] = {k: (tuple(v.shape), str(v.dtype)) for k, v in prior.state_dict().items()}
"""


@requires_oracle
@pytest.mark.slow
def test_keys_and_shapes_equal_the_published_priors(tmp_path: Path) -> None:
    theirs = run_oracle(_KEYS_SCRIPT, {"names": list(PUBLISHED)}, tmp_path)
    for name in PUBLISHED:
        reference = {k: shape for k, (shape, _) in theirs[name].items()}
        assert len(reference) == EXPECTED_KEYS[name]
        ours = _meta_prior(name)
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == reference, name
        # A checkpoint with exactly these keys loads strictly (stored dtypes may differ: fp16 for 5b).
        state = {
            k: torch.empty(shape, dtype=getattr(torch, dtype.split(".")[1]), device="meta")
            for k, (shape, dtype) in theirs[name].items()
        }
        ours.load_state_dict(state, strict=True, assign=True)
        assert ours.prior.transformer.dtype == torch.float32  # the dtype policy survives `assign`
        if not ours.config.merged_decoder:
            assert ours.prior.x_out is not None and ours.prior.x_out.weight is ours.prior.x_emb.weight


def test_state_dict_round_trip_keeps_ties_and_dtypes() -> None:
    prior = tiny_prior("top_1b_lyrics", seed=1)
    other = tiny_prior("top_1b_lyrics", seed=2).to_compute_dtype(torch.bfloat16)
    other.load_state_dict(prior.state_dict())
    assert other.prior.transformer.dtype == torch.bfloat16
    assert other.prior.x_out is not None and other.prior.x_out.weight is other.prior.x_emb.weight
    assert other.y_emb.artist_emb.emb.weight.dtype == torch.float32
    assert torch.equal(other.prior.x_emb.weight, prior.prior.x_emb.weight)


# ---------------------------------------------------------------------------------------------
# Parity with jukebox-infer on the same tiny weights

_PARITY_SCRIPT = """
from jukebox_infer.hparams import setup_hparams
from jukebox_infer.make_models import make_vqvae, make_prior
vqvae = make_vqvae(setup_hparams('', dict(IN['vqvae'], restore_vqvae='')), 'cpu')
for kind, case in IN['cases'].items():
    prior = make_prior(setup_hparams('', dict(case['hparams'], restore_prior='')), vqvae, 'cpu')
    prior.load_state_dict(case['state'])
    z, y = case['z'], case['y']
    z_conds = None if case['z_cond'] is None else [case['z_cond']]
    with torch.no_grad():
        x_cond, y_cond, prime = prior.get_cond(z_conds, y)
        res = dict(x_cond=x_cond, y_cond=y_cond)
        if prior.single_enc_dec:
            seq, seq_cond = prior.prior_preprocess([prime.contiguous(), z], [None, x_cond])
            _, preds = prior.prior(seq, seq_cond, y_cond, fp16=False, get_sep_loss=True, get_preds=True)
        else:
            # z_forward crashes for 5b_lyrics with batch > 1 (non-contiguous lyric slice): call its parts.
            encoder_kv = prior.get_encoder_kv(None if prime is None else prime.contiguous())
            res['encoder_kv'] = encoder_kv
            _, preds = prior.prior(z, x_cond, y_cond, encoder_kv, fp16=False, get_preds=True)
        res['preds'] = preds
    OUT[kind] = res
"""


@requires_oracle
@pytest.mark.slow
def test_conditioning_and_logits_match_jukebox_infer(tmp_path: Path) -> None:
    cases: dict[str, dict[str, Any]] = {}
    ours: dict[str, Any] = {}
    for i, kind in enumerate(TINY_KINDS):
        prior = tiny_prior(kind, seed=10 + i)
        y, z, z_cond = tiny_labels(kind, seed=i), tiny_codes(kind, seed=i), tiny_z_cond(kind, seed=i)
        cond = prior.get_conditioning(y, z_cond)
        ours[kind] = (prior, cond, prior.logits(prior.codes_to_ids(z), cond, include_prefix=True))
        cases[kind] = dict(
            hparams=TINY_PRIOR_HPARAMS[kind], state=prior.state_dict(), y=y, z=z, z_cond=z_cond
        )
    theirs = run_oracle(_PARITY_SCRIPT, {"vqvae": TINY_VQVAE_HPARAMS, "cases": cases}, tmp_path)
    for kind in TINY_KINDS:
        prior, cond, logits = ours[kind]
        ref = theirs[kind]
        torch.testing.assert_close(cond.start, ref["y_cond"], atol=1e-6, rtol=0)
        torch.testing.assert_close(cond.x_cond[:, prior.prefix_len :], ref["x_cond"], atol=1e-5, rtol=1e-5)
        if prior.prefix_len:
            assert not cond.x_cond[:, : prior.prefix_len].any()
        if "encoder_kv" in ref and ref["encoder_kv"] is not None:
            assert cond.encoder_states is not None
            torch.testing.assert_close(cond.encoder_states, ref["encoder_kv"], atol=1e-5, rtol=1e-5)
        assert logits.shape == ref["preds"].shape
        assert ref["preds"].std() > 0.5  # weights re-drawn: logits far from uniform
        torch.testing.assert_close(logits, ref["preds"], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Incremental decoding == teacher-forced logits


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_steps_and_chunked_prefill_match_full_logits(kind: str) -> None:
    prior = tiny_prior(kind, seed=5)
    y, z_cond = tiny_labels(kind, seed=3), tiny_z_cond(kind, seed=3)
    ids = prior.codes_to_ids(tiny_codes(kind, seed=3))
    cond = prior.get_conditioning(y, z_cond)
    full = prior.logits(ids, cond)
    assert full.shape == (2, prior.n_ctx, prior.bins) and full.dtype == torch.float32

    # ancestral: every position by step
    state = prior.start(cond)
    token = None
    stepped = []
    for t in range(prior.n_ctx):
        stepped.append(prior.step(state, token))
        token = ids[:, t]
    torch.testing.assert_close(torch.stack(stepped, 1), full, atol=2e-5, rtol=1e-5)

    # primed: chunked prefill (chunks straddling block boundaries), then steps
    state = prior.start(cond)
    first = prior.prefill(state, ids[:, :11], return_logits=True)
    second = prior.prefill(state, ids[:, 11:30], return_logits=True)
    assert first is not None and second is not None
    rest = [prior.step(state)] + [prior.step(state, ids[:, t]) for t in range(30, prior.n_ctx - 1)]
    got = torch.cat([first, second, torch.stack(rest, 1)], 1)
    torch.testing.assert_close(got, full, atol=2e-5, rtol=1e-5)
    assert state.pos == prior.prefix_len + prior.n_ctx and state.music_pos == prior.n_ctx


def test_one_b_lyrics_ids_and_prefix() -> None:
    prior = tiny_prior("top_1b_lyrics")
    assert prior.bins == 64 + 79
    codes = torch.tensor([[0, 5, 63]])
    assert prior.codes_to_ids(codes).tolist() == [[79, 84, 142]]
    assert prior.ids_to_codes(torch.tensor([[3, 79, 142]])).tolist() == [[0, 0, 63]]  # lyric id → code 0
    cond = prior.get_conditioning(tiny_labels("top_1b_lyrics"))
    assert cond.prefix_ids is not None and cond.prefix_ids.shape == (2, 16)
    state = prior.start(cond)
    # the lyric prefix is queued for the first prefill; with none, the first step runs it first
    assert (state.pos, state.music_pos, state.prefix_queued) == (0, 0, True)
    prior.step(state)
    assert (state.pos, state.music_pos, state.prefix_queued) == (17, 1, False)
    # A lyric id drawn in the music part is fed back unchanged, like the reference.
    prior.step(state, torch.tensor([3, 100]))


def test_max_len_bounds_the_window() -> None:
    prior = tiny_prior("top_5b")
    cond = prior.get_conditioning(tiny_labels("top_5b"))
    state = prior.start(cond, max_len=4)
    prior.prefill(state, torch.zeros(2, 3, dtype=torch.long))
    prior.step(state)
    with pytest.raises(PriorInputError, match="holds 4 tokens: 4 are processed"):
        prior.step(state, torch.zeros(2, dtype=torch.long))


def test_decoding_misuse_is_refused_with_a_reason() -> None:
    prior = tiny_prior("top_5b")
    cond = prior.get_conditioning(tiny_labels("top_5b"))
    state = prior.start(cond)
    with pytest.raises(PriorInputError, match="without a token first"):
        prior.step(state, torch.zeros(2, dtype=torch.long))
    prior.step(state)
    with pytest.raises(PriorInputError, match="previous step's logits"):
        prior.step(state)
    with pytest.raises(PriorInputError, match=r"must be in 0\.\.63"):
        prior.step(state, torch.tensor([0, 64]))
    with pytest.raises(PriorInputError, match="conditioning is for 2"):
        prior.step(state, torch.tensor([0, 1, 2]))
    with pytest.raises(PriorInputError, match="integer tensor"):
        prior.prefill(state, torch.zeros(2, 3))
    with pytest.raises(PriorInputError, match="another prior"):
        tiny_prior("top_5b").step(state, torch.tensor([0, 1]))
    with pytest.raises(PriorInputError, match=r"1\.\.64 tokens"):
        prior.logits(torch.zeros(2, 65, dtype=torch.long), cond)


def test_label_errors_say_what_is_wrong() -> None:
    prior = tiny_prior("top_5b")
    y = tiny_labels("top_5b")
    with pytest.raises(LabelVectorError, match=r"shape \(batch, 9\)"):
        prior.get_conditioning(y[:, :8])
    bad = y.clone()
    bad[0, 3] = 4111
    with pytest.raises(LabelVectorError, match=r"artist ids must be in 0\.\.4110"):
        prior.get_conditioning(bad)
    bad = y.clone()
    bad[0, 4] = -2
    with pytest.raises(LabelVectorError, match="genre ids"):
        prior.get_conditioning(bad)
    bad = y.clone()
    bad[0, 1] = bad[0, 0]  # offset at the end of the song
    with pytest.raises(LabelVectorError, match="must start inside the song"):
        prior.get_conditioning(bad)
    bad = y.clone()
    bad[0, 0] = 5000  # longer than max_duration (0.1 s)
    with pytest.raises(LabelVectorError, match="total_length"):
        prior.get_conditioning(bad)
    with pytest.raises(PriorInputError, match="no codes from above"):
        prior.get_conditioning(y, torch.zeros(2, 32, dtype=torch.long))
    up = tiny_prior("up0")
    with pytest.raises(PriorInputError, match="pass the codes of level 1"):
        up.get_conditioning(tiny_labels("up0"))
    with pytest.raises(PriorInputError, match=r"shape \(batch, 32\)"):
        up.get_conditioning(tiny_labels("up0"), torch.zeros(2, 31, dtype=torch.long))


def test_published_minimum_duration_is_enforced() -> None:
    config = PriorConfig.from_hparams({**PRIOR_HPARAMS["prior_1b_lyrics"], "prior_width": 8})
    labels = LabelConditioner(config)
    too_short = torch.tensor([[17 * 44100, 0, 786432, 0, 0]])
    with pytest.raises(LabelVectorError, match=r"at least 17\.84 s"):
        labels.check(too_short)


def test_timing_bins_of_the_spec_worked_example() -> None:
    """1b, total 180 s, offset 0, one window: total bin 17, absolute bins 0..1, relative bins 0..6."""
    config = PriorConfig.from_hparams({**PRIOR_HPARAMS["prior_1b_lyrics"], "prior_width": 8})
    labels = LabelConditioner(config)
    with torch.no_grad():
        for emb in (labels.total_length_emb, labels.absolute_pos_emb, labels.relative_pos_emb):
            emb.emb.weight.copy_(torch.arange(config.t_bins, dtype=torch.float32)[:, None].expand(-1, 8))
        total, start, end = torch.tensor([[7938000.0]]), torch.tensor([[0.0]]), torch.tensor([[786432.0]])
        assert labels.total_length_emb(total)[0, :, 0].tolist() == [17.0]
        assert set(labels.absolute_pos_emb(start, end)[0, :, 0].tolist()) == {0.0, 1.0}
        relative = labels.relative_pos_emb(start / total, end / total)[0, :, 0]
        assert relative.min() == 0 and relative.max() == 6


def test_bfloat16_compute_keeps_logits_fp32_and_close() -> None:
    prior = tiny_prior("top_5b_lyrics", seed=7)
    y = tiny_labels("top_5b_lyrics")
    ids = tiny_codes("top_5b_lyrics")
    reference = prior.logits(ids, prior.get_conditioning(y))
    prior.to_compute_dtype(torch.bfloat16)
    assert prior.dtype == torch.bfloat16
    assert prior.prime_state_proj.w.dtype == torch.float32  # runs once per window, in fp32
    cond = prior.get_conditioning(y)
    assert cond.encoder_states is not None and cond.encoder_states.dtype == torch.float32
    got = prior.logits(ids, cond)
    assert got.dtype == torch.float32
    scale = reference.abs().max().item()
    assert (got - reference).abs().max().item() < 0.1 * scale
    state = prior.start(cond, max_len=8)
    assert prior.step(state).dtype == torch.float32
