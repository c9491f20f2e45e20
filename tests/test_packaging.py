"""What `pip install jukebot` brings: the bot without torch (torch is the `worker` extra), an SPDX
licence with its file, and a bot that imports and starts where torch is not installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Run jukebot's command line in a fresh interpreter where `import torch` fails as if not installed.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from jukebot.cli import main; main()"


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def test_torch_is_only_in_the_worker_extra() -> None:
    project = PYPROJECT["project"]
    assert "torch" not in {_name(req) for req in project["dependencies"]}
    assert "torch" in {_name(req) for req in project["optional-dependencies"]["worker"]}


def test_the_worker_and_its_image_take_no_torch_whose_weights_only_load_runs_code() -> None:
    """States and checkpoints are read with torch.load(weights_only=True), which torch before 2.10
    lets a crafted file escape (CVE-2025-32434, CVE-2026-24747)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    (torch,) = [
        Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["worker"] if _name(r) == "torch"
    ]
    assert not torch.specifier.contains(Version("2.9.1")) and torch.specifier.contains(Version("2.10.0"))
    image = re.search(
        r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-", (REPO / "docker/Dockerfile.worker").read_text(), re.M
    )
    assert image and Version(image.group(1)) >= Version("2.10.0"), image


def test_licence_is_an_spdx_expression_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    # PEP 639's `license = "MIT"` and `license-files` need setuptools 77 or newer.
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def _jukebot_without_torch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args],
        cwd=REPO,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["worker", "--help"], ["db", "--help"]])
def test_the_command_line_works_without_torch(args: list[str]) -> None:
    result = _jukebot_without_torch(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage: " in result.stdout


def test_every_bot_module_imports_without_torch() -> None:
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts) for path in (REPO / "bot").rglob("*.py")
    )
    code = "import sys; sys.modules['torch'] = None\n" + "".join(f"import {module}\n" for module in modules)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "bot.exts.jukebox" in modules


def test_local_workers_without_torch_is_one_sentence(tmp_path: Path) -> None:
    result = _jukebot_without_torch(
        "run", DISCORD_TOKEN="not-a-real-token", JUKEBOT_GPUS="auto", DATABASE_URL=f"sqlite:///{tmp_path}/db"
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: local workers need torch, which is not installed here: install the worker extra "
        "(pip install 'jukebot[worker]'; scripts/run.sh does unless JUKEBOT_TORCH=skip), "
        "or set JUKEBOT_GPUS=none to run the bot alone, with workers on other machines."
    )
    assert not (tmp_path / "db").exists()  # said before touching the database


def test_the_bot_alone_runs_without_torch_as_far_as_discord(tmp_path: Path) -> None:
    result = _jukebot_without_torch(
        "run", DISCORD_TOKEN="not-a-real-token", JUKEBOT_GPUS="none", DATABASE_URL=f"sqlite:///{tmp_path}/db"
    )
    output = result.stdout + result.stderr
    assert "torch" not in output, output[-3000:]
    assert (tmp_path / "db").is_file()  # migrated
    # No network here (or a fake token where there is): Discord refuses, and only Discord.
    assert result.returncode != 0
    assert "discord" in output.lower()


@pytest.mark.parametrize(
    "args",
    [
        ["models", "download", "vqvae"],
        ["models", "verify"],
        ["models", "import", "."],
        ["sample"],
        ["worker"],
    ],
)
def test_commands_that_need_torch_say_so_in_one_sentence_without_it(args: list[str], tmp_path: Path) -> None:
    result = _jukebot_without_torch(*args, JUKEBOT_MODEL_DIR=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "need torch, which is not installed here: install the worker extra" in result.stderr
    assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr
    # JUKEBOT_GPUS=none runs the bot alone: it makes no command but `run` work without torch.
    assert "JUKEBOT_GPUS" not in result.stderr, result.stderr


def test_a_ctrl_c_while_the_command_line_loads_ends_it_without_a_traceback() -> None:
    """Its imports take seconds: a Ctrl-C then printed a 50-line traceback of the import it cut short."""
    assert PYPROJECT["project"]["scripts"]["jukebot"] == "jukebot.__main__:run"
    interrupted_import = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def cut(name, *args, **kwargs):\n"
        "    if name == 'jukebot.settings':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = cut\n"
        "from jukebot.__main__ import run\n"
        "run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", interrupted_import, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "Aborted!\n")
