"""`jukebot doctor`: check what this machine needs, one line per check, and say what to fix."""

from __future__ import annotations

import click

from jukebot.commands import settings_or_exit


@click.command()
@click.option("--online", is_flag=True, help="Also log in to Discord to check the token.")
def doctor(online: bool) -> None:
    """Check the database, models, GPUs, codecs and Discord token; exit 1 when something blocks."""
    from jukebot.doctor import Verdict, run_checks
    from sampler.model_files import CheckpointVerifier

    settings = settings_or_exit(warn_misspelled=False)  # a check line says so instead

    def make_verifier() -> CheckpointVerifier:
        from sampler.loading import expected_shapes_for

        return CheckpointVerifier(
            expected_shapes_for=lambda name: expected_shapes_for(name, settings.model_dir)
        )

    blocking = 0
    for check in run_checks(settings, online=online, make_verifier=make_verifier):
        click.echo(check.line())
        blocking += check.verdict is Verdict.FAIL
    if blocking:
        raise click.ClickException(f"{blocking} problem(s) block this machine (FAIL lines above).")
    click.echo("nothing blocks this machine")
