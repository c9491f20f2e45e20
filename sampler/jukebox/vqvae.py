"""The Jukebox VQ-VAE: three independent encoder/decoder stacks and one codebook per level.

Module names and nesting follow the published checkpoint (`5b/vqvae.pth.tar`) key for key,
so its state dict loads unchanged; that is why several containers are called `model`.

Level numbering is the original one: level 0 is the finest (hop 8), level 2 the top (hop 128).
`encode` and `decode` work in overlapping chunks over time, with enough context on both sides
(the receptive field) that the result equals one pass over the whole signal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from sampler.jukebox.hparams import hparam_type_problem
from sampler.units import whole_number

# Raw samples per chunk: about 12 s at 44.1 kHz. The published level-0 stacks need about 1 s
# of context on each side of a chunk, so the recomputed overlap stays a modest fraction.
DEFAULT_CHUNK_SAMPLES = 1 << 19
# Rows of the (rows x l_bins) distance matrix computed at once when quantising.
_QUANTISE_ROWS = 8192


class VQVAEConfigError(ValueError):
    """The VQ-VAE hyperparameters are missing or inconsistent."""


class VQVAEInputError(ValueError):
    """Audio or codes handed to the VQ-VAE have the wrong shape, type, length or range."""


@dataclass(frozen=True)
class VQVAEConfig:
    """VQ-VAE hyperparameters under their original Jukebox names."""

    levels: int
    downs_t: tuple[int, ...]
    strides_t: tuple[int, ...]
    emb_width: int
    l_bins: int
    width: int
    depth: int
    dilation_growth_rate: int
    m_conv: float = 1.0
    dilation_cycle: int | None = None
    hvqvae_multipliers: tuple[int, ...] | None = None
    vqvae_reverse_decoder_dilation: bool = True
    zero_out: bool = False
    res_scale: bool = False

    def __post_init__(self) -> None:
        for name in ("downs_t", "strides_t", "hvqvae_multipliers"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.levels < 1:
            raise VQVAEConfigError(f"levels must be at least 1, got {self.levels}")
        for name in ("downs_t", "strides_t") + (("hvqvae_multipliers",) if self.hvqvae_multipliers else ()):
            value = getattr(self, name)
            if len(value) != self.levels:
                raise VQVAEConfigError(f"{name} needs one entry per level ({self.levels}), got {value}")
            if any(int(v) < 1 for v in value):
                raise VQVAEConfigError(f"every entry of {name} must be a positive integer, got {value}")
        if any(s % 2 for s in self.strides_t):
            # kernel 2s / padding s/2 divides the length exactly only for even strides
            raise VQVAEConfigError(f"strides_t must be even, got {self.strides_t}")
        for name in ("emb_width", "l_bins", "width", "depth", "dilation_growth_rate"):
            if getattr(self, name) < 1:
                raise VQVAEConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dilation_cycle is not None and self.dilation_cycle < 1:
            raise VQVAEConfigError(f"dilation_cycle must be None or at least 1, got {self.dilation_cycle}")
        if self.m_conv <= 0:
            raise VQVAEConfigError(f"m_conv must be positive, got {self.m_conv}")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> VQVAEConfig:
        """Build from an original hparams dict; training-only keys (l_mu, commit, ...) are ignored."""
        known = {f.name: f for f in fields(cls)}
        required = [name for name, f in known.items() if f.default is MISSING]
        missing = [name for name in required if name not in hparams]
        if missing:
            raise VQVAEConfigError(f"VQ-VAE hparams lack required key(s): {', '.join(missing)}")
        for key, value in hparams.items():
            problem = hparam_type_problem(cls, key, value)
            if problem is not None:  # a sidecar's "64": said here, not as a TypeError deep inside
                raise VQVAEConfigError(f"VQ-VAE hparam {key!r} {problem}")
        return cls(**{name: hparams[name] for name in known if name in hparams})

    @classmethod
    def published(cls) -> VQVAEConfig:
        """The VQ-VAE shared by every published Jukebox model (`5b/vqvae.pth.tar`)."""
        from sampler.jukebox.registry import VQVAE_HPARAMS

        return cls.from_hparams(VQVAE_HPARAMS)

    @property
    def downsamples(self) -> tuple[int, ...]:
        """Downsampling factor contributed by each level's stage."""
        return tuple(s**d for s, d in zip(self.strides_t, self.downs_t, strict=True))

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Raw audio samples per code at each level (8, 32, 128 for the published model)."""
        return tuple(math.prod(self.downsamples[: level + 1]) for level in range(self.levels))

    def level_width(self, level: int) -> int:
        return self.width * (self.hvqvae_multipliers[level] if self.hvqvae_multipliers else 1)

    def level_depth(self, level: int) -> int:
        return self.depth * (self.hvqvae_multipliers[level] if self.hvqvae_multipliers else 1)


# ----------------------------------------------------------------------------------------------
# Building blocks


class ResidualUnit(nn.Module):
    """x + scale * conv1x1(relu(conv3_dilated(relu(x)))): one block of a dilated residual stack."""

    def __init__(
        self, width: int, hidden: int, dilation: int, scale: float, zero_out: bool, **factory: Any
    ) -> None:
        super().__init__()
        # indices 1 and 3 are the checkpoint's conv keys; 0 and 2 are parameter-free ReLUs
        conv3 = nn.Conv1d(width, hidden, 3, padding=dilation, dilation=dilation, **factory)
        conv1x1 = nn.Conv1d(hidden, width, 1, **factory)
        if zero_out:  # only changes the initial weights, never what a checkpoint loads
            nn.init.zeros_(conv1x1.weight)
            nn.init.zeros_(cast(torch.Tensor, conv1x1.bias))
        self.model = nn.Sequential(nn.ReLU(), conv3, nn.ReLU(), conv1x1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.model(x)


class ResidualStack(nn.Module):
    """`depth` residual units with dilation growth_rate**d (optionally cycling, optionally reversed)."""

    def __init__(self, config: VQVAEConfig, width: int, depth: int, reverse: bool, **factory: Any) -> None:
        super().__init__()
        cycle = config.dilation_cycle
        dilations = [config.dilation_growth_rate ** (d if cycle is None else d % cycle) for d in range(depth)]
        if reverse:  # the decoder runs the widest dilation first, and its keys keep that order
            dilations = dilations[::-1]
        scale = 1.0 / math.sqrt(depth) if config.res_scale else 1.0
        hidden = int(config.m_conv * width)
        self.model = nn.Sequential(
            *(ResidualUnit(width, hidden, d, scale, config.zero_out, **factory) for d in dilations)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class EncoderStage(nn.Module):
    """One stage of an encoder: `down_t` x (strided conv, residual stack), then a conv to emb_width."""

    def __init__(self, config: VQVAEConfig, level: int, stage: int, **factory: Any) -> None:
        super().__init__()
        width, depth, stride = config.level_width(level), config.level_depth(level), config.strides_t[stage]
        in_channels = 1 if stage == 0 else config.emb_width
        layers: list[nn.Module] = []
        for i in range(config.downs_t[stage]):
            layers.append(
                nn.Sequential(
                    nn.Conv1d(
                        in_channels if i == 0 else width, width, 2 * stride, stride, stride // 2, **factory
                    ),
                    ResidualStack(config, width, depth, reverse=False, **factory),
                )
            )
        layers.append(nn.Conv1d(width, config.emb_width, 3, 1, 1, **factory))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DecoderStage(nn.Module):
    """One stage of a decoder: a conv from emb_width, then `down_t` x (residual stack, transposed conv)."""

    def __init__(self, config: VQVAEConfig, level: int, stage: int, **factory: Any) -> None:
        super().__init__()
        width, depth, stride = config.level_width(level), config.level_depth(level), config.strides_t[stage]
        down_t = config.downs_t[stage]
        layers: list[nn.Module] = [nn.Conv1d(config.emb_width, width, 3, 1, 1, **factory)]
        for i in range(down_t):
            out_channels = config.emb_width if i == down_t - 1 else width
            layers.append(
                nn.Sequential(
                    ResidualStack(config, width, depth, config.vqvae_reverse_decoder_dilation, **factory),
                    nn.ConvTranspose1d(width, out_channels, 2 * stride, stride, stride // 2, **factory),
                )
            )
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LevelEncoder(nn.Module):
    """Raw audio (N, 1, T) -> latents (N, emb_width, T / hop) for one level; stages 0..level."""

    def __init__(self, config: VQVAEConfig, level: int, **factory: Any) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(EncoderStage(config, level, s, **factory) for s in range(level + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.level_blocks:
            x = stage(x)
        return x

    def layers_in_order(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]


class LevelDecoder(nn.Module):
    """Latents (N, emb_width, T / hop) -> audio (N, 1, T) for one level; stages level..0, then `out`."""

    def __init__(self, config: VQVAEConfig, level: int, **factory: Any) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(DecoderStage(config, level, s, **factory) for s in range(level + 1))
        self.out = nn.Conv1d(config.emb_width, 1, 3, 1, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in reversed(self.level_blocks):
            x = stage(x)
        return self.out(x)

    def layers_in_order(self) -> list[nn.Module]:
        stages = [m for stage in reversed(self.level_blocks) for m in stage.modules()]
        return [m for m in [*stages, self.out] if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]


class Codebook(nn.Module):
    """Nearest-neighbour quantiser of one level. `k` is (l_bins, emb_width), kept in fp32."""

    k: torch.Tensor

    def __init__(self, l_bins: int, emb_width: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(l_bins, emb_width, device=device, dtype=torch.float32))

    def quantise(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, T) latents -> (N, T) int64 codes. Distances in fp32; ties go to the first index."""
        n, c, t = latents.shape
        rows = latents.permute(0, 2, 1).reshape(n * t, c).float()
        codebook_t = self.k.float().t()
        code_norms = codebook_t.pow(2).sum(dim=0, keepdim=True)
        codes = torch.empty(n * t, dtype=torch.long, device=latents.device)
        for start in range(0, n * t, _QUANTISE_ROWS):  # bounds the (rows x l_bins) distance matrix
            x = rows[start : start + _QUANTISE_ROWS]
            dist = x.pow(2).sum(dim=-1, keepdim=True) - 2 * (x @ codebook_t) + code_norms
            codes[start : start + _QUANTISE_ROWS] = dist.argmin(dim=-1)
        return codes.view(n, t)

    def dequantise(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, T) codes -> (N, C, T) codebook vectors (fp32)."""
        return F.embedding(codes, self.k).permute(0, 2, 1)


class Bottleneck(nn.Module):
    level_blocks: nn.ModuleList

    def __init__(self, config: VQVAEConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(
            Codebook(config.l_bins, config.emb_width, device=device) for _ in range(config.levels)
        )


# ----------------------------------------------------------------------------------------------
# Receptive field: how much context a chunk needs so that its kept part is exact.


def _context_samples(layers: Iterable[nn.Module], spacing: int) -> int:
    """Upper bound, in raw samples, of how far any output depends on inputs to either side.

    `spacing` is the raw samples per position of the first layer's input. Zero padding at a chunk
    edge corrupts at most this far into the chunk, so a margin this wide keeps the interior exact.
    """
    total = 0
    for layer in layers:
        if isinstance(layer, nn.ConvTranspose1d):
            k, s, p = _first(layer.kernel_size), _first(layer.stride), _first(layer.padding)
            out_spacing = spacing // s
            # output t reads inputs i with s*i - p <= t <= s*i - p + k - 1; +spacing covers rounding
            total += max(k - 1 - p, p) * out_spacing + spacing
            spacing = out_spacing
        elif isinstance(layer, nn.Conv1d):
            k, s, p = _first(layer.kernel_size), _first(layer.stride), _first(layer.padding)
            d = _first(layer.dilation)
            # output i reads inputs s*i - p ... s*i - p + d*(k-1)
            total += max(p, d * (k - 1) - p) * spacing
            spacing *= s
    return total


def _first(value: Any) -> int:
    """A 1-d conv's kernel/stride/padding/dilation as an int (torch stores 1-tuples)."""
    return int(value[0] if isinstance(value, tuple) else value)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# ----------------------------------------------------------------------------------------------
# The model


class VQVAE(nn.Module):
    """The Jukebox VQ-VAE. Convolutions run in `dtype`; codebooks and distances stay in fp32."""

    encoders: nn.ModuleList
    decoders: nn.ModuleList
    bottleneck: Bottleneck

    def __init__(
        self,
        config: VQVAEConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        factory: dict[str, Any] = dict(device=device, dtype=dtype)
        self.encoders = nn.ModuleList(
            LevelEncoder(config, level, **factory) for level in range(config.levels)
        )
        self.decoders = nn.ModuleList(
            LevelDecoder(config, level, **factory) for level in range(config.levels)
        )
        self.bottleneck = Bottleneck(config, device=device)
        hops = config.hop_lengths
        # context each side of a chunk: raw samples for encoding, codes for decoding
        levels = range(config.levels)
        self.encode_margin = [
            _round_up(_context_samples(self.encoder(lv).layers_in_order(), 1), hops[lv]) for lv in levels
        ]
        self.decode_margin = [
            _round_up(_context_samples(self.decoder(lv).layers_in_order(), hops[lv]), hops[lv]) // hops[lv]
            for lv in levels
        ]

    def encoder(self, level: int) -> LevelEncoder:
        return cast(LevelEncoder, self.encoders[level])

    def decoder(self, level: int) -> LevelDecoder:
        return cast(LevelDecoder, self.decoders[level])

    def codebook(self, level: int) -> Codebook:
        return cast(Codebook, self.bottleneck.level_blocks[level])

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        return self.config.hop_lengths

    @property
    def conv_dtype(self) -> torch.dtype:
        return self.decoder(0).out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder(0).out.weight.device

    # -- encode ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        audio: torch.Tensor,
        start_level: int = 0,
        end_level: int | None = None,
        *,
        chunk_samples: int | None = DEFAULT_CHUNK_SAMPLES,
    ) -> list[torch.Tensor]:
        """Audio (N, T) or (N, T, 1) in [-1, 1] -> int64 codes [(N, T / hop_l) for l in start..end-1].

        T must be a multiple of the top hop length. `chunk_samples=None` encodes in one pass.
        """
        end_level = self.config.levels if end_level is None else end_level
        self._check_levels(start_level, end_level)
        x = self._audio_to_nct(audio)
        return [
            self._run_encoder(x, level, chunk_samples, quantise=True)
            for level in range(start_level, end_level)
        ]

    def encode_latents(
        self, audio: torch.Tensor, level: int, *, chunk_samples: int | None = DEFAULT_CHUNK_SAMPLES
    ) -> torch.Tensor:
        """Encoder output of one level before quantisation, (N, emb_width, T / hop), in fp32."""
        self._check_levels(level, level + 1)
        with torch.no_grad():
            return self._run_encoder(self._audio_to_nct(audio), level, chunk_samples, quantise=False)

    def _run_encoder(
        self, x: torch.Tensor, level: int, chunk_samples: int | None, *, quantise: bool
    ) -> torch.Tensor:
        hop, total = self.hop_lengths[level], x.shape[-1]
        encoder, codebook = self.encoder(level), self.codebook(level)
        chunk = total if chunk_samples is None else max(hop, chunk_samples // hop * hop)
        margin = self.encode_margin[level]
        pieces = []
        for start in range(0, total, chunk):
            end = min(total, start + chunk)
            lo, hi = max(0, start - margin), min(total, end + margin)
            latents = encoder(x[..., lo:hi])[..., (start - lo) // hop : (end - lo) // hop]
            pieces.append(codebook.quantise(latents) if quantise else latents.float())
        return torch.cat(pieces, dim=-1)

    # -- decode ----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor | Sequence[torch.Tensor],
        level: int = 0,
        *,
        chunk_samples: int | None = DEFAULT_CHUNK_SAMPLES,
    ) -> torch.Tensor:
        """Codes of `level` (N, T_l) -> audio (N, T_l * hop_l), in the conv dtype, not clamped.

        `codes` is either that level's tensor, of any integer dtype (a saved state's int16 too), or the
        list of every level's codes (finest first), of which only `codes[level]` is used, as in the
        original. `chunk_samples=None` decodes in one pass. VQVAEInputError for anything else.
        """
        whole = whole_number(level)
        if whole is None:
            raise VQVAEInputError(f"level must be a whole number, got {level!r}")
        level = whole
        self._check_levels(level, level + 1)
        if not isinstance(codes, torch.Tensor):
            if not isinstance(codes, (list, tuple)):
                raise VQVAEInputError(f"codes must be an integer tensor, got {_describe(codes)}")
            codes = list(codes)
            if len(codes) != self.config.levels:
                raise VQVAEInputError(
                    f"decode got a list of {len(codes)} code tensors; pass either the codes of level "
                    f"{level} alone or one tensor per level ({self.config.levels})"
                )
            codes = codes[level]
        self._check_codes(codes, level)
        hop, total = self.hop_lengths[level], codes.shape[-1]
        decoder, codebook = self.decoder(level), self.codebook(level)
        codes = codes.to(self.device, torch.long)  # the codebook's lookup takes int64 (or int32) ids only
        chunk = total if chunk_samples is None else max(1, chunk_samples // hop)
        margin = self.decode_margin[level]
        pieces = []
        for start in range(0, total, chunk):
            end = min(total, start + chunk)
            lo, hi = max(0, start - margin), min(total, end + margin)
            latents = codebook.dequantise(codes[:, lo:hi]).to(self.conv_dtype)
            audio = decoder(latents)[:, 0, (start - lo) * hop : (end - lo) * hop]
            pieces.append(audio)
        return torch.cat(pieces, dim=-1)

    # -- checks ----------------------------------------------------------------------------

    def _check_levels(self, start_level: int, end_level: int) -> None:
        if not 0 <= start_level < end_level <= self.config.levels:
            raise VQVAEInputError(
                f"levels must satisfy 0 <= start < end <= {self.config.levels}, got "
                f"{start_level}..{end_level}"
            )

    def _audio_to_nct(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
            raise VQVAEInputError(f"audio must be a float tensor, got {_describe(audio)}")
        if audio.dim() == 3 and audio.shape[-1] == 1:
            audio = audio[..., 0]
        if audio.dim() != 2:
            raise VQVAEInputError(
                "audio must be mono, shaped (batch, samples) or (batch, samples, 1); got "
                f"{tuple(audio.shape)}"
            )
        top_hop = self.hop_lengths[-1]
        if audio.shape[1] == 0 or audio.shape[1] % top_hop:
            raise VQVAEInputError(
                f"audio length must be a positive multiple of {top_hop} samples (the top level's hop); "
                f"got {audio.shape[1]}: trim or pad it to {max(top_hop, audio.shape[1] // top_hop * top_hop)}"
            )
        return audio[:, None, :].to(device=self.device, dtype=self.conv_dtype)

    def _check_codes(self, codes: torch.Tensor, level: int) -> None:
        if not isinstance(codes, torch.Tensor) or not is_integer_dtype(codes.dtype):
            raise VQVAEInputError(f"codes must be an integer tensor, got {_describe(codes)}")
        if codes.device.type == "meta":  # a shape without values: there is nothing to decode
            raise VQVAEInputError(f"codes must hold values, got {_describe(codes)} on the meta device")
        if codes.dim() != 2 or codes.shape[1] == 0:
            raise VQVAEInputError(
                f"codes of level {level} must be shaped (batch, tokens); got {tuple(codes.shape)}"
            )
        if codes.shape[0] == 0:
            raise VQVAEInputError(f"codes of level {level} hold no samples: got shape {tuple(codes.shape)}")
        lo, hi = code_range(codes)
        if lo < 0 or hi >= self.config.l_bins:
            raise VQVAEInputError(
                f"codes of level {level} must lie in [0, {self.config.l_bins}); found values {lo}..{hi}"
            )


# Integer dtypes torch has no min/max (nor comparisons) for: their range is read through numpy.
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def is_integer_dtype(dtype: torch.dtype) -> bool:
    """Whole-number ids: not float, complex or bool."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def code_range(codes: torch.Tensor) -> tuple[int, int]:
    """The smallest and largest of integer `codes` (not empty), as Python ints: for any integer dtype,
    uint16 to uint64 included (a uint64 past int64's range too)."""
    if codes.dtype in _WIDE_UNSIGNED:
        values = codes.detach().cpu().numpy()
        return int(values.min()), int(values.max())
    return int(codes.min()), int(codes.max())


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def build_vqvae(
    config: VQVAEConfig | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VQVAE:
    """The VQ-VAE for `config` (the published one by default). `device='meta'` allocates nothing."""
    return VQVAE(config or VQVAEConfig.published(), device=device, dtype=dtype).eval()
