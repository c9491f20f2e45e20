"""Run `jukebox-infer` (the test-only reference) in a `python -O` subprocess.

jukebox-infer asserts CUDA tensor types on CPU unless asserts are off, and pytest
needs asserts on, so the reference always runs in its own interpreter. Tensors
cross the boundary as `torch.save` files in a temp directory.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

ORACLE_PREAMBLE = """
import sys, torch
torch.set_num_threads(1)
IN = torch.load(sys.argv[1], weights_only=False)
OUT = {}
"""
ORACLE_POSTAMBLE = """
torch.save(OUT, sys.argv[2])
"""


def oracle_available() -> bool:
    try:
        import jukebox_infer  # noqa: F401
    except ImportError:
        return False
    return True


requires_oracle = pytest.mark.skipif(
    not oracle_available(), reason="jukebox-infer (test oracle) not installed"
)


def run_oracle(script: str, inputs: dict[str, Any], workdir: Path, timeout: float = 600) -> dict[str, Any]:
    """Run `script` under `python -O` with `IN` = inputs; return the `OUT` dict it fills.

    `script` is plain Python that reads `IN` and writes results into `OUT`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    in_path, out_path, script_path = workdir / "in.pt", workdir / "out.pt", workdir / "oracle.py"
    torch.save(inputs, in_path)
    script_path.write_text(ORACLE_PREAMBLE + textwrap.dedent(script) + ORACLE_POSTAMBLE)
    proc = subprocess.run(
        [sys.executable, "-O", str(script_path), str(in_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"oracle failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return torch.load(out_path, weights_only=False)
