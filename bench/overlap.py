"""Levels 1 and 0 at once against in turn: an upsample job on the published upsamplers, random weights.

One upsample job (levels 1 and 0 from random top-level codes) is sampled twice on one device: its
levels in turn, then at once (`Cascade.sample(overlap_levels=True)`: one thread and CUDA stream per
level, a level-0 window starts once level 1 holds the codes it reads). Speed does not depend on the
weights, so the priors have random weights at their published size (no download); `--n-ctx` shrinks
the windows so that a run with several windows per level takes minutes. Printed per run: seconds,
tokens/s of both levels together, and whether the codes of the two runs are identical (they must
be: every window has its own seed; on CUDA a difference means a kernel that is not deterministic
across streams, e.g. cuBLAS without CUBLAS_WORKSPACE_CONFIG).

    python3 bench/overlap.py                          # on a GPU: fp16, 3 samples, 1 s, n_ctx 512
    python3 bench/overlap.py --seconds 3 --n-ctx 2048
    python3 bench/overlap.py --dry-run                # CPU, tiny shapes: checks the script end to end
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler.jukebox.cascade import Cascade, CascadeState, PriorSource, SamplingRequest
from sampler.jukebox.prior import JukeboxPrior, PriorConfig
from sampler.jukebox.registry import PRIOR_HPARAMS, SAMPLE_RATE, VQVAE_HPARAMS
from sampler.jukebox.vqvae import VQVAE, VQVAEConfig
from sampler.jukebox.windows import sample_length_samples

NAMES = ("upsampler_level_0", "upsampler_level_1", "prior_5b")  # by level; the top prior is never built


class RandomUpsamplers(PriorSource):
    """The two upsamplers, built with random weights; the top level only lends its config."""

    def __init__(self, configs: list[PriorConfig], device: torch.device, dtype: torch.dtype) -> None:
        with torch.device(device):
            priors = [JukeboxPrior(config, dtype=dtype).eval() for config in configs[:2]]
        super().__init__([*priors, None])
        self.configs = configs

    def config(self, level: int) -> PriorConfig:
        return self.configs[level]


def configs(n_ctx: int, dry_run: bool) -> list[PriorConfig]:
    out = [PriorConfig.from_hparams(PRIOR_HPARAMS[name], VQVAE_HPARAMS) for name in NAMES]
    shrink: dict[str, int] = dict(n_ctx=n_ctx)
    if dry_run:
        shrink.update(prior_width=32, prior_depth=3, blocks=8, cond_width=16, cond_depth=2)
    return [dataclasses.replace(c, **shrink) if c.is_upsampler else c for c in out]  # type: ignore[arg-type]


def timed(
    cascade: Cascade, request: SamplingRequest, overlap: bool, device: torch.device
) -> tuple[float, CascadeState]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    state = cascade.sample(request, overlap_levels=overlap)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="audio length of the job")
    parser.add_argument("--n-ctx", type=int, default=512, help="window length of both upsamplers")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, a fraction of a second")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    n_ctx, seconds = (64, 0.1) if args.dry_run else (args.n_ctx, args.seconds)
    priors = RandomUpsamplers(configs(n_ctx, args.dry_run), device, dtype)
    with torch.device(device):
        vqvae = VQVAE(VQVAEConfig.from_hparams(VQVAE_HPARAMS)).eval()
    cascade = Cascade(vqvae, priors, device=device)
    length = sample_length_samples(seconds)
    top = priors.config(2)
    generator = torch.Generator().manual_seed(0)
    request = SamplingRequest(
        mode="upsample",
        sample_length=length,
        total_length=max(length, math.ceil((top.min_duration or 0.0) * SAMPLE_RATE)),
        n_samples=args.samples,
        levels=(0, 1),
        codes=(
            None,
            None,
            torch.randint(top.l_bins, (args.samples, length // cascade.hops[2]), generator=generator),
        ),
    )
    windows = {level: len(cascade.plan(request, cascade.initial_state(request), level)) for level in (1, 0)}
    tokens = args.samples * sum(length // cascade.hops[level] for level in (1, 0))
    print(f"device {device} {dtype}, {args.samples} samples, {length / SAMPLE_RATE:.2f} s, n_ctx {n_ctx}: "
          f"{windows[1]} windows at level 1, {windows[0]} at level 0")  # fmt: skip
    results = {}
    for overlap in (False, True):
        seconds_taken, state = timed(cascade, request, overlap, device)
        results[overlap] = state
        name = "at once" if overlap else "in turn"
        print(f"{name:8} {seconds_taken:8.2f} s  {tokens / seconds_taken:9.1f} tokens/s")
    same = all(torch.equal(a, b) for a, b in zip(results[False].codes, results[True].codes, strict=True))
    print(f"identical codes: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
