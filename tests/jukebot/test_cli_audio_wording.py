"""The command line's audio errors speak of files given, not of attachments: the decoder's sentences
are written for the bot ("re-attach it"), and the commands reword them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jukebot.cli import main
from jukebot.commands import file_wording
from sampler.audio import encode_audio, wav_bytes
from tests.sampler.test_curation import MELODY_A, melody


@pytest.fixture
def truncated_ogg(tmp_path: Path) -> Path:
    data = encode_audio(melody(MELODY_A, 3.0), 44_100, "ogg", 96_000)
    path = tmp_path / "cut.ogg"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_curate_names_a_damaged_clip_in_a_files_terms(tmp_path: Path, truncated_ogg: Path) -> None:
    good = tmp_path / "good.wav"
    good.write_bytes(wav_bytes(melody(MELODY_A, 2.0)))
    result = CliRunner().invoke(
        main, ["curate", str(good), str(truncated_ogg), "-o", str(tmp_path / "x.ogg")]
    )
    assert result.exit_code == 1 and f"{truncated_ogg}: " in result.output
    assert "Export it again." in result.output and "attach" not in result.output.lower(), result.output


def test_sample_names_a_damaged_prompt_in_a_files_terms(tmp_path: Path, truncated_ogg: Path) -> None:
    args = ["sample", f"--name={tmp_path / 'out'}", "--mode=primed", f"--audio_file={truncated_ogg}"]
    result = CliRunner().invoke(main, [*args, "--prompt_length_in_seconds=0.5", f"--model_dir={tmp_path}"])
    assert result.exit_code == 1 and f"--audio_file {truncated_ogg}: " in result.output
    assert "Export it again." in result.output and "attach" not in result.output.lower(), result.output


@pytest.mark.parametrize(
    "sentence,worded",
    [
        (
            "The file is empty (0 bytes). Attach an audio file.",
            "The file is empty (0 bytes). Use an audio file instead.",
        ),
        ("It is cut off. Export it again and re-attach it.", "It is cut off. Export it again."),
        ("It is damaged. Export the file again and re-attach it.", "It is damaged. Export it again."),
        (
            "It has 70 channels. Mix it down to mono or stereo and attach it again.",
            "It has 70 channels. Mix it down to mono or stereo.",
        ),
        ("Nothing to reword.", "Nothing to reword."),
    ],
)
def test_file_wording(sentence: str, worded: str) -> None:
    assert file_wording(sentence) == worded
    assert "attach" not in worded.lower()
