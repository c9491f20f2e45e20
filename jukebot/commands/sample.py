"""`jukebot sample`: offline sampling with the flags of the original `sample.py`.

    jukebot sample --model=5b_lyrics --name=sample_5b --levels=3 --sample_length_in_seconds=20 \
        --total_sample_length_in_seconds=180 --n_samples=6 --hop_fraction=0.5,0.5,0.125

A style sweep repeats `--artist`/`--genre` (one per sample, or one for all), e.g.
`--artist="ella fitzgerald" --genre=jazz --artist=metallica --genre=metal`: sample I gets style I.

writes `NAME/level_L/item_I.wav` (and `.ogg`) per sampled level, `NAME/styles.json` (each item's
style) and `NAME/level_L/data.pth.tar` (`{"zs": [codes of level 0, 1, 2], "labels": {artist, genre,
lyrics, total_length, styles, …}}`) that `--mode=continue|upsample --codes_file=…` reads back: label
flags not given come from the file, as the original's saved labels did. `--audio_file=a.wav,b.wav`
primes sample i with file i (cycled).
After every window the state goes to `NAME/checkpoint.pt`: the same command run again resumes (on the
same inputs: a `--codes_file` or `--audio_file` that now holds other codes or audio is another run).
It and `NAME/checkpoint.json` (which run it is) are replaced whole, never written in place, so a kill,
power loss or full disk leaves the last saved window; a saved state damaged anyway is moved to
`NAME/earlier-N/` and the run starts over. One run at a time writes into NAME: it holds `NAME/.lock`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

import click
from click.core import ParameterSource

from jukebot.commands import (
    TORCH_USERS,
    file_wording,
    logging_without_settings,
    model_dir_refusal,
    require_torch,
    settings_or_exit,
)
from sampler.batch_sizes import DEFAULT_MAX_BATCH_SIZE, format_batch_sizes, parse_batch_sizes
from sampler.files import not_a_file, on_read_only_mount
from sampler.jukebox.registry import (
    DEFAULT_MODEL,
    MAX_SONG_SECONDS,
    MIN_TEMPERATURE,
    MODELS,
    SAMPLE_RATE,
    SEED_LIMIT,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

MODES = ("ancestral", "primed", "continue", "upsample")


def _floats(text: str, name: str, example: str, count: int = 3) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise click.BadParameter(
            f"use {count} comma-separated numbers, e.g. {example}", param_hint=name
        ) from None
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise click.BadParameter(f"give 1 or {count} values (levels 0..{count - 1})", param_hint=name)
    return values


@click.command()
@click.option("--model", type=click.Choice(list(MODELS)), default=DEFAULT_MODEL, show_default=True)
@click.option("--name", default="sample", show_default=True, help="Output directory.")
@click.option(
    "--levels",
    type=click.IntRange(1, 3),
    default=3,
    show_default=True,
    help="Sample the top N levels (1: preview).",
)
@click.option("--sample_length_in_seconds", type=float, default=20.0, show_default=True)
@click.option(
    "--total_sample_length_in_seconds",
    type=float,
    default=None,
    help="Song length for the labels (default: the sample length, at least the model's shortest song).",
)
@click.option("--sr", type=int, default=SAMPLE_RATE, show_default=True, help=f"Must be {SAMPLE_RATE}.")
@click.option("--n_samples", type=click.IntRange(1, 64), default=None, help="Default: one per style, or 1.")
@click.option("--hop_fraction", default="0.5,0.5,0.125", show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="ancestral", show_default=True)
@click.option(
    "--codes_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A data.pth.tar to continue or upsample.",
)
@click.option("--audio_file", default=None, help="Prompt audio; a,b,… primes sample i with file i (cycled).")
@click.option(
    "--prompt_length_in_seconds", type=float, default=None, help="Seconds of the prompt to continue (primed)."
)
@click.option(
    "--artist", multiple=True, default=("unknown",), show_default=True, help="Repeat: one per sample."
)
@click.option(
    "--genre", multiple=True, default=("unknown",), show_default=True, help="Repeat: one per sample."
)
@click.option("--lyrics", default="", help="Lyrics text (or --lyrics_file; default: none).")
@click.option("--lyrics_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--seed", type=click.IntRange(0, SEED_LIMIT - 1), default=0, show_default=True)
@click.option(
    "--temperature", default="0.99", show_default=True, help="One value, or three for levels 0,1,2."
)
@click.option("--top_k", type=click.IntRange(0), default=0, show_default=True, help="0: no top-k cut.")
@click.option(
    "--top_p", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="0: no nucleus cut."
)
@click.option(
    "--max_batch_size",
    default=format_batch_sizes(DEFAULT_MAX_BATCH_SIZE),
    show_default=True,
    help="Per level 0,1,2.",
)
@click.option("--device", default=None, help="cpu or cuda:N (default: cuda:0 when present).")
@click.option("--fp16/--fp32", default=None, help="Half-precision transformers (default: on for CUDA).")
@click.option(
    "--model_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the models are (default: JUKEBOT_MODEL_DIR, else the user cache folder).",
)
@click.option("--no-progress", "no_progress", is_flag=True, help="No progress bar.")
def sample(**options: Any) -> None:
    """Sample music offline, as the original sample.py does (resumable)."""
    require_torch(TORCH_USERS)
    context = click.get_current_context()
    given = {name for name in options if context.get_parameter_source(name) is not ParameterSource.DEFAULT}
    run_sample(options, given)


# Flags a codes file's saved labels stand in for when they are not given again.
LABEL_FLAGS = ("artist", "genre", "lyrics", "total_sample_length_in_seconds")
EXIT_INTERRUPTED = 130  # as a shell reports a run ended by Ctrl-C
# Flags that only some modes read: given with another mode they would be silently ignored (a run
# that forgot --mode=primed would sample hours of unprimed music), so they are refused.
MODE_FLAGS: dict[str, tuple[str, ...]] = {
    "audio_file": ("primed",),
    "prompt_length_in_seconds": ("primed",),
    "codes_file": ("continue", "upsample"),
}


def _refuse_unused_flags(mode: str, given: set[str] | frozenset[str]) -> None:
    """Stop at a flag the user gave that `mode` does not read."""
    for name, modes in MODE_FLAGS.items():
        if name in given and mode not in modes:
            uses = " or ".join(f"--mode={used}" for used in modes)
            raise click.UsageError(
                f"--{name} is used only with {uses}, not --mode={mode}; add {uses}, or leave it out"
            )


def _unused_files_note(files: list[Path], n: int) -> None:
    """Say which prompt files prime no sample (files past the n-th are never read), as the original
    would not."""
    if n < len(files):
        unused = ", ".join(str(path) for path in files[n:])
        click.echo(
            f"--audio_file: {len(files)} files for {n} sample{'s' if n > 1 else ''}, so {unused} "
            f"primes nothing (--n_samples={len(files)} or more uses every file)",
            err=True,
        )


def _audio_files(value: str | None, mode: str, prompt_seconds: float | None) -> list[Path]:
    """The prompt files of `--mode=primed`, each checked to exist (before any model is loaded)."""
    if mode != "primed":
        return []
    if not value or prompt_seconds is None:
        raise click.UsageError("--mode=primed needs --audio_file and --prompt_length_in_seconds")
    files = [Path(part.strip()) for part in value.split(",") if part.strip()]
    if not files:
        raise click.BadParameter(
            f"{value!r} names no file: give a file, or a,b,… for one per sample", param_hint="--audio_file"
        )
    for path in files:
        if not path.is_file():
            # A file whose name holds a comma is split like a list: say so rather than just "missing".
            whole = Path(value.strip())
            split = (
                f" (--audio_file separates files with commas; rename {whole} to use it)"
                if len(files) > 1 and whole.is_file()
                else ""
            )
            raise click.BadParameter(
                f"{path} does not exist or is not a file{split}", param_hint="--audio_file"
            )
    return files


def _seconds(value: float, flag: str) -> float:
    """A duration flag: a positive number of seconds, shorter than the longest song."""
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"give a positive number of seconds, got {value:g}", param_hint=flag)
    if value >= MAX_SONG_SECONDS:
        raise click.BadParameter(
            f"give less than {MAX_SONG_SECONDS:g} s (every model takes songs shorter), got {value:g}",
            param_hint=flag,
        )
    return value


def _device(text: str | None) -> str:
    """`--device`, checked against this machine: cpu, or a CUDA GPU that is there."""
    import torch

    if text is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text.strip())
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{text!r} is not a device: use cpu or cuda:N", param_hint="--device")
    if device.type == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise click.BadParameter(f"{text} is not available ({why}): use --device=cpu", param_hint="--device")
    index, count = device.index or 0, torch.cuda.device_count()
    if index >= count:
        raise click.BadParameter(
            f"there is no GPU {index} here: use cuda:0 to cuda:{count - 1}", param_hint="--device"
        )
    return f"cuda:{index}"


def _output_dir(name: str) -> Path:
    """`--name`, checked to be a folder this run can create or write into."""
    if not name.strip():  # Path("") is ".": the run's files would be strewn in the current folder
        raise click.BadParameter(
            "give the name of the output folder, e.g. --name=sample "
            "(an empty one would write into the current folder)",
            param_hint="--name",
        )
    out_dir = Path(name)
    if out_dir.exists() and not out_dir.is_dir():
        raise click.BadParameter(
            f"{out_dir} is a file, not a folder: pass another --name", param_hint="--name"
        )
    existing = out_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise click.BadParameter(
            f"{out_dir} cannot be created: {existing} is a file; pass another --name", param_hint="--name"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        why = f"no write permission in {existing}"
        if on_read_only_mount(existing):
            why = f"{existing} is on a read-only file system"
        raise click.BadParameter(
            f"{out_dir} cannot be written: {why}; pass another --name", param_hint="--name"
        )
    return out_dir


def _refuse_own_outputs(out_dir: Path, levels: tuple[int, ...], inputs: list[tuple[str, Path]]) -> None:
    """Stop when an input is a file this run writes (its level folders, styles, checkpoint): reading it
    while writing it would overwrite the input. Other files under NAME, and resumes, are fine."""
    level_dirs = [(out_dir / f"level_{level}").resolve() for level in levels]
    files = {(out_dir / name).resolve() for name in OWN_FILES}
    for flag, path in inputs:
        resolved = path.resolve()
        if resolved in files or any(resolved.is_relative_to(folder) for folder in level_dirs):
            raise click.BadParameter(
                f"{path} is among the files this run writes into {out_dir}, so it would be overwritten: "
                "pass another --name",
                param_hint=flag,
            )


def _known_styles(model: str, styles: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each (artist, genre) checked against the model's label tables, as the bot checks them: a name
    the model does not know would silently be 'unknown' (id 0). A name found only by forgiving case,
    accents or punctuation is replaced by the table's spelling, which is what the labels look up."""
    from sampler.jukebox.labels import LabelError, UnknownArtist, UnknownGenre, Vocabulary

    vocabulary = Vocabulary.for_model(model)
    known: dict[tuple[str, str], tuple[str, str]] = {}
    for artist, genre in styles:
        if (artist, genre) in known:
            continue
        try:
            use_artist, use_genre = vocabulary.label_spellings(artist, genre)
        except UnknownArtist as exc:
            raise click.BadParameter(
                _unknown_label(model, "artist", artist, exc.suggestions), param_hint="--artist"
            ) from None
        except UnknownGenre as exc:
            raise click.BadParameter(
                _unknown_label(model, "genre", exc.unknown_word or genre, exc.suggestions),
                param_hint="--genre",
            ) from None
        except LabelError as exc:  # too many genres
            raise click.BadParameter(str(exc), param_hint="--genre") from None
        for flag, typed, used in (("--artist", artist, use_artist), ("--genre", genre, use_genre)):
            if typed != used:
                click.echo(f"{flag} {typed!r} is read as {used!r}, the spelling {model} knows", err=True)
        known[(artist, genre)] = (use_artist, use_genre)
    return [known[style] for style in styles]


def _unknown_label(model: str, what: str, name: str, suggestions: list[str]) -> str:
    if suggestions:
        closest = ", ".join(repr(found) for found in suggestions)
        return (
            f"{model} does not know the {what} {name!r}: use one of the closest ({closest}), "
            f"or --{what}=unknown for none in particular"
        )
    return (
        f"{model} does not know the {what} {name!r} and none is close: check the spelling, "
        f"or use --{what}=unknown for none in particular"
    )


def _audio_problem(path: Path, error: Exception) -> str:
    """The decoder's sentence, in the command line's terms (it speaks of attaching, as the bot does)."""
    text = file_wording(str(error))
    match = re.fullmatch(r"(.*?)\.?\s*Use (.+?) instead\.", text, flags=re.DOTALL)
    if match:
        text = f"{match[1]}: use {match[2]} instead"
    text = re.sub(r"^(This|The) (audio )?file ", "it ", text)
    return f"--audio_file {path}: {text.rstrip('.')}."


def _prompts(files: list[Path], seconds: float, n: int, sample_length: int) -> Any:  # a tensor (n, samples)
    """Each sample's prompt audio (file i for sample i, cycled), decoded before any model loads."""
    import torch

    from sampler.audio import AudioError, decode_audio
    from sampler.jukebox.windows import TOP_HOP, prompt_length_samples

    length = prompt_length_samples(seconds)
    if length <= 0:
        raise click.BadParameter(
            f"give at least {TOP_HOP / SAMPLE_RATE:.4f} s, got {seconds:g}",
            param_hint="--prompt_length_in_seconds",
        )
    if length >= sample_length:
        raise click.BadParameter(
            f"the prompt ({seconds:g} s) must be shorter than --sample_length_in_seconds",
            param_hint="--prompt_length_in_seconds",
        )
    prompts = []
    for path in files:
        try:
            # Only the prompt is kept: an hour-long file would be gigabytes of float audio. A silent
            # start may open a file that is not silent, which a prompt may be taken from.
            audio = decode_audio(
                path,
                max_seconds=None,
                max_bytes=None,
                first_seconds=length / SAMPLE_RATE,
                silence_of_whole_file=True,
            )
        except AudioError as exc:
            raise click.ClickException(_audio_problem(path, exc)) from None
        except OSError as exc:
            raise click.ClickException(
                f"--audio_file {path} cannot be read ({exc.strerror or exc})."
            ) from None
        if audio.shape[0] < length:
            raise click.ClickException(
                f"{path} is {audio.shape[0] / SAMPLE_RATE:.2f} s long, shorter than the {seconds:g} s prompt"
            )
        prompts.append(torch.from_numpy(audio[:length]))
    return torch.stack([prompts[i % len(prompts)] for i in range(n)])  # as the original cycles them


def _lyrics(options: dict[str, Any]) -> str:
    path = options["lyrics_file"]
    if path is None:
        return str(options["lyrics"])
    try:
        return str(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is not UTF-8 text"
        raise click.BadParameter(f"{path} cannot be read ({why})", param_hint="--lyrics_file") from None


# What a run writes into NAME besides its level folders.
OWN_FILES = ("styles.json", "checkpoint.pt", "checkpoint.json", "checkpoint.tmp", ".lock")
# Held (flock) by the run writing into NAME, with its process id inside: one run per NAME at a time.
LOCK_FILE = ".lock"


class _NotWritten(Exception):
    """A file of the run could not be written (a full disk, say): the one-line message says what to do."""


def _lock_holder(handle: IO[str]) -> str:
    """' (pid N)' of the run holding the lock file open as `handle`, when it wrote its pid there."""
    try:
        handle.seek(0)
        text = handle.read(32).strip()
    except (OSError, ValueError):
        text = ""
    return f" (pid {text})" if text.isdigit() else ""


def _in_use(out_dir: Path, handle: IO[str]) -> click.ClickException:
    return click.ClickException(
        f"{out_dir} is in use by another `jukebot sample` run{_lock_holder(handle)}: "
        "wait for it to finish, or pass another --name."
    )


def _refuse_if_in_use(out_dir: Path) -> None:
    """Stop, before a model loads, when another run holds NAME's lock. Only a look (it creates
    nothing): `_run_lock` takes the lock once NAME exists."""
    if fcntl is None:  # pragma: no cover
        return
    try:
        handle = open(out_dir / LOCK_FILE)
    except OSError:  # no run has locked NAME yet (or it cannot be read: `_run_lock` says so)
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(out_dir, handle) from None
        except OSError:  # a filesystem without locks: `_run_lock` goes on without one
            return


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> Iterator[None]:
    """NAME's lock, held for the whole run: another run into NAME would set this run's files aside
    (`_set_aside_another_run`) while it writes them, and overwrite them."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = out_dir / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise click.ClickException(
            f"Cannot create {path} ({exc.strerror or exc}): pass another --name."
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(out_dir, handle) from None
        except OSError:  # a filesystem without locks: nothing to hold
            pass
        else:
            try:  # which process holds it, for the message of a run refused
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            except OSError:
                pass
        yield


def _sync_folder(folder: Path) -> None:
    """Flush `folder`'s entries (a rename into it) to disk, where the filesystem can."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a filesystem that cannot sync a folder: the rename is still made
        pass
    finally:
        os.close(fd)


def _replace_whole(path: Path, data: bytes, tmp: Path) -> None:
    """`data` as `path`, so that a kill or power loss at any moment leaves the old file or the new one,
    never part of one: written to `tmp`, flushed to disk, then renamed over `path`. On any failure
    (a full disk: OSError) `tmp` is removed and `path` left as it was."""
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def run_sample(options: dict[str, Any], given: set[str] | frozenset[str] = frozenset()) -> None:
    import torch

    from sampler.jukebox.cascade import SampleStyle, SamplingError, SamplingRequest
    from sampler.jukebox.checkpoint import CheckpointError
    from sampler.jukebox.windows import TOP_HOP, sample_length_samples
    from sampler.loading import load_cascade
    from sampler.model_files import ModelFilesError

    # Every flag is checked first: a run refused for a bad one loads no model and writes nothing.
    if options["sr"] != SAMPLE_RATE:
        raise click.BadParameter(f"Jukebox models run at {SAMPLE_RATE} Hz", param_hint="--sr")
    mode = options["mode"]
    _refuse_unused_flags(mode, given)
    out_dir = _output_dir(options["name"])
    seconds = _seconds(options["sample_length_in_seconds"], "--sample_length_in_seconds")
    sample_length = sample_length_samples(seconds)
    if sample_length <= 0:
        raise click.BadParameter(
            f"give at least {TOP_HOP / SAMPLE_RATE:.4f} s, got {seconds:g}",
            param_hint="--sample_length_in_seconds",
        )
    if options["total_sample_length_in_seconds"] is not None:
        _seconds(options["total_sample_length_in_seconds"], "--total_sample_length_in_seconds")
    if options["prompt_length_in_seconds"] is not None and mode == "primed":
        _seconds(options["prompt_length_in_seconds"], "--prompt_length_in_seconds")
    hop = _floats(options["hop_fraction"], "--hop_fraction", "0.5,0.5,0.125")
    if any(not 0 < h <= 1 for h in hop):
        raise click.BadParameter(
            "each hop fraction must be in (0, 1], e.g. 0.5,0.5,0.125", param_hint="--hop_fraction"
        )
    temps = _floats(options["temperature"], "--temperature", "0.99,0.99,0.99")
    if any(not math.isfinite(t) or t < MIN_TEMPERATURE for t in temps):
        raise click.BadParameter(
            f"temperatures must be numbers of at least {MIN_TEMPERATURE:g}, e.g. 0.99",
            param_hint="--temperature",
        )
    if not math.isfinite(options["top_p"]):
        raise click.BadParameter("give a number from 0 to 1", param_hint="--top_p")
    if options["top_k"] and options["top_p"]:
        raise click.UsageError("use --top_k or --top_p, not both")
    if {"lyrics", "lyrics_file"} <= given:  # else one of them would be silently dropped
        raise click.UsageError("use --lyrics or --lyrics_file, not both")
    try:
        batch = parse_batch_sizes(options["max_batch_size"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max_batch_size") from None
    device = _device(options["device"])
    levels = tuple(range(3 - options["levels"], 3))
    if mode == "upsample":
        levels = tuple(level for level in levels if level < 2) or (0, 1)
    audio_files = _audio_files(options["audio_file"], mode, options["prompt_length_in_seconds"])
    inputs = [("--audio_file", path) for path in audio_files]
    if mode in ("continue", "upsample"):
        if options["codes_file"] is None:
            raise click.UsageError(f"--mode={mode} needs --codes_file")
        _check_codes_path(options["codes_file"])
        inputs.append(("--codes_file", options["codes_file"]))
    _refuse_own_outputs(out_dir, levels, inputs)
    saved_codes: tuple[Any, ...] | None = None
    if mode in ("continue", "upsample"):
        saved_codes, saved_labels, count = _read_codes(options["codes_file"], options["n_samples"])
        options = {**options, "n_samples": count}  # as many as the codes hold
        options = _with_saved_labels(options, given, saved_labels)
        if options["total_sample_length_in_seconds"] is not None:
            _seconds(options["total_sample_length_in_seconds"], "--total_sample_length_in_seconds")
    lyrics = _lyrics(options)  # after the codes file's labels: they may hold the lyrics
    if mode == "primed" and options["n_samples"] is None and _style_count(options) == 1:
        # One sample per prompt file, as a style sweep makes one per style.
        options = {**options, "n_samples": len(audio_files)}
    # What the codes file stood in for, so that a mismatch names it rather than flags not typed.
    from_codes = (
        {flag for flag in ("artist", "genre", "n_samples") if flag not in given}
        if mode in ("continue", "upsample")
        else set()
    )
    styles = _known_styles(
        options["model"],
        _styles(options["artist"], options["genre"], options["n_samples"], from_codes=from_codes),
    )
    n = len(styles)
    if mode == "primed":
        _unused_files_note(audio_files, n)
    options = {**options, "artist": styles[0][0], "genre": styles[0][1], "n_samples": n}
    sweep = len(set(styles)) > 1
    prompt = None
    if mode == "primed":
        prompt = _prompts(audio_files, options["prompt_length_in_seconds"], n, sample_length)
    if options["model_dir"] is not None:
        logging_without_settings()
        model_dir = options["model_dir"]
    else:
        model_dir = settings_or_exit().model_dir
    # A model directory that is a file (or unreadable) would be reported as a model to download.
    chosen_by_flag = {"choose_another": "pass --model_dir"} if options["model_dir"] is not None else {}
    problem = model_dir_refusal(model_dir, **chosen_by_flag)
    if problem is not None:
        raise click.ClickException(problem)
    fp16 = options["fp16"] if options["fp16"] is not None else device.startswith("cuda")
    dtype = torch.float16 if fp16 else torch.float32
    total_seconds = options["total_sample_length_in_seconds"] or seconds

    _refuse_if_in_use(out_dir)  # before the minutes a model takes to load
    try:
        cascade = load_cascade(model_dir, options["model"], device=device, dtype=dtype)
    except (ModelFilesError, CheckpointError, OSError, ValueError) as exc:
        _record_unusable(model_dir, exc)
        raise click.ClickException(str(exc)) from None

    codes = saved_codes
    if mode == "continue" and codes is not None:
        _refuse_nothing_to_continue(codes, cascade.hops, levels, sample_length, options["codes_file"])
    if mode == "upsample" and codes is not None and codes[2] is not None:
        sample_length = codes[2].shape[1] * cascade.hops[2]
        total_seconds = max(total_seconds, sample_length / SAMPLE_RATE)
    total_length = max(int(total_seconds * SAMPLE_RATE), sample_length)
    min_seconds = cascade.priors.config(2).min_duration or 0.0
    total_length = _at_least_the_shortest_song(
        options["model"], min_seconds, total_seconds, total_length, given
    )
    request = SamplingRequest(
        mode=mode,
        sample_length=sample_length,
        total_length=total_length,
        n_samples=n,
        artist=options["artist"],
        genre=options["genre"],
        lyrics=lyrics,
        styles=tuple(SampleStyle(a, g, lyrics) for a, g in styles) if sweep else None,
        levels=levels,
        temperature=(temps[0], temps[1], temps[2]),
        hop_fraction=(hop[0], hop[1], hop[2]),
        top_k=options["top_k"],
        top_p=options["top_p"],
        max_batch_size=batch,
        seed=options["seed"],
        prompt=prompt,
        codes=codes,
    )
    try:  # what only the model can tell (its song length, lyrics): still nothing written
        cascade.check(request)
    except SamplingError as exc:
        raise click.ClickException(str(exc)) from None
    # Priors load when their level starts: a damaged one would be found after files are written (a
    # level-0 one after hours of sampling the top level). Their keys and shapes are checked now.
    try:
        _check_priors(model_dir, options["model"], levels)
    except (ModelFilesError, CheckpointError) as exc:
        raise click.ClickException(_model_file_problem(exc, options["model"]) + ".") from None

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(
            f"Cannot create {out_dir} ({exc.strerror or exc}): pass another --name."
        ) from None
    with _run_lock(out_dir):
        _sample_into(out_dir, cascade, request, options, styles, lyrics, codes, prompt, levels, model_dir)


def _sample_into(
    out_dir: Path,
    cascade: Any,
    request: Any,
    options: dict[str, Any],
    styles: list[tuple[str, str]],
    lyrics: str,
    codes: tuple[Any, ...] | None,
    prompt: Any,
    levels: tuple[int, ...],
    model_dir: Path,
) -> None:
    """Sample `request` into `out_dir`, which this run holds the lock of: resumed from its checkpoint
    when it holds this run's, after setting aside another run's output or a damaged saved state."""
    import torch
    from tqdm import tqdm

    from sampler.audio import encode_audio, wav_bytes
    from sampler.jukebox.cascade import CascadeState, NonFiniteLogits, Progress, SamplingError
    from sampler.jukebox.checkpoint import CheckpointError
    from sampler.model_files import ModelFilesError

    sweep = len(set(styles)) > 1
    sample_length = request.sample_length
    checkpoint, record, tmp = (
        out_dir / "checkpoint.pt",
        out_dir / "checkpoint.json",
        out_dir / "checkpoint.tmp",
    )
    fingerprint = _run_fingerprint(cascade, request)
    # A run an earlier version recorded by its flags as spelled: still resumed when they are the same,
    # or when its saved state was sampled for this request (its digest says so).
    spelled = _flags_fingerprint({**options, "styles": styles if sweep else None}, lyrics, codes, prompt)
    set_aside = _set_aside_another_run(
        out_dir,
        {fingerprint, spelled},
        options["codes_file"],
        same_request=lambda: _state_sampled_for(checkpoint, cascade, request),
    )
    if set_aside is not None:
        click.echo(set_aside, err=True)
    state = None
    if checkpoint.is_file() and record.is_file():  # this run's (another run's is set aside)
        try:
            data = checkpoint.read_bytes()
        except OSError as exc:
            raise click.ClickException(
                f"{checkpoint} cannot be read ({exc.strerror or exc}): fix that, or pass another --name."
            ) from None
        try:
            state = CascadeState.from_bytes(data)
            cascade.check_state(request, state)
        except SamplingError as exc:  # cut short, another version's, ...: kept, not resumed
            state = None
            earlier = _move_aside(out_dir, options["codes_file"])
            click.echo(
                f"{checkpoint} cannot be resumed from, as {str(exc).rstrip('.')}: moved to {earlier}; "
                "this run starts over",
                err=True,
            )
        else:
            click.echo(f"resuming from {checkpoint} ({sum(state.windows_done.values())} windows done)")
    try:
        _write_styles(out_dir, styles, lyrics, levels)
    except OSError as exc:
        raise click.ClickException(
            f"Cannot write {out_dir / 'styles.json'} ({exc.strerror or exc}): "
            "fix that, or pass another --name."
        ) from None
    labels: dict[str, str | int] = {
        "model": options["model"],
        "artist": request.artist,
        "genre": request.genre,
        "lyrics": lyrics,
        "total_length": request.total_length,  # raw samples, as the original's labels count them
        "sample_length": request.sample_length,
        "styles": json.dumps(styles),  # each sample's [artist, genre]
    }

    bar = tqdm(total=1, unit="tok", disable=options["no_progress"], dynamic_ncols=True)
    written_levels: set[int] = set()
    # checkpoint.json names this run already (one an earlier version wrote is written again, as now)
    recorded = state is not None and _recorded_run(out_dir)[0] == fingerprint

    def on_progress(progress: Progress) -> None:
        # the whole run: on CUDA levels sample at once
        bar.total = sum(level.tokens_total for level in progress.by_level)
        bar.n = sum(level.tokens_done for level in progress.by_level)
        sampling = [level for level in progress.by_level if level.sampling]
        bar.set_description(
            " · ".join(f"level {p.level} window {p.window}/{p.window_count}" for p in sampling)
        )
        bar.refresh()

    def saved() -> str:
        return (
            "the last saved window is kept: run the same command again to resume from it"
            if checkpoint.is_file()
            else "no window was saved yet: run the same command again to start over"
        )

    def write_level(current: CascadeState, level: int) -> None:
        try:
            _write_level(out_dir, cascade, current, level, encode_audio, wav_bytes, labels)
        except OSError as exc:
            where = exc.filename or out_dir / f"level_{level}"  # named by `_write_bytes`
            raise _NotWritten(f"Cannot write {where} ({exc.strerror or exc}); {saved()}.") from None
        written_levels.add(level)

    def on_window(current: CascadeState) -> None:
        nonlocal recorded
        try:
            if not recorded:  # which run the state is of: written first, so no state is without it
                _replace_whole(record, json.dumps({"fingerprint": fingerprint}).encode(), tmp)
                recorded = True
            _replace_whole(checkpoint, current.to_bytes(), tmp)
        except OSError as exc:
            raise _NotWritten(
                f"Cannot save the checkpoint {checkpoint} ({exc.strerror or exc}); {saved()}."
            ) from None
        for level in levels:
            finished = current.codes[level].shape[1] * cascade.hops[level] >= sample_length
            if finished and level not in written_levels:
                write_level(current, level)

    try:
        final = cascade.sample(request, state, on_progress=on_progress, on_window=on_window)
        for level in levels:
            if level not in written_levels:
                write_level(final, level)
    except _NotWritten as exc:
        raise click.ClickException(str(exc)) from None
    except NonFiniteLogits as exc:
        bar.close()
        model = options["model"]
        if cascade.priors.dtype == torch.float32:
            raise click.ClickException(
                f"{exc}, in full precision: the {model} model's files may hold damaged weights "
                f"(run `jukebot models verify {model}`)."
            ) from None
        kept = "the finished windows are saved" if checkpoint.is_file() else "no window had finished yet"
        raise click.ClickException(
            f"{exc}, in half precision (it overflows now and then); {kept}: run the same command again "
            "with --fp32 to go on in full precision."
        ) from None
    except SamplingError as exc:
        raise click.ClickException(str(exc)) from None
    except (ModelFilesError, CheckpointError) as exc:  # a model file changed or damaged since the check
        bar.close()
        _record_unusable(model_dir, exc)
        kept = (
            f"The finished windows are saved in {checkpoint}: run the same command again to resume."
            if checkpoint.is_file()
            else "No window had finished yet."
        )
        raise click.ClickException(f"{_model_file_problem(exc, options['model'])}. {kept}") from None
    except KeyboardInterrupt:
        bar.close()
        kept = (
            f"the finished windows are saved in {checkpoint}"
            if checkpoint.is_file()
            else "no window had finished yet"
        )
        click.echo(f"Interrupted: {kept}. Run the same command again to resume.", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        bar.close()
    click.echo(f"wrote {', '.join(f'level_{level}' for level in sorted(levels))} under {out_dir}")
    if sweep:
        for index, (artist, genre) in enumerate(styles):
            click.echo(f"  item_{index}: {artist} / {genre}")


def _refuse_nothing_to_continue(
    codes: tuple[Any, ...], hops: tuple[int, ...], levels: tuple[int, ...], sample_length: int, path: Path
) -> None:
    """Stop a continuation that would sample nothing new (every level asked already whole: the Model
    API's rule, `continued_codes_length`) or less than the codes hold. Checked once the VQ-VAE is
    read: its hops turn tokens into seconds."""
    from sampler.jukebox.cascade import continued_codes_length

    longest = max(
        (level.shape[1] * hop for level, hop in zip(codes, hops, strict=True) if level is not None), default=0
    )
    if sample_length < longest or continued_codes_length(codes, hops, levels, sample_length) is not None:
        raise click.BadParameter(
            f"the sample length ({sample_length / SAMPLE_RATE:.2f} s) must be longer than the codes in "
            f"{path} ({longest / SAMPLE_RATE:.2f} s) to continue them: ask for more",
            param_hint="--sample_length_in_seconds",
        )


def _at_least_the_shortest_song(
    model: str, min_seconds: float, total_seconds: float, total_length: int, given: Any
) -> int:
    """The song length the labels claim (in samples), at least the model's shortest (its timing
    conditioning starts there; the original refuses shorter). One the user gave that is shorter is
    refused; the default (the sample length) is raised to it, and that is said."""
    least = math.ceil(min_seconds * SAMPLE_RATE)  # what the cascade accepts
    if total_length >= least:
        return total_length
    if "total_sample_length_in_seconds" in given:
        if total_seconds < min_seconds:
            raise click.BadParameter(
                f"{model} needs a song of at least {min_seconds:g} s (its timing labels start there), "
                f"got {total_seconds:g}: give {min_seconds:g} or more",
                param_hint="--total_sample_length_in_seconds",
            )
        return least  # the minimum itself, a sample short by rounding
    raised = int(min_seconds * SAMPLE_RATE) + 1
    click.echo(
        f"--total_sample_length_in_seconds: labelled as a {min_seconds:g} s song, the shortest {model} "
        f"takes (not {total_seconds:g} s); give it to say how long the song is",
        err=True,
    )
    return raised


def _check_priors(model_dir: Path, model: str, levels: tuple[int, ...]) -> None:
    """Check that the prior of each level in `levels` holds the keys and shapes it must (as `jukebot
    models verify` does, reading no weights), or was found to by an earlier check of the same file.
    ModelFileUnusable names the first that does not; ModelFileUnreadable, one this user cannot read."""
    from sampler.loading import ModelFileUnusable, expected_shapes_for
    from sampler.model_files import (
        CheckpointVerifier,
        VerifiedCache,
        failed_as_weights_were_read,
        file_problems,
        model_path,
    )

    verifier = CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))
    cache = VerifiedCache(model_dir)
    for level in sorted(set(levels), reverse=True):  # in the order they are used
        name = MODELS[model].priors[level]
        path = model_path(model_dir, name)
        entry = cache.get(name, path)
        found_loading = failed_as_weights_were_read(entry)
        if found_loading is not None:  # a worker's or an earlier run's verdict, which shapes cannot undo
            problems = found_loading
        elif entry is not None and entry.get("checks") == "shapes":
            problems = [] if entry.get("ok") else [str(problem) for problem in entry.get("problems", [])]
        else:
            problems = file_problems(name, path, verifier)
            if os.access(model_dir, os.W_OK):  # kept for the next run, and `jukebot models list`
                cache.put(name, path, ok=not problems, checks="shapes", problems=problems)
        if problems:
            raise ModelFileUnusable(model, name, path, "; ".join(problems) or "it failed verification")


def _record_unusable(model_dir: Path, exc: Exception) -> None:
    """A file found damaged as it loaded (NaN weights, say) is recorded as failing, as a worker records
    it: `models list`, `doctor` and workers see it, and `models verify` moves it aside. Where the
    verification cache cannot be written, the message alone says it."""
    from sampler.loading import ModelFileUnusable, record_unusable

    if isinstance(exc, ModelFileUnusable):
        with contextlib.suppress(OSError):
            record_unusable(model_dir, exc)


def _model_file_problem(exc: Exception, model: str) -> str:
    """A model file that cannot be used, in one sentence: which file, and what to run."""
    from sampler.loading import ModelFileUnusable
    from sampler.model_files import ModelFilesMissing

    if isinstance(exc, ModelFileUnusable):
        detail = exc.detail.rstrip(".")
        where = "" if str(exc.path) in detail else f", {exc.path},"
        fetch = f"`jukebot models download {model}`"
        then = "" if fetch in detail else f", then {fetch} to fetch it again"
        return (
            f"the {exc.name} file of {model}{where} cannot be used: {detail}. "
            f"Run `jukebot models verify {model}` (it moves a bad file aside){then}"
        )
    if isinstance(exc, ModelFilesMissing):  # gone, or unreadable: it says what to do
        return str(exc).rstrip(".")
    return f"{str(exc).rstrip('.')}. Run `jukebot models verify {model}` to check the model's files"


def _style_count(options: dict[str, Any]) -> int:
    """How many styles --artist/--genre name (1 unless a style sweep)."""
    return max(len(options["artist"]), len(options["genre"]))


def _styles(
    artists: tuple[str, ...],
    genres: tuple[str, ...],
    n_samples: int | None,
    *,
    from_codes: set[str] | frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """(artist, genre) per sample: each option given once (for all samples) or once per sample.
    `from_codes` names the options a codes file's saved labels filled in (not typed)."""
    count = max(len(artists), len(genres))
    for name, values in (("artist", artists), ("genre", genres)):
        if len(values) not in (1, count):
            if name in from_codes:
                typed = "genre" if name == "artist" else "artist"
                raise click.BadParameter(
                    f"the codes file holds one {name} per sample ({len(values)}), which does not match "
                    f"the {count} --{typed} values given: give --{name} too (once, or {count} times)",
                    param_hint=f"--{typed}",
                )
            raise click.BadParameter(
                f"give it once (for every sample) or once per sample ({count}), got {len(values)}",
                param_hint=f"--{name}",
            )
    n = n_samples or count
    if count > 1 and n != count:
        if "n_samples" in from_codes:
            raise click.BadParameter(
                f"{count} styles for the {n} samples in the codes file: give one style per sample",
                param_hint="--artist/--genre",
            )
        raise click.BadParameter(
            f"{count} styles for {n} samples: give one style per sample, or leave --n_samples out",
            param_hint="--n_samples",
        )
    return [(artists[i % len(artists)], genres[i % len(genres)]) for i in range(n)]


def _write_styles(out_dir: Path, styles: list[tuple[str, str]], lyrics: str, levels: tuple[int, ...]) -> None:
    """`styles.json`: each item's labels and the files that hold it."""
    items = [
        {
            "index": index,
            "artist": artist,
            "genre": genre,
            "lyrics": lyrics,
            "files": [
                f"level_{level}/item_{index}.{ext}" for level in sorted(levels) for ext in ("wav", "ogg")
            ],
        }
        for index, (artist, genre) in enumerate(styles)
    ]
    (out_dir / "styles.json").write_text(json.dumps({"items": items}, indent=1, ensure_ascii=False))


def _write_level(
    out_dir: Path,
    cascade: Any,
    state: Any,
    level: int,
    encode_audio: Any,
    wav_bytes: Any,
    labels: dict[str, str | int],
) -> None:
    import torch

    level_dir = out_dir / f"level_{level}"
    level_dir.mkdir(parents=True, exist_ok=True)
    # The levels down to this one, as the original saves them when a level is done: the lower levels'
    # codes, partly sampled by then (levels at once, or a preview resumed), are their own files'.
    zs = [codes.clone() if at >= level else codes[:, :0].clone() for at, codes in enumerate(state.codes)]
    data = io.BytesIO()  # written by Python: torch's own writer fails a full disk with a RuntimeError
    torch.save({"zs": zs, "labels": labels}, data)
    _write_bytes(level_dir / "data.pth.tar", data.getvalue())
    audio = cascade.decode(state.codes[level], level).numpy()
    for index, row in enumerate(audio):
        _write_bytes(level_dir / f"item_{index}.wav", wav_bytes(row, SAMPLE_RATE))
        _write_bytes(level_dir / f"item_{index}.ogg", encode_audio(row, SAMPLE_RATE, "ogg", 128_000))


def _write_bytes(path: Path, data: bytes) -> None:
    """`path.write_bytes(data)`, its OSError naming `path` (a full disk's does not)."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _with_saved_labels(
    options: dict[str, Any], given: set[str] | frozenset[str], saved: dict[str, Any]
) -> dict[str, Any]:
    """`options` with each label flag not given taken from the codes file (the original saved them)."""
    options = dict(options)
    styles = json.loads(saved["styles"]) if isinstance(saved.get("styles"), str) else []
    # A saved label the same for every sample counts as given once: the other may then be swept.
    if "artist" not in given and styles:
        options["artist"] = _once_if_same(tuple(artist for artist, _ in styles))
    if "genre" not in given and styles:
        options["genre"] = _once_if_same(tuple(genre for _, genre in styles))
    if not given & {"lyrics", "lyrics_file"} and isinstance(saved.get("lyrics"), str):
        options["lyrics"] = saved["lyrics"]
    if "total_sample_length_in_seconds" not in given and isinstance(saved.get("total_length"), int):
        options["total_sample_length_in_seconds"] = saved["total_length"] / SAMPLE_RATE
    return options


def _once_if_same(values: tuple[str, ...]) -> tuple[str, ...]:
    return values[:1] if len(set(values)) == 1 else values


# What `jukebot sample` (and the original Jukebox) writes: a file of torch.save's, in its zip format
# (torch >= 1.6) or the older one, which opens with a pickled magic number.
TORCH_ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
CODES_FILE_HINT = "pass a data.pth.tar written by jukebot sample"


def _bad_codes_file(path: Path, why: str) -> click.BadParameter:
    return click.BadParameter(f"{path} {why}", param_hint="--codes_file")


def _check_codes_path(path: Path) -> None:
    """Stop unless `path` names a regular file (or a link to one): reading a FIFO would wait forever."""
    try:
        found = not_a_file(path)
    except OSError as exc:  # a folder on the way that cannot be entered
        raise _bad_codes_file(path, f"cannot be read ({exc.strerror or exc})") from None
    if found is None:
        return
    said = "does not exist" if found.missing else f"is {found.what}"
    raise _bad_codes_file(path, f"{said}: {CODES_FILE_HINT}")


def _load_codes_file(path: Path) -> Any:
    """What torch.save wrote to `path`, loading tensors, dicts, lists and plain values only: the
    reason for any failure is said in words (torch's own, which may advise loading with
    `weights_only=False`, i.e. running whatever code the file holds, is never passed on)."""
    import pickle
    import warnings
    import zipfile

    import torch

    _check_codes_path(path)
    try:
        with path.open("rb") as file:
            head = file.read(len(TORCH_LEGACY_MAGIC))
    except OSError as exc:
        raise _bad_codes_file(path, f"cannot be read ({exc.strerror or exc})") from None
    not_codes = f"is not a jukebot or Jukebox codes file ({{}}): {CODES_FILE_HINT}"
    if not head:
        raise _bad_codes_file(path, f"is empty: {CODES_FILE_HINT}")
    if head.startswith(TORCH_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = None  # cut short: a zip's table of contents is at its end
        if names is not None and not any(name.endswith("/data.pkl") for name in names):
            raise _bad_codes_file(path, not_codes.format("a zip archive, not a file torch.save wrote"))
    elif not head.startswith(TORCH_LEGACY_MAGIC):
        raise _bad_codes_file(path, not_codes.format("not a file torch.save wrote"))
    damaged = (
        "is damaged (cut short, or changed since it was written): write it again with jukebot sample, "
        "or pass another file"
    )
    try:
        with warnings.catch_warnings():  # torch's warnings about the file's pickle protocol and such
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu")
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # torch's reader seeking within a zip cut short: not a read error
            raise _bad_codes_file(path, damaged) from None
        raise _bad_codes_file(path, f"cannot be read ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a class or function: no codes file holds one
            raise _bad_codes_file(
                path, not_codes.format("it holds Python objects other than codes")
            ) from None
        raise _bad_codes_file(path, damaged) from None
    except Exception:  # a zip or pickle cut short or changed: RuntimeError, EOFError, ...
        raise _bad_codes_file(path, damaged) from None


def _read_codes(path: Path, n_samples: int | None) -> tuple[tuple[Any, ...], dict[str, Any], int]:
    """The codes of a data.pth.tar, the labels saved with them ({} in files written before labels) and
    how many samples they hold (`n_samples`, when given, must be that many)."""
    import torch

    data = _load_codes_file(path)
    zs = data.get("zs") if isinstance(data, dict) else None
    if (
        not isinstance(zs, list | tuple)
        or len(zs) != 3
        or not all(isinstance(z, torch.Tensor) and z.dim() == 2 for z in zs)
    ):
        raise _bad_codes_file(
            path,
            f"is not a jukebot or Jukebox codes file (no codes for 3 levels under 'zs'): {CODES_FILE_HINT}",
        )
    if any(z.is_floating_point() or z.is_complex() or z.dtype == torch.bool for z in zs):
        raise _bad_codes_file(path, f"holds codes that are not whole numbers: {CODES_FILE_HINT}")
    count = zs[2].shape[0]
    if count == 0 or any(z.numel() and z.shape[0] != count for z in zs):
        rows = ", ".join(str(z.shape[0]) for z in zs)
        raise _bad_codes_file(
            path, f"holds no samples or a different number per level ({rows}): {CODES_FILE_HINT}"
        )
    if n_samples is not None and count != n_samples:
        raise click.BadParameter(
            f"{path} holds {count} samples; pass --n_samples={count}", param_hint="--n_samples"
        )
    labels = data.get("labels")
    codes = tuple(z.long() if z.numel() else None for z in zs)
    return codes, labels if isinstance(labels, dict) else {}, count


# What a run writes in NAME (besides the level folders): another run's are set aside, never mixed in.
RUN_FILES = ("checkpoint.pt", "checkpoint.json", "checkpoint.tmp", "styles.json")
LEVEL_FOLDERS = ("level_2", "level_1", "level_0")  # a run writes the top level's first


def _recorded_run(out_dir: Path) -> tuple[str | None, str | None]:
    """The fingerprint of the run NAME/checkpoint.json records (None when none is), and why the run
    whose state NAME holds cannot be told (None when it can): a record cut short or changed, or a
    checkpoint.pt without one (a run of an earlier version stopped between writing the two)."""
    record, checkpoint = out_dir / "checkpoint.json", out_dir / "checkpoint.pt"
    try:
        saved = json.loads(record.read_bytes())
    except FileNotFoundError:
        if checkpoint.exists():
            return None, (
                f"{checkpoint} has no checkpoint.json beside it, so the run it holds cannot be resumed"
            )
        return None, None  # no run recorded (none finished a window)
    except OSError as exc:
        raise click.ClickException(
            f"{record} cannot be read ({exc.strerror or exc}): fix that, or pass another --name."
        ) from None
    except ValueError:  # not JSON (cut short), or not text
        saved = None
    fingerprint = saved.get("fingerprint") if isinstance(saved, dict) else None
    if not isinstance(fingerprint, str):
        return None, f"{record} is damaged (cut short or changed), so the run it records cannot be resumed"
    return fingerprint, None


def _move_aside(out_dir: Path, codes_file: Path | None) -> Path:
    """Move a run's output (its files, its level folders) to `NAME/earlier-N/`, so that its items are
    neither overwritten nor left beside another run's; the level folder holding `codes_file` stays
    (an upsample into the preview's NAME: its codes go on with it). Returns where they went."""
    found = [out_dir / name for name in (*RUN_FILES, *LEVEL_FOLDERS)]
    source = _codes_folder(codes_file)
    found = [path for path in found if path.exists() and path.resolve() != source]
    number = 1
    while (out_dir / f"earlier-{number}").exists():
        number += 1
    target = out_dir / f"earlier-{number}"
    try:
        target.mkdir()
        for path in found:
            os.replace(path, target / path.name)
    except OSError as exc:
        raise click.ClickException(
            f"Cannot move the earlier output in {out_dir} to {target} ({exc.strerror or exc}): "
            "move it yourself, or pass another --name."
        ) from None
    return target


def _set_aside_another_run(
    out_dir: Path,
    fingerprints: Collection[str],
    codes_file: Path | None,
    same_request: Callable[[], bool] = lambda: False,
) -> str | None:
    """Move the output of a run with other flags (another seed, fewer samples, ...), or of a run that
    cannot be told (its record damaged), aside (`_move_aside`). Returns what was done, in words, or
    None when NAME holds no other run's output (or this run's, to resume: recorded with one of
    `fingerprints`, or by an earlier version with its saved state sampled for this request:
    `same_request`)."""
    recorded, problem = _recorded_run(out_dir)
    if problem is None and recorded is None:
        unrecorded = _unrecorded_output(out_dir, codes_file)
        if unrecorded is None:
            return None
        problem = (
            f"{out_dir} held {unrecorded} with no checkpoint.json saying which run wrote it (another "
            "program's, or a run whose record was removed)"
        )
    elif problem is None:
        if recorded in fingerprints or same_request():
            return None
        problem = f"{out_dir} held the output of a run with other flags"
    return f"{problem}: moved to {_move_aside(out_dir, codes_file)}; this run starts over"


def _codes_folder(codes_file: Path | None) -> Path | None:
    """The folder `--codes_file` is read from, which a run setting NAME's output aside leaves in place."""
    return None if codes_file is None else codes_file.resolve().parent


def _unrecorded_output(out_dir: Path, codes_file: Path | None) -> Path | None:
    """The first level folder of NAME holding files when no run is recorded there (a run writes its
    record before its first level's files), but for the one `codes_file` is read from; None if none."""
    source = _codes_folder(codes_file)
    for name in LEVEL_FOLDERS:
        folder = out_dir / name
        if folder.is_dir() and folder.resolve() != source and any(folder.iterdir()):
            return folder
    return None


def _state_sampled_for(checkpoint: Path, cascade: Any, request: Any) -> bool:
    """Whether the state saved in `checkpoint` records that it was sampled for `request` (states of
    versions before the request digest cannot tell: False)."""
    from sampler.jukebox.cascade import CascadeState, SamplingError

    try:
        state = CascadeState.from_bytes(checkpoint.read_bytes())
        if not isinstance(state, CascadeState) or state.request_digest is None:
            return False
        cascade.check_state(request, state)
    except (OSError, SamplingError):
        return False
    return True


def _tensors_digest(tensors: tuple[Any, ...]) -> str:
    """A hash of what `tensors` (None for a level without codes) hold: shape, type and values."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{data.dtype}{tuple(data.shape)};".encode())
        digest.update(data.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _run_fingerprint(cascade: Any, request: Any) -> str:
    """What makes a run the same run: what decides its codes (`Cascade.request_digest`), as parsed. Not
    the levels: each window's draws depend on its level and place alone, so a preview (`--levels=1`)
    goes on to the full song (`--levels=3`) from its top level; not the batch sizes (the usual change
    after running out of memory), the device or the precision; not how a flag or a path is spelled
    (`--hop_fraction=0.5` is 0.5,0.5,0.5; `--name=./song` is `song`). The inputs count by what they
    hold: the codes read from `--codes_file` and the prompt decoded from `--audio_file`. A file made
    again (another preview into the same NAME, a prompt replaced in place) makes another run, which
    does not resume on the old one."""
    digest = json.dumps(cascade.request_digest(request), sort_keys=True)
    return "request:" + hashlib.sha256(digest.encode()).hexdigest()


def _flags_fingerprint(
    options: dict[str, Any], lyrics: str, codes: tuple[Any, ...] | None = None, prompt: Any = None
) -> str:
    """The fingerprint versions before `_run_fingerprint` recorded: the flags as spelled (less the
    levels, the device, the model directory and the progress bar), the inputs by what they hold."""
    ignored = {"no_progress", "device", "model_dir", "levels"}
    relevant = {k: str(v) for k, v in sorted(options.items()) if k not in ignored}
    relevant["lyrics"] = lyrics
    if codes is not None:
        relevant["codes_file"] = _tensors_digest(codes)
    if prompt is not None:
        relevant["audio_file"] = _tensors_digest((prompt,))
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
