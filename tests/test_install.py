"""The README's first command on a fresh checkout, and the pieces of scripts/venv.sh it relies on:
the torch build it picks and the virtual environment it makes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_SH = REPO / "scripts" / "venv.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _plain_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python or jukebot at this checkout."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("JUKEBOT_", "PYTHON", "VIRTUAL_ENV"))
        and name not in {"DISCORD_TOKEN", "DATABASE_URL"}
    }
    return env | extra


def _fresh_checkout(destination: Path) -> Path:
    """The files git would hand a new user (tracked and not-yet-committed ones), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _run_sh(checkout: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/run.sh"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_first_command_installs_into_a_venv_and_starts_the_bot(tmp_path: Path) -> None:
    checkout = _fresh_checkout(tmp_path / "jukebot")
    env = _plain_env(
        DISCORD_TOKEN="not-a-real-token",
        DATABASE_URL=f"sqlite:///{tmp_path / 'jukebot.sqlite3'}",
        JUKEBOT_MODEL_DIR=str(tmp_path / "models"),
        # The CPU build, from an index that refuses connections: the fallback to the configured
        # index is taken whatever the network (pip's cache keeps it fast). The choice itself is
        # tested below.
        JUKEBOT_TORCH="cpu",
        JUKEBOT_TORCH_CPU_INDEX=f"http://127.0.0.1:{_closed_port()}/whl/cpu",
    )

    first = _run_sh(checkout, env)
    output = first.stdout + first.stderr
    assert "creating the virtual environment .venv" in output, output[-3000:]
    assert "installing jukebot[worker] into .venv (torch: cpu)" in output
    assert "cannot be reached" in output and "installing torch==" in output
    assert "starting the bot: jukebot run" in output
    assert "ModuleNotFoundError" not in output, output[-3000:]
    # It got as far as Discord, which cannot be reached here (or rejects the token where it can).
    assert "discord" in output.split("starting the bot")[1].lower()
    assert first.returncode != 0
    assert (tmp_path / "jukebot.sqlite3").is_file()  # migrated on the way
    venv_python = checkout / ".venv" / "bin" / "python"
    torch = subprocess.run(
        # -I: only what is installed, not the working directory
        [venv_python, "-I", "-c", "import jukebot, torch; print(jukebot.__file__, torch.__version__)"],
        env=_plain_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(torch[0]).is_relative_to(checkout) and torch[1].startswith("2.13.0")

    again = _run_sh(checkout, env | {"JUKEBOT_GPUS": "none"})
    output = again.stdout + again.stderr
    assert "installing jukebot" not in output and "creating the virtual" not in output, output[-3000:]
    assert "starting the bot: jukebot run" in output and "ModuleNotFoundError" not in output
    assert again.returncode != 0

    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    changed = _run_sh(checkout, env | {"JUKEBOT_GPUS": "none"})
    output = changed.stdout + changed.stderr
    assert "installing jukebot[worker]" in output and "creating the virtual" not in output, output[-3000:]
    assert "starting the bot: jukebot run" in output and "ModuleNotFoundError" not in output


def _in_venv_sh(script: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, "-c", f"set -euo pipefail; source {VENV_SH}; {script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _program(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!{BASH}\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("nvidia_smi", "setting", "expected"),
    [
        (None, None, "cpu"),
        ("echo 'GPU 0: NVIDIA H200'", None, "cuda"),
        ("exit 9", None, "cpu"),  # nvidia-smi present but no driver/GPU answering
        ("echo 'GPU 0: NVIDIA H200'", "cpu", "cpu"),
        (None, "cuda", "cuda"),
        ("echo 'GPU 0: NVIDIA H200'", "skip", "skip"),
    ],
)
def test_torch_build_follows_the_machine_unless_overridden(
    tmp_path: Path, nvidia_smi: str | None, setting: str | None, expected: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi is not None:
        _program(bin_dir, "nvidia-smi", nvidia_smi + "\n")
    env = _plain_env(PATH=str(bin_dir))  # no real nvidia-smi: this machine's GPUs do not count
    if setting is not None:
        env["JUKEBOT_TORCH"] = setting
    result = _in_venv_sh("jukebot_torch_choice", env)
    assert (result.returncode, result.stdout.strip()) == (0, expected), result.stderr


def test_a_bad_torch_setting_is_one_sentence() -> None:
    result = _in_venv_sh(
        'torch=$(jukebot_torch_choice); echo "went on with $torch"', _plain_env(JUKEBOT_TORCH="rocm")
    )
    assert result.returncode != 0 and "went on" not in result.stdout
    assert result.stderr.strip() == "JUKEBOT_TORCH must be auto, cpu, cuda or skip, not 'rocm'"


def _python_without_venv_support(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    """A PATH whose python3 lacks ensurepip (as on a bare Debian) until the fake apt-get installs
    pythonX.Y-venv, and whose `id -u` says `uid`. Returns the bin directory and apt-get's log."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    _program(
        bin_dir,
        "python3",
        f'if [ "$1" = -c ] && [[ "$2" == *ensurepip* ]] && [ ! -f {state}/installed ]; then exit 1; fi\n'
        f'exec {sys.executable} "$@"\n',
    )
    _program(
        bin_dir, "apt-get", f'echo "$*" >> {state}/apt.log\n[ "$1" != install ] || touch {state}/installed\n'
    )
    _program(bin_dir, "id", f'[ "$1" = -u ] && echo {uid} || exec /usr/bin/id "$@"\n')
    return bin_dir, state / "apt.log"


@pytest.mark.skipif(sys.platform != "linux", reason="Debian's packaging")
def test_as_root_the_missing_venv_package_is_installed(tmp_path: Path) -> None:
    bin_dir, apt_log = _python_without_venv_support(tmp_path, uid=0)
    env = _plain_env(PATH=f"{bin_dir}:{os.environ['PATH']}", JUKEBOT_VENV=str(tmp_path / "venv"))
    result = _in_venv_sh("jukebot_make_venv", env)
    assert result.returncode == 0, result.stderr
    version = "{}.{}".format(*sys.version_info[:2])
    assert apt_log.read_text().splitlines() == ["update -qq", f"install -y -qq python{version}-venv"]
    assert (tmp_path / "venv" / "bin" / "python").is_file()


@pytest.mark.skipif(sys.platform != "linux", reason="Debian's packaging")
def test_without_root_the_missing_venv_package_is_one_clear_sentence(tmp_path: Path) -> None:
    bin_dir, apt_log = _python_without_venv_support(tmp_path, uid=1000)
    env = _plain_env(PATH=f"{bin_dir}:{os.environ['PATH']}", JUKEBOT_VENV=str(tmp_path / "venv"))
    result = _in_venv_sh("jukebot_make_venv", env)
    version = "{}.{}".format(*sys.version_info[:2])
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "python3 cannot make a virtual environment (no ensurepip): install it with "
        f"'sudo apt-get install python{version}-venv', or set PYTHON to a Python 3.11+ that can"
    )
    assert not apt_log.exists() and not (tmp_path / "venv").exists()


def test_a_bad_torch_setting_stops_the_test_script_before_it_installs_anything(tmp_path: Path) -> None:
    """`jukebot_install worker,test "$(jukebot_torch_choice)"` went on after the refusal with an empty
    choice, and pip installed the newest CUDA torch (6 GB)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "python-calls.log"
    bin_dir.mkdir()
    _program(bin_dir, "python3", f'echo "$*" >> {calls}\nexit 1\n')
    env = _plain_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", JUKEBOT_TORCH="gpu", JUKEBOT_VENV=str(tmp_path / "venv")
    )
    result = subprocess.run(
        [BASH, "scripts/test.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "JUKEBOT_TORCH must be auto, cpu, cuda or skip, not 'gpu'"
    assert not calls.exists() and not (tmp_path / "venv").exists()


def test_installing_refuses_a_torch_build_it_does_not_know(tmp_path: Path) -> None:
    result = _in_venv_sh('jukebot_install worker ""', _plain_env(JUKEBOT_VENV=str(tmp_path / "venv")))
    assert result.returncode != 0
    assert result.stderr.strip() == "jukebot_install: the torch build must be cpu, cuda or skip, not ''"
    assert not (tmp_path / "venv").exists()


def test_a_venv_of_another_python_than_the_one_asked_for_is_made_again(tmp_path: Path) -> None:
    """PYTHON=python3.12 was ignored once .venv existed (made with 3.11): the version must match."""
    _program(tmp_path, "python-3.10", "echo 3 10\n")
    env = _plain_env(JUKEBOT_VENV=".venv-x")
    asked = sys.executable
    version = "{}.{}".format(*sys.version_info[:2])
    other = _in_venv_sh(f"jukebot_venv_matches {asked} {tmp_path / 'python-3.10'}", env)
    assert other.returncode == 1
    assert other.stderr.strip() == f".venv-x has Python 3.10, PYTHON={asked} is {version}: making it again"
    same = _in_venv_sh(f"jukebot_venv_matches {asked} {asked}", env)
    assert (same.returncode, same.stderr) == (0, "")
    # A PYTHON that is not there is named by jukebot_make_venv when needed; the venv is kept.
    missing = _in_venv_sh(f"jukebot_venv_matches no-such-python {tmp_path / 'python-3.10'}", env)
    assert (missing.returncode, missing.stderr) == (0, "")
