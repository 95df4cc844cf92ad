"""Subcommands about requests and the grid: ``validate``, ``tiles``, ``plan``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import grid
from ..errors import Problem, RequestError
from ..limits import Limits
from ..plan import make_plan
from ..request import ProductionRequest, parse_request
from ._app import app, console, console_err

RequestPath = Annotated[Path, typer.Argument(help="Production request (JSON file, or - for standard input).")]
LimitOption = Annotated[list[str] | None, typer.Option(
    "--limit", help="Override an admission limit, NAME=VALUE (e.g. pixels_per_job=2e10); repeatable. "
    "Defaults and LEAF_LIMIT_<NAME>: see README.")]


def limits_from(options: list[str] | None) -> Limits:
    return Limits.from_env(**dict(Limits.parse_option(o) for o in options or []))


def read_request(path: Path, limits: Limits | None = None) -> ProductionRequest:
    """Read and validate a request file (admission limits included); warnings go to stderr."""
    limits = limits or Limits.from_env()
    cap = limits.request_bytes + 1  # read no more than the limit: a huge file is refused, not loaded
    if str(path) == "-":
        import sys

        text = sys.stdin.buffer.read(cap)
    else:
        try:
            with open(path, "rb") as f:
                text = f.read(cap)
        except OSError as e:
            raise RequestError([Problem("(file)", str(path), f"cannot read the request file: {e.strerror}")]) from e
    if len(text) == cap:
        raise RequestError([Problem("(file)", str(path), f"is larger than the admission limit request_bytes = "
                                    f"{limits.request_bytes:,} (LEAF_LIMIT_REQUEST_BYTES): split the request")])
    req = parse_request(text, limits=limits)
    for w in req.warnings:
        console_err.print(f"warning: {w}", markup=False, highlight=False)
    return req


def _print_json(data: object) -> None:
    console.print_json(json.dumps(data), indent=2) if console.is_terminal else print(json.dumps(data, indent=2))


@app.command()
def validate(request: RequestPath, limit: LimitOption = None) -> None:
    """Check a request, admission limits included: print the normalised request as JSON (exit 0), or every
    problem (exit 2)."""
    _print_json(read_request(request, limits_from(limit)).to_dict())


@app.command()
def tiles(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (name, EPSG:3979 bounds, lon/lat polygon).")
    ] = False,
    subtiles: Annotated[bool, typer.Option("--subtiles", help="Also list the _4ij and _9ij sub-tiles.")] = False,
    geojson: Annotated[bool, typer.Option(
        "--geojson", help="Print a GeoJSON FeatureCollection (lon/lat outlines) that QGIS opens as a layer.")] = False,
) -> None:
    """List the CCRS production tiles (EPSG:3979 bounds and lon/lat outline)."""
    all_tiles = grid.production_tiles(subtiles)
    if geojson:
        from ..outputs import tiles_geojson

        print(json.dumps(tiles_geojson(all_tiles)))
        return
    if as_json:
        _print_json([t.to_dict() for t in all_tiles])
        return
    table = Table(title=f"CCRS tiles ({len(all_tiles)}), EPSG:3979 metres")
    for col in ("name", "xmin", "ymin", "xmax", "ymax", "NW corner lon/lat", "SE corner lon/lat"):
        table.add_column(col, justify="right" if col[0] in "xy" else "left")
    for t in all_tiles:
        nw, _, se, _ = t.corners_lonlat()
        table.add_row(
            t.name, *(f"{v:,.0f}" for v in t.bounds), f"{nw[0]:.3f}, {nw[1]:.3f}", f"{se[0]:.3f}, {se[1]:.3f}"
        )
    console.print(table)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n} B"


@app.command()
def plan(
    request: RequestPath,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole plan as JSON.")] = False,
    limit: LimitOption = None,
) -> None:
    """Pre-flight: jobs, output files, pixels and estimated bytes, Earth Engine tasks and shards."""
    from ..eecu import estimate

    req = read_request(request, limits_from(limit))
    p = make_plan(req)
    cost = estimate(req, p)
    if as_json:
        _print_json({**p.to_dict(), "eecu": cost})
        return
    table = Table(title=f"plan of request {p.request_id}")
    for col in ("object", "size (px)", "pixels", "est. bytes", "shards"):
        table.add_column(col, justify="left" if col == "object" else "right")
    for f in p.files:
        table.add_row(f.name.key(), f"{f.width}×{f.height}", f"{f.pixels:,}", _size(f.est_bytes), str(len(f.shards)))
    console.print(table)
    t = p.totals
    console.print(
        f"{t['jobs']} job(s), {t['files']} file(s) in {t['objects']} object(s), {t['ee_tasks']} Earth Engine "
        f"task(s); {t['pixels']:,} pixels, about {_size(t['est_bytes'])} (uncompressed {_size(t['raw_bytes'])})"
    )
    per_job = cost["per_job"]
    console.print(f"Earth Engine compute: about {cost['eecu_hours']:,.1f} EECU-hours "
                  f"({min(per_job.values()):,.2f}–{max(per_job.values()):,.2f} per job; model and sources: "
                  "leaf_engine.eecu)", markup=False, highlight=False)
    from ..backends.local.cost import local_core_hours  # here: the local engine's imports are heavy

    console.print(f"local engine: about {local_core_hours(req.sensor, p.jobs):.3g} core-hours "
                  "(reading COGs over HTTP; leaf_engine/backends/local/cost.py)")
