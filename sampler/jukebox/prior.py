"""The Jukebox priors: config, label/timing and upsampler conditioners, lyric encoder, token model.

`JukeboxPrior` is the equivalent of the original `SimplePrior` and loads the published checkpoints
with the exact key names (jukebox-spec §2, §6):

* ``conditioner_blocks.0``: upsamplers only, codes of the level above → x_cond (§2.5);
* ``y_emb``: artist/genre start embedding, and timing embeddings for the top level (§2.4);
* ``prime_prior``, ``prime_state_proj``, ``prime_state_ln``, ``prime_x_out``: 5b_lyrics only, the causal
  lyric encoder whose states feed the cross-attention layers (§2.6);
* ``prior``: the token model (``x_emb``, ``pos_emb.pos_emb``, ``transformer._attn_mods``, ``x_out``).

How the sampler drives it (all token arguments are ids of the prior's own vocabulary, `bins` wide;
for 1b_lyrics music code c is id c + 79, see `codes_to_ids` / `ids_to_codes`)::

    cond = prior.get_conditioning(y, z_cond)          # once per window
    logits = prior.logits(ids, cond)                  # teacher-forced (N, T, bins)

    state = prior.start(cond)                         # empty window (1b: the lyric prefix queued)
    prior.prefill(state, prime_ids[:, :k])            # known tokens, in one pass or in chunks
    prior.prefill(state, prime_ids[:, k:])
    token = None
    for _ in range(new_tokens):
        logits = prior.step(state, token)             # (N, bins) fp32, logits of the next token
        token = draw(logits)                          # fed back by the next step

The state keeps the newest known token pending: `prefill` processes every position whose input it
was given except the last, so the first `step` after `start`/`prefill` takes no token, and every
later `step` takes the token drawn from the previous step's logits. For 1b_lyrics `start` queues the
lyric prefix the same way: the first `prefill` processes it in the same pass as the known music
tokens (or the first `step` processes it alone when there are none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sampler.jukebox.hparams import hparam_type_problem
from sampler.jukebox.registry import PRIOR_HPARAMS, SAMPLE_RATE, VQVAE_HPARAMS
from sampler.jukebox.transformer import (
    Conv1D,
    KVCache,
    LayerNorm,
    Transformer,
    TransformerConfig,
)


class PriorConfigError(ValueError):
    """Hparams that do not describe a Jukebox prior this code can build."""


class PriorInputError(ValueError):
    """A bad argument to a prior: wrong shape, dtype, id range, or a call out of order."""


class LabelVectorError(PriorInputError):
    """A label vector `y` (artist, genres, timing, lyrics) outside what the prior was trained on."""


# Hparams that only affect training or initialisation: accepted and ignored.
_IGNORED_HPARAMS = frozenset(
    {
        "zero_out",
        "cond_zero_out",
        "prime_zero_out",
        "prime_loss_fraction",
        "c_res",
        "c_attn",
        "c_mlp",
        "prime_c_res",
        "prime_c_attn",
        "prime_c_mlp",
        "beta2",
        "restore_prior",
        "attn_dropout",
        "resid_dropout",
        "emb_dropout",
        "prime_attn_dropout",
        "prime_resid_dropout",
        "prime_emb_dropout",
        "labels",
        "copy_input",
    }
)
# Hparams that change the maths; only the published value is implemented.
_FIXED_HPARAMS: dict[str, Any] = {
    "res_scale": False,
    "pos_init": False,
    "spread": None,
    "prime_res_scale": False,
    "prime_pos_init": False,
    "prime_spread": None,
}


@dataclass(frozen=True)
class PriorConfig:
    """One prior, named after the original hparams, plus the VQ-VAE geometry it depends on."""

    level: int
    n_ctx: int
    prior_width: int
    prior_depth: int
    heads: int
    attn_order: int
    blocks: int | None
    init_scale: float = 1.0
    m_attn: float = 0.25
    m_mlp: float = 1.0
    merged_decoder: bool = False
    single_enc_dec: bool = False
    use_tokens: bool = False
    n_tokens: int = 0
    n_vocab: int = 0
    y_bins: tuple[int, int] = (120, 4111)  # (genres, artists)
    t_bins: int = 128
    max_bow_genre_size: int = 5
    min_duration: float | None = None
    max_duration: float | None = None
    labels_v3: bool = False
    fp16_params: bool = False  # the reference holds Conv1D weights in fp16 (5b, 5b_lyrics)
    alignment_layer: int | None = None
    alignment_head: int | None = None
    # upsampler conditioner (levels below the top)
    cond_width: int = 0
    cond_depth: int = 0
    cond_m_conv: float = 1.0
    cond_dilation_growth_rate: int = 1
    cond_dilation_cycle: int | None = None
    cond_res_scale: bool = False
    cond_c_res: int = 0  # 1 stores the conditioner's resnet blocks under `.blocks.` instead of `.model.`
    # separate lyric encoder (5b_lyrics)
    prime_width: int = 0
    prime_depth: int = 0
    prime_heads: int = 1
    prime_attn_order: int = 0
    prime_blocks: int | None = None
    prime_init_scale: float = 1.0
    prime_m_attn: float = 0.25
    prime_m_mlp: float = 1.0
    # VQ-VAE geometry
    l_bins: int = 2048
    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    sr: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if len(self.downs_t) != self.levels or len(self.strides_t) != self.levels:
            raise PriorConfigError(
                f"downs_t {self.downs_t} and strides_t {self.strides_t} need {self.levels} entries"
            )
        if not 0 <= self.level < self.levels:
            raise PriorConfigError(f"level {self.level} is outside the VQ-VAE's levels 0..{self.levels - 1}")
        if len(self.y_bins) != 2:
            raise PriorConfigError(f"y_bins must be (genre_bins, artist_bins), got {self.y_bins}")
        if self.is_upsampler and (self.cond_width <= 0 or self.cond_depth <= 0):
            raise PriorConfigError(f"level {self.level} is an upsampler: it needs cond_width and cond_depth")
        if not self.is_upsampler and (self.min_duration is None or self.max_duration is None):
            raise PriorConfigError(
                "the top-level prior needs min_duration and max_duration for its timing signal"
            )
        if self.single_enc_dec and not (self.use_tokens and self.n_tokens > 0 and self.n_vocab > 0):
            raise PriorConfigError("single_enc_dec needs use_tokens=True, n_tokens > 0 and n_vocab > 0")
        if self.lyric_encoder and (self.prime_width <= 0 or self.prime_depth <= 0 or self.n_vocab <= 0):
            raise PriorConfigError("a separate lyric encoder needs prime_width, prime_depth and n_vocab")
        # Building the transformer configs validates heads, blocks and attn_order.
        self.transformer_config()
        if self.lyric_encoder:
            self.encoder_config()

    # ---- construction

    @classmethod
    def from_hparams(
        cls, hparams: Mapping[str, Any], vqvae: Mapping[str, Any] = VQVAE_HPARAMS, sr: int = SAMPLE_RATE
    ) -> PriorConfig:
        """Config from an original-style hparams dict and the VQ-VAE hparams it sits on."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in hparams.items():
            if key in _IGNORED_HPARAMS:
                continue
            if key in _FIXED_HPARAMS:
                if value != _FIXED_HPARAMS[key]:
                    raise PriorConfigError(
                        f"{key}={value!r} is not supported: every published prior uses "
                        f"{_FIXED_HPARAMS[key]!r}"
                    )
                continue
            if key not in names:
                raise PriorConfigError(f"unknown prior hparam {key!r}")
            problem = hparam_type_problem(cls, key, value)
            if problem is not None:  # a sidecar's "64" or 2.5: said here, not as a TypeError deep inside
                raise PriorConfigError(f"prior hparam {key!r} {problem}")
            values[key] = tuple(value) if isinstance(value, list) else value
        for key in ("level", "n_ctx", "prior_width", "prior_depth", "heads", "attn_order"):
            if key not in values:
                raise PriorConfigError(f"prior hparams are missing {key!r}")
        values.setdefault("blocks", None)
        for key in ("levels", "l_bins", "downs_t", "strides_t"):
            if key not in vqvae:
                continue
            problem = hparam_type_problem(cls, key, vqvae[key])
            if problem is not None:
                raise PriorConfigError(f"VQ-VAE hparam {key!r} {problem}")
            values[key] = tuple(vqvae[key]) if key.endswith("_t") else vqvae[key]
        values["sr"] = sr
        return cls(**values)

    @classmethod
    def published(cls, name: str) -> PriorConfig:
        """A published prior's config: upsampler_level_0/1, prior_5b, prior_5b_lyrics, prior_1b_lyrics."""
        if name not in PRIOR_HPARAMS:
            raise PriorConfigError(f"unknown prior {name!r}; published priors are {sorted(PRIOR_HPARAMS)}")
        return cls.from_hparams(PRIOR_HPARAMS[name], VQVAE_HPARAMS)

    # ---- derived geometry

    @property
    def is_upsampler(self) -> bool:
        """Conditioned on the codes of the level above (every level but the top)."""
        return self.level != self.levels - 1

    @property
    def lyric_encoder(self) -> bool:
        """5b_lyrics design: a separate lyric encoder attended to by cross-attention layers."""
        return self.use_tokens and self.n_tokens > 0 and not self.single_enc_dec

    @property
    def prefix_len(self) -> int:
        """Lyric positions heading the transformer sequence (1b_lyrics design), else 0."""
        return self.n_tokens if self.single_enc_dec else 0

    @property
    def seq_len(self) -> int:
        return self.prefix_len + self.n_ctx

    @property
    def bins(self) -> int:
        """Width of the logits: the music codebook, plus the lyric vocabulary in front for 1b_lyrics."""
        return self.l_bins + (self.n_vocab if self.single_enc_dec else 0)

    @property
    def downsamples(self) -> tuple[int, ...]:
        return tuple(s**d for s, d in zip(self.strides_t, self.downs_t, strict=True))

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        return tuple(math.prod(self.downsamples[: i + 1]) for i in range(self.levels))

    @property
    def raw_to_tokens(self) -> int:
        """Audio samples per token at this level."""
        return self.hop_lengths[self.level]

    @property
    def sample_length(self) -> int:
        """Audio samples covered by one window."""
        return self.n_ctx * self.raw_to_tokens

    @property
    def cond_downsample(self) -> int | None:
        """Tokens of this level per token of the level above (upsamplers only)."""
        return self.downsamples[self.level + 1] if self.is_upsampler else None

    @property
    def label_width(self) -> int:
        """Length of a label vector y: total, offset, sample_length, artist, genres, lyric tokens."""
        return 4 + self.max_bow_genre_size + self.n_tokens

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            width=self.prior_width,
            depth=self.prior_depth,
            heads=self.heads,
            seq_len=self.seq_len,
            attn_order=self.attn_order,
            blocks=self.blocks,
            m_attn=self.m_attn,
            m_mlp=self.m_mlp,
            init_scale=self.init_scale,
            encoder_len=self.n_tokens if self.lyric_encoder else 0,
            prime_len=self.prefix_len if self.single_enc_dec else None,
        )

    def encoder_config(self) -> TransformerConfig:
        return TransformerConfig(
            width=self.prime_width,
            depth=self.prime_depth,
            heads=self.prime_heads,
            seq_len=self.n_tokens,
            attn_order=self.prime_attn_order,
            blocks=self.prime_blocks,
            m_attn=self.prime_m_attn,
            m_mlp=self.prime_m_mlp,
            init_scale=self.prime_init_scale,
        )


# --------------------------------------------------------------------------------------------------
# Label and timing conditioner (y_emb)


class SimpleEmbedding(nn.Module):
    def __init__(self, bins: int, width: int, init_scale: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)


class RangeEmbedding(nn.Module):
    """Embeds n_time positions interpolated over [start, end), binned into `bins` over [pos_min, pos_max)."""

    def __init__(
        self,
        n_time: int,
        bins: int,
        pos_range: tuple[float, float],
        width: int,
        init_scale: float,
        clamp: bool,
    ) -> None:
        super().__init__()
        self.n_time, self.bins, self.clamp = n_time, bins, clamp
        self.pos_min, self.pos_max = pos_range
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def forward(self, start: Tensor, end: Tensor | None = None) -> Tensor:
        """start, end: (N, 1) fp32. Returns (N, n_time, width)."""
        if self.n_time == 1:
            position = start
        else:
            assert end is not None
            if self.clamp:
                end = end.clamp(self.pos_min, self.pos_max)
            # fp32 interpolation and floor binning, as the reference (bins are sensitive to rounding).
            steps = (
                torch.arange(self.n_time, dtype=torch.float32, device=start.device).view(1, -1) / self.n_time
            )
            position = start + (end - start) * steps
        normalised = (position - self.pos_min) / (self.pos_max - self.pos_min)
        return self.emb((self.bins * normalised).floor().long())


class LabelConditioner(nn.Module):
    """Artist + genre start embedding, and for the top level the timing signal (keys: see spec §2.4)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        genre_bins, artist_bins = config.y_bins
        width, scale = config.prior_width, config.init_scale
        self.max_bow_genre_size = config.max_bow_genre_size
        self.bow_genre_emb = SimpleEmbedding(genre_bins, width, scale)
        self.artist_emb = SimpleEmbedding(artist_bins, width, scale)
        self.include_time_signal = not config.is_upsampler
        self.sr = float(config.sr)
        if self.include_time_signal:
            assert config.min_duration is not None and config.max_duration is not None
            sr, n_time, t_bins = config.sr, config.n_ctx, config.t_bins
            self.total_length_emb = RangeEmbedding(
                1, t_bins, (config.min_duration * sr, config.max_duration * sr), width, scale, clamp=False
            )
            self.absolute_pos_emb = RangeEmbedding(
                n_time, t_bins, (0.0, config.max_duration * sr), width, scale, clamp=False
            )
            self.relative_pos_emb = RangeEmbedding(n_time, t_bins, (0.0, 1.0), width, scale, clamp=True)

    def check(self, labels: Tensor) -> None:
        """Raise `LabelVectorError` for ids or timings the embeddings cannot take."""
        artist, genres = labels[:, 3], labels[:, 4:]
        artist_bins = self.artist_emb.emb.num_embeddings
        genre_bins = self.bow_genre_emb.emb.num_embeddings
        if ((artist < 0) | (artist >= artist_bins)).any():
            raise LabelVectorError(f"artist ids must be in 0..{artist_bins - 1}, got {artist.tolist()}")
        if ((genres < -1) | (genres >= genre_bins)).any():
            raise LabelVectorError(
                f"genre ids must be in 0..{genre_bins - 1} (or -1 for an empty slot), got {genres.tolist()}"
            )
        if not self.include_time_signal:
            return
        total, offset, length = (labels[:, i : i + 1].float() for i in range(3))
        sr = self.sr
        lo, hi = self.total_length_emb.pos_min, self.total_length_emb.pos_max
        if not ((lo <= total).all() and (total < hi).all()):
            raise LabelVectorError(
                f"total_length must be at least {lo / sr:.2f} s and under {hi / sr:.0f} s for this prior "
                f"(in samples: {lo:.0f} ≤ total < {hi:.0f}), got {total.view(-1).tolist()}"
            )
        top = self.absolute_pos_emb.pos_max
        end = offset + length
        if not ((offset >= 0).all() and (offset < total).all() and (end <= top).all()):
            raise LabelVectorError(
                f"the window [offset, offset + sample_length) must start inside the song and end by "
                f"{top:.0f} samples ({top / sr:.0f} s); got offsets {offset.view(-1).tolist()}, "
                f"lengths {length.view(-1).tolist()}, totals {total.view(-1).tolist()}"
            )

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """labels (N, 4 + max_bow_genre_size) → start (N, 1, W), timing (N, n_ctx, W) or None."""
        total, offset, length, artist, genres = (
            labels[:, 0:1],
            labels[:, 1:2],
            labels[:, 2:3],
            labels[:, 3:4],
            labels[:, 4:],
        )
        present = (genres >= 0).float().unsqueeze(2)  # empty genre slots are -1
        genre = (self.bow_genre_emb.emb(genres.clamp(0)) * present).sum(dim=1, keepdim=True)
        start = genre + self.artist_emb.emb(artist)
        if not self.include_time_signal:
            return start, None
        total_f, first, last = total.float(), offset.float(), (offset + length).float()
        timing = (
            self.total_length_emb(total_f)
            + self.absolute_pos_emb(first, last)
            + self.relative_pos_emb(first / total_f, last / total_f)
        )
        return start, timing


# --------------------------------------------------------------------------------------------------
# Upsampler conditioner (conditioner_blocks.0). Its conv stack mirrors the VQ-VAE decoder's block
# (sampler/jukebox/vqvae.py) with the conditioner's own dilation cycle and key naming.


class ResConvBlock(nn.Module):
    """`x + res_scale · conv1x1(relu(conv3(relu(x))))` (keys model.1, model.3)."""

    def __init__(self, width: int, hidden: int, dilation: int, res_scale: float) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(width, hidden, 3, 1, dilation, dilation),
            nn.ReLU(),
            nn.Conv1d(hidden, width, 1, 1, 0),
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.model(x)


class ConvResnet(nn.Module):
    """Residual conv blocks with dilation growth**(d % cycle), in order (not reversed)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        width, depth = config.cond_width, config.cond_depth
        cycle = config.cond_dilation_cycle
        res_scale = 1.0 / math.sqrt(depth) if config.cond_res_scale else 1.0
        blocks = [
            ResConvBlock(
                width,
                int(config.cond_m_conv * width),
                config.cond_dilation_growth_rate ** (d % cycle if cycle else d),
                res_scale,
            )
            for d in range(depth)
        ]
        # The key name depends on a training-time checkpointing flag (cond_c_res).
        self.blocks: nn.ModuleList | None = nn.ModuleList(blocks) if config.cond_c_res else None
        self.model: nn.Sequential | None = None if config.cond_c_res else nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        layers: nn.ModuleList | nn.Sequential | None = self.blocks if self.blocks is not None else self.model
        assert layers is not None
        for block in layers:
            x = block(x)
        return x


class ConvUpsampler(nn.Module):
    """Conv1d(W→cond_width), then down_t × [ConvResnet, ConvTranspose1d(×stride)], back to W channels."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        level_above = config.level + 1
        down_t, stride = config.downs_t[level_above], config.strides_t[level_above]
        width, hidden = config.prior_width, config.cond_width
        stages: list[nn.Module] = [nn.Conv1d(width, hidden, 3, 1, 1)]
        for i in range(down_t):
            out = width if i == down_t - 1 else hidden
            stages.append(
                nn.Sequential(
                    ConvResnet(config), nn.ConvTranspose1d(hidden, out, stride * 2, stride, stride // 2)
                )
            )
        self.model = nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class UpsamplerConditioner(nn.Module):
    """Codes of the level above (N, n_ctx / cond_downsample) → x_cond (N, n_ctx, W), fp32."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.x_emb = nn.Embedding(config.l_bins, config.prior_width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * config.init_scale)
        self.cond = ConvUpsampler(config)
        self.ln = LayerNorm(config.prior_width)

    def forward(self, codes: Tensor) -> Tensor:
        x = self.x_emb(codes).permute(0, 2, 1)  # NTC -> NCT
        x = self.cond(x).permute(0, 2, 1)
        return self.ln(x)


# --------------------------------------------------------------------------------------------------
# Token model (ConditionalAutoregressive2D)


class PositionEmbedding(nn.Module):
    def __init__(self, seq_len: int, width: int, init_scale: float) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.empty(seq_len, width).normal_(std=0.01 * init_scale))


class TokenModel(nn.Module):
    """Embeddings + transformer + output head. Position t's input is the start vector at t = 0, else
    `x_emb(token[t-1])`, plus `pos_emb[t]` and `x_cond[t]`; the output at t gives the logits of token t.

    `merged_decoder=False` ties `x_out` to `x_emb` and adds x_cond again after the transformer.
    `only_encode` (the lyric encoder) has a learned `start_token` and no head.
    """

    def __init__(
        self, config: TransformerConfig, bins: int, *, only_encode: bool, merged_decoder: bool
    ) -> None:
        super().__init__()
        self.bins, self.width = bins, config.width
        self.x_emb = nn.Embedding(bins, config.width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * config.init_scale)
        if only_encode:  # the encoder has no label start embedding, so it learns its own
            self.start_token = nn.Parameter(
                torch.empty(1, config.width).normal_(std=0.01 * config.init_scale)
            )
        self.pos_emb = PositionEmbedding(config.seq_len, config.width, config.init_scale)
        self.transformer = Transformer(config)
        self.readd_cond = not merged_decoder
        self.x_out: nn.Linear | None = None
        if not only_encode:
            self.x_out = nn.Linear(config.width, bins, bias=False)
            if not merged_decoder:
                self.x_out.weight = self.x_emb.weight

    def tie_head(self) -> None:
        if self.x_out is not None and self.readd_cond:
            self.x_out.weight = self.x_emb.weight

    @staticmethod
    def _cond_at(x_cond: Tensor | None, first: int, count: int) -> Tensor | None:
        if x_cond is None:
            return None
        return x_cond if x_cond.shape[1] == 1 else x_cond[:, first : first + count]

    def embed(self, ids: Tensor | None, start: Tensor | None, first: int, x_cond: Tensor | None) -> Tensor:
        """Inputs (fp32) of positions first.. : `start` (N, 1, W) if given, then x_emb of `ids` (N, c)."""
        parts = [] if start is None else [start]
        if ids is not None and ids.shape[1] > 0:
            parts.append(self.x_emb(ids))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        count = x.shape[1]
        x = x + self.pos_emb.pos_emb[first : first + count]
        cond = self._cond_at(x_cond, first, count)
        return x if cond is None else x + cond

    def head(self, h: Tensor, first: int, x_cond: Tensor | None) -> Tensor:
        """fp32 logits of positions first.. from the transformer output h (N, c, W) in fp32."""
        assert self.x_out is not None
        cond = self._cond_at(x_cond, first, h.shape[1]) if self.readd_cond else None
        if cond is not None:
            h = h + cond
        return self.x_out(h)


# --------------------------------------------------------------------------------------------------
# The prior


@dataclass
class Conditioning:
    """Everything a window of one prior is conditioned on (fp32 tensors, batch first).

    start: (N, 1, W) label start embedding, the input at position 0.
    x_cond: (N, seq_len, W) added at every transformer position: the upsampler conditioner's output,
        or the timing signal (1b_lyrics: zeros over the lyric prefix, then the timing signal).
    encoder_states: (N, n_tokens, W) lyric encoder output for the cross-attention layers (5b_lyrics).
    prefix_ids: (N, n_tokens) lyric ids heading the sequence (1b_lyrics).
    """

    start: Tensor
    x_cond: Tensor
    encoder_states: Tensor | None = None
    prefix_ids: Tensor | None = None

    @property
    def batch(self) -> int:
        return self.start.shape[0]


@dataclass
class SamplingState:
    """Incremental decoding state of one window (made by `JukeboxPrior.start`)."""

    cond: Conditioning
    cache: KVCache
    pending_start: bool  # position 0's input (the start embedding) has not been processed
    # (N, k) known ids not processed yet, the inputs of the next positions: the newest known id
    # (k = 1), or right after `start` the 1b_lyrics lyric prefix (see `prefix_queued`)
    pending: Tensor | None
    owner: int
    prefix_len: int = 0
    # what `step` reads every token, fetched from the modules once per window
    step_weights: tuple[Any, ...] | None = field(default=None, repr=False)

    @property
    def pos(self) -> int:
        """Transformer positions processed (1b_lyrics: including the lyric prefix)."""
        return self.cache.pos

    @property
    def music_pos(self) -> int:
        """Music positions processed: the window index of the token the next `step` predicts."""
        return 0 if self.prefix_queued else self.cache.pos - self.prefix_len

    @property
    def prefix_queued(self) -> bool:
        """1b_lyrics, right after `start`: the lyric prefix waits to be fed with the first prefill."""
        return self.pending_start and self.pending is not None


class JukeboxPrior(nn.Module):
    """The `SimplePrior` equivalent: conditioners + token model, with the published state-dict keys.

    `dtype` is the compute dtype of the transformers' Conv1D layers (chosen once; see
    `to_compute_dtype`). Embeddings, LayerNorms, conditioners, the lyric projection and the output
    head stay fp32, and logits are fp32.
    """

    def __init__(self, config: PriorConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        if config.is_upsampler:
            self.conditioner_blocks = nn.ModuleList([UpsamplerConditioner(config)])
        self.y_emb = LabelConditioner(config)
        if config.lyric_encoder:
            self.prime_prior = TokenModel(
                config.encoder_config(), config.n_vocab, only_encode=True, merged_decoder=True
            )
            self.prime_state_proj = Conv1D(config.prime_width, config.prior_width, config.prime_init_scale)
            self.prime_state_ln = LayerNorm(config.prior_width)
            self.prime_x_out = nn.Linear(config.prior_width, config.n_vocab, bias=False)  # training loss only
            nn.init.normal_(self.prime_x_out.weight, std=0.02 * config.init_scale)
        self.prior = TokenModel(
            config.transformer_config(), config.bins, only_encode=False, merged_decoder=config.merged_decoder
        )
        self._compute_dtype = torch.float32
        self.to_compute_dtype(dtype)

    # ---- geometry helpers

    @property
    def n_ctx(self) -> int:
        """Music tokens per window (= tokens_per_window)."""
        return self.config.n_ctx

    tokens_per_window = n_ctx

    @property
    def bins(self) -> int:
        """Width of the logits (1b_lyrics: 79 lyric ids + 2048 music codes)."""
        return self.config.bins

    @property
    def prefix_len(self) -> int:
        return self.config.prefix_len

    @property
    def sample_length(self) -> int:
        return self.config.sample_length

    @property
    def raw_to_tokens(self) -> int:
        return self.config.raw_to_tokens

    @property
    def dtype(self) -> torch.dtype:
        return self._compute_dtype

    def codes_to_ids(self, codes: Tensor) -> Tensor:
        """Music codes → ids of this prior's vocabulary (1b_lyrics: shifted past the lyric ids)."""
        return codes + self.config.n_vocab if self.config.single_enc_dec else codes

    def ids_to_codes(self, ids: Tensor) -> Tensor:
        """Sampled ids → music codes. 1b_lyrics: minus 79; a drawn lyric id is code 0 (as the reference)."""
        return (ids - self.config.n_vocab).clamp(min=0) if self.config.single_enc_dec else ids

    # ---- dtype and kernels

    def to_compute_dtype(self, dtype: torch.dtype) -> JukeboxPrior:
        """Cast the transformers' Conv1D layers to `dtype` and everything else to fp32, once."""
        if not dtype.is_floating_point:
            raise PriorInputError(f"the compute dtype must be a floating type, got {dtype}")
        transformers = [self.prior.transformer]
        if self.config.lyric_encoder:
            transformers.append(self.prime_prior.transformer)
        in_transformer = {
            id(p) for t in transformers for m in t.modules() if isinstance(m, Conv1D) for p in m.parameters()
        }
        for module in self.modules():
            for param in module.parameters(recurse=False):
                want = dtype if id(param) in in_transformer else torch.float32
                if param.dtype != want:
                    param.data = param.data.to(want)
        self._compute_dtype = dtype
        return self

    def set_fast_attention(self, fast: bool) -> None:
        """True: `scaled_dot_product_attention` kernels; False: the reference arithmetic (default)."""
        self.prior.transformer.set_fast_attention(fast)
        if self.config.lyric_encoder:
            self.prime_prior.transformer.set_fast_attention(fast)

    def new_cache(self, batch: int) -> KVCache:
        """A KV cache for `batch` sequences of a whole window, to pass to `start` again and again."""
        return self.prior.transformer.new_cache(batch, self.config.seq_len, reusable=True)

    def set_static_decode(self, static: bool) -> None:
        """Sample with the static-shape decode step (`Transformer.set_static_decode`); off by default."""
        self.prior.transformer.set_static_decode(static)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load published weights (any stored dtype), then restore the tied head and the dtype policy."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.prior.tie_head()
        self.to_compute_dtype(self._compute_dtype)
        return result

    # ---- conditioning

    def _check_ids(
        self, ids: Tensor, name: str, bins: int, length: int | None = None, check_range: bool = True
    ) -> Tensor:
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise PriorInputError(f"{name} must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 2 or (length is not None and ids.shape[1] != length):
            want = f"(batch, {length})" if length is not None else "(batch, length)"
            raise PriorInputError(f"{name} must have shape {want}, got {tuple(ids.shape)}")
        if check_range and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= bins):
            raise PriorInputError(
                f"{name} must be in 0..{bins - 1}, got values {int(ids.min())}..{int(ids.max())}"
            )
        return ids.long()

    @torch.no_grad()
    def get_conditioning(self, y: Tensor, z_cond: Tensor | None = None) -> Conditioning:
        """Conditioning of one window from its label vector y (N, label_width), laid out as
        [total_length, offset, sample_length, artist, genre × max_bow_genre_size (−1 = empty), lyric ids],
        and for upsamplers the codes of the level above z_cond (N, n_ctx / cond_downsample).
        """
        cfg = self.config
        if y.dtype != torch.int64 or y.dim() != 2 or y.shape[1] != cfg.label_width:
            raise LabelVectorError(
                f"y must be an int64 tensor of shape (batch, {cfg.label_width}) = total, offset, "
                "sample_length, "
                f"artist, {cfg.max_bow_genre_size} genre slot(s), {cfg.n_tokens} lyric token(s); "
                f"got {y.dtype} {tuple(y.shape)}"
            )
        n_labels = 4 + cfg.max_bow_genre_size
        labels, lyrics = y[:, :n_labels], y[:, n_labels:]
        self.y_emb.check(labels)
        start, timing = self.y_emb(labels)
        if cfg.is_upsampler:
            if z_cond is None:
                raise PriorInputError(
                    f"level {cfg.level} is an upsampler: pass the codes of level {cfg.level + 1}"
                )
            assert cfg.cond_downsample is not None
            z_cond = self._check_ids(
                z_cond, "z_cond (codes of the level above)", cfg.l_bins, cfg.n_ctx // cfg.cond_downsample
            )
            if z_cond.shape[0] != y.shape[0]:
                raise PriorInputError(f"z_cond has {z_cond.shape[0]} rows but y has {y.shape[0]}")
            x_cond = self.conditioner_blocks[0](z_cond)
        else:
            if z_cond is not None:
                raise PriorInputError("the top-level prior takes no codes from above (z_cond must be None)")
            assert timing is not None
            x_cond = timing
        encoder_states = prefix = None
        if cfg.use_tokens and cfg.n_tokens:
            lyrics = self._check_ids(lyrics, "lyric tokens of y", cfg.n_vocab)
            if cfg.lyric_encoder:
                encoder_states = self.encode_lyrics(lyrics)
            else:
                prefix = lyrics.contiguous()
                zeros = torch.zeros(y.shape[0], cfg.n_tokens, cfg.prior_width, device=x_cond.device)
                x_cond = torch.cat([zeros, x_cond], dim=1)
        return Conditioning(start=start, x_cond=x_cond, encoder_states=encoder_states, prefix_ids=prefix)

    def encode_lyrics(self, lyrics: Tensor) -> Tensor:
        """5b_lyrics: lyric ids (N, n_tokens) → encoder states (N, n_tokens, W) fp32.

        The encoder is causal and fed [start_token, lyric_0 … lyric_{n-2}] (the last id is never fed).
        """
        encoder = self.prime_prior
        start = encoder.start_token.expand(lyrics.shape[0], 1, -1)
        x = encoder.embed(lyrics[:, :-1], start, 0, None)
        acts = encoder.transformer(x)
        return self.prime_state_ln(self.prime_state_proj(acts))

    # ---- teacher-forced logits

    @torch.no_grad()
    def logits(self, ids: Tensor, cond: Conditioning, include_prefix: bool = False) -> Tensor:
        """Logits (N, T, bins) fp32 for ids (N, T) of one window, T ≤ n_ctx: row t predicts ids[:, t].

        1b_lyrics: the lyric prefix is prepended; `include_prefix` also returns its n_tokens rows first.
        """
        ids = self._check_ids(ids, "ids", self.bins)
        if not 1 <= ids.shape[1] <= self.n_ctx:
            raise PriorInputError(f"a window holds 1..{self.n_ctx} tokens, got {ids.shape[1]}")
        self._check_batch(cond, ids.shape[0])
        seq = ids if cond.prefix_ids is None else torch.cat([cond.prefix_ids, ids], dim=1)
        x = self.prior.embed(seq[:, :-1], cond.start, 0, cond.x_cond)
        h = self.prior.transformer(x, encoder_states=cond.encoder_states)
        out = self.prior.head(h, 0, cond.x_cond)
        return out if include_prefix else out[:, self.prefix_len :]

    def _check_batch(self, cond: Conditioning, batch: int) -> None:
        if batch != cond.batch:
            raise PriorInputError(f"got {batch} sequences but the conditioning is for {cond.batch}")

    # ---- incremental decoding

    @torch.no_grad()
    def start(
        self, cond: Conditioning, max_len: int | None = None, cache: KVCache | None = None
    ) -> SamplingState:
        """An empty decoding state for one window of up to `max_len` music tokens (default n_ctx).

        The KV cache is allocated here once, or `cache` (made by `new_cache(reusable=True)`) is
        emptied and reused. 1b_lyrics: the lyric prefix is queued as pending input, so that the first
        `prefill` runs it and the known music tokens in one pass (the first `step` runs it alone if
        nothing is prefilled); either way the next output predicts a music token.
        """
        max_len = self.n_ctx if max_len is None else max_len
        if not 1 <= max_len <= self.n_ctx:
            raise PriorInputError(f"max_len must be in 1..{self.n_ctx} music tokens, got {max_len}")
        transformer = self.prior.transformer
        if cache is None:
            cache = transformer.new_cache(cond.batch, self.prefix_len + max_len, cond.encoder_states)
        else:
            self._check_batch(cond, cache.batch)
            transformer.reuse(cache, self.prefix_len + max_len, cond.encoder_states)
        state = SamplingState(
            cond, cache, pending_start=True, pending=None, owner=id(self), prefix_len=self.prefix_len
        )
        state.pending = cond.prefix_ids  # 1b_lyrics: queued for the first prefill (or step)
        return state

    @torch.no_grad()
    def prefill(
        self, state: SamplingState, ids: Tensor, return_logits: bool = False, *, check_ids: bool = True
    ) -> Tensor | None:
        """Append known ids (N, k) to the window: processes every position whose input is now known
        except the newest id, which stays pending for the next `step`/`prefill`. One call is one
        pass of the transformer (the first one, from an empty window, is the full structured pass).

        Returns the logits (N, music positions processed, bins) when `return_logits`, else None.
        `check_ids=False` skips the range check of `ids`, which reads two values back from the device
        (for ids the caller made itself or validated already); dtype and shape are still checked.
        """
        self._check_state(state)
        ids = self._check_ids(ids, "ids", self.bins, check_range=check_ids)
        self._check_batch(state.cond, ids.shape[0])
        if ids.shape[1] == 0:
            raise PriorInputError("prefill needs at least one token")
        prefix_rows = self.prefix_len if state.prefix_queued else 0  # a queued lyric prefix: no music logits
        logits = self._feed(state, ids, return_logits)
        return logits[:, prefix_rows:] if logits is not None and prefix_rows else logits

    @torch.inference_mode()
    def step(self, state: SamplingState, ids: Tensor | None = None, *, check_ids: bool = True) -> Tensor:
        """Process one position and return the logits (N, bins) fp32 of the token after it.

        `ids` (N,) or (N, 1) is the token drawn from the previous step's logits; leave it out for the
        first step after `start`/`prefill` (the newest known token is then the input).
        `check_ids=False` skips the per-step range check of `ids` (for a loop feeding back ids it drew
        from this prior's own logits, which are always in range); shapes and order are still checked.
        """
        return self.step_in_inference_mode(state, ids, check_ids=check_ids)

    def step_in_inference_mode(
        self, state: SamplingState, ids: Tensor | None = None, *, check_ids: bool = True
    ) -> Tensor:
        """`step` for a caller already inside `torch.inference_mode()` (the sampling loop): entering
        it on every token costs more than some of the layers."""
        self._check_state(state)
        has_pending = state.pending_start or state.pending is not None
        if ids is None:
            if not has_pending:
                raise PriorInputError("step() needs the token drawn from the previous step's logits")
            if state.prefix_queued:  # nothing was prefilled: the lyric prefix goes alone
                self.feed_queued_prefix(state)
            token = state.pending
        else:
            if has_pending:
                raise PriorInputError(
                    "this state's newest known token has not been processed yet: call step(state) without a "
                    "token first (right after start() or prefill())"
                )
            if check_ids:
                # Reading values back would stall an accelerator every step: range-check on the CPU only.
                ids = self._check_ids(
                    ids.reshape(-1, 1), "ids", self.bins, check_range=ids.device.type == "cpu"
                )
            elif ids.dtype != torch.int64:
                ids = ids.long()
            if ids.numel() != state.cond.batch:
                raise PriorInputError(f"got {ids.numel()} ids but the conditioning is for {state.cond.batch}")
            token = ids
        self._check_room(state, 1)
        # The single-position forms of TokenModel.embed / head: same ops on (N, W) rows, with the
        # weights fetched once per window (module attribute lookups cost microseconds a token).
        weights = state.step_weights
        if weights is None:
            model = self.prior
            assert model.x_out is not None
            weights = state.step_weights = (
                model.x_emb.weight,
                model.pos_emb.pos_emb,
                model.x_out.weight,
                model.transformer,
                model.readd_cond,
            )
        x_emb, pos_emb, x_out, transformer, readd_cond = weights
        cond, pos = state.cond, state.pos
        if state.pending_start:
            x = cond.start[:, 0]
        else:
            assert token is not None
            x = torch.embedding(x_emb, token.reshape(-1))
        if transformer.static_decode:  # the position only as a device tensor: rows by index_select
            at = state.cache.position().view(1)
            x_cond = cond.x_cond[:, 0] if cond.x_cond.shape[1] == 1 else cond.x_cond.index_select(1, at)[:, 0]
            x = x + pos_emb.index_select(0, at)
        else:
            x_cond = cond.x_cond[:, 0] if cond.x_cond.shape[1] == 1 else cond.x_cond[:, pos]
            x = x + pos_emb[pos]
        x = x + x_cond
        state.pending_start, state.pending = False, None
        h = transformer.decode(x, state.cache)
        if readd_cond:
            h = h + x_cond
        return F.linear(h, x_out)

    def _check_state(self, state: SamplingState) -> None:
        if state.owner != id(self):
            raise PriorInputError("this sampling state belongs to another prior")

    def _check_room(self, state: SamplingState, count: int) -> None:
        if state.pos + count > state.cache.max_len:
            room = state.cache.max_len - self.prefix_len
            asked = count - self.prefix_len if state.prefix_queued else count  # music positions
            raise PriorInputError(
                f"the window holds {room} tokens: {state.music_pos} are processed and {asked} more were "
                "asked for"
            )

    def feed_queued_prefix(self, state: SamplingState) -> None:
        """Run the lyric prefix that `start` queued in a pass of its own (its last id stays pending)."""
        prefix, state.pending = state.pending, None
        assert prefix is not None
        self._feed(state, prefix)

    def _feed(self, state: SamplingState, ids: Tensor, return_logits: bool = False) -> Tensor | None:
        """Queue = [pending input] + ids; process all of it but the last id, which becomes pending."""
        if state.pending is not None:
            inputs = torch.cat([state.pending, ids[:, :-1]], dim=1)
        else:
            inputs = ids[:, :-1]
        count = inputs.shape[1] + (1 if state.pending_start else 0)
        result = None
        if count:
            self._check_room(state, count)
            first = state.pos
            start = state.cond.start if state.pending_start else None
            x = self.prior.embed(inputs, start, first, state.cond.x_cond)
            h = self.prior.transformer(x, cache=state.cache)
            if return_logits:
                result = self.prior.head(h, first, state.cond.x_cond)
        elif return_logits:
            result = torch.zeros(ids.shape[0], 0, self.bins, device=ids.device)
        state.pending_start, state.pending = False, ids[:, -1:]
        return result
