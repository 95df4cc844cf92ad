"""Benchmark of the local engine: one 300 km CCRS sub-tile at 30 m (10 000 × 10 000 px) from a 3-scene Landsat stack.

    python benchmarks/bench_produce.py [--tile tile42_922] [--size 10000] [--work DIR] [--keep]

The scenes are built from real spectra: the Landsat-5 TM surface reflectance of the Canberra example
(examples/data/canberra-1992-l5), mirrored and tiled over the sub-tile footprint in its UTM zone, encoded as
Collection-2 L2 DN (uint16, ×2.75e-5 − 0.2, deflate COGs) with a QA_PIXEL layer holding cloud blobs (about 20 % of
each scene, in different places). The script then runs, each in a fresh child process:

1. ``produce``: the whole request end to end (discovery, warping, composite, SL2P, COG writing, quicklooks);
2. ``warp``: only the engine's own warping of the same 18 input rasters onto the same blocks (``read_many``, as
   ``produce`` reads them: one warp pass per scene, nearest neighbour, same nodata), on the same 2 threads;
3. ``warp_rasters``: the earlier reference, each raster warped on its own (a WarpedVRT per raster and block).

It prints Mpx/s end to end, each phase's wall and CPU time and peak RSS, the part of ``produce`` spent writing
outputs (``OutputSet.write_block`` while blocks are computed, and the COG phase ``OutputSet.finish`` after the last
block, each with its own peak RSS), and the ratio end-to-end / warp-only against both references (targets: peak
RSS < 1.5 GB whatever the region size, flat in region size; ratio ≤ 1.2). Loading the SL2P kernel (a process
cost, once per process) is outside the timed run and printed apart. ``produce`` and ``warp`` then run the same job
a second time in their process and print that ratio too: a later job of a long run (a Dask worker, a national run)
no longer pays the first job's imports (matplotlib for the styles, PIL) and GDAL/PROJ set-up.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPECTRA = REPO / "examples" / "data" / "canberra-1992-l5" / "LS5_TM_NBAR_090_084_19920323"
SENSOR = "L5_SR"
YEAR, MONTH = 2005, 7
DATES = (datetime(YEAR, MONTH, 6, 17, 20, tzinfo=UTC), datetime(YEAR, MONTH, 15, 17, 20, tzinfo=UTC),
         datetime(YEAR, MONTH, 24, 17, 20, tzinfo=UTC))
RES = 30
BLOCK = 1024
CLOUD_BIT = 3
CLEAR_BIT = 6


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _spectra() -> dict[str, np.ndarray]:
    """Reflectance patch (0-1, NaN = nodata) per common band name, mirrored so it tiles without seams."""
    import rasterio

    from leaf_engine.sensors import SENSORS

    out = {}
    for band in SENSORS[SENSOR].bands:
        with rasterio.open(SPECTRA / f"{band.common_name}.tif") as src:
            dn = src.read(1).astype(np.float64)
            rho = np.where(dn == src.nodata, np.nan, dn * 1e-4)[:340]  # drop the swath-edge rows
        rho = np.concatenate([rho, rho[::-1]], axis=0)
        out[band.common_name] = np.concatenate([rho, rho[:, ::-1]], axis=1)
    return out


def _cloud_field(rows: slice, cols: slice, seed: int) -> np.ndarray:
    """Cloud mask for a window: bilinear upsampling of a coarse random field, thresholded at its 80th percentile."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((64, 64))
    thr = np.quantile(coarse, 0.8)
    y = np.arange(rows.start, rows.stop) / 200.0
    x = np.arange(cols.start, cols.stop) / 200.0
    y0, x0 = np.floor(y).astype(int) % 63, np.floor(x).astype(int) % 63
    fy, fx = (y % 1)[:, None], (x % 1)[None, :]
    c = coarse
    v = (c[y0][:, x0] * (1 - fy) * (1 - fx) + c[y0 + 1][:, x0] * fy * (1 - fx)
         + c[y0][:, x0 + 1] * (1 - fy) * fx + c[y0 + 1][:, x0 + 1] * fy * fx)
    return v > thr


def build_scenes(work: Path, tile_name: str, size: int) -> tuple[str, dict]:
    """Write the 3 scenes (5 bands + QA_PIXEL each) and an ItemCollection; returns its path and the request."""
    import pystac
    import rasterio
    import shapely
    from affine import Affine
    from pyproj import Transformer
    from rasterio.windows import Window

    from leaf_engine import grid
    from leaf_engine.sensors import SENSORS

    sensor = SENSORS[SENSOR]
    tile = grid.tile(tile_name)
    gbox = tile.geobox(RES)
    x0, _, _, y1 = tile.bounds
    # A region of size × size px at the tile's NW corner (the full sub-tile when size = 10 000).
    extent = shapely.box(x0, y1 - size * RES, x0 + size * RES, y1)
    to_ll = Transformer.from_crs(grid.GRID_CRS, "EPSG:4326", always_xy=True)
    ll = shapely.transform(shapely.segmentize(extent, 5000), lambda xy: np.column_stack(to_ll.transform(*xy.T)))
    zone = int((ll.centroid.x + 180) // 6) + 1
    utm = f"EPSG:{32600 + zone if ll.centroid.y > 0 else 32700 + zone}"
    to_utm = Transformer.from_crs("EPSG:4326", utm, always_xy=True)
    fp = shapely.transform(ll, lambda xy: np.column_stack(to_utm.transform(*xy.T)))
    ux0, uy0, ux1, uy1 = fp.bounds
    ux0, uy1 = math.floor(ux0 / RES) * RES - RES * 10, math.ceil(uy1 / RES) * RES + RES * 10
    w, h = math.ceil((ux1 - ux0) / RES) + 20, math.ceil((uy1 - uy0) / RES) + 20
    transform = Affine(RES, 0, ux0, 0, -RES, uy1)
    utm_to_ll = Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
    spectra = _spectra()
    ph, pw = next(iter(spectra.values())).shape
    items = []
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "crs": utm, "transform": transform,
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2,
               "BIGTIFF": "IF_SAFER"}
    for k, when in enumerate(DATES):
        item_dir = work / f"scene{k}"
        item_dir.mkdir(parents=True, exist_ok=True)
        geom = shapely.geometry.mapping(shapely.transform(
            shapely.box(ux0, uy1 - h * RES, ux0 + w * RES, uy1),
            lambda xy: np.column_stack(utm_to_ll.transform(*xy.T))))
        item = pystac.Item(f"bench_{k}", geom, list(shapely.geometry.shape(geom).bounds), when, {
            "platform": "landsat-5", "instruments": ["tm"], "eo:cloud_cover": 20.0,
            "view:sun_elevation": 58.0 - 2 * k, "view:sun_azimuth": 140.0 + 3 * k, "view:off_nadir": 0.0})
        paths = {b.common_name: item_dir / f"{b.common_name}.tif" for b in sensor.bands}
        paths["qa_pixel"] = item_dir / "qa_pixel.tif"
        dsets = {name: rasterio.open(p, "w", dtype="uint16", nodata=0 if name != "qa_pixel" else None, **profile)
                 for name, p in paths.items()}
        try:
            for r in range(0, h, 2048):
                for c in range(0, w, 2048):
                    hh, ww = min(2048, h - r), min(2048, w - c)
                    rows = (np.arange(r, r + hh) + 97 * k) % ph
                    cols = (np.arange(c, c + ww) + 131 * k) % pw
                    cloud = _cloud_field(slice(r, r + hh), slice(c, c + ww), seed=k)
                    fill = np.zeros((hh, ww), bool)
                    for name, rho in spectra.items():
                        patch = rho[rows][:, cols]
                        fill |= np.isnan(patch)
                        dn = np.clip(np.rint((np.nan_to_num(patch) - sensor.dn_offset) / sensor.dn_scale), 1, 65535)
                        dsets[name].write(np.where(np.isnan(patch), 0, dn).astype(np.uint16), 1,
                                          window=Window(c, r, ww, hh))
                    qa = np.where(fill, 1, np.where(cloud, 1 << CLOUD_BIT, 1 << CLEAR_BIT)).astype(np.uint16)
                    dsets["qa_pixel"].write(qa, 1, window=Window(c, r, ww, hh))
        finally:
            for d in dsets.values():
                d.close()
        for name, p in paths.items():
            extra = {} if name == "qa_pixel" else {
                "raster:bands": [{"scale": sensor.dn_scale, "offset": sensor.dn_offset, "nodata": 0}]}
            item.add_asset(name, pystac.Asset(str(p), media_type=pystac.MediaType.GEOTIFF, extra_fields=extra))
        items.append(item)
    coll = work / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(coll))
    region = {"type": "Polygon", "coordinates": [list(ll.exterior.coords)]}
    req = {"sensor": SENSOR, "year": YEAR, "months": [MONTH], "resolution": RES, "out_location": "local",
           "scenes": str(coll), "prod_names": ["LAI", "fCOVER", "fAPAR", "Albedo"], "rerun": "overwrite"}
    if size >= gbox.width:
        req["tile_names"] = [tile_name]
    else:
        req["regions"] = {"bench": region}
    return str(coll), req


def _hwm_mb() -> float:
    """This process's peak RSS since the last :func:`_reset_hwm` (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return _peak_rss_mb()


def _reset_hwm() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


class _WriterClock:
    """Time and memory of the output writing, measured around the writer's own calls: ``write_block`` runs on
    the engine's thread while blocks are computed (wall time; its CPU is that of every product's
    ``ProductWriter.write``, on whichever thread); ``finish`` (the COG phase) runs after the last block."""

    def __init__(self) -> None:
        import threading

        from leaf_engine.backends.local import writer

        self.reset()
        clock, write_block, finish = self, writer.OutputSet.write_block, writer.OutputSet.finish
        product_write, lock = writer.ProductWriter.write, threading.Lock()

        def timed_write(out, arrays, row, col):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            write_block(out, arrays, row, col)
            clock.write_s += time.perf_counter() - t

        def timed_product_write(w, data, row, col):  # type: ignore[no-untyped-def]
            c = time.thread_time()
            product_write(w, data, row, col)
            with lock:
                clock.write_cpu_s += time.thread_time() - c

        writer.ProductWriter.write = timed_product_write  # type: ignore[method-assign]

        def timed_finish(out, *args, **kwargs):  # type: ignore[no-untyped-def]
            clock.blocks_peak_rss_mb = max(clock.blocks_peak_rss_mb, _hwm_mb())
            _reset_hwm()
            t, c = time.perf_counter(), time.process_time()
            try:
                return finish(out, *args, **kwargs)
            finally:
                clock.finish_s += time.perf_counter() - t
                clock.finish_cpu_s += time.process_time() - c
                clock.finish_peak_rss_mb = max(clock.finish_peak_rss_mb, _hwm_mb())

        writer.OutputSet.write_block = timed_write  # type: ignore[method-assign]
        writer.OutputSet.finish = timed_finish  # type: ignore[method-assign]

    def reset(self) -> None:
        self.write_s = self.write_cpu_s = self.finish_s = self.finish_cpu_s = 0.0
        self.blocks_peak_rss_mb = self.finish_peak_rss_mb = 0.0


def phase_produce(req_path: Path, out: Path) -> dict:
    from leaf_engine import compiled
    from leaf_engine.backends.local import produce
    from leaf_engine.request import parse_request

    req = parse_request(req_path.read_text())
    t0 = time.perf_counter()
    compiled.warm_up()  # load (or compile) the numba functions (kernel, fold, encoding): once per process
    kernel_load_s = time.perf_counter() - t0
    clock = _WriterClock()
    runs = []
    for name in ("first", "later"):  # the job's first run in this process, then the same job again
        clock.reset()
        _reset_hwm()
        t1, c1 = time.perf_counter(), time.process_time()
        result = produce(req, out_dir=out / name, progress=False, block_size=BLOCK)
        secs, cpu = time.perf_counter() - t1, time.process_time() - c1
        job = result.jobs[0]
        runs.append({"seconds": secs, "cpu_s": cpu, "pixels": job.width * job.height,
                     "with_obs": job.pixels_with_obs, "peak_rss_mb": _peak_rss_mb(),
                     "job_s": job.seconds, "quicklook_s": job.quicklook_seconds,
                     "write_block_s": clock.write_s, "write_block_cpu_s": clock.write_cpu_s,
                     "cog_s": clock.finish_s, "cog_cpu_s": clock.finish_cpu_s,
                     "blocks_peak_rss_mb": clock.blocks_peak_rss_mb, "cog_peak_rss_mb": clock.finish_peak_rss_mb})
    return {**runs[0], "kernel_load_s": kernel_load_s, "later": runs[1]}


def _timed_blocks(gbox: Any, warp_block: Callable[[tuple[int, int, int, int]], int]) -> dict:
    """Run ``warp_block`` on every block of ``gbox`` on 2 threads under the engine's GDAL cache: wall and CPU
    seconds, values read, peak RSS."""
    import rasterio

    from leaf_engine.backends.local.engine import GDAL_CACHE_BYTES, blocks

    t0, c0 = time.perf_counter(), time.process_time()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), ThreadPoolExecutor(2) as pool:
        total = sum(pool.map(warp_block, blocks(gbox, BLOCK)))
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "values": total,
            "peak_rss_mb": _peak_rss_mb()}


def phase_warp(req_path: Path) -> dict:
    """The engine's own warping and nothing else: for every block, each scene's bands and quality layers read
    onto the block exactly as ``produce`` reads them (``reading.read_many``: co-gridded local files in one warp
    pass, nearest neighbour, the same nodata), on 2 threads, the result discarded."""
    from leaf_engine.backends.local.engine import _discover, _prepare
    from leaf_engine.backends.local.executors import ThreadExecutor
    from leaf_engine.backends.local.pipeline import _touches
    from leaf_engine.backends.local.reading import read_many
    from leaf_engine.request import parse_request
    from leaf_engine.sinks import open_sink

    req = parse_request(req_path.read_text())
    job = req.jobs()[0]
    gbox = job.geobox()
    executor = ThreadExecutor(1)
    scenes = _discover(req, job, open_sink(req, req_path.parent / "warp-out"), req.scenes)
    assert scenes is not None
    prep = _prepare(req, job, gbox, scenes, executor, None)
    executor.close()
    spec = prep.spec

    def warp_block(key: tuple[int, int, int, int]) -> int:
        r, c, h, w = key
        sub = gbox[r:r + h, c:c + w]
        n = 0
        for scene, bounds in zip(spec.scenes, spec.scene_bounds, strict=True):
            if _touches(bounds, sub):
                refs, layers = list(scene.bands.values()), [ref for _, ref in scene.quality]
                reads = read_many([*refs, *layers], sub, [False] * len(refs) + [True] * len(layers))
                n += sum(int(raw.size) for raw, _ in reads)
        return n

    first = _timed_blocks(gbox, warp_block)
    return {**first, "later": _timed_blocks(gbox, warp_block)}  # again in this process, as produce's later run


def phase_warp_rasters(req_path: Path) -> dict:
    """The earlier warp-only reference: every input raster warped on its own (one WarpedVRT per raster and block,
    rasterio's defaults), 2 threads. It costs ≈ 1.4× the engine's warping, which warps a scene's co-gridded
    rasters in one pass."""
    import rasterio
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from leaf_engine.backends.local.scenes import load_items
    from leaf_engine.request import parse_request

    req = parse_request(req_path.read_text())
    gbox = req.jobs()[0].geobox()
    hrefs = [a.get_absolute_href() for it in load_items(req.scenes) for a in it.assets.values()]

    def warp_block(key: tuple[int, int, int, int]) -> int:
        r, c, h, w = key
        sub = gbox[r:r + h, c:c + w]
        n = 0
        for href in hrefs:
            with rasterio.open(href) as src, WarpedVRT(src, crs=sub.crs.wkt, transform=sub.transform,
                                                       width=sub.width, height=sub.height) as vrt:
                n += int(vrt.read(1, window=Window(0, 0, w, h)).size)
        return n

    return _timed_blocks(gbox, warp_block)


def _child(phase: str, req_path: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--request", str(req_path), "--out", str(out)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tile", default="tile42_922", help="a _9ij sub-tile (300 km)")
    ap.add_argument("--size", type=int, default=10_000, help="region side in px (10 000 = the whole sub-tile)")
    ap.add_argument("--work", type=Path, help="folder for inputs/outputs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--phase", choices=["produce", "warp", "warp_rasters"], help=argparse.SUPPRESS)
    ap.add_argument("--request", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "produce":
        print(json.dumps(phase_produce(args.request, args.out)))
        return
    if args.phase == "warp":
        print(json.dumps(phase_warp(args.request)))
        return
    if args.phase == "warp_rasters":
        print(json.dumps(phase_warp_rasters(args.request)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="leaf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        req_path, stamp = work / "request.json", work / "inputs.json"
        built_for = {"tile": args.tile, "size": args.size}
        if not (req_path.exists() and stamp.exists() and json.loads(stamp.read_text()) == built_for):
            shutil.rmtree(work / "scenes", ignore_errors=True)
            _, req = build_scenes(work / "scenes", args.tile, args.size)
            req_path.write_text(json.dumps(req))
            stamp.write_text(json.dumps(built_for))
            print(f"built 3 scenes × 6 rasters in {time.perf_counter() - t0:.1f} s under {work}", flush=True)
        prod = _child("produce", req_path, work / "out")
        warp = _child("warp", req_path, work / "out")
        rasters = _child("warp_rasters", req_path, work / "out")
        mpx = prod["pixels"] / 1e6
        print(f"region: {args.tile}, {prod['pixels'] / 1e6:.0f} Mpx at {RES} m, "
              f"{prod['with_obs'] / prod['pixels']:.0%} with a clear observation")
        print(f"end to end : {prod['seconds']:7.1f} s  {mpx / prod['seconds']:6.2f} Mpx/s  "
              f"CPU {prod['cpu_s']:7.1f} s  peak RSS {prod['peak_rss_mb']:7.0f} MB   "
              f"(+ SL2P kernel load {prod['kernel_load_s']:.1f} s)")
        print(f"  blocks   : peak RSS {prod['blocks_peak_rss_mb']:7.0f} MB; writing blocks (engine's thread waits) "
              f"{prod['write_block_s']:.1f} s ({prod['write_block_cpu_s']:.1f} s CPU)")
        print(f"  COG phase: {prod['cog_s']:7.1f} s  CPU {prod['cog_cpu_s']:7.1f} s  "
              f"peak RSS {prod['cog_peak_rss_mb']:7.0f} MB   (after the last block: OutputSet.finish)")
        print(f"warp only  : {warp['seconds']:7.1f} s  {mpx / warp['seconds']:6.2f} Mpx/s  "
              f"CPU {warp['cpu_s']:7.1f} s  peak RSS {warp['peak_rss_mb']:7.0f} MB   (the engine's own reads)")
        print(f"  per raster: {rasters['seconds']:6.1f} s  CPU {rasters['cpu_s']:7.1f} s   "
              "(one warp per raster, the earlier reference)")
        ratio = prod["seconds"] / warp["seconds"]
        cpu_ratio = prod["cpu_s"] / warp["cpu_s"]
        print(f"end-to-end / warp-only = {ratio:.2f} wall, {cpu_ratio:.2f} CPU (target ≤ 1.2); against the per-raster "
              f"warp {prod['seconds'] / rasters['seconds']:.2f} wall, {prod['cpu_s'] / rasters['cpu_s']:.2f} CPU; "
              f"peak RSS target < 1500 MB: {'met' if prod['peak_rss_mb'] < 1500 else 'NOT met'}")
        lp, lw = prod["later"], warp["later"]
        print(f"the same job again in each process (imports and GDAL/PROJ set-up done): end to end "
              f"{lp['seconds']:.1f} s (CPU {lp['cpu_s']:.1f} s), warp only {lw['seconds']:.1f} s (CPU "
              f"{lw['cpu_s']:.1f} s): {lp['seconds'] / lw['seconds']:.2f} wall, {lp['cpu_s'] / lw['cpu_s']:.2f} CPU")
        print(json.dumps({"end_to_end": prod, "warp_only": warp, "warp_per_raster": rasters, "ratio": ratio,
                          "cpu_ratio": cpu_ratio}))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
