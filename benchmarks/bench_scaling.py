"""Scaling of the local engine on a Dask cluster over a STAC API: 1 and 2 worker processes, several region sizes.

    python benchmarks/bench_scaling.py [--sizes 1000 2000 4000] [--workers 1 2] [--json]

For each region size it builds the synthetic 3-scene Landsat stack of ``bench_produce.py`` (real Canberra TM
spectra, C2 L2 DN, cloud blobs in QA_PIXEL), serves the COGs over HTTP with range requests and the items through
a STAC API (stac-fastapi, static backend; both on loopback, as in the tests), then for each cluster size
(``distributed.LocalCluster``, one thread per worker process):

* ``produce``: the request end to end (search, HTTP reads + warping, composite, SL2P, COG writing) with the blocks
  as tasks on the workers;
* ``warp``: only reading and warping the same 18 rasters over HTTP onto the same blocks, on the same workers.

It reports throughput (Mpx/s), the scaling ratio (time on 1 worker / time on 2), the peak RSS of each worker
process and of the client (which writes the COGs), and end-to-end / warp-only (target ≤ 1.2).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
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


def _warp_block(shared, key):  # type: ignore[no-untyped-def]
    import rasterio
    from rasterio.vrt import WarpedVRT

    from leaf_engine.backends.local import stac_api
    from leaf_engine.backends.local.engine import GDAL_CACHE_BYTES

    hrefs, gbox = shared
    r, c, h, w = key
    sub = gbox[r:r + h, c:c + w]
    with rasterio.Env(**stac_api.gdal_env({"GDAL_CACHEMAX": GDAL_CACHE_BYTES})):
        for href in hrefs:
            with rasterio.open(href) as src, WarpedVRT(src, crs=sub.crs.wkt, transform=sub.transform,
                                                       width=sub.width, height=sub.height) as vrt:
                vrt.read(1)
    return key


def _run(api: str, req_doc: dict, n_workers: int, out: Path) -> dict:
    import distributed

    from leaf_engine.backends.local import produce
    from leaf_engine.backends.local.engine import blocks
    from leaf_engine.backends.local.executors import DaskExecutor
    from leaf_engine.backends.local.stac_api import search_items
    from leaf_engine.request import parse_request
    from leaf_engine.sl2p import kernel

    req = parse_request({**req_doc, "scenes": api})
    job = req.jobs()[0]
    gbox = job.geobox()
    res: dict = {"workers": n_workers, "pixels": gbox.width * gbox.height}
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(kernel.warm_up)  # load the compiled kernel outside the timing (numba cache)
        t0 = time.perf_counter()
        produce(req, out_dir=out, dask_address=client, progress=False, quicklooks=False, block_size=BLOCK)
        res["produce_s"] = time.perf_counter() - t0
        res["worker_peak_rss_mb"] = sorted(round(v, 1) for v in client.run(_rss_mb).values())
        hrefs = [a.href for it in search_items(api, req.sensor, job.region.geometry, job.start, job.end)
                 for a in it.assets.values()]
        ex = DaskExecutor(client)
        t0 = time.perf_counter()
        for _ in ex.map_unordered(_warp_block, (hrefs, gbox), blocks(gbox, BLOCK)):
            pass
        res["warp_s"] = time.perf_counter() - t0
    res["mpix_per_s"] = round(res["pixels"] / res["produce_s"] / 1e6, 3)
    res["end_to_end_over_warp"] = round(res["produce_s"] / res["warp_s"], 2)
    res["client_peak_rss_mb"] = round(_rss_mb(), 1)
    return res


def main(argv: list[str] | None = None) -> int:
    from tests.support.stac_api_server import serve_files, serve_stac_api

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tile", default="tile42_922")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="leaf-scaling-") as tmp:
        for size in args.sizes:
            work = Path(tmp) / f"s{size}"
            _, req_doc = bench_produce.build_scenes(work / "scenes", args.tile, size)
            req_doc.pop("scenes")
            probe = "scene0/red.tif"
            with serve_files(work / "scenes", probe) as files, serve_stac_api(_catalog(work, files)) as api:
                runs = [_run(api, req_doc, n, work / f"out{n}") for n in args.workers]
            row = {"size": size, "runs": runs}
            if len(runs) >= 2:
                row["scaling_ratio"] = round(runs[0]["produce_s"] / runs[-1]["produce_s"], 2)
            results.append(row)
            if not args.json:
                for r in runs:
                    print(f"{size}² px, {r['workers']} worker(s): {r['produce_s']:6.1f} s  {r['mpix_per_s']:6.2f} "
                          f"Mpx/s  warp-only {r['warp_s']:6.1f} s  ratio {r['end_to_end_over_warp']:.2f}  worker "
                          f"peak RSS {r['worker_peak_rss_mb']} MB  client {r['client_peak_rss_mb']} MB", flush=True)
                if "scaling_ratio" in row:
                    print(f"{size}² px: scaling 1 → {args.workers[-1]} workers = {row['scaling_ratio']}×", flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
