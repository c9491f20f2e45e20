"""VQ-VAE throughput: ours against jukebox-infer, same weights, same run.

Builds the published VQ-VAE architecture with random weights, saves it in the original format,
and times encode (all three levels) and decode (each level) in seconds of audio per second.
jukebox-infer runs in a `python -O` subprocess (its CUDA-type asserts fail on CPU otherwise)
and times itself the same way. Usage:

    python3 bench/vqvae.py [--seconds 3] [--rounds 2] [--threads N] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler.jukebox.checkpoint import save_checkpoint
from sampler.jukebox.registry import SAMPLE_RATE, VQVAE_HPARAMS
from sampler.jukebox.vqvae import VQVAE, VQVAEConfig

ORACLE = """
import json, sys, time, torch
from jukebox_infer.hparams import setup_hparams
from jukebox_infer.make_models import make_vqvae
ckpt, audio_path, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
x = torch.load(audio_path)[..., None]
vqvae = make_vqvae(setup_hparams('vqvae', dict(sample_length=x.shape[1], restore_vqvae=ckpt)), 'cpu')

def best(fn):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return min(times)

with torch.no_grad():
    zs = vqvae.encode(x)
    result = {'encode': best(lambda: vqvae.encode(x))}
    for level in range(3):
        result[f'decode_{level}'] = best(lambda: vqvae.decode(zs[level:], start_level=level))
print('RESULT ' + json.dumps(result))
"""


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="audio length")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="device for ours (the reference always runs on CPU)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--chunk-seconds", type=float, default=None, help="also time ours chunked this finely"
    )
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = VQVAEConfig.from_hparams(VQVAE_HPARAMS)
    top_hop = config.hop_lengths[-1]
    samples = int(args.seconds * SAMPLE_RATE) // top_hop * top_hop
    seconds = samples / SAMPLE_RATE
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VQVAE(config).eval()
    for level in range(config.levels):  # default init leaves the codebooks at zero
        model.codebook(level).k.copy_(torch.randn(config.l_bins, config.emb_width, generator=generator))
    audio = (0.3 * torch.randn(1, samples, generator=generator)).clamp(-1, 1)

    device = torch.device(args.device)
    ours = copy.deepcopy(model).to(device=device, dtype=getattr(torch, args.dtype))
    for level in range(config.levels):  # distances stay in fp32
        ours.codebook(level).k.data = ours.codebook(level).k.float()
    ours_audio = audio.to(device)
    codes = ours.encode(ours_audio)
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    variants: dict[str, int | None] = {"ours": None}
    if args.chunk_seconds:
        variants[f"ours, {args.chunk_seconds:g} s chunks"] = int(args.chunk_seconds * SAMPLE_RATE)

    def time_ours(chunk: int | None) -> dict[str, float]:
        kwargs = {} if chunk is None else {"chunk_samples": chunk}

        def encode() -> object:
            return ours.encode(ours_audio, **kwargs)

        timings = {"encode": best_time(encode, 1, sync)}
        for level in range(config.levels):

            def decode(level: int = level) -> object:
                return ours.decode(codes, level, **kwargs)

            timings[f"decode_{level}"] = best_time(decode, 1, sync)
        return timings

    # Rounds alternate between the reference and ours, keeping each side's best time, so that a
    # burst of load from elsewhere on the machine does not favour one side.
    best: dict[str, dict[str, float]] = {}

    def keep_best(name: str, timings: dict[str, float]) -> None:
        old = best.setdefault(name, timings)
        best[name] = {k: min(v, old[k]) for k, v in timings.items()}

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(model, Path(tmp) / "vqvae.pth.tar")
        audio_path = Path(tmp) / "audio.pt"
        torch.save(audio, audio_path)
        for _ in range(args.rounds):
            if not args.skip_reference:
                keep_best("reference", run_reference(ckpt, audio_path, args.threads))
            for name, chunk in variants.items():
                keep_best(name, time_ours(chunk))

    keys = ("encode", "decode_0", "decode_1", "decode_2")
    print(
        f"published VQ-VAE, random weights, {seconds:.2f} s of audio, batch 1, {args.threads} threads, "
        f"best of {args.rounds} alternating rounds, ours on {device} in {args.dtype}; "
        "seconds of audio per second (higher is better)"
    )
    print(f"{'':28}{'encode':>10}{'decode L0':>11}{'decode L1':>11}{'decode L2':>11}")
    reference = best.pop("reference", None)
    if reference:
        print(
            f"{'jukebox-infer (cpu, fp32)':28}" + "".join(f"{seconds / reference[k]:>10.2f} " for k in keys)
        )
    for name, timings in best.items():
        print(f"{name:28}" + "".join(f"{seconds / timings[k]:>10.2f} " for k in keys))
        if reference:
            print(
                f"{'  ours / reference':28}" + "".join(f"{reference[k] / timings[k]:>9.2f}x " for k in keys)
            )


def run_reference(ckpt: Path, audio_path: Path, threads: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-O", "-c", textwrap.dedent(ORACLE), str(ckpt), str(audio_path), "1", str(threads)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"reference failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


if __name__ == "__main__":
    main()
