"""What can be checked of `docker/` without a Docker engine: the compose file's shape, where it
reads settings from, and that each image runs as a non-root user, has a health check, and that its
entry and health commands are real `jukebot` subcommands."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from jukebot.cli import main
from jukebot.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
# image -> (the subcommand it runs, how it installs jukebot: the bot image without torch)
IMAGES = {
    "Dockerfile.bot": ("run", "pip install ."),
    "Dockerfile.worker": ("worker", 'pip install ".[worker]"'),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text = (DOCKER / "compose.yaml").read_text()
    # Nothing is interpolated from the environment: Compose looks for a .env next to the compose
    # file, not where the README puts it, so settings come in through `env_file` instead.
    assert "${" not in text
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> mount path, for named-volume mounts in short syntax."""
    return dict(str(entry).split(":", 1) for entry in service.get("volumes", []))


def _command(path: list[str]) -> click.Command | None:
    """The `jukebot` (sub)command that `path` (e.g. ["db", "check"]) names, or None."""
    command: click.Command = main
    for name in path:
        if not isinstance(command, click.Group) or name not in command.commands:
            return None
        command = command.commands[name]
    return command


def test_compose_has_postgres_bot_gpu_worker_and_a_model_tool(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "bot", "worker", "models"}
    assert set(compose["volumes"]) == {"database", "models"}
    assert _mounts(services["postgres"]) == {"database": "/var/lib/postgresql/data"}
    assert "healthcheck" in services["postgres"]
    assert _mounts(services["worker"]) == {"models": "/models"}
    assert services["worker"]["environment"]["JUKEBOT_MODEL_DIR"] == "/models"

    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)
    assert services["bot"]["environment"]["JUKEBOT_GPUS"] == "none"
    # no CPU worker on a GPU host whose CUDA does not work (a driver too old): it held jobs for hours
    assert services["worker"]["environment"]["JUKEBOT_GPUS"] == "all"
    assert "deploy" not in services["bot"]

    for name in ("bot", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://jukebot:")
        assert service["environment"]["DATABASE_URL"].endswith("@postgres:5432/jukebot")
        dockerfile = Path(service["build"]["dockerfile"])
        assert (REPO / dockerfile).is_file(), f"{name} builds from a missing {dockerfile}"
    assert services["worker"]["environment"]["DISCORD_TOKEN"] == ""  # a worker never needs it


def container_settings(
    compose: dict[str, Any], service: str, dotenv: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The settings `service` reads in its container: `.env`'s variables (`dotenv`), with the service's
    `environment` over them, as Compose puts them, and nothing else of this process's."""

    container = dotenv | compose["services"][service]["environment"]
    for name in list(os.environ):
        if name.startswith("JUKEBOT_") or name in ("DISCORD_TOKEN", "DATABASE_URL"):
            monkeypatch.delenv(name)
    for name, value in container.items():
        monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("service", ["worker", "models"])
def test_no_token_reaches_the_worker_image_whichever_name_env_gives_it(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose puts `.env`'s variables in the container, then the service's `environment` over them:
    blanking DISCORD_TOKEN alone let a `.env` JUKEBOT_DISCORD_TOKEN through, and that name wins."""
    dotenv = {"DISCORD_TOKEN": "the.bot.token", "JUKEBOT_DISCORD_TOKEN": "the.bot.token"}
    settings = container_settings(compose, service, dotenv, monkeypatch)
    assert settings.discord_token is None or not settings.discord_token.get_secret_value().strip()


@pytest.mark.parametrize("service", ["bot", "worker"])
def test_the_compose_database_is_used_whichever_name_env_gives_another(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose set DATABASE_URL over `.env`'s, but a `.env` JUKEBOT_DATABASE_URL (a local set-up's
    SQLite file) wins over that name: the bot and the worker each used a file of its own."""
    dotenv = {"JUKEBOT_DATABASE_URL": "sqlite:////tmp/local.sqlite3", "DATABASE_URL": "sqlite:///x.db"}
    settings = container_settings(compose, service, dotenv, monkeypatch)
    assert settings.database_url == compose["x-database-url"].replace(
        "postgresql://", "postgresql+asyncpg://"
    )


def test_every_long_running_service_rotates_its_log_and_jukebots_run_under_an_init(
    compose: dict[str, Any],
) -> None:
    """Docker's default json-file log grows without end; jukebot as PID 1 would not reap orphans."""
    services = compose["services"]
    for name in ("postgres", "bot", "worker"):
        logging = services[name]["logging"]
        assert logging["driver"] == "json-file" and logging["options"]["max-size"], name
        assert int(logging["options"]["max-file"]) >= 2, name
    assert services["bot"]["init"] is True and services["worker"]["init"] is True


def test_every_jukebot_service_reads_the_repository_roots_env(compose: dict[str, Any]) -> None:
    for name in ("bot", "worker", "models"):
        env_file = compose["services"][name]["env_file"]
        # Relative paths in a compose file resolve against the compose file's folder.
        assert (DOCKER / env_file).resolve() == REPO / ".env", name
    # What the README tells a user to copy there, with the token the bot needs.
    assert re.search(r"^DISCORD_TOKEN=", (REPO / ".env.example").read_text(), flags=re.MULTILINE)


def test_models_can_be_downloaded_without_reserving_a_gpu(compose: dict[str, Any]) -> None:
    models = compose["services"]["models"]
    assert "deploy" not in models and "depends_on" not in models
    assert models["profiles"], "without a profile `up` would start it"
    assert models["image"] == compose["services"]["worker"]["image"]  # torch is there to verify
    assert _mounts(models) == {"models": "/models"}
    assert models["environment"]["JUKEBOT_MODEL_DIR"] == "/models"
    for arguments in (["download", "5b_lyrics"], models["command"]):
        assert _command([*models["entrypoint"][1:], arguments[0]]) is not None, arguments
    assert models["entrypoint"][0] == "jukebot"


def _instruction(dockerfile: str, name: str) -> list[str]:
    """The JSON (exec-form) argument list of the last `name` instruction."""
    found = re.findall(rf"^{name}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", dockerfile, flags=re.MULTILINE)
    assert found, f"no exec-form {name} (a shell-form one would not pass SIGTERM to jukebot)"
    arguments = json.loads(found[-1])
    assert isinstance(arguments, list) and all(isinstance(part, str) for part in arguments)
    return arguments


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_entry_and_health_commands_are_jukebot_subcommands(image: str) -> None:
    subcommand, install = IMAGES[image]
    text = (DOCKER / image).read_text()
    assert re.search(r"^FROM \S+", text, flags=re.MULTILINE)
    assert re.search(rf"^RUN {re.escape(install)}$", text, flags=re.MULTILINE)
    command = _instruction(text, "ENTRYPOINT") + _instruction(text, "CMD")
    assert command[:2] == ["jukebot", subcommand]
    assert _command(command[1:2]) is not None, f"{image} runs `jukebot {subcommand}`, which does not exist"
    health = _instruction(text, "HEALTHCHECK")
    path = [part for part in health[1:] if not part.startswith("-")]
    flags = [part for part in health[1:] if part.startswith("-")]
    health_command = _command(path)
    assert health[0] == "jukebot" and health_command is not None, health
    options = {name for param in health_command.params for name in getattr(param, "opts", [])}
    assert set(flags) <= options, health


def test_the_worker_image_is_healthy_while_its_worker_is_alive() -> None:
    """Not only while the database answers: a hung worker, or one cut off from the database, is not."""
    health = _instruction((DOCKER / "Dockerfile.worker").read_text(), "HEALTHCHECK")
    assert health == ["jukebot", "workers", "--here"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_run_as_a_non_root_user(image: str) -> None:
    text = (DOCKER / image).read_text()
    users = re.findall(r"^USER\s+(\S+)\s*$", text, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert re.search(rf"useradd .*\b{re.escape(users[-1])}\b", text), "the user is never created"
    # The last USER comes before the commands the container runs.
    assert text.index(f"USER {users[-1]}") < text.index("ENTRYPOINT")


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_copy_what_the_build_needs_and_dockerignore_keeps_it(image: str) -> None:
    text = (DOCKER / image).read_text()
    copied = {
        part for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.MULTILINE) for part in line.split()[:-1]
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", project["readme"], *project["license-files"]} <= copied
    ignored = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for source in copied:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern.strip("/")) for pattern in ignored), source
    # Secrets and local state stay out of the build context.
    assert {".env", ".venv", ".git"} <= set(ignored)


def test_the_worker_image_has_a_c_compiler_for_the_compiled_decode() -> None:
    """The PyTorch runtime image has none: Triton's launchers and inductor failed to build, and the
    worker decoded eagerly (slower) with one log line saying so."""
    dockerfile = (REPO / "docker" / "Dockerfile.worker").read_text()
    installs = [line for line in dockerfile.splitlines() if "apt-get install" in line]
    assert any(" gcc " in f"{line} " and "libc6-dev" in line for line in installs), installs
