"""`bench/pipeline.py --quick` runs end to end and prints the overhead ratio (not its target:
timings on a shared CI machine say nothing reliable)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_benchmark_quick_run_prints_the_overhead_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "pipeline.py"), "--quick"],
        cwd=REPO,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"per job including model load\s+\d+\.\d+s\s+\d+\.\d+s\s+[+-]\d+\.\d %", out), out
    assert re.search(r"steady state \(mean of 1\)\s+\d+\.\d+s\s+\d+\.\d+s\s+[+-]\d+\.\d %", out), out
    ratio = re.search(r"overhead ratio \(steady state\): (\d+\.\d+)", out)
    assert ratio is not None, out
    assert float(ratio.group(1)) > 0
