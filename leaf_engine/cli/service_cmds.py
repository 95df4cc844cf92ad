"""Subcommands of the event-driven service: ``publish`` a request, show a run's ``status``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import LeafError
from ._app import app, console, console_err

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
    lines = [f"request {report['request_id']}: {report['state']}"]
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
    if report["state"] in ("FAILED", "INVALID"):
        console_err.print(f"run {report['state']}", markup=False, highlight=False)
        raise typer.Exit(1)

