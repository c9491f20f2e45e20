"""`jukebot doctor`'s checks: each says ok, or what to fix, in one line.

Plain functions over the settings, so that tests run them without a command line. A check
that blocks (`Verdict.FAIL`) makes the command exit non-zero; a warning does not.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from jukebot.settings import Settings, misspelled_variables
from sampler.model_files import (
    CheckpointVerifier,
    ModelFileUnreadable,
    file_problems,
    model_dir_problem,
    model_status,
)

# Rough GPU memory (GiB) a worker needs for each model in fp16: its largest prior plus the VQ-VAE
# and working memory (README, "Models"). A GPU with less fails that model's jobs with out-of-memory.
GPU_MEMORY_GIB = {"1b_lyrics": 4.0, "5b": 10.0, "5b_lyrics": 11.5}
# The codecs results are encoded with (ogg → Opus, mp3 → LAME) and primes decoded with.
NEEDED_CODECS = {"libopus": "Ogg/Opus results", "libmp3lame": "MP3 results", "mp3": "MP3 primes"}


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    message: str

    def line(self) -> str:
        return f"{self.verdict.value:<4} {self.name:<9} {self.message}"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def check_database(settings: Settings) -> Check:
    """Reachable and at the latest schema? Creates nothing (a missing SQLite file is a warning)."""
    from jukebot.commands import database_problem, sqlite_path_problem
    from storage.migrate import check_known_revision, current_revision_async, head_revision

    shown = settings.database_url_for_display
    problem = sqlite_path_problem(settings)
    if problem is not None:
        return Check("database", Verdict.FAIL, problem)
    if settings.sqlite_path is not None and not settings.sqlite_path.exists():
        return Check(
            "database",
            Verdict.WARN,
            f"{shown} does not exist yet, so is empty: `jukebot db upgrade` creates it "
            "(or `jukebot run`/`worker`, which migrate first)",
        )
    try:
        current = asyncio.run(current_revision_async(settings.database_url))
        check_known_revision(current)
    except Exception as exc:
        message = database_problem(exc, settings)
        if message is None:
            raise
        return Check("database", Verdict.FAIL, message)
    head = head_revision()
    if current == head:
        return Check("database", Verdict.OK, f"{shown} is reachable and at the latest schema ({head})")
    state = "empty" if current is None else f"at schema {current}, not {head}"
    return Check(
        "database",
        Verdict.WARN,
        f"{shown} is {state}: `jukebot db upgrade` (or `jukebot run`/`worker`, which migrate first)",
    )


def check_models(settings: Settings, verifier: CheckpointVerifier | None) -> Iterator[Check]:
    """One line per model (the files a worker would serve, checked now when not verified before);
    FAIL when local workers would have no complete model to serve."""
    problem = model_dir_problem(settings.model_dir)
    if problem is not None:  # unreadable, or a file: no model in it can be checked
        yield Check("models", Verdict.FAIL if settings.local_workers else Verdict.WARN, problem)
        return
    complete = []
    damaged = False
    for model, status in model_status(settings.model_dir).items():
        if not status.complete:
            yield Check("model", Verdict.WARN, f"{model}: {status.summary}")
            continue
        problems: list[str] = []
        unreadable: list[str] = []  # its permissions, not the file: no `models verify` to suggest
        for file in status.files:
            if file.state != "present" or verifier is None:
                continue
            try:
                problems += [
                    f"{file.name}: {problem}" for problem in file_problems(file.name, file.path, verifier)
                ]
            except ModelFileUnreadable as exc:
                unreadable.append(exc.problem)
        if unreadable:
            yield Check("model", Verdict.WARN, f"{model}: {unreadable[0]}")
            continue
        if problems:
            damaged = True
            shown = "; ".join(problems[:2]) + ("; …" if len(problems) > 2 else "")
            yield Check("model", Verdict.WARN, f"{model}: {shown}: `jukebot models verify {model}`")
            continue
        complete.append(model)
        how = "verified" if verifier is not None else "present (no torch installed: not verified)"
        yield Check("model", Verdict.OK, f"{model}: {how} in {settings.model_dir}")
    if not complete and settings.local_workers:
        # A damaged file is skipped by `download` as present: `verify` moves it aside first.
        how = (
            "`jukebot models verify` (it moves damaged files aside), then `jukebot models download 1b_lyrics`"
            if damaged
            else "`jukebot models download 1b_lyrics`"
        )
        yield Check(
            "models",
            Verdict.FAIL,
            f"no complete model in {settings.model_dir}: {how} (or set JUKEBOT_MODEL_DIR to where they are)",
        )


def check_devices(settings: Settings, torch_installed: bool) -> Iterator[Check]:
    """The GPUs the workers would use, each against the models' memory needs."""
    if not settings.local_workers:
        yield Check(
            "devices", Verdict.OK, "no local workers (JUKEBOT_GPUS=none): this host runs the bot only"
        )
        return
    if not torch_installed:
        yield Check(
            "devices",
            Verdict.FAIL,
            "no torch installed: install the worker extra to run workers here, "
            "or set JUKEBOT_GPUS=none for a bot-only host",
        )
        return
    import torch

    from sampler.worker.contract import DeviceError
    from sampler.worker.pool import devices_from_setting

    try:
        devices = devices_from_setting(settings.gpu_indices())
    except DeviceError as exc:
        yield Check("devices", Verdict.FAIL, str(exc))
        return
    for device in devices:
        if not device.is_cuda:
            yield Check(
                "devices",
                Verdict.WARN,
                "no GPU: one CPU worker (fp32, very slow: hours per song for 1b_lyrics, 5b needs ~20 GB RAM)",
            )
            continue
        total = torch.cuda.get_device_properties(device.index).total_memory / 2**30
        fits = [model for model, need in GPU_MEMORY_GIB.items() if need <= total]
        name = torch.cuda.get_device_name(device.index)
        if fits:
            yield Check("devices", Verdict.OK, f"{device} {name}, {total:.1f} GiB: fits {', '.join(fits)}")
        else:
            yield Check(
                "devices",
                Verdict.FAIL,
                f"{device} {name} has {total:.1f} GiB, less than any model needs "
                f"(1b_lyrics ~{GPU_MEMORY_GIB['1b_lyrics']:g} GiB): use a larger GPU or JUKEBOT_GPUS",
            )


def check_codecs() -> Check:
    import av

    missing = [f"{codec} ({use})" for codec, use in NEEDED_CODECS.items() if codec not in av.codecs_available]
    if missing:
        return Check(
            "codecs",
            Verdict.FAIL,
            f"PyAV's FFmpeg lacks {', '.join(missing)}: install the PyAV wheel from PyPI (it bundles them)",
        )
    return Check("codecs", Verdict.OK, f"PyAV {av.__version__} encodes Opus and MP3 and decodes MP3")


def check_token(settings: Settings, online: bool) -> Check:
    """Is a token set; with `online`, does Discord accept it (one login, no gateway connection)?"""
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token and not settings.local_workers:  # neither `jukebot run` nor `jukebot worker` can start
        return Check(
            "discord",
            Verdict.FAIL,
            "no DISCORD_TOKEN on a host with no workers (JUKEBOT_GPUS=none): `jukebot run` needs the "
            "bot's token; or set JUKEBOT_GPUS for a worker-only machine",
        )
    if not token:
        return Check(
            "discord",
            Verdict.WARN,
            "no DISCORD_TOKEN: fine for a worker-only machine; `jukebot run` needs it",
        )
    if not online:
        return Check("discord", Verdict.OK, "token set (`jukebot doctor --online` checks it with Discord)")
    from jukebot.commands.serve import discord_problem

    try:
        user = asyncio.run(_login(settings, token))
    except Exception as exc:
        message = discord_problem(exc, settings)
        if message is None:
            raise
        return Check("discord", Verdict.FAIL, message)
    return Check("discord", Verdict.OK, f"Discord accepts the token: the bot is {user}")


async def _login(settings: Settings, token: str) -> str:
    import discord

    from bot.bot import discord_endpoints

    # discord.py logs its login (and warns of the intents a check has no use for) between the
    # check lines: its errors still show.
    discord_log = logging.getLogger("discord")
    level = discord_log.level
    discord_log.setLevel(logging.ERROR)
    try:
        client = discord.Client(intents=discord.Intents.none())
        with discord_endpoints(settings):
            try:
                await client.login(token)
                return str(client.user)
            finally:
                await client.close()
    finally:
        discord_log.setLevel(level)


def check_variables(environ: Mapping[str, str] | None = None) -> Iterator[Check]:
    """A `JUKEBOT_` variable that is no setting but close to one is ignored: one line for each."""
    for name, meant in misspelled_variables(environ):
        yield Check(
            "settings",
            Verdict.WARN,
            f"{name} is not a jukebot setting, so it is ignored: did you mean {meant}?",
        )


def run_checks(
    settings: Settings,
    *,
    online: bool = False,
    make_verifier: Callable[[], CheckpointVerifier] | None = None,
) -> Iterator[Check]:
    torch_installed = has_torch()
    yield from check_variables()
    yield check_database(settings)
    verifier = (make_verifier() if make_verifier else CheckpointVerifier()) if torch_installed else None
    yield from check_models(settings, verifier)
    yield from check_devices(settings, torch_installed)
    yield check_codecs()
    yield check_token(settings, online)
