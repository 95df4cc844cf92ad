"""``produce``: run a production request on this machine, job by job, block by block, into a sink."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import shapely
from odc.geo.geobox import GeoBox
from pyproj import Transformer

from ... import products
from ...errors import LeafError
from ...sensors import members
from ...sl2p import load_network_set
from . import stac_api
from .executors import BlockExecutor, make_executor
from .masks import describe_masks
from .pipeline import JobSpec, process_block
from .quicklook import draw_in_background, quicklooks_enabled, render_quicklooks
from .scenes import AssetRef, Scene, discover
from .writer import JobTags, OutputSet, qml_style

if TYPE_CHECKING:  # pragma: no cover
    from ...request import Job, ProductionRequest
    from ...sinks import Sink

DEFAULT_BLOCK = 1024
GDAL_CACHE_BYTES = 256 * 1024 * 1024
"""GDAL's block cache defaults to 5 % of RAM; a fixed cap keeps peak memory independent of the machine.
(In bytes: rasterio hands integers to GDAL as bytes, so ``256`` would mean a 256-byte cache.)"""


class ProduceError(LeafError):
    """The local engine cannot run this request (no scene catalogue, unreadable land cover, …)."""


@dataclass
class JobSummary:
    job_id: str
    scenes: list[str]
    width: int
    height: int
    pixels_in_region: int = 0
    pixels_with_obs: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    quicklook_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class ProduceResult:
    request_id: str
    files: list[str]
    """Object keys written (COGs and quicklook PNGs), relative to the sink root."""
    jobs: list[JobSummary]
    uris: dict[str, str] = field(default_factory=dict)
    """Object key → URI in the sink."""

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "files": self.files, "jobs": [j.to_dict() for j in self.jobs]}


def blocks(gbox: GeoBox, size: int = DEFAULT_BLOCK) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of the blocks that tile ``gbox``, row-major."""
    return [(r, c, min(size, gbox.height - r), min(size, gbox.width - c))
            for r in range(0, gbox.height, size) for c in range(0, gbox.width, size)]


def _to_crs(geom: shapely.Geometry, crs: Any) -> shapely.Geometry:
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(shapely.segmentize(geom, 0.01), lambda xy: np.column_stack(tr.transform(*xy.T)))


def job_spec(req: ProductionRequest, job: Job, scenes: list[Scene], gbox: GeoBox,
             landcover: str | None = None) -> JobSpec:
    """Everything the blocks of one job share: scenes, networks, window, region polygon in the job CRS."""
    crs = gbox.crs.to_wkt()
    # A grid tile on its own grid fills its geobox; anything else is masked to its polygon.
    whole_tile = job.region.tile is not None and gbox.crs == job.region.tile.geobox(job.resolution).crs
    region = None if whole_tile else _to_crs(job.region.geometry, crs)
    nets = {s.id: load_network_set(req.network_set(s.id)) for s in members(req.sensor)}
    if req.algorithm == "SL2P-CCRS" and landcover is None:
        raise ProduceError("SL2P-CCRS needs a land-cover raster (NALCMS classes 1-19) for the partition: pass "
                           "--landcover PATH (or landcover=...) or use algorithm SL2P")
    variables = tuple(p for p in job.products if p in products.BIOPHYSICAL)
    return JobSpec(
        scenes=tuple(scenes), scene_bounds=tuple(_to_crs(s.footprint, crs).bounds for s in scenes),
        nets=nets, variables=variables, products=job.products,
        uncertainty=any(p.endswith(products.UNCERTAINTY_SUFFIX) for p in job.products),
        start=job.start, end=job.end, region=region, default_sensor_code=members(req.sensor)[0].qc_code,
        landcover=AssetRef(landcover) if landcover else None,
    )


def _run_block(shared: tuple[JobSpec, GeoBox], key: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    spec, gbox = shared
    r, c, h, w = key
    # set here, not only around produce(): a Dask worker process has its own GDAL configuration
    with rasterio.Env(**stac_api.gdal_env({"GDAL_CACHEMAX": GDAL_CACHE_BYTES})):
        return process_block(spec, gbox[r:r + h, c:c + w])


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ...cli._app import console_err

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console_err, transient=False) as bar:
        yield bar


class _Bars:
    """One overall bar (blocks of every job, with ETA) plus a bar for the job running now (removed when done)."""

    def __init__(self, bar: Any, total_blocks: int, jobs: int):
        self.bar = bar
        self.overall = bar.add_task(f"all {jobs} job(s), blocks", total=total_blocks)
        self.current: Any = None

    def add_task(self, description: str, total: int) -> Any:
        if self.current is not None:
            self.bar.remove_task(self.current)
        self.current = self.bar.add_task(description, total=total)
        return self.current

    def advance(self, task: Any) -> None:
        self.bar.advance(task)
        self.bar.advance(self.overall)

    def skip(self, blocks: int) -> None:
        self.bar.advance(self.overall, blocks)


def _all_exist(sink: Sink, job: Job) -> bool:
    return all(sink.exists(n.key()) for n in job.output_names())


def run_job(req: ProductionRequest, job: Job, sink: Sink, executor: BlockExecutor, scenes_source: str | None,
            *, landcover: str | None, block_size: int, bar: Any, quicklooks: bool, tmp: Path) -> JobSummary:
    """Discover, composite, estimate and write one job; returns what it did."""
    t0 = time.perf_counter()
    gbox = job.geobox()
    inputs = {s.id: load_network_set(req.network_set(s.id)).inputs for s in members(req.sensor)}
    find = stac_api.discover if stac_api.is_stac_api(scenes_source) else discover
    scenes = find(scenes_source, req.sensor, job.region.geometry, job.start, job.end,
                  inputs=inputs) if scenes_source else []
    summary = JobSummary(job.job_id, [s.id for s in scenes], gbox.width, gbox.height)
    spec = job_spec(req, job, scenes, gbox, landcover)
    names = {n.product: n for n in job.output_names()}
    tags = JobTags(req.request_id, req.sensor, req.algorithm,
                   ",".join(f"{k}:{v.set_id}" for k, v in spec.nets.items()), job.region.name, job.period,
                   job.start.isoformat(), job.end.isoformat(), len(scenes), describe_masks(scenes))
    folder = tmp / job.job_id
    outputs = OutputSet(folder, {p: n.stem for p, n in names.items()}, gbox, tags)
    todo = blocks(gbox, block_size)
    task = bar.add_task(f"{job.job_id} ({len(scenes)} scenes)", total=len(todo)) if bar is not None else None
    qc_nodata = products.product("QC").nodata
    try:
        for (r, c, _, _), arrays in executor.map_unordered(_run_block, (spec, gbox), todo):
            outputs.write_block(arrays, r, c)
            qc = arrays["QC"]
            summary.pixels_in_region += int(np.count_nonzero(qc != qc_nodata))
            summary.pixels_with_obs += int(np.count_nonzero((qc != qc_nodata) & ((qc & products.QC_INVALID) == 0)))
            if task is not None:
                bar.advance(task)
    except BaseException:
        outputs.abort()
        raise
    titles = {p: f"{names[p].stem} — {req.sensor} {req.algorithm}" for p in names}
    # A small job's maps are in memory: their quicklooks are drawn while the COGs are written and stored.
    drawing = draw_in_background(outputs.previews(), titles) if quicklooks else None
    cogs = outputs.finish()
    for product_name, path in cogs.items():
        name = names[product_name]
        sink.put_file(name.key(), path)
        summary.files.append(name.key())
        style = name.key().removesuffix(".tif") + ".qml"  # QGIS applies a .qml of the same name on opening
        sink.put_bytes(style, qml_style(product_name, job.start, job.end), "text/xml")
        summary.files.append(style)
    ql_seconds = 0.0
    if drawing is not None:
        # The time the job spends on quicklooks beyond what overlapped with the COGs (benchmarks/README.md).
        tq = time.perf_counter()
        pngs = drawing.result()
        # Larger maps: previews read from the COG overviews.
        pngs.update(render_quicklooks({p: c for p, c in cogs.items() if p not in pngs}, titles, threads=1))
        for product_name in cogs:
            sink.put_bytes(names[product_name].quicklook_key(), pngs[product_name], "image/png")
            summary.files.append(names[product_name].quicklook_key())
        ql_seconds = time.perf_counter() - tq
    for path in cogs.values():
        path.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - t0
    summary.quicklook_seconds = ql_seconds
    return summary


def produce(req: ProductionRequest, *, out_dir: Path | None = None, sink: Sink | None = None,
            scenes: str | None = None, dask_address: str | Any | None = None, progress: bool = True,
            landcover: str | None = None, block_size: int = DEFAULT_BLOCK, workers: int = 2,
            quicklooks: bool | None = None) -> ProduceResult:
    """Run every job of ``req`` locally and write its outputs (COGs + quicklooks) into the sink.

    ``scenes`` overrides the request's ``scenes`` (a STAC ItemCollection/catalog path or URL, or a STAC API URL;
    without either, the deployment's ``LEAF_STAC_API``). The sink is the request's (``open_sink(req, out_dir)``)
    unless given. Blocks run on ``workers`` threads, or as tasks on the Dask cluster ``dask_address`` (a scheduler
    address, a ``distributed.Client`` or a cluster object such as ``LocalCluster``).
    Jobs whose outputs all exist are skipped when ``rerun`` is ``skip_existing``.
    ``quicklooks`` None: the ``LEAF_QUICKLOOKS`` environment variable (default on).
    """
    from ...sinks import open_sink

    source = scenes or req.scenes or stac_api.default_source()
    landcover = landcover or req.landcover  # the argument wins over the request key
    if source is None:
        raise ProduceError("the local backend reads scenes from a STAC catalogue or API: add \"scenes\": \"PATH or "
                           "URL\" to the request, pass --scenes, or set LEAF_STAC_API")
    sink = sink or open_sink(req, out_dir)
    quicklooks = quicklooks_enabled(quicklooks)
    result = ProduceResult(req.request_id, [], [])
    executor = make_executor(dask_address, workers)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), _progress(progress) as bar, \
                tempfile.TemporaryDirectory(prefix="leaf-produce-") as tmp:
            jobs = req.jobs()
            bars = _Bars(bar, sum(len(blocks(j.geobox(), block_size)) for j in jobs), len(jobs)) \
                if bar is not None else None
            for job in jobs:
                if req.rerun == "skip_existing" and _all_exist(sink, job):
                    gb = job.geobox()
                    result.jobs.append(JobSummary(job.job_id, [], gb.width, gb.height, skipped=True))
                    if bars is not None:
                        bars.skip(len(blocks(gb, block_size)))
                    continue
                summary = run_job(req, job, sink, executor, source, landcover=landcover, block_size=block_size,
                                  bar=bars, quicklooks=quicklooks, tmp=Path(tmp))
                result.jobs.append(summary)
                result.files.extend(summary.files)
    finally:
        executor.close()
    result.uris = {k: sink.uri(k) for k in result.files}
    return result
