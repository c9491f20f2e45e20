"""CPU sampling speed: ours against jukebox-infer on identical weights, measured in the same run.

The model is the spec's bare token model (jukebox-spec §8): a `ConditionalAutoregressive2D` with no
conditioning, bins 2048, init_scale 1.0, attn_order 2, blocks 16, heads 1. We time one full ancestral
window (n_ctx tokens from nothing) and report tokens/s = batch · n_ctx / seconds, best of `--rounds`
after a warm-up. Ours runs the cascade's per-token loop (`sampler.jukebox.cascade.sample_steps`:
prior step → temperature → filter → draw) through `JukeboxPrior`; the reference runs
`ConditionalAutoregressive2D.sample` in a `python -O` subprocess (its CUDA-type asserts fail on CPU
otherwise) with tqdm silenced and the same thread count, timing itself the same way.

Both sides draw from a generator seeded identically, so in reference arithmetic the sampled codes are
compared too ("same codes"): a speed-up that changed the maths would show there.

    python3 bench/sampling.py                 # the three issue sizes (a few minutes on 2 cores)
    python3 bench/sampling.py --quick         # seconds-long smoke run at toy sizes
    python3 bench/sampling.py --sizes small   # only width 128 / depth 4 / n_ctx 512, batch 1 and 4
    python3 bench/sampling.py --decode-path static  # ours with the persistent window decoder
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler.engine_settings import DECODE_PATHS, DecodePath
from sampler.jukebox.cascade import sample_steps
from sampler.jukebox.decoding import DecodeOptions, window_decoder
from sampler.jukebox.prior import Conditioning, JukeboxPrior, PriorConfig

BINS = 2048


@dataclass(frozen=True)
class Case:
    """One timed setting: a model shape and a batch."""

    name: str
    width: int
    depth: int
    n_ctx: int
    batch: int
    blocks: int = 16
    heads: int = 1
    attn_order: int = 2

    @property
    def model_key(self) -> tuple[int, int, int, int, int, int]:
        return (self.width, self.depth, self.n_ctx, self.blocks, self.heads, self.attn_order)


FULL_CASES = {
    "small": [Case("w128 d4 ctx512", 128, 4, 512, 1), Case("w128 d4 ctx512", 128, 4, 512, 4)],
    "large": [Case("w512 d12 ctx2048", 512, 12, 2048, 1)],
}
QUICK_CASES = [Case("w32 d3 ctx64", 32, 3, 64, 1), Case("w32 d3 ctx64", 32, 3, 64, 2)]

ORACLE = """
import json, sys, time, torch
import jukebox_infer.prior.autoregressive as ar
ar.get_range = lambda x: x  # silence tqdm: its printing is not part of the model's speed
weights_path, n_ctx, width, depth, heads, attn_order, blocks, threads, seed = sys.argv[1:10]
torch.set_num_threads(int(threads))
model = ar.ConditionalAutoregressive2D(
    input_shape=(int(n_ctx),), bins=2048, width=int(width), depth=int(depth), heads=int(heads),
    init_scale=1.0, attn_order=int(attn_order), blocks=int(blocks),
)
model.load_state_dict(torch.load(weights_path), strict=True)
model.eval()
print('READY', flush=True)
for line in sys.stdin:  # one batch size a line: sample one window, report its time (and codes)
    batch = int(line)
    torch.manual_seed(int(seed))
    start = time.perf_counter()
    codes = model.sample(n_samples=batch, temp=1.0)
    seconds = time.perf_counter() - start
    print('RESULT ' + json.dumps({'seconds': seconds, 'codes': codes.tolist()}), flush=True)
"""


class Reference:
    """jukebox-infer sampling the same weights in a `python -O` subprocess that stays up, so its runs
    can take turns with ours (a slow spell of a shared machine then hits both sides)."""

    def __init__(self, weights: Path, case: Case, threads: int, seed: int, script: Path) -> None:
        script.write_text(textwrap.dedent(ORACLE))
        args = [case.n_ctx, case.width, case.depth, case.heads, case.attn_order, case.blocks, threads, seed]
        self.errors = script.with_suffix(".stderr")
        with open(self.errors, "w") as errors:  # a file, not a pipe: warnings cannot fill it and block
            self.proc = subprocess.Popen(
                [sys.executable, "-O", str(script), str(weights), *map(str, args)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self._expect("READY")

    def _expect(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        self.proc.wait(60)
        raise RuntimeError(f"the jukebox-infer reference failed:\n{self.errors.read_text()[-3000:]}")

    def run(self, batch: int) -> tuple[float, Tensor]:
        """Seconds for one window of `batch` sequences, and the codes it sampled."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{batch}\n")
        self.proc.stdin.flush()
        result = json.loads(self._expect("RESULT "))
        return float(result["seconds"]), torch.tensor(result["codes"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


def build_prior(case: Case, seed: int) -> tuple[JukeboxPrior, Tensor]:
    """Our prior with the case's token model, randomly initialised; returns it and its start token."""
    torch.manual_seed(seed)
    config = PriorConfig(
        level=2,
        n_ctx=case.n_ctx,
        prior_width=case.width,
        prior_depth=case.depth,
        heads=case.heads,
        attn_order=case.attn_order,
        blocks=case.blocks,
        init_scale=1.0,
        y_bins=(1, 1),
        min_duration=0.0,
        max_duration=1.0,
        l_bins=BINS,
    )
    prior = JukeboxPrior(config).eval()
    # Random init gives near-uniform logits; spread the weights so the draws depend on the model.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in prior.prior.named_parameters():
            if "ln" in name.split(".")[-2]:
                continue
            param.normal_(std=0.15, generator=generator)
    start_token = torch.empty(1, case.width).normal_(std=0.15, generator=generator)
    return prior, start_token


def reference_state_dict(prior: JukeboxPrior, start_token: Tensor) -> dict[str, Tensor]:
    """The same weights under `ConditionalAutoregressive2D`'s keys (ours sit under `prior.`)."""
    state = {k: v.detach().clone() for k, v in prior.prior.state_dict().items()}
    state["start_token"] = start_token.clone()
    return state


def ours_once(
    prior: JukeboxPrior,
    start_token: Tensor,
    case: Case,
    seed: int,
    exact: bool,
    decode_path: DecodePath = "sliced",
) -> Tensor:
    """One full ancestral window with the cascade's sampling loop; returns the codes (N, n_ctx).

    `exact` draws as the reference (rng="reference", always the sliced loop); otherwise as the
    cascade's default rng="window", on `decode_path` (sliced: `sample_steps`; static: the persistent
    `WindowDecoder`, as `Cascade(decode=...)` runs it).
    """
    batch, width = case.batch, case.width
    cond = Conditioning(
        start=start_token.view(1, 1, width).expand(batch, 1, width).contiguous(),
        x_cond=torch.zeros(batch, 1, width),
    )
    generator = torch.Generator().manual_seed(seed)
    if not exact and decode_path != "sliced":
        decoder = window_decoder(prior, batch, DecodeOptions(path=decode_path))
        none = torch.zeros(batch, 0, dtype=torch.long)
        return decoder.sample_window(cond, none, case.n_ctx, 1.0, 0, 0.0, generator)
    state = prior.start(cond)
    row_totals = torch.zeros(batch, dtype=torch.float64)  # the NaN check, as the cascade samples
    return sample_steps(prior, state, case.n_ctx, 1.0, 0, 0.0, generator, exact=exact, row_totals=row_totals)


def timed(fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes, one round: a seconds-long smoke run")
    parser.add_argument(
        "--sizes", nargs="+", choices=sorted(FULL_CASES), default=sorted(FULL_CASES, reverse=True)
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed runs after a warm-up; the best is kept")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="time ours only")
    parser.add_argument(
        "--static-decode", action="store_true", help="ours with the static-shape decode step (off by default)"
    )
    parser.add_argument(
        "--decode-path",
        choices=[p for p in DECODE_PATHS if p != "graph"],
        default="sliced",
        help="ours (rng='window') on the per-token loop (sliced, the CPU default) or the persistent "
        "window decoder (static); static also times sliced and prints the ratio",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        cases, rounds = QUICK_CASES, 1
    else:
        cases, rounds = [c for size in args.sizes for c in FULL_CASES[size]], args.rounds

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), fp32, best of {rounds} rounds after a warm-up "
        "(ours and the reference take turns)"
    )
    print("ours = default draws (rng='window'); exact = reference draws (rng='reference'), codes compared")
    print(f"decode step: {'static' if args.static_decode else 'sliced (the default)'}")
    print(f"decode path of ours: {args.decode_path}")
    versus_sliced = f"{args.decode_path + '/sliced':>15}" if args.decode_path != "sliced" else ""
    header = (
        f"{'model':<18}{'batch':>6}{'ours tok/s':>12}{'exact tok/s':>13}{'ref tok/s':>11}"
        f"{'ours/ref':>10}{'exact/ref':>11}{versus_sliced}  same codes"
    )
    print(header)
    print("-" * len(header))
    models: dict[tuple[int, ...], list[Case]] = {}
    for case in cases:
        models.setdefault(case.model_key, []).append(case)
    with tempfile.TemporaryDirectory() as tmp:
        for model_cases in models.values():
            prior, start_token = build_prior(model_cases[0], args.seed)
            prior.set_static_decode(args.static_decode)
            reference = None
            if not args.skip_reference:
                weights = Path(tmp) / "weights.pt"
                torch.save(reference_state_dict(prior, start_token), weights)
                reference = Reference(
                    weights, model_cases[0], args.threads, args.seed, Path(tmp) / "oracle.py"
                )
            try:
                for case in model_cases:
                    row = measure(case, prior, start_token, reference, rounds, args.seed, args.decode_path)
                    print(row, flush=True)
            finally:
                if reference is not None:
                    reference.close()


def measure(
    case: Case,
    prior: JukeboxPrior,
    start_token: Tensor,
    reference: Reference | None,
    rounds: int,
    seed: int,
    decode_path: DecodePath = "sliced",
) -> str:
    """One table row: after a warm-up of each, `rounds` rounds in which ours (default draws, on
    `decode_path`), ours (exact draws), the reference and, for another path than sliced, ours on the
    sliced loop each sample one window; the best time of each is kept."""
    fast = partial(ours_once, prior, start_token, case, seed, False, decode_path)
    exact = partial(ours_once, prior, start_token, case, seed, True)
    sliced = partial(ours_once, prior, start_token, case, seed, False) if decode_path != "sliced" else None
    fast_codes = fast()
    _, exact_codes = timed(exact)
    ref_codes = reference.run(case.batch)[1] if reference is not None else None
    sliced_codes = sliced() if sliced is not None else fast_codes
    fast_times, exact_times, ref_times, sliced_times = [], [], [], []
    for _ in range(rounds):
        fast_times.append(timed(fast)[0])
        exact_times.append(timed(exact)[0])
        if reference is not None:
            ref_times.append(reference.run(case.batch)[0])
        if sliced is not None:
            sliced_times.append(timed(sliced)[0])
    tokens = case.batch * case.n_ctx
    fast_s, exact_s = min(fast_times), min(exact_times)
    row = f"{case.name:<18}{case.batch:>6}{tokens / fast_s:>12.0f}{tokens / exact_s:>13.0f}"
    if reference is not None:
        ref_s = min(ref_times)
        row += f"{tokens / ref_s:>11.0f}{ref_s / fast_s:>9.2f}×{ref_s / exact_s:>10.2f}×"
    if sliced is not None:
        # on the CPU every path draws the same codes (rng="window"): a difference is a bug
        same_window = "" if torch.equal(fast_codes, sliced_codes) else " (≠ codes)"
        row += f"{min(sliced_times) / fast_s:>14.2f}×{same_window}"
    if reference is not None:
        row += f"  {'yes' if torch.equal(exact_codes, ref_codes) else 'NO'}"
    return row


if __name__ == "__main__":
    main()
