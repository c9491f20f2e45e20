"""Operator-facing refusals found by an audit of the command line: each one a clear sentence, given
before a model loads, a worker starts or a file is written."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
import torch
import yarl
from click.testing import CliRunner, Result

from jukebot.cli import main
from jukebot.commands.serve import discord_problem
from jukebot.settings import load_settings
from tests.bot.fake_discord import FakeDiscord
from tests.jukebot.test_run_cli import pointed_at, run_env
from tests.jukebot.test_sample_cli import model_dir, single_thread
from tests.jukebot.test_sample_cli_hardening import run, write_clip

__all__ = ["model_dir", "run_env", "single_thread"]  # fixtures shared with other CLI tests

LABELS = ["--artist=Alan Jackson", "--genre=Country"]


def error_line(result: Result) -> str:
    assert "Traceback" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


@pytest.fixture
def model_dir_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """JUKEBOT_MODEL_DIR set to a file."""
    path = clean_env / "models.txt"
    path.write_text("not a folder")
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(path))
    return path


def test_sample_with_a_model_dir_setting_that_is_a_file_says_so(model_dir_file: Path) -> None:
    result = CliRunner().invoke(
        main, ["sample", "--name=out", "--device=cpu", "--fp32", "--no-progress"], catch_exceptions=False
    )
    assert result.exit_code == 1, result.output
    assert error_line(result) == (
        f"Error: The model directory {model_dir_file} is a file, not a folder: "
        "set JUKEBOT_MODEL_DIR to a folder."
    )
    assert not Path("out").exists()


def test_worker_with_a_model_dir_setting_that_is_a_file_refuses_to_start(
    model_dir_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    monkeypatch.setattr("sampler.worker.pool.run_pool", lambda *a, **k: started.append(a) or 0)
    monkeypatch.setenv("JUKEBOT_GPUS", "cpu")
    result = CliRunner().invoke(main, ["worker"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert error_line(result) == (
        f"Error: The model directory {model_dir_file} is a file, not a folder: "
        "set JUKEBOT_MODEL_DIR to a folder."
    )
    assert not started


def test_run_with_local_workers_and_a_model_dir_setting_that_is_a_file_refuses_to_start(
    model_dir_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []

    async def no_bot(*args: Any) -> None:
        started.append("bot")

    monkeypatch.setattr("sampler.worker.pool.run_pool", lambda *a, **k: started.append("pool") or 0)
    monkeypatch.setattr("jukebot.commands.serve._run_bot", no_bot)
    monkeypatch.setenv("JUKEBOT_GPUS", "cpu")
    monkeypatch.setenv("DISCORD_TOKEN", "not-a-real-token")
    result = CliRunner().invoke(main, ["run"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "is a file, not a folder: set JUKEBOT_MODEL_DIR to a folder." in error_line(result)
    assert not started


@pytest.fixture(scope="module")
def top_codes(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preview's codes file: 2048 samples (0.0464 s) of top-level codes."""
    out = tmp_path_factory.mktemp("preview") / "preview"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(model_dir, out, *LABELS, "--levels=1", "--n_samples=1")
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out / "level_2" / "data.pth.tar"


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(
    ("seconds", "asked", "levels"),
    [("0.0465", "0.05", ["--levels=1"]), ("0.03", "0.03", []), ("0.03", "0.03", ["--levels=1"])],
    ids=["as-long-top-only", "shorter", "shorter-top-only"],
)
def test_continue_refuses_a_sample_length_not_longer_than_the_codes(
    model_dir: Path, top_codes: Path, tmp_path: Path, seconds: str, asked: str, levels: list[str]
) -> None:
    out = tmp_path / "more"
    result = run(
        model_dir,
        out,
        "--mode=continue",
        f"--codes_file={top_codes}",
        f"--sample_length_in_seconds={seconds}",
        *levels,
    )
    assert result.exit_code == 2, result.output
    assert error_line(result) == (
        f"Error: Invalid value for --sample_length_in_seconds: the sample length ({asked} s) must be "
        f"longer than the codes in {top_codes} (0.05 s) to continue them: ask for more"
    )
    assert not out.exists()


@pytest.mark.usefixtures("single_thread")
def test_continue_at_the_codes_length_upsamples_the_levels_they_lack(
    model_dir: Path, top_codes: Path, tmp_path: Path
) -> None:
    """The Model API's rule (`continued_codes_length`): continuing whole top codes with the lower levels
    asked samples those levels, as `Cascade.check` allows; only every level whole is refused."""
    from sampler.jukebox.cascade import continued_codes_length

    top = torch.load(top_codes, weights_only=True)["zs"]
    assert continued_codes_length(top, (8, 32, 128), (0, 1, 2), 128 * top[2].shape[1]) is None
    assert continued_codes_length(top, (8, 32, 128), (2,), 128 * top[2].shape[1]) is not None
    out = tmp_path / "whole"
    result = run(
        model_dir, out, "--mode=continue", f"--codes_file={top_codes}", "--sample_length_in_seconds=0.0465"
    )
    assert result.exit_code == 0, result.output
    assert {path.name for path in out.glob("level_*")} == {"level_0", "level_1", "level_2"}


@pytest.mark.usefixtures("single_thread")
def test_continue_for_more_than_the_codes_still_passes_the_check(
    model_dir: Path, top_codes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "more"
    result = run(
        model_dir,
        out,
        "--mode=continue",
        f"--codes_file={top_codes}",
        "--sample_length_in_seconds=0.07",
        "--levels=1",
    )
    assert result.exit_code == 0, result.output
    assert (out / "level_2" / "data.pth.tar").is_file()


@pytest.mark.parametrize("name", ["", "  "], ids=["empty", "blank"])
def test_an_empty_name_is_refused(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = run(model_dir, Path("unused"), *LABELS, f"--name={name}")
    assert result.exit_code == 2, result.output
    assert error_line(result) == (
        "Error: Invalid value for --name: give the name of the output folder, e.g. --name=sample "
        "(an empty one would write into the current folder)"
    )
    assert list(work.iterdir()) == []


def test_an_audio_file_whose_name_holds_a_comma_is_named_whole(model_dir: Path, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "x,y.wav")
    out = tmp_path / "primed"
    result = run(
        model_dir, out, *LABELS, "--mode=primed", f"--audio_file={clip}", "--prompt_length_in_seconds=0.012"
    )
    assert result.exit_code == 2, result.output
    assert error_line(result) == (
        f"Error: Invalid value for --audio_file: {tmp_path / 'x'} does not exist or is not a file "
        f"(--audio_file separates files with commas; rename {clip} to use it)"
    )
    assert not out.exists()


def test_a_missing_audio_file_without_a_comma_is_said_as_before(model_dir: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone.wav"
    result = run(
        model_dir, tmp_path / "p", *LABELS, "--mode=primed", f"--audio_file={gone}",
        "--prompt_length_in_seconds=0.012",
    )  # fmt: skip
    assert (
        error_line(result) == f"Error: Invalid value for --audio_file: {gone} does not exist or is not a file"
    )


@pytest.mark.parametrize("guild", ["0", "-1", str(2**63)])
def test_a_sync_guild_that_is_no_discord_id_is_a_usage_error(clean_env: Path, guild: str) -> None:
    result = CliRunner().invoke(main, ["run", f"--sync-guild={guild}"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert error_line(result) == (
        f"Error: Invalid value for '--sync-guild': {guild} is not a Discord server id "
        "(1 to 9223372036854775807): copy the server's id in Discord (right-click the server, Copy Server ID)"
    )


async def test_a_sync_guild_the_bot_is_not_in_says_to_check_it(run_env: dict[str, str]) -> None:
    async with FakeDiscord() as fake:
        fake.add_guild("Test Server", channels=("general",))
        env = run_env | pointed_at(fake) | {"DISCORD_TOKEN": fake.token}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jukebot", "run", "--sync-guild=123",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert process.returncode == 1, text
    assert text.strip().splitlines()[-1] == (
        "Error: Discord knows no server 123 that the bot is in (404 Unknown Guild), so the bot cannot "
        "sync its commands there: check --sync-guild (a server's id), or invite the bot to that server."
    )


def _http_error(status: int, code: int, message: str, url: str) -> discord.HTTPException:
    response = SimpleNamespace(status=status, reason=message, url=yarl.URL(url))
    kind = discord.Forbidden if status == 403 else discord.NotFound
    return kind(response, {"code": code, "message": message})  # type: ignore[arg-type]


def test_missing_access_to_a_sync_guild_says_to_check_it(clean_env: Path) -> None:
    settings = load_settings()
    url = "https://discord.com/api/v10/applications/1/guilds/456/commands"
    problem = discord_problem(_http_error(403, 50001, "Missing Access", url), settings, (456,))
    assert problem == (
        "Discord gives the bot no access to server 456 (403 Missing Access: it is not in that server, or "
        "was invited without the applications.commands scope), so the bot cannot sync its commands "
        "there: check --sync-guild (a server's id), or invite the bot to that server."
    )
    # The same error elsewhere (not a --sync-guild server's commands) stays as it was.
    other = discord_problem(_http_error(403, 50001, "Missing Access", url), settings, ())
    assert other is not None and other.endswith("try again later.")
