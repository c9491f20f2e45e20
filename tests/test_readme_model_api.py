"""The README's model API example runs as printed, on a tiny random-weight model directory: only its
model directory and lengths change, and running it again resumes from its saved state."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampler.audio import decode_audio
from tests.tiny_model_dir import write_tiny_model_dir

README = Path(__file__).resolve().parent.parent / "README.md"
# The lines the test swaps for a tiny model: the README's own, checked word for word.
SETTINGS = {
    'model_dir, model = Path.home() / ".cache/jukebot/models", "1b_lyrics"  # `jukebot models list` says where': (
        'model_dir, model = Path(TINY_MODEL_DIR), "1b_lyrics"'
    ),
    "seconds, song_seconds = 20, 180": "seconds, song_seconds = 0.05, 0.08",
}


def model_api_example() -> str:
    section = README.read_text().split("## Model API (Python)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the Model API section holds one python example"
    source = blocks[0]
    for line, tiny in SETTINGS.items():
        assert line in source, f"the README example no longer sets {line!r}"
        source = source.replace(line, tiny)
    return source


def run_example(source: str, model_dir: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {"TINY_MODEL_DIR": str(model_dir)}
    exec(compile(source, str(README), "exec"), namespace)  # the README's own example
    return namespace


@pytest.mark.timeout(240)
def test_readme_model_api_example_runs_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    source = model_api_example()

    first = run_example(source, model_dir)
    preview, full = first["state"], first["full"]
    length = first["length"]
    assert tuple(preview.codes[2].shape) == (3, length // first["top_hop"])
    assert tuple(first["songs"].shape) == (3, length)
    assert [codes.shape[1] * hop for codes, hop in zip(full.codes, first["cascade"].hops, strict=True)] == [
        length
    ] * 3
    heard = decode_audio(work / "preview_0.ogg", silence_threshold_db=None)
    assert heard.shape[0] > 0 and np.abs(heard).max() > 0
    assert (work / "preview.state").is_file()

    # a second run finds every window saved and resumes: no window is sampled (or saved) again
    saved_at = (work / "preview.state").stat().st_mtime_ns
    again = run_example(source, model_dir)
    assert (work / "preview.state").stat().st_mtime_ns == saved_at
    assert again["state"].windows_done == preview.windows_done
    for saved, resumed in zip(preview.codes, again["state"].codes, strict=True):
        assert np.array_equal(saved.numpy(), resumed.numpy())
