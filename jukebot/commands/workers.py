"""`jukebot workers`: which workers share this database, what each serves, and when it was last heard of."""

from __future__ import annotations

import click

from jukebot.commands.jobs import with_store
from sampler.units import count_of, format_duration


@click.command()
@click.option(
    "--here",
    is_flag=True,
    help="Only the workers started on this machine (in this container, under Docker); exit 1 unless one "
    "of them is alive: the worker image's health check.",
)
def workers(here: bool) -> None:
    """The workers sharing this database, one line each: its id (host/pid/device), alive or silent and
    since when, and the models it serves. Reads only.

    A worker says it is alive every 30 s; one silent for 2 min stopped without saying so (killed, its
    machine down) or lost the database, and the bot counts it no more. A silent one's line goes a day
    after it fell silent; a worker that stops gracefully removes its own at once.
    """
    from sampler.worker.runtime import machine_of, this_machine
    from storage import WORKER_STALE_SECONDS

    seen = with_store(lambda store: store.workers_seen(), missing="no worker has used it")
    machine = this_machine()
    if here:
        seen = [worker for worker in seen if machine_of(worker.worker_id) == machine]
    for worker in seen:
        models = (
            ", ".join(worker.models) if worker.models else "no model (none it can run now: its log says why)"
        )
        state = (
            f"alive (seen {format_duration(worker.seconds_ago)} ago)"
            if worker.live
            else f"silent for {format_duration(worker.seconds_ago)}"
        )
        click.echo(f"{worker.worker_id} {state}, serves {models}")
    live = sum(worker.live for worker in seen)
    where = f" on this machine ({machine})" if here else ""
    if not seen:
        click.echo(f"no worker{where} has been heard of in the last day")
    else:
        click.echo(f"{count_of(live, 'worker')} alive{where}, {len(seen) - live} silent")
    if here and not live:
        raise click.ClickException(
            f"no worker on this machine ({machine}) said it was alive in the last "
            f"{WORKER_STALE_SECONDS:.0f} s: it is not running, hangs, or cannot reach the database "
            "(its log says which)"
        )
