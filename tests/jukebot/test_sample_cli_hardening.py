"""`jukebot sample` refuses bad input in one sentence, before loading a model or writing a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.audio import wav_bytes
from tests.jukebot.test_sample_cli import codes, model_dir, single_thread
from tests.sampler.jukebox.conftest import tiny_audio

__all__ = ["model_dir", "single_thread"]  # fixtures shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")


def run(model_dir: Path, out: Path, *args: str) -> Result:
    """The CLI on tiny models; no --n_samples, --artist or --genre unless `args` give them."""
    base = [
        "sample",
        "--model=1b_lyrics",
        f"--model_dir={model_dir}",
        f"--name={out}",
        "--sample_length_in_seconds=0.0465",  # 2048 samples
        "--hop_fraction=0.5,0.5,0.5",
        "--max_batch_size=2",
        "--seed=3",
        "--device=cpu",
        "--fp32",
        "--no-progress",
    ]
    return CliRunner().invoke(main, [*base, *args], catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def write_clip(path: Path) -> Path:
    path.write_bytes(wav_bytes(tiny_audio(batch=1, samples=1024)[0].numpy(), 44100))
    return path


def one_sentence(result: Result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    "bad",
    [
        ["--hop_fraction=0"],
        ["--temperature=nan"],
        ["--top_k=3", "--top_p=0.5"],
        ["--sample_length_in_seconds=0.2"],  # longer than the model takes: only the model knows
        ["--artist=zzzqqq"],
    ],
)
def test_a_refused_run_leaves_a_finished_run_as_it_was(
    model_dir: Path, tmp_path: Path, bad: list[str]
) -> None:
    sweep = tmp_path / "sw"
    done = run(model_dir, sweep, "--levels=1", "--artist=abba", "--artist=ella fitzgerald", "--genre=pop")
    assert done.exit_code == 0, done.output
    before = snapshot(sweep)
    assert len(json.loads(before["styles.json"])["items"]) == 2
    refused = run(model_dir, sweep, "--levels=1", "--artist=unknown", "--genre=pop", *bad)
    one_sentence(refused)
    assert snapshot(sweep) == before
    fresh = run(model_dir, tmp_path / "fresh", *bad)
    one_sentence(fresh)
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sample_length_in_seconds=nan"],
            "--sample_length_in_seconds: give a positive number of seconds, got nan",
        ),
        (
            ["--sample_length_in_seconds=inf"],
            "--sample_length_in_seconds: give a positive number of seconds, got inf",
        ),
        (
            ["--sample_length_in_seconds=-5"],
            "--sample_length_in_seconds: give a positive number of seconds, got -5",
        ),
        (
            ["--sample_length_in_seconds=0.001"],
            "--sample_length_in_seconds: give at least 0.0029 s, got 0.001",
        ),
        (
            ["--total_sample_length_in_seconds=inf"],
            "--total_sample_length_in_seconds: give a positive number",
        ),
        (  # finite, but past what a count of samples holds: an OverflowError traceback
            ["--sample_length_in_seconds=1e308"],
            "--sample_length_in_seconds: give less than 600 s (every model takes songs shorter), got 1e+308",
        ),
        (
            ["--total_sample_length_in_seconds=600"],
            "--total_sample_length_in_seconds: give less than 600 s",
        ),
        (
            ["--mode=primed", "--audio_file=CLIP", "--prompt_length_in_seconds=1e308"],
            "--prompt_length_in_seconds: give less than 600 s",
        ),
        (
            ["--mode=primed", "--audio_file=CLIP", "--prompt_length_in_seconds=nan"],
            "--prompt_length_in_seconds: give a positive number of seconds, got nan",
        ),
        (["--temperature=nan"], "--temperature: temperatures must be numbers of at least 1e-06, e.g. 0.99"),
        (["--temperature=1e-45"], "--temperature: temperatures must be numbers of at least 1e-06, e.g. 0.99"),
        (["--seed=-1"], "--seed': -1 is not in the range 0<=x<=18446744073709551615"),
        (["--temperature=abc"], "--temperature: use 3 comma-separated numbers, e.g. 0.99,0.99,0.99"),
        (["--hop_fraction=0"], "--hop_fraction: each hop fraction must be in (0, 1]"),
        (["--top_p=nan"], "--top_p: give a number from 0 to 1"),
        (
            ["--mode=primed", "--audio_file=,", "--prompt_length_in_seconds=0.012"],
            "--audio_file: ',' names no file",
        ),
        (["--device=bogus"], "--device: 'bogus' is not a device: use cpu or cuda:N"),
        (["--name=CLIP"], "is a file, not a folder: pass another --name"),
        (["--artist=zzzqqq"], "1b_lyrics does not know the artist 'zzzqqq' and none is close"),
        (["--artist=Alan"], "does not know the artist 'Alan': use one of the closest ("),
        (["--genre=popp"], "does not know the genre 'popp': use one of the closest ('pop punk', 'pop'"),
        (["--mode=primed", "--audio_file=TEXT", "--prompt_length_in_seconds=0.012"], "--audio_file TEXT: it"),
    ],
)
def test_bad_values_get_one_sentence_before_any_model_loads(
    tmp_path: Path, args: list[str], message: str
) -> None:
    clip = write_clip(tmp_path / "clip.wav")
    text = tmp_path / "words.txt"
    text.write_text("not audio at all\n")
    args = [arg.replace("CLIP", str(clip)).replace("TEXT", str(text)) for arg in args]
    message = message.replace("TEXT", str(text))
    no_models = tmp_path / "no-models"  # loading would fail: every one of these must be found first
    result = run(no_models, tmp_path / "out", *args)
    line = one_sentence(result)
    assert message in line
    assert "models download" not in result.output and not (tmp_path / "out").exists()


def test_cuda_on_a_machine_without_it_is_refused_in_one_sentence(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run(tmp_path / "no-models", tmp_path / "out", "--device=cuda:0")
    assert "--device: cuda:0 is not available (" in one_sentence(result)
    assert "use --device=cpu" in result.output


def test_a_prompt_file_that_is_not_audio_is_explained_in_command_line_terms(tmp_path: Path) -> None:
    text = tmp_path / "words.txt"
    text.write_text("not audio at all\n")
    result = run(
        tmp_path / "no-models",
        tmp_path / "out",
        "--mode=primed",
        f"--audio_file={text}",
        "--prompt_length_in_seconds=0.012",
    )
    line = one_sentence(result)
    assert "Attach" not in result.output
    assert line.startswith(
        f"Error: --audio_file {text}: it is not audio (it looks like a text file): use a WAV"
    )


def test_sample_does_not_overwrite_its_own_input(model_dir: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    preview = run(model_dir, one, "--levels=1", "--n_samples=1")
    assert preview.exit_code == 0, preview.output
    before = snapshot(one)
    top = one / "level_2" / "data.pth.tar"
    again = run(model_dir, one, "--mode=continue", f"--codes_file={top}", "--n_samples=1", "--levels=1")
    assert "would be overwritten: pass another --name" in one_sentence(again)
    clip = one / "level_2" / "item_0.wav"
    primed = run(model_dir, one, "--mode=primed", f"--audio_file={clip}", "--prompt_length_in_seconds=0.012")
    assert f"--audio_file: {clip} is among the files this run writes" in one_sentence(primed)
    assert snapshot(one) == before

    # Upsampling in place writes the levels below and leaves the top level's codes alone; run again, it
    # resumes (the same run: same name, same mode, same input).
    up = run(model_dir, one, "--mode=upsample", f"--codes_file={top}")
    assert up.exit_code == 0, up.output
    assert (one / "level_2" / "data.pth.tar").read_bytes() == before["level_2/data.pth.tar"]
    assert codes(one / "level_0" / "data.pth.tar")[0].shape == (1, 512)
    resumed = run(model_dir, one, "--mode=upsample", f"--codes_file={top}")
    assert resumed.exit_code == 0 and "resuming from" in resumed.output


def test_continue_and_upsample_take_the_number_of_samples_from_the_codes(
    model_dir: Path, tmp_path: Path
) -> None:
    preview = run(model_dir, tmp_path / "preview", "--levels=1", "--n_samples=3")
    assert preview.exit_code == 0, preview.output
    top = tmp_path / "preview" / "level_2" / "data.pth.tar"
    up = run(model_dir, tmp_path / "up", "--mode=upsample", f"--codes_file={top}")
    assert up.exit_code == 0, up.output
    assert codes(tmp_path / "up" / "level_0" / "data.pth.tar")[0].shape == (3, 512)
    more = run(
        model_dir,
        tmp_path / "more",
        "--mode=continue",
        "--levels=1",
        "--sample_length_in_seconds=0.0581",
        f"--codes_file={top}",
    )
    assert more.exit_code == 0, more.output
    assert codes(tmp_path / "more" / "level_2" / "data.pth.tar")[2].shape == (3, 160)
    wrong = run(model_dir, tmp_path / "wrong", "--mode=upsample", f"--codes_file={top}", "--n_samples=2")
    assert f"{top} holds 3 samples; pass --n_samples=3" in one_sentence(wrong)


def test_an_artist_found_by_forgiving_its_spelling_is_labelled_as_the_model_knows_it(
    model_dir: Path, tmp_path: Path
) -> None:
    result = run(model_dir, tmp_path / "dion", "--levels=1", "--n_samples=1", "--artist=celine dion")
    assert result.exit_code == 0, result.output
    assert "--artist 'celine dion' is read as 'céline dion', the spelling 1b_lyrics knows" in result.output
    labels = torch.load(tmp_path / "dion/level_2/data.pth.tar", weights_only=True)["labels"]
    assert labels["artist"] == "céline dion"  # 'celine dion' would have been id 0: no artist at all


def test_a_hop_under_one_token_is_refused_before_anything_is_written(model_dir: Path, tmp_path: Path) -> None:
    """0.01 of a tiny model's window is no token: the cascade crashed after loading, with NAME made."""
    out = tmp_path / "out"
    result = run(model_dir, out, "--hop_fraction=0.01,0.5,0.5", "--n_samples=1")
    line = one_sentence(result)
    assert line == (
        "Error: the hop fraction of level 0 (0.01) moves its 64-token window by less than one token: "
        "give at least 0.015625"
    )
    assert not out.exists()
