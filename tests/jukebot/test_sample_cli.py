"""`jukebot sample` end to end on tiny models written to a temp model directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.audio import decode_audio, wav_bytes
from sampler.jukebox.cascade import Cascade
from tests.sampler.jukebox.conftest import tiny_audio
from tests.tiny_model_dir import write_tiny_model_dir

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def single_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("models"))


def sample(model_dir: Path, out: Path, *args: str, labels: bool = True) -> Result:
    label_flags = [
        "--artist=Alan Jackson",
        "--genre=Country",
        "--lyrics=Way down yonder on the Chattahoochee",
    ]
    base = [
        "sample",
        "--model=1b_lyrics",
        f"--model_dir={model_dir}",
        f"--name={out}",
        "--sample_length_in_seconds=0.0465",  # 2048 samples
        "--n_samples=2",
        "--hop_fraction=0.5,0.5,0.5",
        "--max_batch_size=2",
        *(label_flags if labels else []),
        "--seed=3",
        "--device=cpu",
        "--fp32",
        "--no-progress",
    ]
    return CliRunner().invoke(main, [*base, *args], catch_exceptions=False)


def codes(path: Path) -> list[torch.Tensor]:
    return torch.load(path, weights_only=True)["zs"]


def test_ancestral_writes_every_level_and_resumes(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "song"
    result = sample(model_dir, out, "--levels=3")
    assert result.exit_code == 0, result.output
    for level, hop in ((0, 4), (1, 8), (2, 16)):
        for item in range(2):
            audio = decode_audio(
                (out / f"level_{level}" / f"item_{item}.wav").read_bytes(), silence_threshold_db=None
            )
            assert audio.shape == (2048,)
            assert (out / f"level_{level}" / f"item_{item}.ogg").stat().st_size > 0
        zs = codes(out / f"level_{level}" / "data.pth.tar")
        assert zs[level].shape == (2, 2048 // hop)
    final = codes(out / "level_0" / "data.pth.tar")
    again = sample(model_dir, out, "--levels=3")
    assert "resuming from" in again.output
    assert all(torch.equal(a, b) for a, b in zip(final, codes(out / "level_0" / "data.pth.tar"), strict=True))


def test_preview_then_upsample_then_continue(model_dir: Path, tmp_path: Path) -> None:
    preview = sample(model_dir, tmp_path / "preview", "--levels=1")
    assert preview.exit_code == 0, preview.output
    assert not (tmp_path / "preview" / "level_1").exists()
    top = codes(tmp_path / "preview" / "level_2" / "data.pth.tar")
    up = sample(
        model_dir,
        tmp_path / "up",
        "--mode=upsample",
        f"--codes_file={tmp_path / 'preview/level_2/data.pth.tar'}",
    )
    assert up.exit_code == 0, up.output
    upsampled = codes(tmp_path / "up" / "level_0" / "data.pth.tar")
    assert torch.equal(upsampled[2], top[2]) and upsampled[0].shape == (2, 512)
    more = sample(
        model_dir,
        tmp_path / "more",
        "--mode=continue",
        "--levels=1",
        "--sample_length_in_seconds=0.0581",  # 2560 samples
        f"--codes_file={tmp_path / 'preview/level_2/data.pth.tar'}",
    )
    assert more.exit_code == 0, more.output
    longer = codes(tmp_path / "more" / "level_2" / "data.pth.tar")
    assert longer[2].shape == (2, 160) and torch.equal(longer[2][:, :128], top[2])


def test_primed_keeps_the_prompt(model_dir: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(tiny_audio(batch=1, samples=1024)[0].numpy(), 44100))
    result = sample(
        model_dir,
        tmp_path / "primed",
        "--mode=primed",
        f"--audio_file={clip}",
        "--prompt_length_in_seconds=0.012",
    )
    assert result.exit_code == 0, result.output
    zs = codes(tmp_path / "primed" / "level_0" / "data.pth.tar")
    assert zs[2].shape == (2, 128)
    assert torch.equal(zs[2][0, :32], zs[2][1, :32])  # both samples continue the same 512-sample prompt


def test_a_style_sweep_gives_each_item_its_own_artist(model_dir: Path, tmp_path: Path) -> None:
    swept = sample(model_dir, tmp_path / "sweep", "--levels=1", "--artist=ella fitzgerald")
    assert swept.exit_code == 0, swept.output
    assert "item_0: Alan Jackson / Country\n  item_1: ella fitzgerald / Country" in swept.output
    labels = json.loads((tmp_path / "sweep" / "styles.json").read_text())["items"]
    assert [(item["artist"], item["genre"], item["files"]) for item in labels] == [
        ("Alan Jackson", "Country", ["level_2/item_0.wav", "level_2/item_0.ogg"]),
        ("ella fitzgerald", "Country", ["level_2/item_1.wav", "level_2/item_1.ogg"]),
    ]
    # Item 0 is what Alan Jackson alone makes; item 1 is not (same seed, same draws, another artist).
    alone = sample(model_dir, tmp_path / "alone", "--levels=1")
    assert alone.exit_code == 0, alone.output
    ours, theirs = (
        codes(tmp_path / "sweep/level_2/data.pth.tar")[2],
        codes(tmp_path / "alone/level_2/data.pth.tar")[2],
    )
    assert torch.equal(ours[0], theirs[0]) and not torch.equal(ours[1], theirs[1])


def test_missing_models_name_the_download_command(tmp_path: Path) -> None:
    result = sample(tmp_path / "empty", tmp_path / "out")
    assert result.exit_code == 1
    assert "Run `jukebot models download 1b_lyrics` to fetch them." in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode=upsample"], "--mode=upsample needs --codes_file"),
        (["--mode=primed"], "--mode=primed needs --audio_file and --prompt_length_in_seconds"),
        (["--hop_fraction=a,b"], "use 3 comma-separated numbers"),
        (["--sr=22050"], "Jukebox models run at 44100 Hz"),
        (["--sample_length_in_seconds=0.2"], "this model handles songs shorter than 0.1 s"),
        (["--genre=jazz", "--genre=rock"], "3 styles for 2 samples: give one style per sample"),
        (["--artist=abba", "--genre=jazz", "--genre=rock"], "once per sample (3), got 2"),
    ],
)
def test_bad_flags_say_what_is_wrong(model_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = sample(model_dir, tmp_path / "bad", *args)
    assert result.exit_code != 0
    assert message in result.output


def test_upsample_reads_the_labels_and_length_saved_with_the_codes(model_dir: Path, tmp_path: Path) -> None:
    preview = sample(model_dir, tmp_path / "preview", "--levels=1", "--total_sample_length_in_seconds=0.09")
    assert preview.exit_code == 0, preview.output
    saved = torch.load(tmp_path / "preview/level_2/data.pth.tar", weights_only=True)["labels"]
    assert saved["artist"] == "Alan Jackson" and saved["total_length"] == int(0.09 * 44100)
    up = sample(
        model_dir,
        tmp_path / "up",
        "--mode=upsample",
        f"--codes_file={tmp_path / 'preview/level_2/data.pth.tar'}",
        labels=False,  # not repeated: they come from the codes file
    )
    assert up.exit_code == 0, up.output
    assert torch.load(tmp_path / "up/level_0/data.pth.tar", weights_only=True)["labels"] == saved


def test_comma_separated_audio_files_prime_one_sample_each(model_dir: Path, tmp_path: Path) -> None:
    clips = []
    for seed in (1, 2):
        clip = tmp_path / f"clip{seed}.wav"
        audio = tiny_audio(batch=1, samples=1024, seed=seed)[0].numpy()
        clip.write_bytes(wav_bytes(audio, 44100))
        clips.append(clip)
    prompt = "--prompt_length_in_seconds=0.012"
    both = sample(
        model_dir, tmp_path / "both", "--mode=primed", f"--audio_file={clips[0]},{clips[1]}", prompt
    )
    assert both.exit_code == 0, both.output
    zs = codes(tmp_path / "both" / "level_2" / "data.pth.tar")
    for row, clip in enumerate(clips):
        alone = sample(model_dir, tmp_path / clip.stem, "--mode=primed", f"--audio_file={clip}", prompt)
        assert alone.exit_code == 0, alone.output
        assert torch.equal(
            zs[2][row, :32], codes(tmp_path / clip.stem / "level_2" / "data.pth.tar")[2][0, :32]
        )
    assert not torch.equal(zs[2][0, :32], zs[2][1, :32])


def test_prompt_problems_are_found_before_loading_a_model(tmp_path: Path) -> None:
    no_models = tmp_path / "no-models"  # loading would fail: these errors must come first
    missing = sample(
        no_models, tmp_path / "out", "--mode=primed", "--audio_file=nope.wav", "--prompt_length_in_seconds=1"
    )
    assert missing.exit_code == 2 and "nope.wav does not exist or is not a file" in missing.output
    assert "Traceback" not in missing.output and "models download" not in missing.output
    bare = sample(no_models, tmp_path / "out", "--mode=primed")
    assert "--mode=primed needs --audio_file and --prompt_length_in_seconds" in bare.output


def test_ctrl_c_says_how_to_resume(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_sample = Cascade.sample

    def interrupted_after_one_window(self: Cascade, request: Any, state: Any = None, **kwargs: Any) -> Any:
        def on_window(current: Any) -> None:
            kwargs["on_window"](current)
            raise KeyboardInterrupt  # what Ctrl-C raises, here right after the first stored window

        return real_sample(self, request, state, **(kwargs | {"on_window": on_window}))

    monkeypatch.setattr(Cascade, "sample", interrupted_after_one_window)
    out = tmp_path / "song"
    stopped = sample(model_dir, out, "--levels=1")
    assert stopped.exit_code == 130
    assert f"Interrupted: the finished windows are saved in {out / 'checkpoint.pt'}." in stopped.output
    assert "Run the same command again to resume." in stopped.output
    monkeypatch.setattr(Cascade, "sample", real_sample)
    resumed = sample(model_dir, out, "--levels=1")
    assert (
        resumed.exit_code == 0 and "resuming from" in resumed.output and "(1 windows done)" in resumed.output
    )
