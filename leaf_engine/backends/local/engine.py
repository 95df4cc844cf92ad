"""``produce``: run a production request on this machine, its jobs overlapped, block by block, into a sink."""

from __future__ import annotations

import queue
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import shapely
from odc.geo.geobox import GeoBox

from ... import products
from ...errors import LeafError
from ...grid import lonlat_to
from ...sensors import members
from ...sl2p import load_network_set
from . import stac_api
from .allocator import reuse_block_arrays
from .executors import BlockExecutor, in_groups, make_executor
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


def _to_crs(geom: shapely.Geometry, crs: str) -> shapely.Geometry:
    tr = lonlat_to(crs)
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
    reuse_block_arrays()  # a Dask worker's environment maps each array of a block anew (allocator.py)
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
    """One overall bar (blocks of every job, with ETA) plus a bar for each job whose blocks are running (removed
    when its outputs are stored). Only the pipeline's loop thread touches them."""

    def __init__(self, bar: Any, total_blocks: int, jobs: int):
        self.bar = bar
        self.overall = bar.add_task(f"all {jobs} job(s), blocks", total=total_blocks)

    def add_task(self, description: str, total: int) -> Any:
        return self.bar.add_task(description, total=total)

    def advance(self, task: Any) -> None:
        self.bar.advance(task)
        self.bar.advance(self.overall)

    def remove(self, task: Any) -> None:
        self.bar.remove_task(task)

    def skip(self, blocks: int) -> None:
        self.bar.advance(self.overall, blocks)


def _all_exist(sink: Sink, job: Job) -> bool:
    return all(sink.exists(n.key()) for n in job.output_names())


DEFAULT_OPEN_JOBS = 3
"""Jobs of a request in progress at once (see :class:`_Pipeline`): one finishing, one computing, one discovered
ahead. 1 runs them one after another."""


@dataclass
class _Prepared:
    """A job's scenes, spec and file names, found before its blocks start (:func:`_discover`, :func:`_prepare`)."""

    scenes: list[Scene]
    spec: JobSpec
    names: dict[str, Any]
    tags: JobTags
    handle: Any
    """The ``(spec, gbox)`` every block reads, shared with the executor (scattered to the Dask workers)."""
    styles: Future[dict[str, bytes]] | None = None
    """Product → its QGIS style, made on a finishing thread while the blocks run (:meth:`_Pipeline._on_prepared`):
    the first one imports matplotlib (≈ 0.4 s), which would otherwise lengthen the job's serial tail."""


def _discover(req: ProductionRequest, job: Job, sink: Sink, scenes_source: str | None) -> list[Scene] | None:
    """The job's scenes (on a background thread, ahead of the blocks); None when ``skip_existing`` finds its
    outputs."""
    if req.rerun == "skip_existing" and _all_exist(sink, job):
        return None
    inputs = {s.id: load_network_set(req.network_set(s.id)).inputs for s in members(req.sensor)}
    find = stac_api.discover if stac_api.is_stac_api(scenes_source) else discover
    return find(scenes_source, req.sensor, job.region.geometry, job.start, job.end,
                inputs=inputs) if scenes_source else []


def _prepare(req: ProductionRequest, job: Job, gbox: GeoBox, scenes: list[Scene], executor: BlockExecutor,
             landcover: str | None) -> _Prepared:
    """What the blocks of a job share, shared with the executor. On the pipeline's loop thread: the job spec
    projects the region and the footprints with the transformer the job's grid was made with, and pyproj makes a
    transformer anew (≈ 70 ms) on each thread that first uses it."""
    spec = job_spec(req, job, scenes, gbox, landcover)
    names = {n.product: n for n in job.output_names()}
    tags = JobTags(req.request_id, req.sensor, req.algorithm,
                   ",".join(f"{k}:{v.set_id}" for k, v in spec.nets.items()), job.region.name, job.period,
                   job.start.isoformat(), job.end.isoformat(), len(scenes), describe_masks(scenes))
    return _Prepared(scenes, spec, names, tags, executor.share((spec, gbox)))


def _styles(product_names: list[str], job: Job) -> dict[str, bytes]:
    return {p: qml_style(p, job.start, job.end) for p in product_names}


def _finish(req: ProductionRequest, job: Job, prep: _Prepared, outputs: OutputSet, folder: Path,
            summary: JobSummary, sink: Sink, quicklooks: bool) -> JobSummary:
    """Convert a job's filled files to COGs, store them with their styles and quicklooks; on any error abort the
    outputs (a sink write is atomic: an object is stored whole or not at all). The job's temporary folder is
    removed either way."""
    names = prep.names
    # No rasterio.Env here: the caller's (main thread) GDAL settings are process-wide, and GDAL_CACHEMAX set in
    # a thread would change the one block cache of the process under the other jobs.
    try:
        titles = {p: f"{names[p].stem} — {req.sensor} {req.algorithm}" for p in names}
        # A small job's maps are in memory: their quicklooks are drawn while the COGs are written and stored.
        drawing = draw_in_background(outputs.previews(), titles) if quicklooks else None
        cogs = outputs.finish()
        for product_name, path in cogs.items():
            name = names[product_name]
            sink.put_file(name.key(), path, move=True)  # the job's scratch COG: renamed where it can be
            summary.files.append(name.key())
            style = name.key().removesuffix(".tif") + ".qml"  # QGIS applies a .qml of the same name on opening
            qml = prep.styles.result()[product_name] if prep.styles is not None else \
                qml_style(product_name, job.start, job.end)
            sink.put_bytes(style, qml, "text/xml")
            summary.files.append(style)
        if drawing is not None:
            # The time the job spends on quicklooks beyond what overlapped with the COGs (benchmarks/README.md).
            tq = time.perf_counter()
            pngs = drawing.result()
            # Larger maps: previews read from the COG overviews.
            pngs.update(render_quicklooks({p: c for p, c in cogs.items() if p not in pngs}, titles, threads=2))
            for product_name in cogs:
                sink.put_bytes(names[product_name].quicklook_key(), pngs[product_name], "image/png")
                summary.files.append(names[product_name].quicklook_key())
            summary.quicklook_seconds = time.perf_counter() - tq
    except BaseException:
        outputs.abort()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return summary


@dataclass
class _Open:
    """A job of the pipeline from its admission to its outputs being stored."""

    index: int
    job: Job
    gbox: GeoBox
    todo: deque[tuple[tuple[int, int, int, int], int | None]]
    """The blocks still to submit, with their group (``executors.in_groups``), in submission order."""
    t0: float
    state: str = "preparing"  # → computing → finishing
    prep: _Prepared | None = None
    prep_future: Future[list[Scene] | None] | None = None
    outputs: OutputSet | None = None
    folder: Path | None = None
    summary: JobSummary | None = None
    pending: dict[Any, tuple[int, int, int, int]] = field(default_factory=dict)
    task: Any = None
    aborted: bool = False


class _Pipeline:
    """The jobs of a request, overlapped, with bounded resources.

    A job is *open* from its discovery (STAC search, job spec; on a background thread) through its blocks (on the
    executor) to its finishing (COG conversion, storing, quicklooks; on a background thread). At most
    ``open_jobs`` (K) jobs are open, admitted in request order, so while one job is finished and the next one's
    scenes are searched, the blocks of the job between keep the workers busy. Blocks of every open job share one
    window of ``executor.in_flight`` (W) submitted blocks, oldest job first. This loop thread alone writes the
    blocks into the job's files, in completion order.

    Bounds: blocks in flight ≤ W (their results are written as they arrive); open jobs ≤ K, so temporary output
    sets ≤ K (each job's product files, open from its first block to its finishing: ≤ K × products open files),
    in-memory quicklook maps ≤ K small jobs, temporary disk ≤ K jobs' files, COG conversions ≤ K jobs at once.
    K = 1 is the sequential run.

    When a job fails (discovery, a block after its retries, writing or finishing) no further job is admitted; the
    open jobs after it in the request are aborted (files closed, temporary folder removed, nothing stored) unless
    they are already finishing, those before it run to the end and are stored, as they would have been one after
    another; then ``run`` raises the error of the first failed job. An interrupt (KeyboardInterrupt, or an error of
    the loop itself, such as a lost scheduler) aborts every job whose blocks are running and waits for the finishing
    ones.
    """

    def __init__(self, req: ProductionRequest, jobs: list[Job], sink: Sink, executor: BlockExecutor,
                 source: str | None, *, landcover: str | None, block_size: int, bars: _Bars | None,
                 quicklooks: bool, tmp: Path, open_jobs: int):
        self.req, self.jobs, self.sink, self.executor, self.source = req, jobs, sink, executor, source
        self.landcover, self.block_size, self.bars, self.quicklooks, self.tmp = \
            landcover, block_size, bars, quicklooks, tmp
        self.open_jobs = open_jobs
        self.events: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        self.open: dict[int, _Open] = {}
        self.done: dict[int, JobSummary] = {}
        self.failures: dict[int, BaseException] = {}
        self.next_job = 0
        self.in_flight = 0
        self.qc_nodata = products.product("QC").nodata
        # discovery ahead of the blocks; finishing of up to K jobs at once (never the limit: K is)
        self.preparing = ThreadPoolExecutor(min(2, open_jobs), thread_name_prefix="leaf-discover")
        self.finishing = ThreadPoolExecutor(open_jobs, thread_name_prefix="leaf-finish")

    def run(self) -> list[JobSummary]:
        try:
            while True:
                self._admit()
                self._feed()
                if not self.open:
                    break
                try:
                    kind, index, fut = self.events.get(timeout=1.0)  # a timeout keeps Ctrl-C responsive
                except queue.Empty:
                    continue
                job = self.open.get(index)
                if job is not None:
                    getattr(self, f"_on_{kind}")(job, fut)
        except BaseException:
            for job in list(self.open.values()):
                if job.state != "finishing":
                    self._abort(job)
            raise
        finally:
            self.preparing.shutdown(wait=True, cancel_futures=True)
            self.finishing.shutdown(wait=True)
        if self.failures:
            raise self.failures[min(self.failures)]
        return [self.done[i] for i in range(len(self.jobs))]

    # ------------------------------------------------------------------------------------------------ steps

    def _admit(self) -> None:
        while len(self.open) < self.open_jobs and self.next_job < len(self.jobs) and not self.failures:
            i, job = self.next_job, self.jobs[self.next_job]
            self.next_job += 1
            gbox = job.geobox()
            o = _Open(i, job, gbox, deque(in_groups(blocks(gbox, self.block_size), self.executor.groups)),
                      time.perf_counter())
            self.open[i] = o
            o.prep_future = self.preparing.submit(_discover, self.req, job, self.sink, self.source)
            o.prep_future.add_done_callback(lambda f, i=i: self.events.put(("prepared", i, f)))

    def _feed(self) -> None:
        """Submit blocks, oldest open job first, until W are in flight."""
        for job in sorted(self.open.values(), key=lambda o: o.index):
            while job.state == "computing" and job.todo and self.in_flight < self.executor.in_flight:
                key, group = job.todo.popleft()
                fut = self.executor.submit(_run_block, job.prep.handle, key,  # type: ignore[union-attr]
                                           lambda f, i=job.index: self.events.put(("block", i, f)), group)
                job.pending[fut] = key
                self.in_flight += 1
            if self.in_flight >= self.executor.in_flight:
                return

    def _on_prepared(self, job: _Open, fut: Future[list[Scene] | None]) -> None:
        if job.aborted:  # aborted while its scenes were searched
            del self.open[job.index]
            return
        try:
            scenes = fut.result()
            prep = None if scenes is None else _prepare(self.req, job.job, job.gbox, scenes, self.executor,
                                                        self.landcover)
        except Exception as e:
            self._fail(job, e)
            return
        if prep is None:  # skip_existing: its outputs are all there
            self.done[job.index] = JobSummary(job.job.job_id, [], job.gbox.width, job.gbox.height, skipped=True)
            if self.bars is not None:
                self.bars.skip(len(job.todo))
            del self.open[job.index]
            return
        job.prep, job.state = prep, "computing"
        job.summary = JobSummary(job.job.job_id, [s.id for s in prep.scenes], job.gbox.width, job.gbox.height)
        job.folder = self.tmp / job.job.job_id
        # The first blocks go out before the output files are made (≈ 0.1 s): their results arrive as events,
        # which this loop handles only after this step.
        self._feed()
        try:
            job.outputs = OutputSet(job.folder, {p: n.stem for p, n in prep.names.items()}, job.gbox, prep.tags)
            job.outputs.start_threads()
        except Exception as e:
            self._fail(job, e)
            return
        prep.styles = self.finishing.submit(_styles, list(prep.names), job.job)
        if self.bars is not None:
            job.task = self.bars.add_task(f"{job.job.job_id} ({len(prep.scenes)} scenes)", total=len(job.todo))

    def _on_block(self, job: _Open, fut: Any) -> None:
        key = job.pending.pop(fut, None)
        if key is None:  # a block of an aborted job, or cancelled
            return
        self.in_flight -= 1
        try:
            arrays = fut.result()
            self.executor.release(fut)
            r, c, _, _ = key
            job.outputs.write_block(arrays, r, c)  # type: ignore[union-attr]
        except Exception as e:
            self._fail(job, e)
            return
        qc = arrays["QC"]
        s = job.summary
        assert s is not None
        s.pixels_in_region += int(np.count_nonzero(qc != self.qc_nodata))
        s.pixels_with_obs += int(np.count_nonzero((qc != self.qc_nodata) & ((qc & products.QC_INVALID) == 0)))
        if self.bars is not None:
            self.bars.advance(job.task)
        if not job.todo and not job.pending:
            job.state = "finishing"
            self.executor.unshare(job.prep.handle)  # type: ignore[union-attr]
            f = self.finishing.submit(_finish, self.req, job.job, job.prep, job.outputs, job.folder, s, self.sink,
                                      self.quicklooks)
            f.add_done_callback(lambda f, i=job.index: self.events.put(("finished", i, f)))

    def _on_finished(self, job: _Open, fut: Future[JobSummary]) -> None:
        del self.open[job.index]
        if self.bars is not None and job.task is not None:
            self.bars.remove(job.task)
        try:
            summary = fut.result()
        except Exception as e:
            self.failures[job.index] = e
            self._fail_after(job.index)
            return
        summary.seconds = time.perf_counter() - job.t0
        self.done[job.index] = summary

    # --------------------------------------------------------------------------------------------- failures

    def _fail(self, job: _Open, error: BaseException) -> None:
        self.failures[job.index] = error
        self._abort(job)
        self._fail_after(job.index)

    def _fail_after(self, index: int) -> None:
        for other in list(self.open.values()):
            if other.index > index and other.state != "finishing":
                self._abort(other)

    def _abort(self, job: _Open) -> None:
        """Drop a job that is not finishing: its blocks cancelled, its files closed and removed, nothing stored."""
        if job.aborted:
            return
        job.aborted = True
        if job.state == "preparing":
            fut = job.prep_future
            if fut is None or fut.cancel() or fut.done():
                del self.open[job.index]
            return  # else still searching: its "prepared" event drops it
        self.executor.cancel(list(job.pending))
        self.in_flight -= len(job.pending)
        job.pending.clear()
        if job.outputs is not None:
            job.outputs.abort()
        if job.folder is not None:
            shutil.rmtree(job.folder, ignore_errors=True)
        if job.prep is not None:
            self.executor.unshare(job.prep.handle)
        if self.bars is not None and job.task is not None:
            self.bars.remove(job.task)
        del self.open[job.index]


def produce(req: ProductionRequest, *, out_dir: Path | None = None, sink: Sink | None = None,
            scenes: str | None = None, dask_address: str | Any | None = None, progress: bool = True,
            landcover: str | None = None, block_size: int = DEFAULT_BLOCK, workers: int = 2,
            quicklooks: bool | None = None, open_jobs: int = DEFAULT_OPEN_JOBS) -> ProduceResult:
    """Run every job of ``req`` locally and write its outputs (COGs + quicklooks) into the sink.

    ``scenes`` overrides the request's ``scenes`` (a STAC ItemCollection/catalog path or URL, or a STAC API URL;
    without either, the deployment's ``LEAF_STAC_API``). The sink is the request's (``open_sink(req, out_dir)``)
    unless given. Blocks run on ``workers`` threads, or as tasks on the Dask cluster ``dask_address`` (a scheduler
    address, a ``distributed.Client`` or a cluster object such as ``LocalCluster``).
    Up to ``open_jobs`` jobs are in progress at once: one job's scenes are searched and another's outputs are
    finished while blocks run (:class:`_Pipeline`, which also says what a failing job does to the others); 1 runs
    them one after another. The outputs are the same either way.
    Jobs whose outputs all exist are skipped when ``rerun`` is ``skip_existing``.
    ``quicklooks`` None: the ``LEAF_QUICKLOOKS`` environment variable (default on).
    """
    from ...sinks import open_sink

    source = scenes or req.scenes or stac_api.default_source()
    landcover = landcover or req.landcover  # the argument wins over the request key
    if source is None:
        raise ProduceError("the local backend reads scenes from a STAC catalogue or API: add \"scenes\": \"PATH or "
                           "URL\" to the request, pass --scenes, or set LEAF_STAC_API")
    if isinstance(open_jobs, bool) or not isinstance(open_jobs, int) or open_jobs < 1:
        raise ProduceError(f"open_jobs={open_jobs!r}: the number of jobs in progress at once must be an integer "
                           "of at least 1 (1 runs the jobs one after another)")
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
            result.jobs = _Pipeline(req, jobs, sink, executor, source, landcover=landcover, block_size=block_size,
                                    bars=bars, quicklooks=quicklooks, tmp=Path(tmp), open_jobs=open_jobs).run()
            for summary in result.jobs:
                result.files.extend(summary.files)
    finally:
        executor.close()
    result.uris = {k: sink.uri(k) for k in result.files}
    return result
