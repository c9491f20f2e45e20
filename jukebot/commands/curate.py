"""`jukebot curate`: many clips → one cohesive piece, offline, on any audio files."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from jukebot.commands import FiniteFloatRange, file_wording, logging_without_settings
from sampler.files import not_a_file, on_read_only_mount

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif"})
OUTPUT_BITRATE = 160_000


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The clips to join, each file once, and what was left out of them on the way."""

    files: list[Path]
    repeated: list[Path]  # a file already among `files` (named twice, by a folder and by name, a link)


def _inputs(paths: tuple[Path, ...]) -> _Inputs:
    """Files as given, and the audio files inside each folder (sorted by name, not recursive; hidden
    files left out: macOS leaves a `._name.wav` of metadata beside each file it copies to a stick).

    Each file is joined once, however many times it is named (by a folder and by name, under another
    spelling, through a link).

    Anything else named as audio (a FIFO, whose read would wait forever; a broken link; a link loop)
    is refused by name, before any work."""
    files: list[Path] = []
    repeated: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def add(file: Path) -> None:
        try:
            found = file.stat()
        except OSError as exc:  # gone, or made unreadable, since it was checked
            raise click.UsageError(f"{file} {_unreadable(exc)}") from None
        key = (found.st_dev, found.st_ino)
        if key in seen:
            repeated.append(file)
        else:
            seen.add(key)
            files.append(file)

    for path in paths:
        if not path.is_dir():
            _refuse_unless_regular(path)
            add(path)
            continue
        try:
            named = sorted(
                p for p in path.iterdir() if not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES
            )
            # A folder in it is not looked into (is_dir is False for a broken link or a link loop).
            found = [file for file in named if not file.is_dir()]
        except OSError as exc:  # a folder that cannot be listed, or listed but not entered
            raise click.UsageError(f"The folder {path} {_unreadable(exc)}") from None
        for file in found:  # before any work, as click checks a file named on the command line
            _refuse_unless_regular(file)
            if not os.access(file, os.R_OK):
                raise click.UsageError(f"{file} {_unreadable(PermissionError())}")
        if not found:
            raise click.UsageError(f"{path} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}).")
        for file in found:
            add(file)
    return _Inputs(files, repeated)


def _refuse_unless_regular(path: Path) -> None:
    """Stop, naming `path`, unless it is (or links to) a regular file."""
    try:
        found = not_a_file(path)
    except OSError as exc:  # a folder on the way that cannot be entered
        raise click.UsageError(f"{path} {_unreadable(exc)}") from None
    if found is None:
        return
    if found.missing:
        raise click.UsageError(f"{path} does not exist.")
    if found.broken_link:
        raise click.UsageError(f"{path} is a broken link (to {found.link_target}): fix it, or remove it.")
    if found.link_loop:
        raise click.UsageError(f"{path} is a link that loops back on itself: fix it, or remove it.")
    raise click.UsageError(
        f"{path} is {found.what}, not an audio file: pass audio files, or folders of them."
    )


def _unreadable(error: OSError) -> str:
    """The rest of the sentence that says a file or folder cannot be read, and what to do."""
    if isinstance(error, PermissionError):
        return "cannot be read (permission denied): fix its permissions."
    return f"cannot be read ({error.strerror or error})."


def _labels(files: list[Path]) -> dict[Path, str]:
    """Each clip's name in the order printed and in the picture: its file name, or its path where
    another clip has the same file name (`take1/clip.wav`, `take2/clip.wav`)."""
    names = Counter(path.name for path in files)
    return {path: path.name if names[path.name] == 1 else str(path) for path in files}


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` names the file `b` (through links, `..` or another spelling of the path)."""
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _probe_writable(option: str, path: Path) -> None:
    """Create and remove a file beside `path`, as `_write_atomically` will: permissions are not all
    that stops a write (a read-only or special file system such as /sys refuses even root)."""
    probe = _temporary_beside(path)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise click.UsageError(
            f"{option} {path}: no file can be created in the folder {path.parent} "
            f"({exc.strerror or exc}): write elsewhere."
        ) from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


# Of the name in a temporary name: what is added (about 25 bytes) stays within the 255 bytes a file
# name may take, so a long name that fits is not refused as "no file can be created in the folder".
TEMPORARY_NAME_BYTES = 200


def _temporary_beside(path: Path) -> Path:
    """A new hidden name beside `path` for the file that is written, then renamed over it."""
    name = os.fsdecode(os.fsencode(path.name)[:TEMPORARY_NAME_BYTES])
    return path.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(4)}.part")


@contextlib.contextmanager
def _stop_signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP (a `timeout`, a service stopped, a terminal closed) end the process without
    unwinding by default, leaving the temporary file: here they raise SystemExit (exit code 128 + the
    signal's), so it is removed. One the caller ignores (`nohup`) stays ignored."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # (only there can it be set)
        yield
        return
    taken = [
        number for number in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(number) == signal.SIG_DFL
    ]
    for number in taken:
        signal.signal(number, stop)
    try:
        yield
    finally:
        for number in taken:
            signal.signal(number, signal.SIG_DFL)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a new file beside `path`, then rename it over `path`: a crash, a stop signal or
    a full disk never leaves a half-written piece, nor truncates the one that was there."""
    with _stop_signals_unwind():
        _write_then_rename(path, data)


def _write_then_rename(path: Path, data: bytes) -> None:
    temporary = _temporary_beside(path)
    try:
        # Through os.open, not tempfile: the file gets the usual permissions (0o666 less the umask).
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise click.ClickException(f"Could not write {path}: {exc.strerror or exc}.") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@click.command()
@click.argument(
    # (not exists=True: click would call a broken link or a link loop missing; `_inputs` names them)
    "inputs",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, file_okay=True),
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="The joined piece: .ogg (Opus), .mp3 or .wav.",
)
@click.option(
    "--fade", default=0.5, show_default=True, type=FiniteFloatRange(0, 10), help="Crossfade seconds."
)
@click.option(
    "--picture",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw the order as a PNG strip: a picture per clip, captioned with its join similarity.",
)
def curate(inputs: tuple[Path, ...], output: Path, fade: float, picture: Path | None) -> None:
    """Order clips so that similar ones follow each other and join them into one file.

    INPUTS are audio files or folders of them. Each clip loses its leading and trailing silence,
    gets a Chromaprint fingerprint, and every pair is scored; the order starts from the most
    similar pair and grows by nearest neighbour. Joins are crossfaded at even loudness.
    """
    logging_without_settings()
    import numpy as np
    from tqdm import tqdm

    from sampler.audio import (
        SAMPLE_RATE,
        AudioError,
        AudioTooLong,
        EmptyAudio,
        decode_audio,
        encode_audio,
        wav_bytes,
    )
    from sampler.curation import MAX_PIECE_SECONDS, Clip, CurationError
    from sampler.curation import curate as curate_clips
    from sampler.pictures import strip_picture

    suffix = output.suffix.lower()
    if suffix not in {".ogg", ".mp3", ".wav"}:
        raise click.UsageError(f"Write the piece as .ogg, .mp3 or .wav, not {suffix or 'no extension'!r}.")
    if picture is not None and picture.suffix.lower() != ".png":
        raise click.UsageError(f"The picture is a PNG: name it .png, not {picture.name!r}.")
    gathered = _inputs(inputs)
    files = gathered.files
    # Checked before the work, which may take minutes, rather than failing to write after it.
    for option, path in (("-o", output), ("--picture", picture)):
        if path is None:
            continue
        if not path.parent.is_dir():
            raise click.UsageError(f"{option} {path}: the folder {path.parent} does not exist.")
        # The piece goes to a new file beside `path` that replaces it: the folder must be writable.
        if not os.access(path.parent, os.W_OK | os.X_OK):
            fix = (
                "it is on a read-only file system"
                if on_read_only_mount(path.parent)
                else "fix its permissions"
            )
            raise click.UsageError(
                f"{option} {path}: the folder {path.parent} cannot be written: {fix}, or write elsewhere."
            )
        if any(_same_file(path, file) for file in files):
            raise click.UsageError(f"{option} {path} is one of the clips to join: it would overwrite it.")
        _probe_writable(option, path)
    if gathered.repeated:
        click.echo(f"Named more than once, joined once: {', '.join(map(str, gathered.repeated))}")
    labels = _labels(files)
    clips = []
    total_seconds = 0.0
    for path in tqdm(files, desc="decoding", unit="clip", leave=False):
        # The clips are held in memory together: bounded as the bot bounds /curate, so a small file
        # that decodes to hours (a silent FLAC) is refused by its header or once past the rest.
        left = max(0.0, MAX_PIECE_SECONDS - total_seconds)
        try:
            audio = decode_audio(path, max_seconds=left, max_bytes=None, silence_threshold_db=None)
        except EmptyAudio:  # no sound at all: left out like a silent clip
            audio = np.zeros(0, dtype=np.float32)
        except AudioTooLong as exc:
            length = f"at least {exc.actual_seconds:.1f}" if exc.at_least else f"{exc.actual_seconds:.1f}"
            before = f" (those before it last {total_seconds:.1f} s)" if total_seconds else ""
            raise click.ClickException(
                f"{path}: it is {length} s long, and the clips joined may last at most "
                f"{MAX_PIECE_SECONDS // 60} min ({MAX_PIECE_SECONDS} s) together{before}. "
                "Trim it, or join fewer or shorter clips."
            ) from None
        except AudioError as exc:
            raise click.ClickException(f"{path}: {file_wording(str(exc))}") from None
        except OSError as exc:  # made unreadable since it was checked, or a read error
            raise click.ClickException(f"{path} {_unreadable(exc)}") from None
        clips.append(Clip(labels[path], audio))
        total_seconds += len(audio) / SAMPLE_RATE

    bars: dict[str, tqdm[None]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False)
        bar.update(done - bar.n)

    try:
        result = curate_clips(clips, fade_s=fade, progress=progress)
    except CurationError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for bar in bars.values():
            bar.close()

    if suffix == ".wav":
        data = wav_bytes(result.audio)
    else:
        data = encode_audio(result.audio, SAMPLE_RATE, "mp3" if suffix == ".mp3" else "ogg", OUTPUT_BITRATE)
    # Drawn before anything is written: a picture that cannot be drawn costs no half-finished output.
    drawn = None if picture is None else strip_picture([clips[i] for i in result.order], result.join_scores)
    _write_atomically(output, data)
    if picture is not None and drawn is not None:
        _write_atomically(picture, drawn)

    click.echo("Order (similarity to the clip before):")
    for position, index in enumerate(result.order):
        score = "" if position == 0 else f"  {result.join_scores[position - 1]:.3f}"
        click.echo(f"{position + 1:>4}. {clips[index].name}{score}")
    left_out = [clips[i].name for i in range(len(clips)) if i not in result.order]
    if left_out:
        click.echo(f"Left out (no sound: silent or empty): {', '.join(left_out)}")
    mean = float(np.mean(result.join_scores)) if result.join_scores else 0.0
    click.echo(f"Wrote {output} ({result.duration_seconds:.1f} s, mean join similarity {mean:.3f}).")
    if picture is not None:
        click.echo(f"Drew the order in {picture}.")
