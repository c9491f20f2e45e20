"""`jukebot sample` refuses flags its mode would ignore and primes one sample per prompt file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sampler.audio import wav_bytes
from tests.jukebot.test_sample_cli import codes, model_dir, single_thread
from tests.jukebot.test_sample_cli_hardening import one_sentence, run
from tests.sampler.jukebox.conftest import tiny_audio

__all__ = ["model_dir", "single_thread"]  # fixtures shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")


def clip(path: Path, seed: int) -> Path:
    path.write_bytes(wav_bytes(tiny_audio(batch=1, samples=1024, seed=seed)[0].numpy(), 44100))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--audio_file=/nonexistent.wav", "--prompt_length_in_seconds=5"],
            "--audio_file is used only with --mode=primed, not --mode=ancestral; add --mode=primed, "
            "or leave it out",
        ),
        (
            ["--prompt_length_in_seconds=0.012"],
            "--prompt_length_in_seconds is used only with --mode=primed, not --mode=ancestral",
        ),
        (
            ["--codes_file=/nonexistent.pth.tar"],
            "--codes_file is used only with --mode=continue or --mode=upsample, not --mode=ancestral; "
            "add --mode=continue or --mode=upsample, or leave it out",
        ),
    ],
)
def test_a_flag_the_mode_does_not_use_is_refused_before_anything_is_written(
    model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """Left out of --mode, these ran an unprimed ancestral song and exited 0."""
    out = tmp_path / "out"
    result = run(model_dir, out, "--levels=1", *args)
    assert result.exit_code == 2 and message in one_sentence(result), result.output
    assert not out.exists()


def test_flags_of_another_mode_than_the_one_given_are_refused(model_dir: Path, tmp_path: Path) -> None:
    prompt = clip(tmp_path / "prompt.wav", seed=1)
    preview = run(model_dir, tmp_path / "preview", "--levels=1", "--n_samples=1")
    assert preview.exit_code == 0, preview.output
    top = tmp_path / "preview" / "level_2" / "data.pth.tar"
    primed = run(
        model_dir,
        tmp_path / "primed",
        "--mode=primed",
        f"--audio_file={prompt}",
        "--prompt_length_in_seconds=0.012",
        f"--codes_file={top}",
    )
    assert "--codes_file is used only with --mode=continue or --mode=upsample, not --mode=primed" in (
        one_sentence(primed)
    )
    up = run(model_dir, tmp_path / "up", "--mode=upsample", f"--codes_file={top}", f"--audio_file={prompt}")
    assert "--audio_file is used only with --mode=primed, not --mode=upsample" in one_sentence(up)
    assert not (tmp_path / "primed").exists() and not (tmp_path / "up").exists()


def test_each_prompt_file_primes_a_sample_when_n_samples_is_left_out(model_dir: Path, tmp_path: Path) -> None:
    """As a style sweep makes one sample per style: the second file was silently unused (1 sample)."""
    first, second = clip(tmp_path / "one.wav", seed=1), clip(tmp_path / "two.wav", seed=2)
    prompt = "--prompt_length_in_seconds=0.012"
    both = run(
        model_dir, tmp_path / "both", "--levels=1", "--mode=primed", f"--audio_file={first},{second}", prompt
    )
    assert both.exit_code == 0, both.output
    zs = codes(tmp_path / "both" / "level_2" / "data.pth.tar")[2]
    assert zs.shape[0] == 2
    alone = run(
        model_dir, tmp_path / "alone", "--levels=1", "--mode=primed", f"--audio_file={second}", prompt
    )
    assert alone.exit_code == 0, alone.output
    assert torch.equal(zs[1, :32], codes(tmp_path / "alone" / "level_2" / "data.pth.tar")[2][0, :32])


def test_fewer_samples_than_prompt_files_says_which_files_prime_nothing(
    model_dir: Path, tmp_path: Path
) -> None:
    first, second = clip(tmp_path / "one.wav", seed=1), clip(tmp_path / "two.wav", seed=2)
    out = tmp_path / "out"
    result = run(
        model_dir,
        out,
        "--levels=1",
        "--n_samples=1",
        "--mode=primed",
        f"--audio_file={first},{second}",
        "--prompt_length_in_seconds=0.012",
    )
    assert result.exit_code == 0, result.output  # as the original: the first file primes the one sample
    assert f"--audio_file: 2 files for 1 sample, so {second} primes nothing (--n_samples=2" in result.output
    assert codes(out / "level_2" / "data.pth.tar")[2].shape[0] == 1


def test_a_run_with_other_flags_sets_the_earlier_output_aside(model_dir: Path, tmp_path: Path) -> None:
    """Another seed and fewer samples into the same NAME: the earlier run's items were overwritten or
    left beside the new ones (a level_2 of 1 item next to a stale item_1)."""
    out = tmp_path / "song"
    first = run(model_dir, out, "--levels=1", "--n_samples=2", "--seed=1")
    assert first.exit_code == 0, first.output
    before = {path.name: path.read_bytes() for path in (out / "level_2").iterdir()}
    assert "item_1.wav" in before

    second = run(model_dir, out, "--levels=1", "--n_samples=1", "--seed=2")
    assert second.exit_code == 0, second.output
    assert f"{out} held the output of a run with other flags: moved to {out / 'earlier-1'}" in second.output
    kept = {path.name: path.read_bytes() for path in (out / "earlier-1" / "level_2").iterdir()}
    assert kept == before
    assert sorted(path.name for path in (out / "level_2").iterdir()) == sorted(
        name for name in before if not name.startswith("item_1")
    )
    assert codes(out / "level_2" / "data.pth.tar")[2].shape[0] == 1

    again = run(model_dir, out, "--levels=1", "--n_samples=1", "--seed=2")  # the same run: it resumes
    assert again.exit_code == 0 and "resuming from" in again.output and "moved to" not in again.output
    assert not (out / "earlier-2").exists()


def test_an_upsample_into_the_previews_name_keeps_the_codes_it_goes_on_from(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "song"
    preview = run(model_dir, out, "--levels=1", "--n_samples=1")
    assert preview.exit_code == 0, preview.output
    top = (out / "level_2" / "data.pth.tar").read_bytes()
    upsample = run(
        model_dir,
        out,
        "--levels=3",
        "--n_samples=1",
        "--mode=upsample",
        f"--codes_file={out / 'level_2' / 'data.pth.tar'}",
    )
    assert upsample.exit_code == 0, upsample.output
    assert (out / "level_2" / "data.pth.tar").read_bytes() == top  # its input, still beside its result
    assert (out / "level_0" / "data.pth.tar").is_file()
    assert (out / "earlier-1" / "styles.json").is_file()  # the preview's own record, set aside


def test_a_style_mismatch_with_a_codes_file_names_the_codes_file_not_flags_never_typed(
    model_dir: Path, tmp_path: Path
) -> None:
    one_style = tmp_path / "one_style"
    made = run(
        model_dir, one_style, "--levels=1", "--n_samples=2", "--artist=Alan Jackson", "--genre=Country"
    )
    assert made.exit_code == 0, made.output
    swept = tmp_path / "swept"
    made = run(
        model_dir,
        swept,
        "--levels=1",
        "--artist=Alan Jackson",
        "--artist=Ella Fitzgerald",
        "--genre=Country",
        "--genre=Jazz",
    )
    assert made.exit_code == 0, made.output
    more = ["--mode=continue", "--levels=1", "--sample_length_in_seconds=0.0581"]

    three = ["--artist=Alan Jackson", "--artist=Ella Fitzgerald", "--artist=Frank Sinatra"]
    refused = run(
        model_dir, tmp_path / "a", *more, f"--codes_file={one_style / 'level_2/data.pth.tar'}", *three
    )
    assert "3 styles for the 2 samples in the codes file: give one style per sample" in one_sentence(refused)
    refused = run(model_dir, tmp_path / "b", *more, f"--codes_file={swept / 'level_2/data.pth.tar'}", *three)
    assert (
        "the codes file holds one genre per sample (2), which does not match the 3 --artist values given: "
        "give --genre too" in one_sentence(refused)
    )
    # The codes file's one genre for every sample counts as given once: the artists may be swept.
    two = three[:2]
    swept_on = run(
        model_dir, tmp_path / "c", *more, f"--codes_file={one_style / 'level_2/data.pth.tar'}", *two
    )
    assert swept_on.exit_code == 0, swept_on.output
    assert "item_1: Ella Fitzgerald / Country" in swept_on.output


def test_a_preview_goes_on_to_the_full_song_from_its_top_level(model_dir: Path, tmp_path: Path) -> None:
    """`--levels=1`, listened to, then `--levels=3` into the same NAME: the top level is the preview's
    (not sampled again, nor set aside), and every level is what one `--levels=3` run makes."""
    out = tmp_path / "song"
    preview = run(model_dir, out, "--levels=1", "--n_samples=2")
    assert preview.exit_code == 0, preview.output
    top = (out / "level_2" / "item_0.wav").read_bytes()
    full = run(model_dir, out, "--levels=3", "--n_samples=2")
    assert full.exit_code == 0, full.output
    assert "resuming from" in full.output and not (out / "earlier-1").exists()
    assert (out / "level_2" / "item_0.wav").read_bytes() == top
    direct = run(model_dir, tmp_path / "direct", "--levels=3", "--n_samples=2")
    assert direct.exit_code == 0, direct.output
    for level in (0, 1, 2):
        ours = codes(out / f"level_{level}" / "data.pth.tar")
        theirs = codes(tmp_path / "direct" / f"level_{level}" / "data.pth.tar")
        assert all(a.equal(b) for a, b in zip(ours, theirs, strict=True))
