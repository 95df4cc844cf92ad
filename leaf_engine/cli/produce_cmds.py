"""``leaf produce``: run a request on the local engine (default for local outputs) or start Earth Engine exports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..request import ProductionRequest
from ._app import app, console, console_err
from .request_cmds import RequestPath, read_request

DEFAULT_OUT = Path("out")
BACKENDS = ("local", "gee")


def resolve_path(value: str | None, request_path: Path) -> str | None:
    """A path named in the request, relative to the request file's folder (so a request and its data can
    travel together); URLs and absolute paths as given."""
    if not value or "://" in value or Path(value).is_absolute() or str(request_path) == "-":
        return value
    return str((request_path.resolve().parent / value).resolve())


def _print_local_result(result: Any, out_dir: Path) -> None:
    cogs = [k for k in result.files if k.endswith(".tif")]
    pngs = [k for k in result.files if k.endswith(".png")]
    skipped = [j.job_id for j in result.jobs if j.skipped]
    for j in result.jobs:
        if not j.skipped:
            share = j.pixels_with_obs / j.pixels_in_region if j.pixels_in_region else 0.0
            console.print(f"{j.job_id}: {len(j.scenes)} scene(s), {j.width}×{j.height} px, "
                          f"{share:.0%} of the region with a clear observation, {j.seconds:.1f} s",
                          markup=False, highlight=False)
    if skipped:
        console.print(f"skipped (outputs already there; set \"rerun\": \"overwrite\" to redo): {', '.join(skipped)}",
                      markup=False, highlight=False)
    root = out_dir.resolve()
    console.print(f"\nwrote {len(cogs)} GeoTIFF(s) (COG) and {len(pngs)} quicklook PNG(s) under {root}",
                  markup=False, highlight=False)
    if cogs:
        example = root / cogs[0]
        bindir = Path(sys.executable).parent  # works from a fresh shell: .venv/bin is not on PATH
        console.print("look at them:\n"
                      f"  {bindir / 'rio'} info --tags {example}   # grid, nodata, tags (scale factor, QC bits)\n"
                      f"  {bindir / 'python'} -c \"import leaf_engine; print(leaf_engine.open_outputs('{root}'))\"\n"
                      "  open the .png quicklooks next to each .tif (fixed colour scales, legend in physical units)\n"
                      "  or drag the .tif files into QGIS: each has a .qml style beside it (value = DN × "
                      "scale_factor; 255 = no data)",
                      markup=False, highlight=False)


@app.command()
def produce(
    request: RequestPath,
    backend: Annotated[str | None, typer.Option(
        "--backend", help="local (this machine, STAC scenes) or gee (Earth Engine exports). "
        "Default: local when out_location is local, else gee.")] = None,
    scenes: Annotated[str | None, typer.Option(
        "--scenes", help="STAC ItemCollection/catalog of input scenes, or a STAC API URL (overrides the "
        "request's 'scenes').")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder for out_location 'local'.")] = DEFAULT_OUT,
    dask: Annotated[str | None, typer.Option(
        "--dask", help="Run blocks as tasks on the dask.distributed scheduler at this address (tcp://host:8786).")
    ] = None,
    landcover: Annotated[str | None, typer.Option(
        "--landcover", help="NALCMS land-cover raster (classes 1-19) for SL2P-CCRS; overrides the request's "
        "'landcover'.")] = None,
    block: Annotated[int, typer.Option("--block", min=256, help="Block side in pixels (memory per block).")] = 1024,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel blocks (threads).")] = 2,
    open_jobs: Annotated[int | None, typer.Option(
        "--open-jobs", min=1, help="Jobs in progress at once: the scene search, blocks and COG writing of "
        "different jobs overlap (1: one job after another; default: the local engine's DEFAULT_OPEN_JOBS).")
    ] = None,
    project: Annotated[str | None, typer.Option("--project", help="Earth Engine cloud project (gee).")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
    manifest: Annotated[bool, typer.Option(
        "--manifest/--no-manifest", help="Also write the run record and STAC items/collection (local).")] = True,
    quicklooks: Annotated[bool | None, typer.Option(
        "--quicklooks/--no-quicklooks", help="Write a quicklook PNG per product file (local; default: yes, or "
        "the LEAF_QUICKLOOKS environment variable, 0 or 1).")] = None,
) -> None:
    """Produce the request's maps: on this machine from STAC scenes, or as Earth Engine exports."""
    req = read_request(request)
    chosen = backend or ("local" if req.out_location == "local" else "gee")
    if chosen not in BACKENDS:
        raise typer.BadParameter(f"--backend must be one of {', '.join(BACKENDS)}, not {chosen!r}")
    if chosen == "gee":
        from ..backends import gee

        started = gee.start_exports(req, project=project)
        for task in started:  # stdout: one line per file, task id first (scriptable)
            console.print(f"{task.task_id or '-'}\t{task.state}\t{task.prefix}", markup=False, highlight=False)
        console_err.print(f"{len(started)} Earth Engine export task(s) for request {req.request_id}",
                          markup=False, highlight=False)
        return
    from ..backends.local import produce as run_local

    if not _kernel_cached():
        console_err.print("first run on this machine: numba compiles the SL2P kernel once before the first job "
                          "(a few minutes on a small machine, silent; `python -m leaf_engine.compiled` does it at "
                          f"set-up); later runs reuse its cache ({_kernel_cache_dir()})", markup=False, highlight=False)
    source = scenes or resolve_path(req.scenes, request)
    result = run_local(
        req, out_dir=out, scenes=source, dask_address=dask,
        progress=not no_progress, landcover=landcover or resolve_path(req.landcover, request), block_size=block,
        workers=workers, quicklooks=quicklooks, **({} if open_jobs is None else {"open_jobs": open_jobs}))
    _print_local_result(result, out)
    if manifest:
        from ..outputs import derived_from

        _write_manifests(req, out, derived_from(result.jobs, source))


def _kernel_cache_dir() -> Path:
    from ..compiled import cache_folder

    return Path(cache_folder())  # numba's choice: NUMBA_CACHE_DIR, next to the module, or a read-only one's copy


def _kernel_cached() -> bool:
    """Has numba's on-disk cache of the kernel (``cache=True``) been written on this machine?"""
    cache = _kernel_cache_dir()
    return cache.is_dir() and any(cache.rglob("kernel._run-*.nbi"))


def _write_manifests(req: ProductionRequest, out: Path, scenes: dict[str, list[str]] | None = None) -> None:
    """Run record, STAC items and collection for the local outputs: the same catalogue code as the cloud path."""
    from ..naming import collection_key
    from ..service import catalogue_local_run
    from ..sinks import open_sink

    sink = open_sink(req, out)
    from ..catalogue.stac import catalog_key

    results = catalogue_local_run(req, sink, derived_from=scenes)
    complete = len({r.item_id for r in results if r.complete})
    where = getattr(sink, "local_path", sink.uri)
    console.print(f"STAC catalogue: {where(catalog_key(req.out_folder))} (collection "
                  f"{where(collection_key(req.out_folder, req.request_id))}, {complete} complete item(s))",
                  markup=False, highlight=False)
