"""`jukebot models …`: list, download, import and verify the Jukebox model files."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from jukebot.commands import TORCH_USERS, require_torch, settings_or_exit
from sampler.jukebox.registry import CHECKPOINTS, MODELS
from sampler.model_files import (
    NOT_CHECKED_FOR_VQVAE,
    CheckpointVerifier,
    DownloadOptions,
    ModelFilesError,
    download,
    file_status,
    model_dir_problem,
    model_status,
    resolve_names,
    verify_file,
)
from sampler.units import format_bytes


def default_verifier() -> CheckpointVerifier:
    """Checks every key and shape against the architecture the file is for (published, or its sidecar's)."""
    require_torch(TORCH_USERS)
    from sampler.loading import expected_shapes_for

    model_dir = settings_or_exit().model_dir
    return CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))


@dataclass
class ModelsCliContext:
    """What the `models` commands take from their caller (tests pass their own through `obj=`)."""

    make_verifier: Callable[[], CheckpointVerifier] = default_verifier
    backoff: float = 2.0


def _context() -> ModelsCliContext:
    found = click.get_current_context().find_object(ModelsCliContext)
    return found if found is not None else ModelsCliContext()


def _size(n: int | None) -> str:
    return "-" if n is None else format_bytes(n)


def _names_or_exit(name: str) -> list[str]:
    try:
        return resolve_names(name)
    except ModelFilesError as exc:
        raise click.ClickException(str(exc)) from None


def _readable_model_dir(model_dir: Path) -> Path:
    """The model directory, or the sentence that says why it cannot be read (a file, no permission)."""
    problem = model_dir_problem(model_dir)
    if problem is not None:
        raise click.ClickException(problem)
    return model_dir


class Seconds(click.ParamType):
    """A positive, finite number of seconds (a timeout): NaN and infinity are refused, as `worker` does."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"must be a positive number of seconds, got {value}", param, ctx)
        return seconds


@click.group()
def models() -> None:
    """List, download, import and verify the Jukebox model files."""


@models.command("list")
def list_models() -> None:
    """Show each published model, its files and whether they are downloaded and verified."""
    settings = settings_or_exit()
    model_dir = _readable_model_dir(settings.model_dir)
    click.echo(f"Model directory: {model_dir}")
    click.echo(f"Mirrors: {', '.join(settings.model_mirrors)}")
    for name, status in model_status(model_dir).items():
        kind = "lyrics" if MODELS[name].has_lyrics else "no lyrics"
        click.echo(f"\n{name} ({kind}): {status.summary}")
        for file in status.files:
            click.echo(
                f"  {file.name:<18} {file.relative_path:<33} {_size(file.size):>10}  {file.description}"
            )


@models.command("download")
@click.argument("name")
@click.option(
    "--timeout",
    type=Seconds(),
    default=60.0,
    show_default=True,
    help="Seconds without data, mid-download, before an attempt is abandoned (and retried).",
)
@click.option(
    "--connect-timeout",
    type=Seconds(),
    default=10.0,
    show_default=True,
    help="Seconds to connect to a mirror and get an answer; a mirror that fails this is skipped.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Further rounds over the mirrors after a download broke off.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def download_command(
    name: str, timeout: float, connect_timeout: float, retries: int, no_progress: bool
) -> None:
    """Download what NAME still lacks: a model (5b, 5b_lyrics, 1b_lyrics), one file (e.g. vqvae) or all.

    Interrupted downloads resume where they stopped. Mirrors come from JUKEBOT_MODEL_MIRRORS, tried in
    order; a mirror that cannot be reached is skipped for the rest of the run.
    """
    names = _names_or_exit(name)
    settings = settings_or_exit()
    context = _context()
    verifier = context.make_verifier()
    options = DownloadOptions(
        connect_timeout=connect_timeout,
        read_timeout=timeout,
        retries=retries,
        backoff=context.backoff,
        progress=False if no_progress else None,
        notify=lambda message: click.echo(message, err=True),
    )
    try:
        report = download(name, settings.model_dir, settings.model_mirrors, verifier, options)
    except ModelFilesError as exc:
        raise click.ClickException(str(exc)) from None
    for result in report.results:
        status = file_status(result.name, settings.model_dir)
        if result.downloaded:
            click.echo(f"{result.name}: downloaded ({result.path})")
        elif status.state == "verified":
            click.echo(f"{result.name}: already present ({result.path})")
        elif status.state in ("unreadable", "bad_sidecar"):  # downloading again fixes neither
            click.echo(f"{result.name}: already present, but {status.description}")
        else:  # a damaged file is only found by verify, which moves it aside for the next download
            click.echo(
                f"{result.name}: already present ({result.path}), not verified: "
                f"`jukebot models verify {result.name}` checks it"
            )
    for file_name, why in report.failures.items():
        click.echo(f"FAILED {file_name}: {why}", err=True)
    if report.failures:
        raise click.ClickException(
            f"{len(report.failures)} of {len(names)} files could not be downloaded (see above)."
        )


@models.command("verify")
@click.argument("name", required=False)
def verify_command(name: str | None) -> None:
    """Load each downloaded file and check its keys and shapes (or checksum); exit 1 on any problem.

    A bad file is moved aside to <file>.corrupt, so the next download fetches it afresh; one that
    cannot be read (its permissions) is left as it is.
    """
    names = _names_or_exit("all" if name is None else name)  # (an empty NAME is no model: refused)
    settings = settings_or_exit()
    _readable_model_dir(settings.model_dir)
    verifier = _context().make_verifier()
    problems = 0
    checked = 0
    sidecars_said: set[str] = set()  # whose wrong sidecar was reported: once, against that sidecar
    for file_name in names:
        status = file_status(file_name, settings.model_dir)
        if status.state in ("missing", "partial"):
            if name is not None:  # asked about this model: a missing file means it cannot run
                problems += 1
                click.echo(f"MISSING {file_name}: {status.path}; run `jukebot models download {name}`.")
            continue
        checked += 1
        if status.state == "unreadable":  # nothing to load: it may well be fine
            problems += 1
            click.echo(f"UNREADABLE {file_name}: {status.description}.")
            continue
        result = verify_file(file_name, settings.model_dir, verifier)
        if result.sidecar_of is not None and result.sidecar_of in sidecars_said:
            # the VQ-VAE's sidecar, said above: this file was not checked, and is no second problem
            click.echo(f"NOT CHECKED {file_name}: {result.path}: {NOT_CHECKED_FOR_VQVAE}; left in place.")
            continue
        if result.sidecar_of is not None:
            sidecars_said.add(result.sidecar_of)
        problems += not result.ok
        click.echo(result.message)
    if checked == 0 and problems == 0:
        click.echo(f"No model files in {settings.model_dir} yet: run `jukebot models download 1b_lyrics`.")
    if problems:
        raise click.ClickException(f"{problems} problem(s) found in {settings.model_dir}.")
    if checked:
        click.echo(f"{checked} file(s) OK.")


def _import_path(given: str) -> Path:
    """PATH as given (`import_checkpoints` names what is wrong with it), but not empty: as a Path, ""
    reads as ".", and an unset shell variable would import whatever the working directory holds."""
    if not given:
        raise click.BadParameter("it is empty; give the folder or file to import (`.` for this folder).")
    return Path(given)


@models.command("import")
@click.argument("path", type=click.Path(), callback=lambda _ctx, _param, given: _import_path(given))
@click.option(
    "--model",
    type=click.Choice(list(MODELS)),
    help="Which model a Hugging Face copy's top prior is (found from its shapes when not given).",
)
@click.option(
    "--name",
    type=click.Choice(list(CHECKPOINTS)),
    help="Which checkpoint a single .pth.tar file is (found from its path or shapes when not given).",
)
@click.option("--replace", is_flag=True, help="Overwrite files already in the model directory.")
def import_command(path: Path, model: str | None, name: str | None, replace: bool) -> None:
    """Install checkpoints you already have: a Hugging Face copy (openai/jukebox-1b-lyrics or
    openai/jukebox-5b-lyrics: its folder, sharded or not) or original .pth.tar files (one, or a folder).

    Each part is checked against its architecture, written in the original format into the model
    directory and verified; nothing is written when any part does not fit.
    """
    require_torch(TORCH_USERS)
    from sampler.model_import import import_checkpoints

    settings = settings_or_exit()
    try:
        results = import_checkpoints(
            path,
            settings.model_dir,
            model=model,
            name=name,
            replace=replace,
            notify=lambda message: click.echo(message, err=True),
        )
    except ModelFilesError as exc:
        raise click.ClickException(str(exc)) from None
    for result in results:
        if result.outcome == "imported":
            click.echo(f"{result.name}: imported and verified ({result.path})")
    ready = [name for name, status in model_status(settings.model_dir).items() if status.complete]
    click.echo(f"Models ready in {settings.model_dir}: {', '.join(ready) or 'none yet'}.")
