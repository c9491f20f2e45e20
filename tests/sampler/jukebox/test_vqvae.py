from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sampler.jukebox.checkpoint import build_on_meta, expected_shapes, save_checkpoint
from sampler.jukebox.registry import VQVAE_HPARAMS
from sampler.jukebox.vqvae import (
    VQVAE,
    Codebook,
    VQVAEConfig,
    VQVAEConfigError,
    VQVAEInputError,
    build_vqvae,
)
from tests.sampler.jukebox.conftest import TINY_VQVAE_HPARAMS, make_tiny_vqvae, tiny_audio
from tests.sampler.jukebox.oracle import requires_oracle, run_oracle

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_audio_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> None:
    """Close relative to the signal's scale (random weights give outputs far outside [-1, 1])."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------
# Config


def test_published_config_hops_and_level_sizes() -> None:
    config = VQVAEConfig.published()
    assert config.hop_lengths == (8, 32, 128)
    assert [config.level_width(level) for level in range(3)] == [64, 32, 32]
    assert [config.level_depth(level) for level in range(3)] == [8, 4, 4]


def test_from_hparams_ignores_training_keys_and_names_missing_ones() -> None:
    config = VQVAEConfig.from_hparams({**VQVAE_HPARAMS, "l_mu": 0.99, "commit": 0.02, "loss_fn": "lmix"})
    assert config == VQVAEConfig.published()
    partial = {k: v for k, v in VQVAE_HPARAMS.items() if k not in {"l_bins", "depth"}}
    with pytest.raises(VQVAEConfigError, match="l_bins, depth"):
        VQVAEConfig.from_hparams(partial)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(downs_t=(3, 2)), "downs_t needs one entry per level"),
        (dict(hvqvae_multipliers=(2, 1)), "hvqvae_multipliers needs one entry per level"),
        (dict(strides_t=(3, 2, 2)), "strides_t must be even"),
        (dict(levels=0), "levels must be at least 1"),
        (dict(l_bins=0), "l_bins must be at least 1"),
    ],
)
def test_inconsistent_config_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(VQVAEConfigError, match=message):
        VQVAEConfig.from_hparams({**VQVAE_HPARAMS, **change})


# ---------------------------------------------------------------------------------------------
# Structure at real size (meta device: no memory)


def test_published_vqvae_on_meta_has_the_checkpoint_layout() -> None:
    vqvae = build_on_meta(lambda: VQVAE(VQVAEConfig.published()))
    shapes = expected_shapes(vqvae)
    assert len(shapes) == 669
    params = sum(p.numel() for p in vqvae.parameters())
    assert params == 1_485_763
    assert [shapes[f"bottleneck.level_blocks.{lvl}.k"] for lvl in range(3)] == [(2048, 64)] * 3
    # level widths via the multipliers; first conv of stage 0 reads 1 channel, later stages 64
    assert shapes["encoders.0.level_blocks.0.model.0.0.weight"] == (64, 1, 4)
    assert shapes["encoders.2.level_blocks.1.model.0.0.weight"] == (32, 64, 4)
    assert shapes["encoders.0.level_blocks.0.model.3.weight"] == (64, 64, 3)
    # the last transposed conv of each decoder stage goes to emb_width; ConvTranspose is (in, out, k)
    assert shapes["decoders.0.level_blocks.0.model.3.1.weight"] == (64, 64, 4)
    assert shapes["decoders.1.level_blocks.1.model.1.1.weight"] == (32, 32, 4)
    assert shapes["decoders.1.level_blocks.1.model.2.1.weight"] == (32, 64, 4)
    assert shapes["decoders.2.out.weight"] == (1, 64, 3)
    assert all(t.is_meta for t in vqvae.state_dict().values())


def test_decoder_dilations_are_reversed_and_encoder_dilations_are_not() -> None:
    vqvae = build_vqvae(device="meta")
    enc = vqvae.encoders[0].level_blocks[0].model[0][1].model
    dec = vqvae.decoders[0].level_blocks[0].model[1][0].model
    assert [unit.model[1].dilation[0] for unit in enc] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert [unit.model[1].dilation[0] for unit in dec] == [2187, 729, 243, 81, 27, 9, 3, 1]
    assert [unit.model[1].dilation[0] for unit in vqvae.decoders[2].level_blocks[2].model[1][0].model] == [
        27,
        9,
        3,
        1,
    ]


@requires_oracle
def test_key_and_shape_equality_with_reference_at_published_size(tmp_path: Path) -> None:
    out = run_oracle(
        """
        from jukebox_infer.hparams import setup_hparams
        from jukebox_infer.make_models import make_vqvae
        hps = setup_hparams('vqvae', dict(sample_length=1048576, restore_vqvae=''))
        with torch.device('meta'):
            vqvae = make_vqvae(hps, 'meta')
        OUT['shapes'] = {k: tuple(v.shape) for k, v in vqvae.state_dict().items()}
        """,
        {},
        tmp_path,
    )
    ours = expected_shapes(build_vqvae(VQVAEConfig.from_hparams(VQVAE_HPARAMS), device="meta"))
    assert len(out["shapes"]) == 669
    assert list(ours) == list(out["shapes"])  # same keys in the same order
    assert ours == out["shapes"]


# ---------------------------------------------------------------------------------------------
# Parity with the reference on the same weights


@requires_oracle
def test_codes_and_audio_match_reference(tiny_vqvae: VQVAE, tmp_path: Path) -> None:
    audio = tiny_audio()
    ckpt = save_checkpoint(tiny_vqvae, tmp_path / "vqvae.pth.tar")
    out = run_oracle(
        """
        from jukebox_infer.hparams import setup_hparams
        from jukebox_infer.make_models import make_vqvae
        hps = setup_hparams('', dict(IN['hparams'], sample_length=IN['x'].shape[1], restore_vqvae=IN['ckpt']))
        vqvae = make_vqvae(hps, 'cpu')
        with torch.no_grad():
            zs = vqvae.encode(IN['x'])
            OUT['zs'] = zs
            OUT['audio'] = [vqvae.decode(zs[level:], start_level=level) for level in range(3)]
        """,
        {"hparams": TINY_VQVAE_HPARAMS, "ckpt": str(ckpt), "x": audio[..., None]},
        tmp_path / "oracle",
    )
    codes = tiny_vqvae.encode(audio)
    for level, (ours, theirs) in enumerate(zip(codes, out["zs"], strict=True)):
        assert ours.dtype == torch.long
        assert torch.equal(ours, theirs), f"level {level} codes differ"
        assert ours.unique().numel() >= 60, "weak test: most codes should be in use"
    for level in range(3):
        theirs = out["audio"][level][..., 0]
        assert_audio_close(tiny_vqvae.decode(codes, level), theirs)
        assert_audio_close(tiny_vqvae.decode(codes[level], level), theirs)


def test_decode_uses_only_the_codes_of_the_level_asked(tiny_vqvae: VQVAE) -> None:
    codes = tiny_vqvae.encode(tiny_audio())
    scrambled = [torch.zeros_like(z) for z in codes]
    scrambled[1] = codes[1]
    assert torch.equal(tiny_vqvae.decode(scrambled, 1), tiny_vqvae.decode(codes, 1))
    assert not torch.equal(tiny_vqvae.decode(scrambled, 0), tiny_vqvae.decode(codes, 0))


def test_encode_level_range_and_input_layouts(tiny_vqvae: VQVAE) -> None:
    audio = tiny_audio()
    full = tiny_vqvae.encode(audio)
    assert [z.shape for z in full] == [(2, 512), (2, 256), (2, 128)]
    upper = tiny_vqvae.encode(audio[..., None], start_level=1)
    assert len(upper) == 2 and all(torch.equal(a, b) for a, b in zip(upper, full[1:], strict=True))
    assert torch.equal(tiny_vqvae.encode(audio.double(), 2, 3)[0], full[2])


def test_audio_is_not_clamped(tiny_vqvae: VQVAE) -> None:
    codes = tiny_vqvae.encode(tiny_audio())
    assert tiny_vqvae.decode(codes, 0).abs().max() > 1  # random weights overshoot; nothing clips


def test_argmin_ties_go_to_the_first_code() -> None:
    codebook = Codebook(8, 4)
    codebook.k.copy_(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    codebook.k[6] = codebook.k[2]
    codebook.k[5] = codebook.k[1]
    latents = torch.stack([codebook.k[6], codebook.k[5], codebook.k[7]], dim=-1)[None]  # (1, 4, 3)
    assert codebook.quantise(latents).tolist() == [[2, 1, 7]]


# ---------------------------------------------------------------------------------------------
# Chunking over time


@pytest.mark.parametrize("chunk_samples", [48, 400])
def test_chunked_encode_and_decode_equal_one_pass(tiny_vqvae: VQVAE, chunk_samples: int) -> None:
    audio = tiny_audio()
    whole = tiny_vqvae.encode(audio, chunk_samples=None)
    chunked = tiny_vqvae.encode(audio, chunk_samples=chunk_samples)
    for level in range(3):
        assert torch.equal(chunked[level], whole[level])
        torch.testing.assert_close(
            tiny_vqvae.encode_latents(audio, level, chunk_samples=chunk_samples),
            tiny_vqvae.encode_latents(audio, level, chunk_samples=None),
            rtol=1e-5,
            atol=1e-5,
        )
        assert_audio_close(
            tiny_vqvae.decode(whole, level, chunk_samples=chunk_samples),
            tiny_vqvae.decode(whole, level, chunk_samples=None),
        )


def test_chunk_margins_are_what_makes_chunks_exact(tiny_vqvae: VQVAE) -> None:
    """Without context the chunk edges differ: the equality test above can fail."""
    audio = tiny_audio()
    whole = tiny_vqvae.encode(audio, chunk_samples=None)
    wanted = [tiny_vqvae.decode(whole, level, chunk_samples=None) for level in range(3)]
    tiny_vqvae.encode_margin = [0, 0, 0]
    tiny_vqvae.decode_margin = [0, 0, 0]
    chunked = tiny_vqvae.encode(audio, chunk_samples=64)
    assert all(not torch.equal(chunked[level], whole[level]) for level in range(3))
    for level in range(3):
        diff = (tiny_vqvae.decode(whole, level, chunk_samples=64) - wanted[level]).abs().max()
        assert diff > 1e-3 * wanted[level].abs().max()


def test_published_margins_cover_about_a_second_at_level_0() -> None:
    vqvae = build_vqvae(device="meta")
    hops = vqvae.hop_lengths
    assert all(m % hop == 0 for m, hop in zip(vqvae.encode_margin, hops, strict=True))
    # the level-0 stack's dilations reach 2187 * 8 samples; the context must exceed that
    assert 2187 * 8 < vqvae.encode_margin[0] < 2 * 44100
    assert 2187 * 8 < vqvae.decode_margin[0] * hops[0] < 2 * 44100


# ---------------------------------------------------------------------------------------------
# Dtypes


def test_float64_matches_float32(tiny_vqvae: VQVAE) -> None:
    audio = tiny_audio()
    codes = tiny_vqvae.encode(audio, chunk_samples=512)
    wide = make_tiny_vqvae().to(torch.float64)
    wide_codes = wide.encode(audio, chunk_samples=512)
    assert all(torch.equal(a, b) for a, b in zip(wide_codes, codes, strict=True))
    for level in range(3):
        decoded = wide.decode(codes, level, chunk_samples=512)
        assert decoded.dtype == torch.float64 and decoded.shape == (2, 2048)
        assert_audio_close(decoded, tiny_vqvae.decode(codes, level))


def test_bfloat16_runs_convolutions_in_bf16_and_stays_close(tiny_vqvae: VQVAE) -> None:
    audio = tiny_audio()
    codes = tiny_vqvae.encode(audio)
    half = VQVAE(tiny_vqvae.config, dtype=torch.bfloat16).eval()
    half.load_state_dict(tiny_vqvae.state_dict())
    assert half.conv_dtype == torch.bfloat16
    assert half.bottleneck.level_blocks[0].k.dtype == torch.float32  # distances stay exact
    half_codes = half.encode(audio, chunk_samples=256)
    for level in range(3):
        assert half_codes[level].shape == codes[level].shape and half_codes[level].dtype == torch.long
        agreement = (half_codes[level] == codes[level]).float().mean().item()
        assert agreement > 0.5, f"level {level}: only {agreement:.0%} of bf16 codes agree with fp32"
    for level in range(1, 3):  # level 0's deep random stack amplifies bf16 rounding too much to compare
        decoded = half.decode(codes, level, chunk_samples=256)
        assert decoded.dtype == torch.bfloat16 and decoded.shape == (2, 2048)
        assert_audio_close(decoded, tiny_vqvae.decode(codes, level), rtol=0.1)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_audio_is_refused_with_a_clear_message(tiny_vqvae: VQVAE) -> None:
    with pytest.raises(VQVAEInputError, match="multiple of 16 samples"):
        tiny_vqvae.encode(torch.zeros(1, 2050))
    with pytest.raises(VQVAEInputError, match="mono"):
        tiny_vqvae.encode(torch.zeros(1, 2048, 2))
    with pytest.raises(VQVAEInputError, match="float tensor"):
        tiny_vqvae.encode(torch.zeros(1, 2048, dtype=torch.int16))
    with pytest.raises(VQVAEInputError, match="levels must satisfy"):
        tiny_vqvae.encode(torch.zeros(1, 2048), start_level=2, end_level=1)


def test_bad_codes_are_refused_with_a_clear_message(tiny_vqvae: VQVAE) -> None:
    with pytest.raises(VQVAEInputError, match=r"\[0, 64\); found values 0..64"):
        tiny_vqvae.decode(torch.tensor([[0, 64]]), 0)
    with pytest.raises(VQVAEInputError, match="integer tensor"):
        tiny_vqvae.decode(torch.zeros(1, 8), 0)
    with pytest.raises(VQVAEInputError, match="one tensor per level"):
        tiny_vqvae.decode([torch.zeros(1, 8, dtype=torch.long)] * 2, 0)
    with pytest.raises(VQVAEInputError, match=r"\(batch, tokens\)"):
        tiny_vqvae.decode(torch.zeros(8, dtype=torch.long), 0)
    with pytest.raises(VQVAEInputError, match="levels must satisfy"):
        tiny_vqvae.decode(torch.zeros(1, 8, dtype=torch.long), 3)
