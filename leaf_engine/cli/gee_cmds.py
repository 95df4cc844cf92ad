"""``leaf tasks``: the states of Earth Engine export tasks (those named, or every task of the project)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ._app import app, console


@app.command()
def tasks(
    ids: Annotated[list[str] | None, typer.Argument(help="Task ids printed by `leaf produce --backend gee`; "
                                                          "none: every task of the project.")] = None,
    project: Annotated[str | None, typer.Option("--project", help="Earth Engine cloud project.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: task id → state, description...")] = False,
) -> None:
    """Show the states of Earth Engine export tasks (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)."""
    from ..backends import gee

    states = gee.task_states(ids or None, project)
    if as_json:
        print(json.dumps(states, indent=2))
        return
    table = Table(title=f"Earth Engine tasks ({len(states)})")
    table.add_column("task id", no_wrap=True)  # ids are copied into other commands: never fold them
    for col in ("state", "description", "updated", "error"):
        table.add_column(col)
    for task_id, s in states.items():
        table.add_row(task_id, s["state"], s["description"], s["update_time"], s["error"])
    console.print(table)
