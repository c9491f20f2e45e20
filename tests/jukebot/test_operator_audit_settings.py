"""Settings and `doctor` as an operator meets them: a mirror URL with credentials is refused at once
(no download that fails as a DNS error, no password shown anywhere), `doctor` records the files it
verified as `models verify` does, and the curation and progress settings have upper bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.curating import MAX_USER_SAMPLES
from jukebot.cli import main
from jukebot.doctor import Verdict, check_models
from jukebot.settings import SettingsError, load_settings
from sampler.loading import expected_shapes_for
from sampler.model_files import CheckpointVerifier, VerifiedCache, file_status, model_path
from tests.tiny_model_dir import write_tiny_model_dir

pytestmark = pytest.mark.usefixtures("clean_env")

PASSWORD = "s3cretPW"


def bad_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"Bad value for {name}: ") and "\n" not in message, message
    return message


# ------------------------------------------------------------------ mirrors with credentials


@pytest.mark.parametrize(
    "mirror",
    [
        f"http://user:{PASSWORD}@127.0.0.1:8080/models/",
        f"https://user:{PASSWORD}@mirror.example/models",
        f"https://user:{PASSWORD}@[::1]/models/",
        f"https://user:p@{PASSWORD}@mirror.example/models/",  # an unencoded @ in the password
        f"https://user:{PASSWORD}@mirror.example:abc/models/",  # and malformed besides
        f"https://user:{PASSWORD}/x@mirror.example/models/",  # an unencoded / in the password
    ],
)
def test_a_mirror_with_credentials_is_refused_without_showing_the_password(
    mirror: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = bad_setting(monkeypatch, "JUKEBOT_MODEL_MIRRORS", f"https://cdn.example/m/,{mirror}")
    assert PASSWORD not in message, message
    assert "credentials" in message or "is not a mirror URL" in message, message


def test_a_mirror_with_credentials_says_what_to_use_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    message = bad_setting(
        monkeypatch, "JUKEBOT_MODEL_MIRRORS", f"http://user:{PASSWORD}@127.0.0.1:8080/models/"
    )
    assert "'http://***@127.0.0.1:8080/models/'" in message, message
    assert "credentials" in message and "without user:password" in message, message
    # a user name alone is credentials too (urllib would take it for part of the host)
    message = bad_setting(monkeypatch, "JUKEBOT_MODEL_MIRRORS", "http://user@127.0.0.1:8080/models/")
    assert "'http://***@127.0.0.1:8080/models/'" in message and "credentials" in message, message


def test_models_list_refuses_a_mirror_with_credentials_in_one_line(tmp_path: Path) -> None:
    env = {
        "JUKEBOT_MODEL_DIR": str(tmp_path / "models"),
        "JUKEBOT_MODEL_MIRRORS": f"http://user:{PASSWORD}@127.0.0.1:8080/models/",
        "JUKEBOT_LOG_LEVEL": None,  # `-v` sets it in this process: restored after each run
    }
    for args in (["models", "list"], ["-v", "models", "list"], ["models", "download", "vqvae"]):
        result: Result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert PASSWORD not in result.output, result.output
        assert "Bad value for JUKEBOT_MODEL_MIRRORS" in result.output, result.output


def test_a_path_with_an_at_sign_is_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", "https://mirror.example/jukebox@v1/models")
    assert load_settings().model_mirrors == ["https://mirror.example/jukebox@v1/models/"]


# ------------------------------------------------------------------ doctor records its verdicts


class CountingVerifier(CheckpointVerifier):
    """The real verifier, counting the checkpoints it reads."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))
        self.read: list[str] = []

    def problems(self, name: str, path: Path) -> list[str]:
        self.read.append(name)
        return super().problems(name, path)


def test_doctor_records_what_it_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models", models=("1b_lyrics",))
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(model_dir))
    settings = load_settings()
    first = CountingVerifier(model_dir)
    checks = [c for c in check_models(settings, first) if c.message.startswith("1b_lyrics:")]
    assert [c.verdict for c in checks] == [Verdict.OK] and "verified" in checks[0].message
    assert sorted(first.read) == sorted(
        ["vqvae", "prior_1b_lyrics", "upsampler_level_0", "upsampler_level_1"]
    )
    for name in first.read:  # as `models list` shows it
        assert file_status(name, model_dir).state == "verified", name

    again = CountingVerifier(model_dir)
    checks = [c for c in check_models(settings, again) if c.message.startswith("1b_lyrics:")]
    assert [c.verdict for c in checks] == [Verdict.OK]
    assert again.read == []  # nothing read twice: the verdicts hold while the files stay unchanged

    listed = CliRunner().invoke(main, ["models", "list"], env={"JUKEBOT_MODEL_DIR": str(model_dir)})
    assert listed.exit_code == 0, listed.output
    assert "not verified yet" not in listed.output, listed.output


def test_doctor_command_records_what_it_verified(clean_env: Path) -> None:
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    env = {
        "DATABASE_URL": f"sqlite:///{clean_env / 'db.sqlite3'}",
        "JUKEBOT_GPUS": "cpu",
        "JUKEBOT_MODEL_DIR": str(model_dir),
        "DISCORD_TOKEN": "x",
    }
    doctor = CliRunner().invoke(main, ["doctor"], env=env)
    assert f"ok   model     1b_lyrics: verified in {model_dir}" in doctor.output, doctor.output
    listed = CliRunner().invoke(main, ["models", "list"], env={"JUKEBOT_MODEL_DIR": str(model_dir)})
    assert "1b_lyrics (lyrics): ready\n" in listed.output, listed.output


def test_doctor_records_a_damaged_file_and_leaves_it_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models", models=("1b_lyrics",))
    top = model_path(model_dir, "prior_1b_lyrics")
    damaged = top.read_bytes()[:100]
    top.write_bytes(damaged)
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(model_dir))
    settings = load_settings()
    (check,) = [
        c for c in check_models(settings, CountingVerifier(model_dir)) if c.message.startswith("1b_lyrics:")
    ]
    assert check.verdict is Verdict.WARN and "prior_1b_lyrics:" in check.message
    assert top.read_bytes() == damaged  # a check moves nothing aside: `models verify` does
    entry = VerifiedCache(model_dir).get("prior_1b_lyrics", top)
    assert entry is not None and entry["ok"] is False and entry["problems"], entry
    assert file_status("prior_1b_lyrics", model_dir).state == "failed"


# ------------------------------------------------------------------ upper bounds


def test_max_curate_samples_is_at_most_what_a_user_curation_gathers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_MAX_CURATE_SAMPLES", str(MAX_USER_SAMPLES))
    assert load_settings().max_curate_samples == MAX_USER_SAMPLES
    for value in (str(MAX_USER_SAMPLES + 1), "10000000000000000000000"):
        message = bad_setting(monkeypatch, "JUKEBOT_MAX_CURATE_SAMPLES", value)
        assert str(MAX_USER_SAMPLES) in message, message


def test_progress_poll_seconds_is_at_most_an_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_PROGRESS_POLL_SECONDS", "3600")
    assert load_settings().progress_poll_seconds == 3600
    for value in ("3601", "1e300"):
        message = bad_setting(monkeypatch, "JUKEBOT_PROGRESS_POLL_SECONDS", value)
        assert "3600" in message, message
