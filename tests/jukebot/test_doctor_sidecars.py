"""`jukebot doctor` with a wrong `.hparams.json` sidecar: the blocking line's advice fixes what is wrong
(the sidecar, named, with the fix its model line gave), not a download that skips the checkpoint as
present nor a verify that leaves it in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.loading import sidecar_path
from sampler.model_files import SIDECAR_FIX, VerifiedCache, model_path
from tests.tiny_model_dir import write_tiny_model_dir


def doctor(clean_env: Path, model_dir: Path) -> Result:
    """`jukebot doctor` on a host whose local worker would serve `model_dir` (the real verifier)."""
    env = {
        "DATABASE_URL": f"sqlite:///{clean_env / 'db.sqlite3'}",
        "JUKEBOT_GPUS": "cpu",
        "JUKEBOT_MODEL_DIR": str(model_dir),
        "DISCORD_TOKEN": "x",
    }
    return CliRunner().invoke(main, ["doctor"], env=env)


def lines(result: Result, prefix: str) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("vqvae", "{"),
        ("vqvae", "[]"),
        ("vqvae", '{"foo": 1}'),
        ("prior_1b_lyrics", '{"foo": 1}'),
        ("prior_1b_lyrics", "{"),
        ("upsampler_level_0", '{"level": 0, "n_ctx": "64"}'),
    ],
    ids=[
        "vqvae bad json",
        "vqvae an array",
        "vqvae lacks keys",
        "prior unknown key",
        "prior bad json",
        "up0 n_ctx",
    ],
)
def test_the_blocking_line_names_the_sidecar_and_its_fix(clean_env: Path, name: str, content: str) -> None:
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    sidecar = sidecar_path(model_path(model_dir, name))
    sidecar.write_text(content)
    result = doctor(clean_env, model_dir)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (blocking,) = lines(result, "FAIL models")
    assert f"no complete model in {model_dir}: " in blocking
    assert str(sidecar) in blocking and SIDECAR_FIX in blocking, blocking
    assert "models download" not in blocking and "models verify" not in blocking, blocking
    # the model line says what is wrong with it, once, and sends nowhere that does not fix it
    (model_line,) = [line for line in lines(result, "warn model") if " 1b_lyrics: " in line]
    assert SIDECAR_FIX in model_line and "models verify" not in model_line, model_line
    assert model_line.count(SIDECAR_FIX) == 1, model_line


def test_a_sidecar_to_fix_and_files_to_fetch_say_both(clean_env: Path) -> None:
    """No model has every file, and the VQ-VAE's sidecar (which every model uses) is wrong too:
    fetching alone would not do."""
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    model_path(model_dir, "prior_1b_lyrics").unlink()
    sidecar = sidecar_path(model_path(model_dir, "vqvae"))
    sidecar.write_text('{"foo": 1}')
    result = doctor(clean_env, model_dir)
    assert result.exit_code == 1, result.output
    (blocking,) = lines(result, "FAIL models")
    assert str(sidecar) in blocking and SIDECAR_FIX in blocking, blocking
    assert blocking.index(str(sidecar)) < blocking.index("`jukebot models download 1b_lyrics`"), blocking


def test_without_a_sidecar_fault_the_advice_is_as_before(clean_env: Path) -> None:
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    top = model_path(model_dir, "prior_1b_lyrics")
    top.write_bytes(top.read_bytes()[:100])  # damaged: `verify` moves it aside, then `download`
    (blocking,) = lines(doctor(clean_env, model_dir), "FAIL models")
    assert (
        "`jukebot models verify` (it moves damaged files aside), then `jukebot models download 1b_lyrics`"
        in (blocking)
    )
    assert ".hparams.json" not in blocking


def test_a_workers_verdict_on_a_file_whose_sidecar_is_wrong_still_names_the_sidecar(clean_env: Path) -> None:
    """A worker that could not build the model from the VQ-VAE's sidecar recorded the VQ-VAE as failing
    (so that no worker serves it until the sidecar changes): the doctor still says to fix the sidecar,
    not to verify and download a checkpoint that is not damaged."""
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    vqvae = model_path(model_dir, "vqvae")
    sidecar = sidecar_path(vqvae)
    sidecar.write_text('{"levels": 3}')
    VerifiedCache(model_dir).put("vqvae", vqvae, ok=False, checks="loads", problems=[f"{sidecar} is wrong"])
    result = doctor(clean_env, model_dir)
    (blocking,) = lines(result, "FAIL models")
    assert str(sidecar) in blocking and SIDECAR_FIX in blocking, blocking
    assert "models download" not in blocking and "models verify" not in blocking, blocking


def test_models_list_shows_why_a_recorded_verdict_failed(clean_env: Path) -> None:
    """A worker (or `sample`) that found a file unusable recorded why: the list says it, so the operator
    need not run `verify` to learn it."""
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    top = model_path(model_dir, "prior_1b_lyrics")
    why = "layer 3's attention weights are (64, 32), the sidecar says (64, 48)"
    VerifiedCache(model_dir).put("prior_1b_lyrics", top, ok=False, checks="loads", problems=[why])
    listed = CliRunner().invoke(main, ["models", "list"], env={"JUKEBOT_MODEL_DIR": str(model_dir)})
    assert listed.exit_code == 0, listed.output
    assert f"failed verification ({why}): run `jukebot models verify` for details" in listed.output


@pytest.mark.parametrize("found_by", ["verify", "sampling"])
def test_a_recorded_sidecar_verdict_is_told_against_that_sidecar(clean_env: Path, found_by: str) -> None:
    """A sidecar that reads as JSON but holds a wrong value, recorded as the sidecar's by `verify` or
    sampling: the doctor looked for a sidecar that is not JSON, found none, and blamed the VQ-VAE
    ("1b_lyrics: vqvae: present, not verified yet")."""
    from sampler.loading import ModelDirectory, ModelFileUnusable, record_unusable

    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    sidecar = sidecar_path(model_path(model_dir, "prior_1b_lyrics"))
    hparams = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(hparams | {"n_ctx": str(hparams["n_ctx"])}))
    if found_by == "verify":
        verified = CliRunner().invoke(
            main, ["models", "verify", "prior_1b_lyrics"], env={"JUKEBOT_MODEL_DIR": str(model_dir)}
        )
        assert verified.exit_code == 1, verified.output
    else:
        with pytest.raises(ModelFileUnusable) as unusable:
            ModelDirectory(model_dir, "1b_lyrics").prior_config(2)
        record_unusable(model_dir, unusable.value)
    result = doctor(clean_env, model_dir)
    (model_line,) = [line for line in lines(result, "warn model") if " 1b_lyrics: " in line]
    assert f" 1b_lyrics: prior_1b_lyrics: {sidecar} " in model_line, model_line
    assert "must be a whole number" in model_line and SIDECAR_FIX in model_line, model_line
    (blocking,) = lines(result, "FAIL models")
    assert str(sidecar) in blocking and "models download" not in blocking, blocking
