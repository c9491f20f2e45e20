"""The published Jukebox models: hparams (original names), checkpoint files and where to fetch them.

Hparams are plain dicts with the original hparams names, so a published set maps
one to one onto our config dataclasses (`VQVAEConfig.from_hparams`, `PriorConfig.from_hparams`).
Only settings that matter at inference are listed; training-only ones are omitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAMPLE_RATE = 44100
# Every published top prior's max_duration: it takes songs shorter than this (the original refuses
# one this long or longer).
MAX_SONG_SECONDS = 600.0
SEED_LIMIT = 2**64  # seeds are 0 .. 2**64 - 1: what torch's manual_seed takes
# The lowest sampling temperature: the fp32 logits divided by it stay finite (a subnormal one made them inf).
MIN_TEMPERATURE = 1e-6

# Path of each checkpoint relative to a mirror root (the original CDN's `jukebox/models/`).
# The same relative path is used under the local model directory.
VQVAE_HPARAMS: dict[str, Any] = dict(
    levels=3,
    downs_t=(3, 2, 2),
    strides_t=(2, 2, 2),
    emb_width=64,
    l_bins=2048,
    width=32,
    depth=4,
    m_conv=1.0,
    dilation_growth_rate=3,
    dilation_cycle=None,
    hvqvae_multipliers=(2, 1, 1),
    vqvae_reverse_decoder_dilation=True,
    zero_out=False,
    res_scale=False,
)

_LABELS_V2: dict[str, Any] = dict(y_bins=(120, 4111), t_bins=128, max_bow_genre_size=5, n_vocab=80)
_LABELS_V3: dict[str, Any] = dict(y_bins=(604, 7898), t_bins=64, max_bow_genre_size=1, n_vocab=79)

# Settings common to every published prior (the original defaults).
_PRIOR_COMMON: dict[str, Any] = dict(
    m_attn=0.25,
    m_mlp=1.0,
    zero_out=False,
    res_scale=False,
    pos_init=False,
    spread=None,
    merged_decoder=False,
    single_enc_dec=False,
    use_tokens=False,
    n_tokens=0,
    labels_v3=False,
    min_duration=None,
    max_duration=None,
    alignment_layer=None,
    alignment_head=None,
    fp16_params=False,
)

_UPSAMPLER: dict[str, Any] = {
    **_PRIOR_COMMON,
    **_LABELS_V2,
    **dict(
        n_ctx=8192,
        prior_width=1920,
        prior_depth=72,
        heads=1,
        attn_order=2,
        blocks=128,
        init_scale=0.4,
        cond_width=1024,
        cond_depth=16,
        cond_m_conv=1.0,
        cond_dilation_growth_rate=3,
        cond_dilation_cycle=8,
        cond_c_res=1,
        cond_zero_out=False,
        cond_res_scale=False,
    ),
}

PRIOR_HPARAMS: dict[str, dict[str, Any]] = {
    "upsampler_level_0": {**_UPSAMPLER, "level": 0},
    "upsampler_level_1": {**_UPSAMPLER, "level": 1, "cond_res_scale": True},
    "prior_5b": {
        **_PRIOR_COMMON,
        **_LABELS_V2,
        **dict(
            level=2,
            n_ctx=8192,
            prior_width=4800,
            prior_depth=72,
            heads=8,
            attn_order=2,
            blocks=128,
            init_scale=0.1,
            min_duration=60.0,
            max_duration=MAX_SONG_SECONDS,
            merged_decoder=True,
            fp16_params=True,
        ),
    },
    "prior_5b_lyrics": {
        **_PRIOR_COMMON,
        **_LABELS_V2,
        **dict(
            level=2,
            n_ctx=8192,
            prior_width=4800,
            prior_depth=79,
            heads=8,
            attn_order=10,
            blocks=128,
            init_scale=0.1,
            prime_width=1280,
            prime_depth=18,
            prime_heads=4,
            prime_attn_order=2,
            prime_blocks=32,
            prime_init_scale=0.7,
            prime_m_attn=0.25,
            prime_m_mlp=1.0,
            prime_zero_out=False,
            prime_res_scale=False,
            prime_pos_init=False,
            prime_spread=None,
            min_duration=23.8,
            max_duration=MAX_SONG_SECONDS,
            use_tokens=True,
            n_tokens=512,
            merged_decoder=True,
            fp16_params=True,
            alignment_layer=68,
            alignment_head=2,
        ),
    },
    "prior_1b_lyrics": {
        **_PRIOR_COMMON,
        **_LABELS_V3,
        **dict(
            level=2,
            n_ctx=6144,
            prior_width=2048,
            prior_depth=72,
            heads=2,
            attn_order=12,
            blocks=64,
            init_scale=0.2,
            labels_v3=True,
            min_duration=17.84,
            max_duration=MAX_SONG_SECONDS,
            use_tokens=True,
            n_tokens=384,
            single_enc_dec=True,
            fp16_params=False,
            alignment_layer=63,
            alignment_head=0,
        ),
    },
}


@dataclass(frozen=True)
class CheckpointFile:
    """One downloadable checkpoint: its registry name and its path below a mirror root."""

    name: str
    path: str  # e.g. "5b/vqvae.pth.tar"


CHECKPOINTS: dict[str, CheckpointFile] = {
    "vqvae": CheckpointFile("vqvae", "5b/vqvae.pth.tar"),
    "upsampler_level_0": CheckpointFile("upsampler_level_0", "5b/prior_level_0.pth.tar"),
    "upsampler_level_1": CheckpointFile("upsampler_level_1", "5b/prior_level_1.pth.tar"),
    "prior_5b": CheckpointFile("prior_5b", "5b/prior_level_2.pth.tar"),
    "prior_5b_lyrics": CheckpointFile("prior_5b_lyrics", "5b_lyrics/prior_level_2.pth.tar"),
    "prior_1b_lyrics": CheckpointFile("prior_1b_lyrics", "1b_lyrics/prior_level_2.pth.tar"),
}

# Mirror roots tried in order: the CDN the original code downloads from, then the storage account
# behind it, where the files were first published (the CDN's future is uncertain).
DEFAULT_MIRRORS = (
    "https://openaipublic.azureedge.net/jukebox/models/",
    "https://openaipublic.blob.core.windows.net/jukebox/models/",
)


@dataclass(frozen=True)
class PublishedModel:
    """A user-facing model name and the checkpoints that make up its cascade, top prior last."""

    name: str
    vqvae: str
    upsamplers: tuple[str, str]  # level 0, level 1
    top_prior: str
    has_lyrics: bool
    hf_repo: str | None = None
    summary: str = ""  # what a user picks it for, shown beside its name

    @property
    def checkpoints(self) -> tuple[str, ...]:
        return (self.vqvae, *self.upsamplers, self.top_prior)

    @property
    def priors(self) -> tuple[str, str, str]:
        """Prior checkpoint names by level: 0, 1, 2."""
        return (self.upsamplers[0], self.upsamplers[1], self.top_prior)


# The one list of models: the bot's choices, the CLI's, the workers' and the model-file manager's.
MODELS: dict[str, PublishedModel] = {
    "5b": PublishedModel(
        "5b",
        "vqvae",
        ("upsampler_level_0", "upsampler_level_1"),
        "prior_5b",
        has_lyrics=False,
        summary="best quality, no lyrics",
    ),
    "5b_lyrics": PublishedModel(
        "5b_lyrics",
        "vqvae",
        ("upsampler_level_0", "upsampler_level_1"),
        "prior_5b_lyrics",
        has_lyrics=True,
        hf_repo="openai/jukebox-5b-lyrics",
        summary="best quality, sings your lyrics",
    ),
    "1b_lyrics": PublishedModel(
        "1b_lyrics",
        "vqvae",
        ("upsampler_level_0", "upsampler_level_1"),
        "prior_1b_lyrics",
        has_lyrics=True,
        hf_repo="openai/jukebox-1b-lyrics",
        summary="faster, sings your lyrics",
    ),
}
# The bot's choice when the user names none, best first: it takes the first some worker serves.
MODEL_PREFERENCE = ("5b_lyrics", "1b_lyrics", "5b")
DEFAULT_MODEL = MODEL_PREFERENCE[0]
