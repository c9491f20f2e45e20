"""`jukebot doctor`: every verdict this machine can produce (no GPU here), and the exit status."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from jukebot.cli import main
from jukebot.doctor import (
    Check,
    Verdict,
    check_codecs,
    check_database,
    check_devices,
    check_fingerprints,
    check_models,
    check_token,
)
from jukebot.settings import Settings, load_settings
from sampler.loading import expected_shapes_for
from sampler.model_files import CheckpointVerifier, model_path
from storage.migrate import upgrade_to_head
from tests.bot.fake_discord import FakeDiscord
from tests.tiny_model_dir import write_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("models"), models=("1b_lyrics",))


def settings_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def verifier_for(model_dir: Path) -> CheckpointVerifier:
    return CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))


@pytest.mark.usefixtures("clean_env")
def test_database_empty_then_migrated(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(monkeypatch, DATABASE_URL=empty_db_url)
    empty = check_database(settings)
    assert empty.verdict is Verdict.WARN and "is empty: `jukebot db upgrade`" in empty.message
    upgrade_to_head(empty_db_url)
    migrated = check_database(settings)
    assert migrated.verdict is Verdict.OK and "at the latest schema" in migrated.message


@pytest.mark.postgres
@pytest.mark.usefixtures("clean_env", "postgres_database")
def test_database_that_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import POSTGRES_URL

    url = make_url(POSTGRES_URL).set(database="jukebot_doctor_missing", password="hidden-pw")
    settings = settings_for(monkeypatch, DATABASE_URL=url.render_as_string(hide_password=False))
    check = check_database(settings)
    assert check.verdict is Verdict.FAIL
    assert "'jukebot_doctor_missing' does not exist" in check.message and "hidden-pw" not in check.message


@pytest.mark.usefixtures("clean_env")
def test_models_complete_missing_and_damaged(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(monkeypatch, JUKEBOT_MODEL_DIR=str(tiny_models))
    checks = {c.message.split(":")[0]: c for c in check_models(settings, verifier_for(tiny_models))}
    assert checks["1b_lyrics"].verdict is Verdict.OK and "verified" in checks["1b_lyrics"].message
    assert checks["5b"].verdict is Verdict.WARN and "jukebot models download 5b" in checks["5b"].message
    assert "models" not in {c.name for c in checks.values()}  # one complete model: nothing blocks

    empty = settings_for(monkeypatch, JUKEBOT_MODEL_DIR=str(tmp_path / "none"))
    blocking = [c for c in check_models(empty, None) if c.verdict is Verdict.FAIL]
    assert [c.name for c in blocking] == ["models"]
    assert "`jukebot models download 1b_lyrics`" in blocking[0].message

    damaged = write_tiny_model_dir(tmp_path / "damaged")
    top = model_path(damaged, "prior_1b_lyrics")
    top.write_bytes(top.read_bytes()[:100])
    settings = settings_for(monkeypatch, JUKEBOT_MODEL_DIR=str(damaged))
    (check,) = [c for c in check_models(settings, verifier_for(damaged)) if "1b_lyrics" in c.message[:10]]
    assert check.verdict is Verdict.WARN and "prior_1b_lyrics:" in check.message

    # The only model damaged: `download` alone would skip the file as present.
    only = write_tiny_model_dir(tmp_path / "only", models=("1b_lyrics",))
    top = model_path(only, "prior_1b_lyrics")
    top.write_bytes(top.read_bytes()[:100])
    settings = settings_for(monkeypatch, JUKEBOT_MODEL_DIR=str(only))
    (blocked,) = [c for c in check_models(settings, verifier_for(only)) if c.verdict is Verdict.FAIL]
    assert "`jukebot models verify` (it moves damaged files aside), then `jukebot models download" in (
        blocked.message
    )


@pytest.mark.usefixtures("clean_env")
def test_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    bot_only = settings_for(monkeypatch, JUKEBOT_GPUS="none")
    assert [c.verdict for c in check_devices(bot_only, torch_installed=False)] == [Verdict.OK]
    (no_torch,) = check_devices(settings_for(monkeypatch, JUKEBOT_GPUS="auto"), torch_installed=False)
    assert no_torch.verdict is Verdict.FAIL and no_torch.message.startswith("no torch installed")
    (cpu,) = check_devices(settings_for(monkeypatch, JUKEBOT_GPUS="cpu"), torch_installed=True)
    assert cpu.verdict is Verdict.WARN and cpu.message.startswith("no GPU")
    (absent,) = check_devices(settings_for(monkeypatch, JUKEBOT_GPUS="7"), torch_installed=True)
    assert absent.verdict is Verdict.FAIL and "GPU 7 is not visible" in absent.message
    if not torch.cuda.is_available():  # `all` wants every GPU and at least one: no CPU worker
        (required,) = check_devices(settings_for(monkeypatch, JUKEBOT_GPUS="all"), torch_installed=True)
        assert required.verdict is Verdict.FAIL and required.message.startswith(
            "JUKEBOT_GPUS=all, but torch "
        )
        assert required.message.endswith("set JUKEBOT_GPUS=auto to run one CPU worker instead")


def test_codecs() -> None:
    assert check_codecs().verdict is Verdict.OK


def test_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    """`jukebot curate` and /curate need Chromaprint, which doctor did not check."""
    assert check_fingerprints().verdict is Verdict.OK
    monkeypatch.setitem(sys.modules, "chromaprint", None)  # `import chromaprint` fails as if not installed
    missing = check_fingerprints()
    assert missing.verdict is Verdict.WARN  # the bot and workers run without it
    assert missing.message.startswith(
        "`jukebot curate` cannot work, and /curate orders samples by their stored Jukebox codes: "
        "Acoustic fingerprints need"
    )
    assert "apt-get install libchromaprint1" in missing.message


@pytest.mark.usefixtures("clean_env")
async def test_token_offline_and_online(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_token(load_settings(), online=True).verdict is Verdict.WARN  # no token: worker-only
    async with FakeDiscord(bot_name="jukebot-test") as fake:
        endpoints = {"JUKEBOT_DISCORD_API_BASE": fake.api_base, "JUKEBOT_DISCORD_GATEWAY": fake.gateway_url}
        good = settings_for(monkeypatch, DISCORD_TOKEN=fake.token, **endpoints)
        assert check_token(good, online=False).verdict is Verdict.OK
        assert not fake.requests  # offline means offline
        online: Check = await asyncio.to_thread(check_token, good, True)
        assert online.verdict is Verdict.OK and "jukebot-test" in online.message
        # The command's lines are its checks': discord.py's own log of the login stays out of them.
        env = endpoints | {"DISCORD_TOKEN": fake.token, "JUKEBOT_GPUS": "none"}
        result = await asyncio.to_thread(CliRunner().invoke, main, ["doctor", "--online"], env=env)
        assert "ok   discord   Discord accepts the token" in result.output
        assert "discord.client" not in result.output and "intent" not in result.output, result.output
        bad = settings_for(monkeypatch, DISCORD_TOKEN="wrong", **endpoints)
        refused: Check = await asyncio.to_thread(check_token, bad, True)
        assert refused.verdict is Verdict.FAIL and refused.message.startswith("Discord refused the token")


def test_exit_status_follows_blocking_checks(clean_env: Path, tiny_models: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{clean_env / 'db.sqlite3'}", "JUKEBOT_GPUS": "none"}
    blocked = CliRunner().invoke(
        main, ["doctor"], env=env | {"JUKEBOT_GPUS": "auto", "JUKEBOT_MODEL_DIR": "/nope"}
    )
    assert blocked.exit_code == 1 and "FAIL models" in blocked.output
    fine = CliRunner().invoke(
        main, ["doctor"], env=env | {"JUKEBOT_MODEL_DIR": str(tiny_models), "DISCORD_TOKEN": "x"}
    )
    assert fine.exit_code == 0, fine.output
    assert fine.output.splitlines()[0].startswith("warn database") and "nothing blocks" in fine.output
