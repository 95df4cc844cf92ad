"""The local engine's COG writer (backends/local/writer.py) against GDAL's own COG of the same maps: every level
(full resolution and each overview) equal to what the COG driver makes with AVERAGE for continuous products and
NEAREST for class maps, whichever way the writer made it (block by block, or GDAL at the end when a level's parent
has an odd size or the block grid does not halve); the same tags, nodata, scale, units, description and a valid
COG layout; and the writer's memory does not grow with the region."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from odc.geo.geobox import GeoBox
from rio_cogeo.cogeo import cog_validate

from leaf_engine import products
from leaf_engine.backends.local import levels, writer
from leaf_engine.backends.local.writer import COG_OPTIONS, JobTags, OutputSet, ProductWriter, halve, overview_shapes

TAGS = JobTags("r1", "S2_SR", "SL2P", "S2_SR:leaf_sl2p_s2_20m", "x", "Jul", "2018-07-01", "2018-07-31", 2,
               "SCL 3, 8-10 masked")
NAMES = ("LAI", "QC", "Date")  # uint8 averaged (nodata 255), uint8 classes (nodata 0), uint16 days (nodata 0)


def _maps(shape: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """Smooth fields with noise, scattered no-data pixels and a no-data corner, like real maps."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    field = 60 + 40 * np.sin(x / 37.0) * np.cos(y / 23.0) + rng.normal(0, 5, shape)
    out = {}
    for name in NAMES:
        p = products.product(name)
        dn = (field.clip(1, 200) if name != "QC" else 168 + (field > 70) * 2).astype(p.dtype)
        dn[rng.random(shape) < 0.1] = p.nodata
        dn[: shape[0] // 3, : shape[1] // 4] = p.nodata
        out[name] = dn
    return out


def _gdal_cog(name: str, dn: np.ndarray, folder: Path) -> Path:
    """The reference: GDAL's COG driver on the whole map, with the writer's options and resampling."""
    src, dst = folder / f"ref_{name}.src.tif", folder / f"ref_{name}.tif"
    with rasterio.open(src, "w", driver="GTiff", width=dn.shape[1], height=dn.shape[0], count=1, dtype=dn.dtype,
                       crs="EPSG:32631", transform=Affine(20, 0, 356100, 0, -20, 4835660),
                       nodata=products.product(name).nodata) as ds:
        ds.write(dn, 1)
    resampling = "NEAREST" if name in products.ANCILLARY else "AVERAGE"
    rasterio.shutil.copy(src, dst, driver="COG", RESAMPLING=resampling, **COG_OPTIONS)
    return dst


def _order(keys: list[tuple[int, int]], order: str) -> list[tuple[int, int]]:
    """The blocks in the order they are written: ``reverse`` (last first), ``finish`` (row-major, as the engine
    submits them, each pair swapped as blocks finishing out of turn), ``late`` (row-major but the first block of
    the second block row last, as a retried block)."""
    if order == "reverse":
        return keys[::-1]
    if order == "finish":
        return [k for i in range(0, len(keys), 2) for k in keys[i:i + 2][::-1]]
    second_row = next(i for i, k in enumerate(keys) if k[0] > 0)
    return [*keys[:second_row], *keys[second_row + 1:], keys[second_row]]


def _write(folder: Path, maps: dict[str, np.ndarray], block: int, order: str = "reverse",
           skip: tuple[int, int] | None = None) -> tuple[OutputSet, dict[str, Path], dict[str, bool]]:
    """The maps written in blocks in ``order``, but for the block at ``skip``; returns the outputs, their COGs
    and, per product, whether GDAL's levels were still streamed (:mod:`leaf_engine.backends.local.levels`) after
    the last block."""
    shape = next(iter(maps.values())).shape
    gbox = GeoBox(shape, Affine(20, 0, 356100, 0, -20, 4835660), "EPSG:32631")
    out = OutputSet(folder, {p: f"x_{p}" for p in maps}, gbox, TAGS)
    keys = [(r, c) for r in range(0, shape[0], block) for c in range(0, shape[1], block)]
    for r, c in _order([k for k in keys if k != skip], order):
        out.write_block({p: dn[r:r + block, c:c + block] for p, dn in maps.items()}, r, c)
    cogs = out.finish()
    return out, cogs, {p: w.levels_streamed for p, w in out.writers.items()}


@pytest.mark.parametrize(("shape", "block", "from_blocks", "streamed"), [
    ((1536, 2048), 512, 2, False),   # every level from the blocks
    ((1100, 1300), 256, 2, False),   # edge blocks of other sizes
    ((1100, 1300), 250, 1, False),   # 125 px blocks at level 1 do not halve: averaged level 2 is GDAL's, at the end
    ((2002, 1030), 1024, 1, True),   # level 1 is 1001 px high: the averaged levels below it are GDAL's
    ((1025, 1300), 512, 0, True),    # odd height: every averaged overview is GDAL's
    ((2001, 2001), 1024, 0, True),   # an odd region as bench_produce.py makes (ratio 2.001 on both axes)
    ((300, 400), 128, 0, False),     # one tile: no overview
])
@pytest.mark.parametrize("order", ["reverse", "finish", "late"])
def test_every_level_equals_gdal_cog(tmp_path, shape, block, from_blocks, streamed, order):
    """``from_blocks``: the averaged map's levels made from the blocks; a class map's are all made from them
    (NEAREST, any ratio). ``streamed``: the averaged map's other levels are GDAL's, made while the blocks arrive
    (every order fits the stream's buffer at these sizes), unless the block grid turned out not to halve (then
    after the last block)."""
    _check_every_level(tmp_path, shape, block, from_blocks, order, streamed)


@pytest.mark.parametrize("order", ["reverse", "late"])
def test_gdal_levels_after_the_last_block_when_the_stream_gives_up(tmp_path, monkeypatch, order):
    """A buffer too small for the blocks' order (a whole map written bottom-up; a block of the second row retried
    last, after the stream made the rows above it): the stream gives up, its files go, and GDAL makes the levels
    from the parent level's file after the last block, equal all the same."""
    monkeypatch.setattr(levels, "STREAM_BYTES", 1300 * 600)
    _check_every_level(tmp_path, (2001, 1300), 512, 0, order, streamed=False)


def test_gdal_levels_at_the_end_when_a_block_is_never_written(tmp_path):
    """A block never written reads back as nodata: its rows never complete, so GDAL's levels are made after the
    last block from the parent level's file instead, equal all the same."""
    shape, block = (2001, 1300), 512
    maps = _maps(shape, seed=7)
    for p, dn in maps.items():
        dn[512:1024, 512:1024] = products.product(p).nodata
    _check_every_level(tmp_path, shape, block, 0, "late", streamed=False, maps=maps, skip=(512, 512))


def test_large_gdal_levels_go_through_the_cog_driver(tmp_path, monkeypatch):
    """An averaged level above ``GDAL_LEVEL_BYTES`` is made by GDAL's COG driver (streamed), equal all the same."""
    monkeypatch.setattr(writer, "GDAL_LEVEL_BYTES", 0)
    monkeypatch.setattr(writer.ProductWriter, "_new_stream", lambda self: None)
    _check_every_level(tmp_path, (1025, 1300), 512, 0, "reverse", streamed=False)


def _check_every_level(tmp_path: Path, shape: tuple[int, int], block: int, from_blocks: int, order: str,
                       streamed: bool, maps: dict[str, np.ndarray] | None = None,
                       skip: tuple[int, int] | None = None) -> None:
    maps = maps or _maps(shape, seed=shape[0] + block)
    out, cogs, was_streamed = _write(tmp_path / "job", maps, block, order, skip)
    n_levels = len(overview_shapes(*shape))
    assert {p: w.levels_from_blocks for p, w in out.writers.items()} == \
        {p: n_levels if p in products.ANCILLARY else from_blocks for p in NAMES}
    assert was_streamed == {p: streamed and p not in products.ANCILLARY for p in NAMES}
    assert not [f for f in (tmp_path / "job").iterdir() if f not in cogs.values()]  # scratch files removed
    for name, dn in maps.items():
        ref = _gdal_cog(name, dn, tmp_path)
        valid, errors, warnings = cog_validate(str(cogs[name]), quiet=True)
        assert valid and not errors and not warnings, errors + warnings
        with rasterio.open(cogs[name]) as got, rasterio.open(ref) as want:
            assert got.overviews(1) == want.overviews(1) == [2 ** (k + 1) for k in range(len(overview_shapes(*shape)))]
            assert (got.profile, got.nodata, got.tags(ns="IMAGE_STRUCTURE")) == (want.profile, want.nodata,
                                                                                 want.tags(ns="IMAGE_STRUCTURE"))
            assert TAGS.for_product(name).items() <= got.tags().items()
            assert got.descriptions == (f"{name} ({products.product(name).units})",)
            if name == "LAI":
                assert got.scales == (products.product(name).step,) and got.units == (products.product(name).units,)
            np.testing.assert_array_equal(got.read(1), dn)
        for k in range(len(overview_shapes(*shape))):
            with rasterio.open(cogs[name], overview_level=k) as got, rasterio.open(ref, overview_level=k) as want:
                np.testing.assert_array_equal(got.read(1), want.read(1), err_msg=f"{name} overview {k}")


def test_halve_is_gdal_two_by_two():
    """The rule itself on a case worked by hand: mean of the valid pixels, rounded half up; nodata if none."""
    dn = np.array([[10, 11, 255, 255], [12, 14, 255, 7]], np.uint8)
    np.testing.assert_array_equal(halve(dn, 255, categorical=False), [[12, 7]])  # 47/4 = 11.75 → 12; 7
    assert halve(np.full((2, 2), 255, np.uint8), 255, categorical=False)[0, 0] == 255
    np.testing.assert_array_equal(halve(np.array([[1, 2], [3, 4]], np.uint8), 0, categorical=True), [[1]])
    assert halve(np.array([[1, 2], [2, 2]], np.uint8), 0, categorical=False)[0, 0] == 2  # 7/4 = 1.75 → 2
    assert halve(np.array([[1, 2], [255, 255]], np.uint8), 255, categorical=False)[0, 0] == 2  # 1.5 → 2


def _rss_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def measure_writer_growth(side: int, folder: str) -> float:
    """Peak RSS growth (MB) of this process while an OutputSet writes six side² maps in 1024² blocks and
    assembles their COGs, under the engine's 256 MB GDAL cache."""
    block = 1024
    gbox = GeoBox((side, side), Affine(20, 0, 356100, 0, -20, 4835660), "EPSG:32631")
    names = ("LAI", "fCOVER", "fAPAR", "Albedo", "QC", "Date")
    tiles = _maps((block, block), seed=1)
    arrays = {p: tiles[p if p in ("QC", "Date") else "LAI"] for p in names}
    with rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024):
        out = OutputSet(Path(folder), {p: p for p in names}, gbox, TAGS)
        base = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        for r in range(0, side, block):
            for c in range(0, side, block):
                out.write_block({p: a[:side - r, :side - c] for p, a in arrays.items()}, r, c)
        out.finish()
        return _rss_mb("VmHWM") - base


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux peak-RSS reset")
@pytest.mark.parametrize("sides", [(2048, 4096), (2049, 4097)], ids=["even", "odd"])
def test_memory_does_not_grow_with_the_region(tmp_path, sides):
    """4096² px of six maps (112 MB of pixels): the writer's peak RSS growth, blocks and COG assembly together,
    stays far below the data (writing uncompressed files and converting them at the end grew ≈ 100 MB), each
    measured in a fresh process so that memory freed by earlier tests cannot hide it. Odd sides: the averaged
    maps' overviews are GDAL's, made while the blocks arrive, from the stream's bounded buffer of rows."""
    growth = {}
    for side in sides:
        code = ("import sys; from tests.test_local_writer import measure_writer_growth; "
                f"print(measure_writer_growth({side}, sys.argv[1]))")
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(side))], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        growth[side] = float(res.stdout.strip().splitlines()[-1])
    print(f"writer peak RSS growth: {growth} MB")
    small, large = sides
    # Odd sides: the streams hold a row of 1024² blocks per averaged map (four here), so their buffers widen with
    # the region until STREAM_BYTES caps them; made after the last block the levels took as much (53-60 MB).
    buffers = 0 if small % 2 == 0 else 4 * 1024 * (large - small) / 2**20
    assert growth[large] < 60 + 2 * buffers, f"writer peak RSS grew {growth[large]:.0f} MB for {large}² px"
    assert growth[large] < growth[small] + 30 + buffers, f"writer peak RSS grows with the region: {growth} MB"


def test_product_writer_alone_makes_a_cog(tmp_path):
    gbox = GeoBox((600, 700), Affine(20, 0, 356100, 0, -20, 4835660), "EPSG:32631")
    w = ProductWriter(tmp_path / "a.tmp.tif", "LAI", gbox, TAGS.for_product("LAI"))
    w.write(np.full((600, 700), 42, np.uint8), 0, 0)
    cog = w.to_cog(tmp_path / "a.tif")
    with rasterio.open(cog) as ds:
        assert ds.overviews(1) == [2] and (ds.read(1, out_shape=(300, 350)) == 42).all()
