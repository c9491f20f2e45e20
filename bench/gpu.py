"""GPU sampling speed of the published architectures: seconds per minute of audio, per level.

Speed does not depend on the weights, so every prior is built at its published size with random
weights (no download). For each stack (5b_lyrics, 1b_lyrics: the top prior plus the two upsamplers)
and each number of samples, we time the cascade's per-token loop (`sample_steps`: prior step → logits
→ draw) for `--steps` tokens from the middle of a window (attention cost grows with the position, the
middle is its average), and scale to one minute of audio (20 671 / 82 684 / 330 736 tokens at levels
2 / 1 / 0, jukebox-spec §7). Windows' prefill is compute-bound and small (spec §7): not timed here.

The memory-bandwidth bound per step is (weights read per step + KV cache read per step) / bandwidth;
`--bandwidth` defaults to the spec's H100 SXM / H200 figures by device name. Levers, each timed on
its own so that its gain shows:

    fp32 ref-attn   weights fp32, reference attention arithmetic (what the original does, minus fp16)
    bf16 ref-attn   weights cast to bf16 once (the original re-casts fp32 weights every call)
    bf16 sdpa       + F.scaled_dot_product_attention kernels
    fp16 sdpa       fp16 instead of bf16

KV caches are static (preallocated once per window) in every row. Usage:

    python3 bench/gpu.py                       # on a GPU machine: both stacks, 1 and 3 samples
    python3 bench/gpu.py --stacks 1b_lyrics --samples 1 --steps 64
    python3 bench/gpu.py --dry-run             # CPU, tiny shapes: checks the script end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler.jukebox.cascade import sample_steps
from sampler.jukebox.prior import Conditioning, JukeboxPrior, PriorConfig
from sampler.jukebox.registry import SAMPLE_RATE
from sampler.jukebox.transformer import CROSS, Conv1D

STACKS = {
    "5b_lyrics": ("prior_5b_lyrics", "upsampler_level_1", "upsampler_level_0"),
    "1b_lyrics": ("prior_1b_lyrics", "upsampler_level_1", "upsampler_level_0"),
}
# jukebox-spec §7: HBM bandwidth of the machines the bound is quoted for (bytes/s)
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
LEVERS = (
    ("fp32 ref-attn", torch.float32, False),
    ("bf16 ref-attn", torch.bfloat16, False),
    ("bf16 sdpa", torch.bfloat16, True),
    ("fp16 sdpa", torch.float16, True),
)
MINUTE = (60 * SAMPLE_RATE // 128) * 128  # one minute of audio, rounded to the top hop as the reference does


@dataclass(frozen=True)
class Timing:
    seconds_per_step: float
    weight_bytes: int
    kv_bytes: int


def tiny(config: PriorConfig) -> PriorConfig:
    """The same architecture kind shrunk for a CPU dry run (attention patterns kept)."""
    changes: dict[str, int] = dict(prior_width=32, n_ctx=64, blocks=8)
    if config.is_upsampler:
        changes.update(prior_depth=3, cond_width=16, cond_depth=2)
    elif config.single_enc_dec:
        changes.update(prior_depth=16, n_tokens=16)  # layer 15 is prime attention
    elif config.lyric_encoder:
        changes.update(
            prior_depth=19, n_tokens=16, prime_width=16, prime_depth=2, prime_blocks=4
        )  # 18: cross
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def random_conditioning(prior: JukeboxPrior, batch: int, device: torch.device) -> Conditioning:
    """Conditioning of the right shapes; its values do not change the speed."""
    cfg = prior.config
    width = cfg.prior_width
    encoder_states = prefix_ids = None
    if cfg.lyric_encoder:
        encoder_states = torch.randn(batch, cfg.n_tokens, width, device=device)
    if cfg.single_enc_dec:
        prefix_ids = torch.randint(0, cfg.n_vocab, (batch, cfg.n_tokens), device=device)
    return Conditioning(
        start=torch.randn(batch, 1, width, device=device) * 0.02,
        x_cond=torch.randn(batch, cfg.seq_len, width, device=device) * 0.02,
        encoder_states=encoder_states,
        prefix_ids=prefix_ids,
    )


def weight_bytes_per_step(prior: JukeboxPrior) -> int:
    """Matmul weights read by one decoding step: the transformer's Conv1Ds (not the cross-attention
    k, v projection, which runs once per window) and the output head."""
    total = 0
    for name, module in prior.prior.transformer.named_modules():
        if isinstance(module, Conv1D) and not name.endswith("c_enc_kv"):
            total += module.w.numel() * module.w.element_size()
    assert prior.prior.x_out is not None
    return total + prior.prior.x_out.weight.numel() * prior.prior.x_out.weight.element_size()


def kv_bytes_per_step(prior: JukeboxPrior, batch: int, position: int) -> int:
    """KV cache entries one step at `position` reads, summed over layers (spec §3.3)."""
    cfg = prior.config.transformer_config()
    b, itemsize = cfg.block_ctx, torch.empty(0, dtype=prior.dtype).element_size()
    keys = 0
    for func in cfg.attn_funcs:
        keys += {
            0: position + 1,  # dense
            1: position % b + 1,  # block
            2: position // b + 1,  # transpose column
            3: b,  # previous block
            CROSS: cfg.encoder_len,
            7: min(position + 1, cfg.prime_window),
        }[func]
    return 2 * keys * cfg.n_state * batch * itemsize


def time_level(prior: JukeboxPrior, batch: int, steps: int, device: torch.device) -> Timing:
    cond = random_conditioning(prior, batch, device)
    n_ctx = prior.n_ctx
    steps = min(steps, n_ctx - 1)
    first = max(1, n_ctx // 2 - steps // 2)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def window() -> float:
        state = prior.start(cond, max_len=first + steps + 1)
        known = torch.randint(0, prior.config.l_bins, (batch, first), device=device)
        chunk = 512
        for start in range(0, first, chunk):
            prior.prefill(state, prior.codes_to_ids(known[:, start : start + chunk]))
        warm = 2  # the first steps warm the kernels up: the clock starts after them
        begin: list[float] = []

        def start_clock(done: int) -> None:
            if not begin:
                sync()
                begin.append(time.perf_counter())

        sample_steps(
            prior, state, steps, 1.0, 0, 0.0, generator, start_clock, progress_every=warm, exact=False
        )
        sync()
        return (time.perf_counter() - begin[0]) / (steps - warm)

    best = min(window() for _ in range(2))
    middle = prior.prefix_len + n_ctx // 2
    return Timing(best, weight_bytes_per_step(prior), kv_bytes_per_step(prior, batch, middle))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stacks", nargs="+", choices=sorted(STACKS), default=["5b_lyrics", "1b_lyrics"])
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 3])
    parser.add_argument("--steps", type=int, default=128, help="tokens timed per level and lever")
    parser.add_argument("--levers", nargs="+", choices=[name for name, _, _ in LEVERS], default=None)
    parser.add_argument("--bandwidth", type=float, default=None, help="HBM bytes/s (default: by device name)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, a few steps")
    args = parser.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
        steps, bandwidth, device_name = min(args.steps, 8), args.bandwidth or 50e9, "CPU (dry run)"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or pass --dry-run")
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name()
        known = next((bw for key, bw in BANDWIDTH.items() if key in device_name), None)
        bandwidth = args.bandwidth or known
        if bandwidth is None:
            parser.error(f"unknown HBM bandwidth for {device_name}: pass --bandwidth BYTES_PER_S")
        steps = args.steps
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows stay the reference arithmetic
    levers = [lever for lever in LEVERS if args.levers is None or lever[0] in args.levers]
    print(f"{device_name}, bound at {bandwidth / 1e12:.2f} TB/s, {steps} timed steps per level")
    print("s/min = seconds of sampling per minute of audio; bound = memory-bandwidth bound (spec §7)")

    for stack in args.stacks:
        for samples in args.samples:
            print(f"\n{stack}, {samples} sample(s)")
            header = (
                f"{'level':<24}{'lever':<16}{'ms/step':>9}{'s/min':>10}"
                f"{'bound s/min':>13}{'× bound':>9}{'gain':>7}"
            )
            print(header)
            print("-" * len(header))
            totals: dict[str, float] = {}
            bound_total = 0.0
            for name in STACKS[stack]:
                config = PriorConfig.published(name)
                if args.dry_run:
                    config = tiny(config)
                tokens = MINUTE // config.raw_to_tokens
                with torch.device(device):
                    torch.manual_seed(0)
                    prior = JukeboxPrior(config).eval()
                previous = None
                bound = 0.0
                for lever, dtype, fast in levers:
                    prior.to_compute_dtype(dtype)
                    prior.set_fast_attention(fast)
                    timing = time_level(prior, samples, steps, device)
                    per_minute = timing.seconds_per_step * tokens
                    bound = tokens * (timing.weight_bytes + timing.kv_bytes) / bandwidth
                    gain = "" if previous is None else f"{previous / timing.seconds_per_step:.2f}×"
                    previous = timing.seconds_per_step
                    totals[lever] = totals.get(lever, 0.0) + per_minute
                    print(
                        f"{name:<24}{lever:<16}{timing.seconds_per_step * 1e3:>9.2f}{per_minute:>10.1f}"
                        f"{bound:>13.1f}{per_minute / bound:>8.2f}×{gain:>7}",
                        flush=True,
                    )
                bound_total += bound  # the bound of the last (lowest-precision) lever
                del prior
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for lever, total in totals.items():
                print(
                    f"{'total ' + stack:<24}{lever:<16}{'':>9}{total:>10.1f}"
                    f"{bound_total:>13.1f}{total / bound_total:>8.2f}×"
                )
            if not math.isfinite(bound_total) or bound_total <= 0:
                raise RuntimeError("the bandwidth bound came out non-positive")


if __name__ == "__main__":
    main()
