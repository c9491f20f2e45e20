"""The model API refuses misuse before any work, saying why: `Cascade.check` (request fields of the
wrong type, length or range), `Cascade.check_state` (called by `sample`: a damaged state, or one saved
for another request), `Cascade.decode`, `encode_audio` and `load_cascade`. Each case gave a deep
traceback, or silently wrong codes, before."""

from __future__ import annotations

import dataclasses
import io
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sampler.audio import EmptyAudio, decode_audio, encode_audio, encode_to_fit
from sampler.jukebox.cascade import (
    Cascade,
    CascadeState,
    SampleStyle,
    SamplingCancelled,
    SamplingError,
    SamplingRequest,
)
from sampler.jukebox.vqvae import VQVAEInputError
from sampler.loading import LoadOptionError, load_cascade
from tests.tiny_model_dir import write_tiny_model_dir

# Tiny geometry (tests/tiny_model_dir.py): hops 4 / 8 / 16 samples, windows of 64 tokens, 64 codes.
LENGTH = 1024  # one top window: 64 tokens
TOTAL = 2048


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def cascade(model_dir: Path) -> Cascade:
    return load_cascade(model_dir, "1b_lyrics")


def request(**fields: Any) -> SamplingRequest:
    values: dict[str, Any] = dict(
        mode="ancestral",
        sample_length=LENGTH,
        total_length=TOTAL,
        n_samples=2,
        artist="the beatles",
        genre="rock",
        lyrics="sing",
        levels=(2,),
        seed=1,
    )
    values.update(fields)
    return SamplingRequest(**values)


def codes(tokens: int, n: int = 2, value: int = 0, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.full((n, tokens), value, dtype=dtype)


@pytest.fixture(scope="module")
def top_codes(cascade: Cascade) -> torch.Tensor:
    """The top level of `request()`, sampled once: (2, 64)."""
    return cascade.sample(request()).codes[2]


def first_window(cascade: Cascade, wanted: SamplingRequest) -> CascadeState:
    """The state saved after the first window of `wanted`, as `on_window` hands it over (then stopped)."""
    saved: list[CascadeState] = []
    with pytest.raises(SamplingCancelled):
        cascade.sample(wanted, on_window=saved.append, should_stop=lambda: bool(saved), progress_every=8)
    return CascadeState.from_bytes(saved[0].to_bytes())


# ---- 1. sample checks the state it resumes


def state_of(level_codes: list[torch.Tensor] | tuple[torch.Tensor, ...], **fields: Any) -> CascadeState:
    return CascadeState(codes=level_codes, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (state_of([codes(0), codes(0), codes(0)], windows_done={2: 50}), "50 windows done at level 2"),
        (state_of([codes(0), codes(0), codes(0)], windows_done={2: -3}), "windows_done of level 2 is -3"),
        (state_of([codes(0), codes(0), codes(0)], windows_done={7: 1}), "windows_done names level 7"),
        (state_of([codes(0), codes(0), codes(100)]), "level-2 codes are longer than the song"),
        (state_of([codes(0), codes(0), codes(32, value=999)]), r"level-2 codes must be in 0\.\.63"),
        (state_of([codes(0), codes(0), codes(32, value=-1)]), r"level-2 codes must be in 0\.\.63"),
        (state_of((codes(0), codes(0), codes(0))), "codes must be a list of tensors"),
        (state_of([torch.zeros(2, 0, 1, dtype=torch.long)] * 3), r"shape \(2, 0, 1\)"),
        (state_of([torch.zeros(2, dtype=torch.long)] * 3), r"shape \(2,\)"),
        (state_of([codes(0, dtype=torch.float32)] * 3), "float32, not whole numbers"),
        (state_of([codes(0), codes(0), codes(10)], level_base={2: 100}), "fewer than the 100"),
        (state_of([codes(0), codes(0), codes(32)], windows_done={2: 1}), "but not where the level began"),
        (state_of([codes(0), codes(0), codes(10)], level_base={2: 0}), "hold 10 tokens, not the 0"),
        (state_of([codes(0), codes(0)]), "codes of 2 levels"),
    ],
)
def test_sample_refuses_a_damaged_state_before_any_work(
    cascade: Cascade, state: CascadeState, reason: str
) -> None:
    progress: list[object] = []
    with pytest.raises(SamplingError, match=f"^the saved sampling state cannot be used: .*{reason}"):
        cascade.sample(request(), state, on_progress=progress.append)
    assert progress == []


def test_a_reference_run_resumed_without_its_generator_state_is_refused(cascade: Cascade) -> None:
    wanted = request(rng="reference", sample_length=2048)
    state = first_window(cascade, wanted)
    state.rng_state = None
    with pytest.raises(SamplingError, match='no random generator state, which rng="reference" needs'):
        cascade.sample(wanted, state)
    # nothing sampled yet: the generator is seeded as a new run's
    fresh = cascade.initial_state(wanted)
    fresh.rng_state = None
    assert torch.equal(cascade.sample(wanted, fresh).codes[2], cascade.sample(wanted).codes[2])


def test_the_scheduler_says_why_a_reference_run_cannot_start(cascade: Cascade) -> None:
    from sampler.jukebox.schedule import LevelScheduler

    wanted = request(rng="reference")
    state = cascade.initial_state(wanted)
    state.rng_state = None
    scheduler = LevelScheduler(
        cascade,
        wanted,
        state,
        on_progress=None,
        on_window=None,
        should_stop=None,
        progress_every=8,
        overlap=False,
    )
    with pytest.raises(SamplingError, match='rng="reference" needs the random generator state'):
        scheduler.run()


def test_sample_leaves_the_state_given_alone_and_takes_saved_int16_codes(
    cascade: Cascade, top_codes: torch.Tensor
) -> None:
    wanted = request(sample_length=2048)
    state = first_window(cascade, wanted)
    done, length = dict(state.windows_done), state.codes[2].shape[1]
    state.codes = [c.to(torch.int16) for c in state.codes]  # as `to_bytes` stores them
    final = cascade.sample(wanted, state)
    assert state.windows_done == done and state.codes[2].shape[1] == length  # not written into
    assert final.codes[2].dtype == torch.long
    assert torch.equal(final.codes[2], cascade.sample(wanted).codes[2])  # as an unbroken run


# ---- 2. a state saved for another request is refused


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seed": 2}, "seed"),
        ({"artist": "queen"}, "styles"),
        ({"hop_fraction": (0.5, 0.5, 0.5)}, "hop_fraction"),
        ({"temperature": (0.99, 0.99, 0.5)}, "temperature"),
        ({"sample_length": 1024}, "sample_length"),
        ({"total_length": 4096, "sample_length": 4096}, "sample_length, total_length"),
        ({"rng": "reference"}, "rng"),
        ({"top_k": 5}, "top_k"),
        ({"mode": "continue", "codes": (None, None, codes(8))}, "mode"),
    ],
)
def test_a_state_saved_for_another_request_is_refused(
    cascade: Cascade, change: dict[str, Any], field: str
) -> None:
    first = request(sample_length=2048)
    saved = CascadeState.from_bytes(cascade.initial_state(first).to_bytes())  # the digest travels
    assert saved.request_digest == cascade.request_digest(first)
    with pytest.raises(
        SamplingError, match=rf"saved for another request \(other {field}\): start without it"
    ):
        cascade.sample(dataclasses.replace(first, **change), saved)
    with pytest.raises(SamplingError, match=r"^it was saved for another request"):
        cascade.check_state(dataclasses.replace(first, **change), saved)


def test_a_state_resumes_with_other_levels_batch_sizes_and_chunks(cascade: Cascade) -> None:
    """What does not change the codes is not compared: the CLI resumes a --levels=1 preview into
    --levels=3, and a worker resumes a job with its own batch sizes."""
    first = request(sample_length=2048)
    saved = first_window(cascade, first)
    for same in (
        dataclasses.replace(first, levels=(0, 1, 2)),
        dataclasses.replace(first, max_batch_size=(1, 1, 1), chunk_size=(0, 0, 0)),
        dataclasses.replace(first, styles=(SampleStyle("the beatles", "rock", "sing"),) * 2),
    ):
        cascade.check_state(same, saved)
    resumed = cascade.sample(dataclasses.replace(first, max_batch_size=(1, 1, 1)), saved)
    assert torch.equal(resumed.codes[2], cascade.sample(first).codes[2])


def test_a_finished_preview_goes_on_with_the_lower_levels_alone(cascade: Cascade) -> None:
    """The top level's codes may come from the state resumed, not only from the codes given."""
    preview = request(levels=(2,))
    saved = CascadeState.from_bytes(cascade.sample(preview).to_bytes())
    lower = cascade.sample(dataclasses.replace(preview, levels=(0, 1)), saved)
    every = cascade.sample(dataclasses.replace(preview, levels=(0, 1, 2)), saved)
    assert all(torch.equal(a, b) for a, b in zip(lower.codes, every.codes, strict=True))
    assert lower.codes[0].shape == (2, LENGTH // 4)
    half = first_window(cascade, request(levels=(2,), sample_length=2048))  # 64 of its 128 top tokens
    with pytest.raises(
        SamplingError, match=r"whose codes cover 64 of the 128 tokens asked \(0\.02 s of 0\.05 s\)"
    ):
        cascade.check(request(levels=(1,), sample_length=2048), half)
    with pytest.raises(SamplingError, match="whose codes cover 0 of the 64 tokens asked"):
        cascade.check(dataclasses.replace(preview, levels=(0, 1)))  # no state: nothing above


def test_a_state_without_a_digest_still_resumes(cascade: Cascade) -> None:
    """States of earlier versions (job checkpoints in databases) hold no digest: not compared."""
    first = request(sample_length=2048)
    state = first_window(cascade, first)
    buffer = io.BytesIO()
    torch.save(
        {
            "format": 1,
            "codes": [c.to(torch.int16) for c in state.codes],
            "level_base": state.level_base,
            "windows_done": state.windows_done,
            "rng_state": None,
        },
        buffer,
    )
    old = CascadeState.from_bytes(buffer.getvalue())
    assert old.request_digest is None
    cascade.check_state(dataclasses.replace(first, seed=5), old)  # nothing to compare with
    resumed = cascade.sample(first, old)
    assert resumed.request_digest == cascade.request_digest(first)  # its next checkpoints hold one
    assert torch.equal(resumed.codes[2], cascade.sample(first).codes[2])


def test_an_upsample_run_resumes_on_its_input_codes_not_the_states(
    cascade: Cascade, top_codes: torch.Tensor
) -> None:
    upsample = request(mode="upsample", levels=(1,), codes=(None, None, top_codes))
    state = first_window(cascade, upsample)
    assert state.codes[1].shape[1] > 0  # the state holds more than the input
    resumed = cascade.sample(upsample, state)
    assert torch.equal(resumed.codes[1], cascade.sample(upsample).codes[1])
    other = dataclasses.replace(upsample, codes=(None, None, (top_codes + 1) % 64))
    with pytest.raises(SamplingError, match=r"other codes"):
        cascade.sample(other, state)


# ---- 3-7. check refuses each field's misuse


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"rng": "refrence"}, "unknown rng 'refrence': use one of window, reference"),
        ({"temperature": (float("nan"),) * 3}, "temperature of level 0 must be a finite number"),
        ({"temperature": (0.99, 0.99, float("inf"))}, "temperature of level 2 must be a finite number"),
        ({"temperature": (1e-45,) * 3}, "temperature of level 0 must be at least 1e-06"),
        ({"temperature": 0.9}, r"temperature must be a tuple of one value per level \(3\)"),
        ({"temperature": (0.9, 0.9)}, r"temperature must hold one value per level \(3\), got 2"),
        ({"hop_fraction": (0.5, 0.5, float("nan"))}, "hop_fraction of level 2 must be a finite number"),
        ({"hop_fraction": (0.5, 0.5)}, "hop_fraction must hold one value per level"),
        ({"max_batch_size": (3, 3)}, "max_batch_size must hold one value per level"),
        ({"max_batch_size": (1.5, 1.5, 1.5)}, "max_batch_size of level 0 must be a whole number"),
        ({"chunk_size": (1, 1)}, "chunk_size must hold one value per level"),
        ({"chunk_size": (1.5, 1, 1)}, "chunk_size of level 0 must be a whole number"),
        ({"top_p": float("nan")}, "top_p must be a finite number"),
        ({"top_k": 2.5}, "top_k must be a whole number, got 2.5"),
        ({"top_k": None}, "top_k must be a whole number, got None"),
        ({"sample_length": 1024.0}, "sample_length must be a whole number, got 1024.0"),
        ({"total_length": None}, "total_length must be a whole number"),
        ({"n_samples": 2.0}, "n_samples must be a whole number"),
        ({"n_samples": True}, "n_samples must be a whole number, got True"),
        ({"n_samples": torch.tensor(True)}, "n_samples must be a whole number"),  # it sampled one
        ({"seed": torch.tensor([3])}, "seed must be a whole number"),  # a tensor of one element is no number
        ({"top_k": np.array([2])}, "top_k must be a whole number"),
        ({"n_samples": 2**64 - 1}, "n_samples must be from 1 to 1,024"),  # before a tuple of styles that long
        ({"top_k": 2**64 + 5}, r"top_k must be from 0 to \d+ \(the codebook's size\)"),
        ({"levels": 2}, "levels must be a tuple of levels"),
        ({"levels": (2.0,)}, "each of levels must be a whole number"),
        ({"seed": None}, "seed must be a whole number, got None"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": -1}, r"seed must be from 0 to 2\*\*64 - 1, got -1"),
        ({"seed": 2**64}, r"seed must be from 0 to 2\*\*64 - 1"),
        # past float's range: no OverflowError from float()
        ({"temperature": (1, 1, 10**400)}, "the temperature of level 2 must be a finite number"),
        ({"top_p": Fraction(10**400, 3)}, "top_p must be a finite number"),
        ({"hop_fraction": (1, 1, -(10**400))}, "the hop_fraction of level 2 must be a finite number"),
        (
            {"sample_length": 16 * 10**400, "total_length": 16 * 10**400},
            r"handles songs shorter than [\d.]+ s; got a 402-digit number of samples",
        ),
        ({"artist": None}, "artist must be text, got None"),
        ({"artist": "x" * 100_000}, r"does not know the artist 'x{60}…' \(100,000 characters\) and none"),
        ({"genre": None}, "genre must be text"),
        ({"lyrics": None}, "lyrics must be text"),
        ({"styles": ("a", "b")}, r"styles must be a tuple of SampleStyle\(artist, genre, lyrics\)"),
        ({"styles": (SampleStyle(), SampleStyle(artist=None))}, "the artist of style 1 must be text"),  # type: ignore[arg-type]
    ],
)
def test_check_refuses_a_field_of_the_wrong_type_or_range(
    cascade: Cascade, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(SamplingError, match=reason):
        cascade.check(request(**fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"sample_length": np.int64(LENGTH), "n_samples": np.int32(2), "seed": np.uint64(2**64 - 1)},
        {"temperature": [np.float32(0.5), 1, 0.99], "levels": [2], "top_p": np.float64(0.5)},
        {"seed": 2**64 - 1, "rng": "reference"},
        {"n_samples": torch.tensor(2), "seed": np.array(7)},  # 0-d: a number
    ],
)
def test_check_takes_numpy_numbers_and_lists(cascade: Cascade, fields: dict[str, Any]) -> None:
    cascade.check(request(**fields))


def test_numpy_numbers_sample_as_python_ones(cascade: Cascade, top_codes: torch.Tensor) -> None:
    wanted = request(seed=np.uint64(1), sample_length=np.int64(LENGTH), n_samples=np.int8(2), levels=[2])
    assert torch.equal(cascade.sample(wanted).codes[2], top_codes)


def test_a_reference_run_takes_the_largest_seed(cascade: Cascade) -> None:
    assert cascade.sample(request(rng="reference", seed=2**64 - 1)).codes[2].shape == (2, 64)


@pytest.mark.parametrize(
    ("every", "reason"), [(0, "at least 1 token, got 0"), (2.5, "whole number of tokens")]
)
def test_sample_refuses_a_progress_interval_below_one_token(
    cascade: Cascade, every: Any, reason: str
) -> None:
    with pytest.raises(SamplingError, match=f"progress_every must be .*{reason}"):
        cascade.sample(request(), progress_every=every)


PROMPT = torch.rand(2, 512) * 2 - 1


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        (torch.full((2, 512), float("nan")), "the prompt holds NaN or infinite samples"),
        (PROMPT.clone().index_fill_(1, torch.tensor([3]), float("inf")), "NaN or infinite"),
        (PROMPT * 100, r"the prompt must be audio in \[-1, 1\], its peak is 9\d\.\d+"),
        (PROMPT.numpy(), "the prompt must be a float tensor of audio, got a ndarray"),
        ((PROMPT * 32767).short(), "the prompt must be a float tensor of audio, got a torch.int16 tensor"),
    ],
)
def test_check_refuses_a_prompt_that_is_not_audio_in_range(
    cascade: Cascade, prompt: Any, reason: str
) -> None:
    with pytest.raises(SamplingError, match=reason):
        cascade.check(request(mode="primed", prompt=prompt))


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        (lambda top: top.float() + 0.5, "codes of level 2 must be an integer tensor, got a torch.float32"),
        (lambda top: top > 0, "must be an integer tensor, got a torch.bool"),
        (lambda top: top.numpy(), "must be an integer tensor, got a ndarray"),
        (lambda top: top.to("meta"), "must be an integer tensor"),
    ],
)
def test_check_refuses_codes_that_are_not_whole_numbers(
    cascade: Cascade, top_codes: torch.Tensor, given: Any, reason: str
) -> None:
    for mode, levels in (("continue", (2,)), ("upsample", (1, 0))):
        wanted = request(mode=mode, levels=levels, sample_length=2048, codes=(None, None, given(top_codes)))
        with pytest.raises(SamplingError, match=reason):
            cascade.check(wanted)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_unsigned_codes_sample_as_int64_ones(
    cascade: Cascade, top_codes: torch.Tensor, dtype: torch.dtype
) -> None:
    """torch has no min or max of uint16..uint64: their range was a NotImplementedError."""
    wanted = request(mode="upsample", levels=(1,), sample_length=LENGTH, codes=(None, None, top_codes))
    unsigned = dataclasses.replace(wanted, codes=(None, None, top_codes.to(dtype)))
    assert torch.equal(cascade.sample(unsigned).codes[1], cascade.sample(wanted).codes[1])
    too_high = top_codes.index_fill(1, torch.tensor([5]), 64).to(dtype)
    with pytest.raises(SamplingError, match=r"the codes of level 2 must be in 0\.\.63"):
        cascade.check(dataclasses.replace(wanted, codes=(None, None, too_high)))
    state = cascade.initial_state(wanted)
    state.codes = [c.to(dtype) for c in state.codes]
    cascade.check_state(wanted, state)
    state.codes[2] = too_high
    with pytest.raises(SamplingError, match=r"its level-2 codes must be in 0\.\.63, found 0\.\.64"):
        cascade.check_state(wanted, state)


@pytest.mark.parametrize("mode", ["ancestral", "continue", "upsample"])
def test_check_refuses_a_prompt_another_mode_would_leave_unused(cascade: Cascade, mode: Any) -> None:
    """A prompt given without mode="primed" was ignored: the song came out unprimed, without a word."""
    with pytest.raises(SamplingError, match=rf"sampled from in mode 'primed' only, .* mode is '{mode}'"):
        cascade.check(request(mode=mode, prompt=PROMPT, levels=(0, 1) if mode == "upsample" else (2,)))


@pytest.mark.parametrize("mode", ["ancestral", "primed"])
def test_check_refuses_codes_another_mode_would_leave_unused(
    cascade: Cascade, top_codes: torch.Tensor, mode: Any
) -> None:
    prompt = PROMPT if mode == "primed" else None
    with pytest.raises(SamplingError, match=rf"'continue' and 'upsample' only, .* mode is '{mode}'"):
        cascade.check(request(mode=mode, prompt=prompt, codes=(None, None, top_codes)))


@pytest.mark.parametrize("callback", ["on_progress", "on_window", "should_stop"])
def test_sample_refuses_a_callback_that_is_not_a_function_before_any_work(
    cascade: Cascade, callback: str
) -> None:
    with pytest.raises(SamplingError, match=rf"^{callback} must be a function \(or None\), got 5$"):
        cascade.sample(request(), **{callback: 5})


# ---- 8. decode


def test_decode_takes_any_integer_dtype(cascade: Cascade, top_codes: torch.Tensor) -> None:
    audio = cascade.decode(top_codes, 2)
    for dtype in (torch.int16, torch.int32, torch.uint8, torch.uint16, torch.uint32, torch.uint64):
        assert torch.equal(cascade.decode(top_codes.to(dtype), 2), audio)
    assert torch.equal(cascade.decode([codes(0), codes(0), top_codes], 2), audio)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "level", "reason"),
    [
        (lambda top: top[:0], 2, r"codes of level 2 hold no samples: got shape \(0, 64\)"),
        (lambda top: top.numpy(), 2, "codes must be an integer tensor, got ndarray"),
        (lambda top: top.float(), 2, "codes must be an integer tensor"),
        (lambda top: top.to(torch.complex64), 2, "codes must be an integer tensor, got a torch.complex64"),
        (  # past int64's range: torch reads no min or max of a uint64
            lambda top: torch.from_numpy(
                np.where(np.arange(64) == 3, 2**63 + 5, top.numpy()).astype(np.uint64)
            ),
            2,
            r"must lie in \[0, 64\); found values 0\.\.9223372036854775813",
        ),
        (lambda top: top, "2", "level must be a whole number, got '2'"),
        (lambda top: top.to("meta"), 2, "codes must hold values, got a torch.int64 tensor of shape"),
    ],
)
def test_decode_refuses_what_is_not_codes(
    cascade: Cascade, top_codes: torch.Tensor, given: Any, level: Any, reason: str
) -> None:
    with pytest.raises(VQVAEInputError, match=reason):
        cascade.decode(given(top_codes), level)


# ---- 9. encode_audio

SINE = (np.sin(np.linspace(0, 400, 4410)) * 0.5).astype(np.float32)


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
@pytest.mark.parametrize("samples", [1, 21])
def test_a_few_samples_encode_to_a_playable_file(tmp_path: Path, fmt: Any, samples: int) -> None:
    data = encode_audio(SINE[:samples], 44100, fmt, 128_000)
    assert data
    (tmp_path / f"a.{fmt}").write_bytes(data)
    assert decode_audio(tmp_path / f"a.{fmt}", silence_threshold_db=None).shape[0] > 0


def test_integer_pcm_is_scaled_by_its_full_scale(tmp_path: Path) -> None:
    heard = {}
    for name, audio in (("float", SINE), ("int16", (SINE * 32768).astype(np.int16))):
        (tmp_path / f"{name}.ogg").write_bytes(encode_audio(audio, 44100, "ogg", 128_000))
        heard[name] = float(np.abs(decode_audio(tmp_path / f"{name}.ogg", silence_threshold_db=None)).mean())
    assert heard["int16"] == pytest.approx(heard["float"], rel=0.05)  # not clipped to a square wave
    with pytest.raises(ValueError, match="signed integer PCM, got dtype uint8"):
        encode_audio(SINE.astype(np.uint8), 44100, "ogg", 128_000)


@pytest.mark.parametrize("fmt", [["ogg"], None, "wav"])
def test_encode_audio_names_a_format_it_does_not_have(fmt: Any) -> None:
    with pytest.raises(ValueError, match=r"Unknown output format .*; choose one of \['mp3', 'ogg'\]"):
        encode_audio(SINE, 44100, fmt, 64_000)


@pytest.mark.parametrize(
    ("sample_rate", "bitrate", "reason"),
    [
        (0, 128_000, "sample_rate must be a whole number of Hz from 8000 to 384000, got 0"),
        (-1, 128_000, "sample_rate must be"),
        (44100.0, 128_000, r"sample_rate must be .* got 44100\.0"),
        (1, 128_000, "sample_rate must be"),
        (44100, 10**9, "the ogg bitrate must be a whole number of bit/s from 500 to 256000"),
        (44100, 0, "the ogg bitrate must be"),
    ],
)
def test_encode_audio_names_a_bad_rate(sample_rate: Any, bitrate: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        encode_audio(SINE, sample_rate, "ogg", bitrate)
    if bitrate == 128_000:  # encode_to_fit too (0 Hz divided by zero before its own check)
        with pytest.raises(ValueError, match=reason):
            encode_to_fit(SINE, sample_rate, 10**6)
    with pytest.raises(EmptyAudio):
        encode_audio(SINE[:0], 44100, "mp3", 128_000)


# ---- 10. load_cascade


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            {"dtype": "float16"},
            "dtype must be one of torch.float32, torch.float16, torch.bfloat16, got 'float16'",
        ),
        ({"dtype": torch.int64}, "dtype must be one of .* got torch.int64"),
        ({"device": "gpu"}, "device 'gpu' is not a torch device"),
        ({"device": 0.5}, "device must be a torch.device or a name"),
    ],
)
def test_load_cascade_refuses_a_dtype_or_device_it_cannot_load_onto(
    model_dir: Path, options: dict[str, Any], reason: str
) -> None:
    with pytest.raises(LoadOptionError, match=reason):
        load_cascade(model_dir, "1b_lyrics", **options)
    assert issubclass(LoadOptionError, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_load_cascade_refuses_cuda_where_there_is_none(model_dir: Path) -> None:
    with pytest.raises(LoadOptionError, match="device 'cuda' is not available here"):
        load_cascade(model_dir, "1b_lyrics", device="cuda")


# ---- a song shorter than one window


@pytest.mark.parametrize("mode", ["continue", "primed"])
def test_a_song_shorter_than_a_window_ends_at_its_length_and_resumes(
    cascade: Cascade, top_codes: torch.Tensor, mode: str
) -> None:
    """The reference's partial window samples `sample_length` more after the known codes: a 0.75-window
    song continued from half a window came out 1.25 windows long (longer than asked, and than its own
    request, so a saved state of it was refused on resume). Ours ends at the length asked; the
    reference's order (`rng="reference"`, for parity) keeps the reference's length."""
    short, known = LENGTH * 3 // 4, LENGTH // 2
    hop = cascade.hops[2]
    given: dict[str, Any] = (
        {"codes": (None, None, top_codes[:, : known // hop])}
        if mode == "continue"
        else {"prompt": torch.zeros(2, known)}
    )
    wanted = request(mode=mode, sample_length=short, **given)
    saved: list[bytes] = []
    done = cascade.sample(wanted, on_window=lambda state: saved.append(state.to_bytes()))
    assert done.codes[2].shape == (2, short // hop)
    resumed = cascade.sample(wanted, CascadeState.from_bytes(saved[-1]))
    assert torch.equal(resumed.codes[2], done.codes[2])
    reference = cascade.sample(dataclasses.replace(wanted, rng="reference"))
    assert reference.codes[2].shape == (2, (known + short) // hop)
