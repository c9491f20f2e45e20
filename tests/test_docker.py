"""What can be checked of `docker/` without a Docker engine: the compose file's shape and that
each image's entry command is a real `jukebot` subcommand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jukebot.cli import main

DOCKER = Path(__file__).resolve().parents[1] / "docker"
NOT_WRITTEN_YET = {"run", "worker"}  # CLI commands another issue adds


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> mount path, for named-volume mounts in short syntax."""
    return dict(str(entry).split(":", 1) for entry in service.get("volumes", []))


def test_compose_has_postgres_bot_and_gpu_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "bot", "worker"}
    assert set(compose["volumes"]) == {"database", "models"}
    assert _mounts(services["postgres"]) == {"database": "/var/lib/postgresql/data"}
    assert _mounts(services["worker"]) == {"models": "/models"}
    assert services["worker"]["environment"]["JUKEBOT_MODEL_DIR"] == "/models"

    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)
    assert services["bot"]["environment"]["JUKEBOT_GPUS"] == "none"
    assert "deploy" not in services["bot"]

    for name in ("bot", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://jukebot:")
        assert service["environment"]["DATABASE_URL"].endswith("@postgres:5432/jukebot")
        dockerfile = Path(service["build"]["dockerfile"])
        assert (DOCKER.parent / dockerfile).is_file(), f"{name} builds from a missing {dockerfile}"
    assert "DISCORD_TOKEN" not in services["worker"]["environment"]  # a worker never needs it


def _instruction(dockerfile: str, name: str) -> list[str]:
    """The JSON (exec-form) argument list of the last `name` instruction."""
    found = re.findall(rf"^{name}\s+(\[.*\])\s*$", dockerfile, flags=re.MULTILINE)
    assert found, f"no exec-form {name} (a shell-form one would not pass SIGTERM to jukebot)"
    arguments = json.loads(found[-1])
    assert isinstance(arguments, list) and all(isinstance(part, str) for part in arguments)
    return arguments


@pytest.mark.parametrize(
    ("image", "subcommand"), [("Dockerfile.worker", "worker"), ("Dockerfile.bot", "run")]
)
def test_image_entry_command_is_a_jukebot_subcommand(image: str, subcommand: str) -> None:
    text = (DOCKER / image).read_text()
    assert re.search(r"^FROM \S+", text, flags=re.MULTILINE)
    assert re.search(r"^RUN pip install \.$", text, flags=re.MULTILINE)
    command = _instruction(text, "ENTRYPOINT") + _instruction(text, "CMD")
    assert command[:2] == ["jukebot", subcommand]
    if subcommand not in main.commands:
        if subcommand in NOT_WRITTEN_YET:
            pytest.skip(f"`jukebot {subcommand}` does not exist yet in jukebot.cli.main (added later)")
        pytest.fail(f"{image} runs `jukebot {subcommand}`, which jukebot.cli.main does not have")
