"""Output files of the local engine read back with rasterio: grid, dtype, nodata, tags, COG validity; neighbouring
tiles align; memory stays bounded by the block size; a Dask cluster gives the same files as threads."""

from __future__ import annotations

import json
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from leaf_engine import composite, grid, products
from leaf_engine.backends.local import produce
from leaf_engine.request import parse_request
from tests.test_local_support import VEGETATION, make_item, save_collection

RES = 1000
TILES = ["tile42_911", "tile42_912"]


@pytest.fixture(scope="module")
def straddling_scenes(tmp_path_factory) -> str:
    """One S2 scene in EPSG:3979 across the shared edge of tile42_911 and tile42_912 (x = −1 400 000)."""
    folder = tmp_path_factory.mktemp("scenes")
    transform = Affine(500, 0, -1_450_000, 0, -500, 1_000_000)
    nir = np.tile(np.linspace(0.2, 0.45, 200, dtype=np.float64), (100, 1))  # a gradient across the edge
    refl = {**VEGETATION, "nir08": nir}
    item = make_item(folder, "edge", "S2_SR", datetime(2019, 7, 16, 10, tzinfo=UTC), refl, crs="EPSG:3979",
                     transform=transform, shape=(100, 200))
    return save_collection([item], folder / "items.json")


@pytest.fixture(scope="module")
def tile_outputs(straddling_scenes, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("out")
    req = parse_request({"sensor": "S2_SR", "year": 2019, "months": [7], "tile_names": TILES, "resolution": RES,
                         "out_location": "local", "out_folder": "run", "scenes": straddling_scenes})
    result = produce(req, out_dir=out, progress=False, block_size=256)
    return out, result


def _open(out: Path, tile: str, product: str):
    return rasterio.open(out / "run" / tile / "2019" / f"{tile}_2019_Jul_{product}_{RES}m.tif")


def test_every_file_is_a_valid_cog_on_the_tile_grid(tile_outputs):
    out, result = tile_outputs
    assert len([k for k in result.files if k.endswith(".tif")]) == 2 * 6
    for tile in TILES:
        expected = grid.tile(tile).geobox(RES)
        for product in ("LAI", "fCOVER", "fAPAR", "Albedo", "QC", "Date"):
            path = out / "run" / tile / "2019" / f"{tile}_2019_Jul_{product}_{RES}m.tif"
            valid, errors, _warnings = cog_validate(str(path), quiet=True)
            assert valid, errors
            with rasterio.open(path) as src:
                p = products.product(product)
                assert src.crs.to_epsg() == 3979
                assert src.transform == expected.transform and src.shape == (expected.height, expected.width)
                assert src.dtypes[0] == p.dtype and src.nodata == p.nodata
                tags = src.tags()
                assert float(tags["scale_factor"]) == pytest.approx(1 / p.scale)
                assert tags["units"] == p.units and tags["algorithm"] == "SL2P"
                assert tags["network_set"] == "S2_SR:leaf_sl2p_s2_20m" and tags["sensor"] == "S2_SR"
                assert tags["request_id"] == result.request_id and tags["composite_score"] == composite.SCORE_DOC
                if product == "QC":
                    assert json.loads(tags["qc_bits"]) == products.QC_BITS
            assert (Path(str(path).removesuffix(".tif") + ".png")).stat().st_size > 1000  # quicklook


def test_neighbouring_tiles_align_and_agree(tile_outputs):
    out, _ = tile_outputs
    with _open(out, TILES[0], "LAI") as west, _open(out, TILES[1], "LAI") as east:
        assert west.bounds.right == east.bounds.left and west.res == east.res
        row = int((west.bounds.top - 990_000) // RES)  # a row inside the scene
        w, e = west.read(1)[row], east.read(1)[row]
    # The scene covers 50 km either side of the edge: 50 valid pixels on each side, continuing the gradient.
    assert (w[-50:] != 255).all() and (w[:-50] == 255).all()
    assert (e[:50] != 255).all() and (e[50:] == 255).all()
    assert abs(int(w[-1]) - int(e[0])) <= 3 and e[49] > w[-50]


def test_qc_outside_scene_is_invalid_with_sensor_code(tile_outputs):
    out, _ = tile_outputs
    with _open(out, TILES[0], "QC") as src:
        qc = products.qc_fields(src.read(1))
    assert (qc["sensor_code"] == 21).all()
    assert qc["invalid"].mean() > 0.9  # the scene covers only a small part of the tile


def test_rerun_skips_complete_jobs(straddling_scenes, tile_outputs):
    out, _ = tile_outputs
    req = parse_request({"sensor": "S2_SR", "year": 2019, "months": [7], "tile_names": TILES, "resolution": RES,
                         "out_location": "local", "out_folder": "run", "scenes": straddling_scenes})
    again = produce(req, out_dir=out, progress=False)
    assert all(j.skipped for j in again.jobs) and again.files == []


def test_dask_cluster_gives_the_same_files(straddling_scenes, tile_outputs, tmp_path):
    distributed = pytest.importorskip("distributed")
    out, _ = tile_outputs
    req = parse_request({"sensor": "S2_SR", "year": 2019, "months": [7], "tile_names": TILES[:1], "resolution": RES,
                         "out_location": "local", "out_folder": "run", "scenes": straddling_scenes})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
        produce(req, out_dir=tmp_path, dask_address=c.scheduler_address, progress=False, block_size=128,
                quicklooks=False)
    for product in ("LAI", "QC", "Date"):
        with _open(out, TILES[0], product) as a, _open(tmp_path, TILES[0], product) as b:
            np.testing.assert_array_equal(a.read(1), b.read(1))
    # Workers in other processes get the job spec pickled: it must survive the round trip.
    import pickle

    from leaf_engine.backends.local.engine import job_spec
    from leaf_engine.backends.local.pipeline import process_block
    from leaf_engine.backends.local.scenes import discover

    job = req.jobs()[0]
    gbox = job.geobox()
    spec = job_spec(req, job, discover(straddling_scenes, "S2_SR", job.region.geometry, job.start, job.end), gbox)
    block = gbox[0:64, 200:300]
    copy = pickle.loads(pickle.dumps(spec))
    for product, arr in process_block(copy, block).items():
        np.testing.assert_array_equal(arr, process_block(spec, block)[product])


def _compile_kernel_outside_the_measurement() -> None:
    from leaf_engine import compiled

    compiled.warm_up()  # every numba function of the engine


def test_memory_is_bounded_by_the_block_not_the_region(tmp_path):
    """A 2048² px region whose full-size composite (8 float32 bands) alone would take 128 MB runs in blocks of
    256² px: numpy's peak stays far below (tracemalloc counts numpy's buffers)."""
    side = 2048
    x0, y1 = 360000.0, 4840000.0
    item = make_item(tmp_path / "s", "big", "S2_SR", datetime(2019, 7, 16, 10, tzinfo=UTC), VEGETATION,
                     transform=Affine(20, 0, x0, 0, -20, y1), shape=(side, side))
    scenes = save_collection([item], tmp_path / "items.json")
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    inset = 200.0
    ring = [to_ll.transform(x, y) for x, y in [(x0 + inset, y1 - inset), (x0 + side * 20 - inset, y1 - inset),
                                                (x0 + side * 20 - inset, y1 - side * 20 + inset),
                                                (x0 + inset, y1 - side * 20 + inset)]]
    req = parse_request({"sensor": "S2_SR", "year": 2019, "months": [7], "projection": "EPSG:32631",
                         "resolution": 20, "out_location": "local", "scenes": scenes,
                         "regions": {"big": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}})
    gbox = req.jobs()[0].geobox()
    full_composite_bytes = gbox.width * gbox.height * 8 * 4
    assert full_composite_bytes > 120e6
    _compile_kernel_outside_the_measurement()
    tracemalloc.start()
    try:
        result = produce(req, out_dir=tmp_path / "out", progress=False, block_size=256, quicklooks=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.jobs[0].pixels_with_obs > 0.9 * gbox.width * gbox.height
    print(f"peak numpy/python allocations {peak / 1e6:.1f} MB")
    assert peak < 40e6, f"peak numpy/python allocations {peak / 1e6:.0f} MB"
