"""Subcommands of the event-driven service: ``publish`` a request, show a run's ``status``, ``reconcile`` active
runs, ``cancel`` or ``resume`` a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import LeafError
from ._app import app, console, console_err

if TYPE_CHECKING:
    from ..sinks import GcsSink

RequestPath = Annotated[Path, typer.Argument(help="Production request (JSON file, or - for standard input).")]


@app.command()
def publish(
    request: RequestPath,
    topic: Annotated[str, typer.Option("--topic", help="Requests topic: projects/PROJECT/topics/TOPIC.")],
    request_id: Annotated[str | None, typer.Option(
        "--request-id", help="Message attribute request_id (default: derived from the normalised request).")] = None,
) -> None:
    """Validate a request and publish it on the requests topic (honours PUBSUB_EMULATOR_HOST)."""
    from ..catalogue.tile_ready import PubSubPublisher
    from ..request import parse_request

    data = _read_bytes(request)
    req = parse_request(data, request_id=request_id)  # fail here, with every problem, not in the cloud
    for w in req.warnings:
        console_err.print(f"warning: {w}", markup=False, highlight=False)
    attributes = {"request_id": request_id} if request_id else {}
    message_id = PubSubPublisher(topic).publish(data, attributes)
    console.print(json.dumps({"message_id": message_id, "topic": topic,
                              "request_id": request_id or req.request_id}), markup=False, highlight=False)


def _read_bytes(path: Path) -> bytes:
    """The request as the user wrote it: the service validates and normalises it the same way."""
    import sys

    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as e:
        raise LeafError(f"cannot read the request file {path}: {e.strerror}") from e


@app.command()
def status(
    request_id: Annotated[str, typer.Argument(help="The run's request id (printed by publish / validate).")],
    bucket: Annotated[str | None, typer.Option("--bucket", help="The request's GCS_bucket.")] = None,
    folder: Annotated[str, typer.Option("--folder", help="The request's out_folder.")] = "",
    out: Annotated[Path | None, typer.Option("--out", help="A local output folder (leaf produce --out) "
                                             "instead of a bucket.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full status as JSON.")] = False,
) -> None:
    """Show a run: state, expected vs present objects, complete items, problems and errors."""
    from ..outputs import status_sink
    from ..service import run_status

    report = run_status(status_sink(bucket, out), request_id, folder)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    degraded = report.get("degraded") or {}
    lines = [f"request {report['request_id']}: {report['state']}" + (
        f", DEGRADED: {len(degraded)} item(s) no longer complete" if degraded else "")]
    for item_id, d in sorted(degraded.items()):
        lines.append(f"  degraded {item_id} since {d['since']}: a file was replaced by one that fails its check")
        lines += [f"    {key}: {e}" for key, errors in sorted(d["problems"].items()) for e in errors]
    summary = report.get("task_summary")
    if summary and summary["tasks"]:
        lines.append(f"tasks: {_bar(summary['done'], summary['tasks'])} {summary['done']}/{summary['tasks']} "
                     "settled (" + ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) + ")")
        estimate = (summary.get("estimate") or {}).get("eecu_hours")
        lines.append(f"EECU-hours: {summary['eecu_hours']:.3f} measured" + (
            f", {estimate:.3f} estimated" if estimate is not None else ""))
        lines += [f"  task {t['job_id']}/{t['product']}: {t['state']} (attempt {t['attempts']})"
                  + (f" — {t['error']}" if t.get("error") else "")
                  for t in report["tasks"] if t["state"] not in ("COMPLETE",)][:40]
    if "expected" in report:
        lines.append(f"objects: {report['present']}/{report['expected']} present")
        lines += [f"  missing: {k}" for k in report["missing"][:20]]
        if len(report["missing"]) > 20:
            lines.append(f"  ... and {len(report['missing']) - 20} more")
        lines.append(f"items: {len(report['complete_items'])}/{len(report['items'])} complete")
        lines += [f"  {k}: {s}" for k, s in sorted(report["items"].items())]
        for key, p in report.get("problems", {}).items():
            lines += [f"  problem {key}: {e}" for e in p.get("errors", []) + p.get("warnings", [])]
    for e in report.get("errors", []):
        lines.append(f"error: {e}")
    console.print("\n".join(lines), markup=False, highlight=False)
    if report["state"] in ("FAILED", "INVALID", "PARTIAL", "CANCELLED"):
        console_err.print(f"run {report['state']}", markup=False, highlight=False)
        raise typer.Exit(1)
    if degraded:  # scripts watching the exit status must notice a run whose outputs went bad after it ended
        console_err.print(f"run {report['state']} but degraded: leaf resume re-exports its failing files "
                          "(Earth Engine runs); else write them again", markup=False, highlight=False)
        raise typer.Exit(1)



def _bar(done: int, total: int, width: int = 30) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


Bucket = Annotated[str, typer.Option("--bucket", help="The request's GCS_bucket.")]
Folder = Annotated[str, typer.Option("--folder", help="The request's out_folder.")]
Project = Annotated[str | None, typer.Option("--project", help="Earth Engine cloud project.")]


def _lifecycle(bucket: str, project: str | None) -> tuple[GcsSink, dict[str, Any]]:
    """The bucket's sink and what every lifecycle command passes on: the Earth Engine tasks of ``project`` and
    the run-finished publisher (LEAF_RUN_FINISHED_TOPIC, when set)."""
    from .. import reconcile as lifecycle
    from ..sinks import GcsSink

    return GcsSink(bucket), {"backend": lifecycle.earth_engine_tasks(project),
                             "publisher": lifecycle.run_finished_publisher()}


@app.command()
def reconcile(
    bucket: Bucket,
    folder: Annotated[str | None, typer.Option(
        "--folder", help="Reconcile every run of this out_folder (default: the runs marked active in the bucket).")
    ] = None,
    project: Project = None,
) -> None:
    """One reconcile pass: record Earth Engine task states and EECU, retry, start queued tasks, end runs.

    Prints one JSON line per run. Settings: LEAF_MAX_TASKS_IN_FLIGHT, LEAF_MAX_TASK_ATTEMPTS,
    LEAF_RETRY_BACKOFF_S, LEAF_HANDLER_BUDGET_S; run-finished messages go to LEAF_RUN_FINISHED_TOPIC when set.
    """
    from .. import reconcile as lifecycle

    sink, wiring = _lifecycle(bucket, project)
    outcomes = lifecycle.reconcile(sink, folder, **wiring)
    for o in outcomes:
        print(json.dumps(o.to_dict()))


@app.command()
def cancel(
    request_id: Annotated[str, typer.Argument(help="The run's request id.")],
    bucket: Bucket,
    folder: Folder = "",
    project: Project = None,
) -> None:
    """Cancel a run: its Earth Engine operations are cancelled and it ends CANCELLED (no tile-ready after)."""
    from .. import reconcile as lifecycle

    sink, wiring = _lifecycle(bucket, project)
    record = lifecycle.cancel_run(sink, folder, request_id, **wiring)
    print(json.dumps({"request_id": request_id, "state": record.state, "counts": record.counts()}))


@app.command()
def resume(
    request_id: Annotated[str, typer.Argument(help="The run's request id.")],
    bucket: Bucket,
    folder: Folder = "",
    project: Project = None,
) -> None:
    """Resume a run: resubmit its failed, cancelled or missing exports (new attempts), skip complete ones."""
    from .. import reconcile as lifecycle

    sink, wiring = _lifecycle(bucket, project)
    outcome = lifecycle.resume_run(sink, folder, request_id, **wiring)
    print(json.dumps(outcome.to_dict()))
