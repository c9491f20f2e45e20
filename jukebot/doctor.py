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
from dataclasses import dataclass, field
from pathlib import Path

from jukebot.settings import Settings, misspelled_variables, token_problem
from sampler.model_files import (
    SIDECAR_FIX,
    VQVAE,
    CheckpointVerifier,
    FileStatus,
    ModelFileUnreadable,
    SidecarError,
    model_dir_problem,
    model_path,
    model_status,
    read_sidecar,
    sidecar_path,
    verify_file,
)

# Rough GPU memory (GiB) a worker needs for each model in fp16: its largest prior plus the VQ-VAE
# and working memory (README, "Models"). A GPU with less fails that model's jobs with out-of-memory.
GPU_MEMORY_GIB = {"1b_lyrics": 4.0, "5b": 10.0, "5b_lyrics": 11.5}
# The model `download` is advised for when none is complete: the smallest.
FIRST_MODEL = "1b_lyrics"
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
    """One line per model (the files a worker would serve, checked now when not verified before, and
    the verdicts recorded); FAIL when local workers would have no complete model to serve, with what
    would make one so."""
    problem = model_dir_problem(settings.model_dir)
    if problem is not None:  # unreadable, or a file: no model in it can be checked
        yield Check("models", Verdict.FAIL if settings.local_workers else Verdict.WARN, problem)
        return
    complete = []
    blocked: dict[str, _Blocked] = {}  # why each model that is not complete is not
    for model, status in model_status(settings.model_dir).items():
        blocked[model] = why = _Blocked(
            on_disk=not any(file.state in ("missing", "partial") for file in status.files),
            damaged=any(file.state == "failed" for file in status.files),
        )
        if any(file.state == "unreadable" for file in status.files):
            why.unreadable = True
            yield Check("model", Verdict.WARN, f"{model}: {status.summary}")
            continue
        try:
            faults = _sidecar_faults(settings, status.files, verifier)
        except ModelFileUnreadable as exc:
            why.unreadable = True
            yield Check("model", Verdict.WARN, f"{model}: {exc.problem}")
            continue
        if faults:  # the sidecar is what to fix (said once, against it): nothing to verify or fetch
            why.sidecars = [sidecar_path(model_path(settings.model_dir, owner)) for owner in faults]
            # a worker's verdict on a file whose sidecar is what is wrong (the VQ-VAE's: every file's) is
            # no damage to move aside
            explained = {file.name for file in status.files} if VQVAE in faults else set(faults)
            why.damaged = any(file.state == "failed" and file.name not in explained for file in status.files)
            said = "; ".join(f"{owner}: {problem}" for owner, problem in faults.items())
            to_fetch = [file.name for file in status.files if file.state in ("missing", "partial")]
            if to_fetch:
                said += f"; {len(to_fetch)} of {len(status.files)} files to fetch: "
                said += f"jukebot models download {model}"
            yield Check("model", Verdict.WARN, f"{model}: {said}")
            continue
        if not status.complete:
            yield Check("model", Verdict.WARN, f"{model}: {status.summary}")
            continue
        problems: list[str] = []
        unreadable: list[str] = []  # its permissions, not the file: no `models verify` to suggest
        for file in status.files:
            if file.state != "present" or verifier is None:
                continue
            # Recorded as `models verify` records it, so `models list` shows the verdict and the next run
            # does not read the file again; a damaged file is left in place: a check moves nothing.
            result = verify_file(file.name, settings.model_dir, verifier, move_bad_aside=False)
            if result.unreadable:
                unreadable += result.problems
            elif not result.ok:
                problems += [f"{file.name}: {problem}" for problem in result.problems]
        if unreadable:
            why.unreadable = True
            yield Check("model", Verdict.WARN, f"{model}: {unreadable[0]}")
            continue
        if problems:
            why.damaged = True
            shown = "; ".join(problems[:2]) + ("; …" if len(problems) > 2 else "")
            yield Check("model", Verdict.WARN, f"{model}: {shown}: `jukebot models verify {model}`")
            continue
        del blocked[model]
        complete.append(model)
        how = "verified" if verifier is not None else "present (no torch installed: not verified)"
        yield Check("model", Verdict.OK, f"{model}: {how} in {settings.model_dir}")
    if not complete and settings.local_workers:
        yield Check(
            "models",
            Verdict.FAIL,
            f"no complete model in {settings.model_dir}: {_what_makes_one_complete(blocked)} "
            "(or set JUKEBOT_MODEL_DIR to where they are)",
        )


@dataclass
class _Blocked:
    """Why a model cannot be served, as far as what fixes it goes."""

    on_disk: bool  # every file is there (none missing or partly downloaded)
    damaged: bool = False  # a file failed verification: `models verify` moves it aside for `download`
    unreadable: bool = False  # a file or folder this user cannot read: its permissions, not the file
    sidecars: list[Path] = field(default_factory=list)  # sidecars to fix: nothing to fetch for them


def _what_makes_one_complete(blocked: Mapping[str, _Blocked]) -> str:
    """The advice that makes a model servable: for the models whose every file is there (fixing what is
    wrong with them is enough), else for 1b_lyrics, the one to fetch. A sidecar is named, with the fix
    its line above gave (`download` would skip its checkpoint as present); a damaged file is moved aside
    by `verify` first (`download` skips it too)."""
    on_disk = {model: why for model, why in blocked.items() if why.on_disk}
    candidates = on_disk or {FIRST_MODEL: blocked[FIRST_MODEL]}
    sidecars = list(dict.fromkeys(sidecar for why in candidates.values() for sidecar in why.sidecars))
    parts = [f"{sidecar} is wrong (see above): {SIDECAR_FIX}" for sidecar in sidecars]
    if any(why.unreadable for why in candidates.values()):
        parts.append("make the files above readable by the user running jukebot (see above)")
    damaged = [model for model, why in candidates.items() if why.damaged]
    if damaged:
        parts.append(
            "`jukebot models verify` (it moves damaged files aside), "
            f"then `jukebot models download {damaged[0]}`"
        )
    elif not on_disk:
        parts.append(f"`jukebot models download {FIRST_MODEL}`")
    return "; ".join(parts)


def _sidecar_faults(
    settings: Settings, files: tuple[FileStatus, ...], verifier: CheckpointVerifier | None
) -> dict[str, str]:
    """Whose `.hparams.json` sidecar keeps a file of the model from being used, and why (the problem
    names the sidecar and says how to fix it): one that is not a JSON object (seen without torch), or
    (with torch) whose hparams describe no architecture. Also for a file a worker recorded as failing
    verification: a sidecar it could not build the model from. ModelFileUnreadable when a sidecar
    cannot be read."""
    states = {file.name: file for file in files}
    faults: dict[str, str] = {}
    for file in files:
        if file.state == "bad_sidecar":
            # recorded by `verify` or sampling (its hparams describe no architecture), else seen here
            owner = file.sidecar_of or _malformed_sidecar_owner(settings, file.name)
            own = states.get(owner)
            said = own.description if own is not None and own.state == "bad_sidecar" else file.description
            faults.setdefault(owner, said)
        elif file.state in ("present", "failed") and verifier is not None:
            fault = verifier.architecture_fault(file.name)
            if fault is not None:
                faults.setdefault(*fault)
    return faults


def _malformed_sidecar_owner(settings: Settings, name: str) -> str:
    """Whose sidecar, of `name`'s own and the VQ-VAE's, makes `name` a bad_sidecar file."""
    try:
        read_sidecar(model_path(settings.model_dir, name))
    except SidecarError:
        return name
    except ModelFileUnreadable:
        pass
    return VQVAE


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
        devices = devices_from_setting(settings.gpu_indices(), require_gpu=settings.gpus_required)
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


def check_fingerprints() -> Check:
    """Chromaprint, which `/curate` and `jukebot curate` order clips by (nothing else needs it)."""
    import numpy as np

    from sampler.audio import SAMPLE_RATE
    from sampler.curation import FingerprintUnavailable, fingerprint

    seconds = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    try:
        fingerprint(0.5 * np.sin(2 * np.pi * 440.0 * seconds))
    except FingerprintUnavailable as exc:
        return Check(
            "curate",
            Verdict.WARN,
            f"`jukebot curate` cannot work, and /curate orders samples by their stored Jukebox codes: {exc}",
        )
    return Check("curate", Verdict.OK, "Chromaprint fingerprints clips for /curate and `jukebot curate`")


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
    problem = token_problem(token)
    if problem is not None:
        return Check("discord", Verdict.FAIL, problem)
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
    """A variable that is no setting but close to one is ignored (`misspelled_variables`): one line for
    each."""
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
    yield check_fingerprints()
    yield check_token(settings, online)
