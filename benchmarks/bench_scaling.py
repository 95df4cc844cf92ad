"""Scaling of the local engine on a Dask cluster over a STAC API: 1 and 2 worker processes, several region sizes.

    python benchmarks/bench_scaling.py [--sizes 1000 2000 4000] [--workers 1 2] [--jobs N [--open-jobs 1 3]]
                                       [--repeat 3] [--api auto|pgstac|static] [--json]

For each region size it builds the synthetic 3-scene Landsat stack of ``bench_produce.py`` (real Canberra TM
spectra, C2 L2 DN, cloud blobs in QA_PIXEL), serves the COGs over HTTP with range requests and the items through
a STAC API on loopback, as in the tests: stac-fastapi-pgstac over pgstac on PostgreSQL (Planetary Computer's
server; ``auto`` takes it where PostgreSQL and PostGIS are installed, as ``scripts/test`` installs them) or
stac-fastapi's static backend (``static``, or ``auto`` without PostgreSQL; it answers a search in ≈ 0.16 s here
against pgstac's 0.02 s, which lengthens every job's head). Then for each cluster size (``distributed.LocalCluster``,
one thread per worker process):

* ``produce``: the request end to end (search, HTTP reads + warping, composite, SL2P, COG writing) with the blocks
  as tasks on the workers;
* ``warp``: only reading and warping the same 18 rasters over HTTP onto the same blocks, on as many fresh workers,
  as the engine reads them (``reading.read_many`` per scene, its per-thread pool of open sources included).

Each row is ``--repeat`` rounds of the two, alternated (produce, warp-only, produce, …), each on a fresh cluster:
it reports the median times and every round's ratio, since this shared VM's speed wanders by 10–20 % from one
minute to the next. Before the timed runs it searches the STAC API once: a public API is warm, and the client's
first search imports pystac-client (a process cost, like loading the compiled kernel, also outside the timing).

It reports throughput (Mpx/s), the scaling ratio (time on 1 worker / time on 2), the peak RSS of each worker
process and of the client (which writes the COGs), how busy the workers were (block compute time over wall time ×
workers, from Dask's task stream), end-to-end / warp-only (target ≤ 1.2), and for both phases the CPU seconds of
the client (with the LocalCluster's scheduler), of the workers and of the rest of the machine (the loopback
servers, PostgreSQL, anything else running): the cores they all share set how far apart the two wall times can
be.

``--jobs N`` makes the request a multi-job run: N windows over the same region (each holds the 3 scenes, so every
job does the same work), and runs it with each ``--open-jobs`` value (jobs in progress at once; 1 is one job after
another), so the rows show what overlapping the jobs' discovery, blocks and COG writing gains; warp-only then
reads the blocks of all N jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import bench_produce  # noqa: E402  (the synthetic scenes)

BLOCK = 512
"""Blocks of 512² px: a 2000² region gives 16 tasks, enough to keep two workers busy."""


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _catalog(work: Path, files_url: str) -> Path:
    """The built scenes as a static catalog, collection ``landsat-c2-l2``, assets on the file server."""
    import pystac

    items = pystac.ItemCollection.from_file(str(work / "scenes" / "items.json"))
    root = pystac.Catalog(id="bench", description="synthetic Landsat stack")
    coll = pystac.Collection(id="landsat-c2-l2", description="bench", extent=pystac.Extent(
        pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])))
    root.add_child(coll)
    for item in items:
        new = item.clone()
        new.links = []
        for asset in new.assets.values():
            asset.href = f"{files_url}/{Path(asset.href).resolve().relative_to(work / 'scenes')}"
        coll.add_item(new)
    coll.update_extent_from_items()
    root.normalize_hrefs(str(work / "catalog"))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    return work / "catalog" / "catalog.json"


@contextlib.contextmanager
def _stac_api(kind: str, work: Path, files_url: str) -> Iterator[tuple[str, str]]:
    """The loopback STAC API over the built scenes: (its kind, its landing-page URL)."""
    from tests.support import pgstac_server
    from tests.support.stac_api_server import serve_stac_api

    catalog = _catalog(work, files_url)
    missing = pgstac_server.unavailable()
    if kind == "pgstac" and missing:
        sys.exit(f"--api pgstac: {missing}")
    if kind == "static" or missing:
        if kind == "auto":
            print(f"(no pgstac here: {missing}; the static backend serves the items)", file=sys.stderr)
        with serve_stac_api(catalog) as url:
            yield "static", url
        return
    with pgstac_server.serve_pgstac({"bench": pgstac_server.catalog_contents(catalog)}) as urls:
        yield "pgstac", urls["bench"]


def _warp_block(shared, key):  # type: ignore[no-untyped-def]
    """The engine's own read of each scene over HTTP (``reading.read_many`` on the scene's bands and quality
    layers, as ``pipeline.add_scene`` calls it: co-gridded rasters in one warp pass, the source datasets kept
    open in the worker thread's pool between blocks, and the allocator set as for ``produce``'s blocks)."""
    import rasterio

    from leaf_engine.backends.local import stac_api
    from leaf_engine.backends.local.allocator import reuse_block_arrays
    from leaf_engine.backends.local.engine import GDAL_CACHE_BYTES
    from leaf_engine.backends.local.reading import read_many

    scenes, gbox = shared
    r, c, h, w = key
    sub = gbox[r:r + h, c:c + w]
    reuse_block_arrays()
    with rasterio.Env(**stac_api.gdal_env({"GDAL_CACHEMAX": GDAL_CACHE_BYTES})):
        for scene in scenes:
            refs, layers = list(scene.bands.values()), [ref for _, ref in scene.quality]
            read_many([*refs, *layers], sub, [False] * len(refs) + [True] * len(layers))
    return key


def _windows(req_doc: dict, n_jobs: int) -> dict:
    """The request with ``n_jobs`` distinct windows, each ending on the month's last scene day and starting one day
    earlier than the one before: the same scenes, the same work, one job per window."""
    from datetime import timedelta

    first = min(d.date() for d in bench_produce.DATES)
    last = max(d.date() for d in bench_produce.DATES)
    doc = {k: v for k, v in req_doc.items() if k not in ("year", "months")}
    doc["start_dates"] = [(first - timedelta(days=1 + k)).isoformat() for k in range(n_jobs)]
    doc["end_dates"] = [last.isoformat()] * n_jobs
    return doc


@contextlib.contextmanager
def _cluster(n_workers: int) -> Iterator:
    """A fresh LocalCluster of ``n_workers`` processes (1 thread each) and its client, the compiled functions
    already loaded in every worker (numba's cache: a process cost, outside the timing)."""
    import distributed

    from leaf_engine import compiled

    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(compiled.warm_up)
        yield client


class _CpuMeter:
    """CPU seconds over one timed phase: the client (this process), its workers, and the rest of the machine
    (the loopback file server and STAC API, PostgreSQL, and anything else running): on this 2-core machine they
    all share the same cores, so a phase's wall time depends on them too."""

    def __init__(self, client) -> None:  # type: ignore[no-untyped-def]
        import psutil

        self._client, self._psutil = client, psutil
        self._c0, self._w0, self._m0 = time.process_time(), self._workers(), self._machine()

    def _workers(self) -> float:
        return sum(self._client.run(time.process_time).values())  # each worker's own

    def _machine(self) -> float:
        t = self._psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def stop(self) -> dict[str, float]:
        client = time.process_time() - self._c0
        workers = self._workers() - self._w0
        machine = self._machine() - self._m0
        return {"client_cpu_s": round(client, 1), "workers_cpu_s": round(workers, 1),
                "others_cpu_s": round(max(0.0, machine - client - workers), 1)}


def _search(api: str, req_doc: dict, out: Path) -> list:
    """The scenes of the request's first job, searched on the STAC API by a job's own discovery (``out``: the
    request's output folder, which it consults only to skip existing outputs)."""
    from leaf_engine.backends.local.engine import _discover
    from leaf_engine.request import parse_request
    from leaf_engine.sinks import open_sink

    req = parse_request({**req_doc, "scenes": api})
    scenes = _discover(req, req.jobs()[0], open_sink(req, out), api)
    assert scenes is not None  # the benchmark's requests overwrite
    return scenes


def _produce_once(api: str, req_doc: dict, n_workers: int, out: Path, open_jobs: int) -> dict:
    """One timed ``produce`` on a fresh cluster, with what the task stream says about it."""
    import distributed

    from leaf_engine.backends.local import produce
    from leaf_engine.request import parse_request

    req = parse_request({**req_doc, "scenes": api})
    res: dict = {}
    with _cluster(n_workers) as client:
        meter = _CpuMeter(client)
        t0, w0 = time.perf_counter(), time.time()
        with distributed.get_task_stream(client) as stream:
            produce(req, out_dir=out, dask_address=client, progress=False, quicklooks=False, block_size=BLOCK,
                    open_jobs=open_jobs)
        res["produce_s"] = time.perf_counter() - t0
        res.update(meter.stop())
        # Share of the run's wall time × worker threads spent computing blocks: the rest is workers waiting for
        # the client (scene search, COG conversion, storing) or for their blocks' data.
        computes = [s for task in stream.data for s in task["startstops"] if s["action"] == "compute"]
        busy = sum(s["stop"] - s["start"] for s in computes)
        res["workers_busy"] = round(busy / (res["produce_s"] * n_workers), 2)
        # The serial head (search, job set-up, until the first block starts) and tail (after the last block:
        # the COG assembly and storing), on the task stream's clock.
        res["head_s"] = round(min(s["start"] for s in computes) - w0, 2)
        res["tail_s"] = round(w0 + res["produce_s"] - max(s["stop"] for s in computes), 2)
        res["worker_peak_rss_mb"] = sorted(round(v, 1) for v in client.run(_rss_mb).values())
    return res


def _warp_once(scenes: list, gbox, n_blocks_of_jobs: int, n_workers: int) -> dict:  # type: ignore[no-untyped-def]
    """Seconds to read and warp the same blocks, on a fresh cluster (its workers' GDAL caches empty), and the CPU
    seconds of the phase."""
    from leaf_engine.backends.local.engine import blocks
    from leaf_engine.backends.local.executors import DaskExecutor

    with _cluster(n_workers) as client:
        meter = _CpuMeter(client)
        t0 = time.perf_counter()
        for _ in DaskExecutor(client).map_unordered(_warp_block, (scenes, gbox),
                                                    blocks(gbox, BLOCK) * n_blocks_of_jobs):
            pass
        wall = time.perf_counter() - t0
        return {"warp_s": wall, **{f"warp_{k}": v for k, v in meter.stop().items()}}


def _run(api: str, req_doc: dict, n_workers: int, out: Path, open_jobs: int = 1, repeat: int = 1) -> dict:
    """``repeat`` rounds of produce then warp-only, alternated (so a slow spell of a shared machine falls on both);
    the medians, and each round's ratio."""
    from statistics import median

    from leaf_engine.request import parse_request

    jobs = parse_request({**req_doc, "scenes": api}).jobs()
    gbox = jobs[0].geobox()
    scenes = _search(api, req_doc, out / "search")
    rounds = []
    for k in range(repeat):
        run = _produce_once(api, req_doc, n_workers, out / f"round{k}", open_jobs)
        run.update(_warp_once(scenes, gbox, len(jobs), n_workers))
        rounds.append(run)
    mid = sorted(rounds, key=lambda r: r["produce_s"])[(len(rounds) - 1) // 2]  # the median round's details
    res = {"workers": n_workers, "jobs": len(jobs), "open_jobs": open_jobs,
           "pixels": gbox.width * gbox.height * len(jobs), **mid,
           "produce_s": median(r["produce_s"] for r in rounds), "warp_s": median(r["warp_s"] for r in rounds),
           "round_ratios": [round(r["produce_s"] / r["warp_s"], 2) for r in rounds]}
    res["mpix_per_s"] = round(res["pixels"] / res["produce_s"] / 1e6, 3)
    res["end_to_end_over_warp"] = round(res["produce_s"] / res["warp_s"], 2)
    res["client_peak_rss_mb"] = round(_rss_mb(), 1)
    return res


def main(argv: list[str] | None = None) -> int:
    from tests.support.stac_api_server import serve_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tile", default="tile42_922")
    ap.add_argument("--jobs", type=int, default=1, help="windows over the region: a multi-job request")
    ap.add_argument("--open-jobs", type=int, nargs="+", default=None,
                    help="jobs in progress at once, one run each (default: 1, and 1 and 3 with --jobs > 1)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of produce and warp-only, alternated; medians are reported (the VM's speed wanders)")
    ap.add_argument("--api", choices=("auto", "pgstac", "static"), default="auto",
                    help="the loopback STAC API's backend (auto: pgstac where PostgreSQL and PostGIS are installed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: a request has at least 1 job")
    open_jobs = args.open_jobs or ([1, 3] if args.jobs > 1 else [1])
    results = []
    with tempfile.TemporaryDirectory(prefix="leaf-scaling-") as tmp:
        for size in args.sizes:
            work = Path(tmp) / f"s{size}"
            _, req_doc = bench_produce.build_scenes(work / "scenes", args.tile, size)
            req_doc.pop("scenes")
            if args.jobs > 1:
                req_doc = _windows(req_doc, args.jobs)
            probe = "scene0/red.tif"
            with serve_files(work / "scenes", probe) as files, _stac_api(args.api, work, files) as (kind, api):
                # untimed: a public API is warm, and the client's imports are a process cost
                _search(api, req_doc, work / "search")
                runs = [_run(api, req_doc, n, work / f"out{n}-{k}", k, args.repeat) for k in open_jobs
                        for n in args.workers]
            row = {"size": size, "stac_api": kind, "runs": runs}
            for k in open_jobs:
                mine = [r for r in runs if r["open_jobs"] == k]
                if len(mine) >= 2:
                    row[f"scaling_ratio_open_jobs_{k}"] = round(mine[0]["produce_s"] / mine[-1]["produce_s"], 2)
            results.append(row)
            if not args.json:
                for r in runs:
                    print(f"{size}² px × {r['jobs']} job(s), open {r['open_jobs']}, {r['workers']} worker(s), {kind}: "
                          f"{r['produce_s']:6.1f} s  {r['mpix_per_s']:6.2f} Mpx/s  warp-only {r['warp_s']:6.1f} s  "
                          f"ratio {r['end_to_end_over_warp']:.2f} (rounds {r['round_ratios']})  "
                          f"workers busy {r['workers_busy']:.0%}  "
                          f"head {r['head_s']} s  tail {r['tail_s']} s  "
                          f"worker peak RSS {r['worker_peak_rss_mb']} MB  "
                          f"client {r['client_peak_rss_mb']} MB  "
                          f"CPU s client/workers/others {r['client_cpu_s']}/{r['workers_cpu_s']}/{r['others_cpu_s']}"
                          f" (warp-only {r['warp_client_cpu_s']}/{r['warp_workers_cpu_s']}/"
                          f"{r['warp_others_cpu_s']})", flush=True)
                for k in open_jobs:
                    if f"scaling_ratio_open_jobs_{k}" in row:
                        print(f"{size}² px, open {k}: scaling 1 → {args.workers[-1]} workers = "
                              f"{row[f'scaling_ratio_open_jobs_{k}']}×", flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
