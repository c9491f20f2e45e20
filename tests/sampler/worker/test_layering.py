"""The job runtime (`sampler/worker/`) knows only the job contract and the store: no Jukebox, no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sampler.worker

RUNTIME_DIR = Path(sampler.worker.__file__).parent
ALLOWED_OURS = ("sampler.worker", "storage")
OURS = ("sampler", "storage", "bot", "jukebot")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names


def test_the_runtime_imports_only_itself_and_storage() -> None:
    modules = sorted(RUNTIME_DIR.glob("*.py"))
    assert {path.stem for path in modules} >= {"contract", "runtime", "pool"}
    for path in modules:
        ours = {name for name in _imports(path) if name.split(".")[0] in OURS}
        stray = {name for name in ours if not name.startswith(ALLOWED_OURS)}
        assert not stray, f"{path.name} imports {sorted(stray)}"


def test_importing_the_runtime_does_not_load_torch() -> None:
    code = (
        "import sys, sampler.worker.contract, sampler.worker.runtime, sampler.worker.pool; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
