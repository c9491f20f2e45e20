#!/usr/bin/env bash
# The device check for a session lent a GPU: one command on the device machine, every figure written
# under $OUT as it comes (see bench/README.md). The machine's image has torch but none of our other
# packages, so only torch-only code runs there (bench.gpu_imports stands in for unidecode).
#
#   on the device:  bash scripts/gpu-check.sh [BUDGET_SECONDS, default 540; run with timeout_s 595]
#   dry run here:   OUT=/tmp/gpu-check GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh 120
# The whole script takes its budget plus about 20 s (imports and exits): give BUDGET_SECONDS at most
# the run's time limit less 55.
#
# Files back (at most 8): env.txt, cuda-tests.log, {full,smoke}/{gpu.jsonl,summary.txt,log.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
budget=${1:-540}
device=${GPU_CHECK_DEVICE:-cuda}
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
started=$(date +%s)
left() { echo $((budget - ($(date +%s) - started))); }

# Bounded: a driver that hangs would otherwise hold the whole run, and bring back only this file.
{
    timeout -k 5 20 nvidia-smi || true
    timeout -k 5 60 "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
    timeout -k 5 30 "$python" -c "import triton; print('triton', triton.__version__)" || true
} >"$OUT/env.txt" 2>&1

# 1. The engine's CUDA tests: graph replays against the eager static step, fp32 and fp16, compiled;
#    the Triton kernels compiled, against the torch step and in graphs.
#    Only the model tests' conftest is loaded (the root one needs the database packages). The Triton
#    kernels first: their tests are the only check of them compiled on a GPU, and the compiled graph
#    replays of test_decoding may take most of the step's 90 s from a cold inductor cache.
#    Each test bounded (a hang fails that test, not the step) and named as it ends (-v: a step cut
#    short still says which passed).
timeout -k 5 90 "$python" -c "
import sys
import bench.gpu_imports  # noqa: F401
import pytest
sys.exit(pytest.main(['-v', '-rfE', '--timeout=45', '--durations=10', '-p', 'no:cacheprovider',
                      '-o', 'addopts=', '--confcutdir=tests/sampler/jukebox',
                      'tests/sampler/jukebox/test_kernels.py', 'tests/sampler/jukebox/test_decoding.py',
                      '-k', 'on_cuda']))
" 2>&1 | tee "$OUT/cuda-tests.log" | tail -n 15

# 2. The bench at published sizes with the time that is left but SMOKE_S: the figures that decide come
#    first (a dry run here uses tiny sizes).
#    Its alarm cannot stop a kernel that hangs in a C call: `timeout` does, 20 s after its budget
#    (imports come first).
smoke_s=30
full=()
[ "$device" = cpu ] && full=(--dry-run)
mkdir -p "$OUT/full" "$OUT/smoke"
full_s=$(($(left) - smoke_s))
[ "$full_s" -lt 0 ] && full_s=0
timeout -k 5 $((full_s + 20)) "$python" -m bench.gpu "${full[@]}" --device "$device" --budget "$full_s" \
    --out "$OUT/full" 2>&1 | tee "$OUT/full/log.txt" | tail -n 60

# 3. The bench at tiny sizes with capture in what is left (about SMOKE_S): beside a failure of step 2,
#    whether it fails at any size.
smoke_s=$(left)
[ "$smoke_s" -lt 0 ] && smoke_s=0  # no time left: every part is skipped, with its reason
timeout -k 5 $((smoke_s + 20)) "$python" -m bench.gpu --dry-run --device "$device" --budget "$smoke_s" \
    --out "$OUT/smoke" 2>&1 | tee "$OUT/smoke/log.txt" | tail -n 25
