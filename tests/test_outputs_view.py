"""What a person sees of the outputs: quicklooks on fixed colour scales with no data distinct from 0, the switch
that skips them, ``leaf tiles --geojson``, ``leaf status`` error records, the credentials hint, the examples
plot script."""

from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from leaf_engine import grid, products, styles
from leaf_engine.backends.local.quicklook import quicklooks_enabled, write_quicklook
from leaf_engine.errors import LeafError
from leaf_engine.sinks import LocalSink

REPO = Path(__file__).resolve().parents[1]


def _cog(path: Path, product: str, dn: np.ndarray, window: str = "2018-07-01/2018-07-31") -> Path:
    p = products.product(product)
    with rasterio.open(path, "w", driver="GTiff", width=dn.shape[1], height=dn.shape[0], count=1, dtype=p.dtype,
                       crs="EPSG:32631", transform=Affine(20, 0, 356100, 0, -20, 4835660), nodata=p.nodata) as dst:
        dst.write(dn.astype(p.dtype), 1)
        dst.update_tags(window=window)
    return path


def _map_pixel(png: Path, row: int, col: int) -> tuple[int, int, int]:
    """Colour of map pixel (row, col) of a quicklook (the map starts at (10, 34), enlarged ×zoom)."""
    img = Image.open(png).convert("RGB")
    zoom = 4  # 100 px maps are enlarged to at least 360 px
    return img.getpixel((10 + col * zoom + 1, 34 + row * zoom + 1))


def test_same_value_same_colour_and_nodata_is_not_zero(tmp_path):
    low = np.full((100, 100), 40, np.uint8)  # LAI 2 everywhere...
    low[:10, :10] = 255  # ...a no-data corner
    low[50:60, 50:60] = 0  # ...and LAI 0
    high = low.copy()
    high[20:30, 20:30] = 160  # a patch of LAI 8 in the second month
    a = write_quicklook(_cog(tmp_path / "a.tif", "LAI", low), "LAI", tmp_path / "a.png", "a")
    b = write_quicklook(_cog(tmp_path / "b.tif", "LAI", high), "LAI", tmp_path / "b.png", "b")
    # A fixed scale: LAI 2 has the same colour in both maps although the second one reaches 8.
    assert _map_pixel(a, 80, 80) == _map_pixel(b, 80, 80)
    table = styles.lut("YlGn")
    expected = tuple(int(v) for v in table[int(2 / 8 * 255)])
    assert np.abs(np.subtract(_map_pixel(a, 80, 80), expected)).max() <= 12  # paletted PNG: near, not exact
    zero, nodata = _map_pixel(a, 55, 55), _map_pixel(a, 2, 2)
    assert min(np.abs(np.subtract(nodata, c)).max() for c in styles.NODATA_CHECKER) <= 4
    assert np.abs(np.subtract(zero, nodata)).max() > 30  # LAI 0 is pale yellow, not the grey of no data


def test_date_legend_is_in_calendar_dates(tmp_path):
    dn = np.full((100, 100), 196, np.uint16)  # 15 July
    png = write_quicklook(_cog(tmp_path / "d.tif", "Date", dn), "Date", tmp_path / "d.png", "d")
    assert png.stat().st_size > 2000
    # The colour of 15 July is the middle of the window's ramp.
    mid = tuple(int(v) for v in styles.lut(styles.DATE_CMAP)[int((196 - 182) / 30 * 255)])
    assert np.abs(np.subtract(_map_pixel(png, 50, 50), mid)).max() <= 12


def test_qc_classes(tmp_path):
    dn = np.full((100, 100), 168, np.uint8)  # S2, good
    dn[:50] = 168 | products.QC_INVALID
    png = write_quicklook(_cog(tmp_path / "q.tif", "QC", dn), "QC", tmp_path / "q.png", "q")
    colours = dict(styles.QC_CLASSES)
    good = tuple(int(colours["good"][i:i + 2], 16) for i in (1, 3, 5))
    assert np.abs(np.subtract(_map_pixel(png, 80, 5), good)).max() <= 12
    assert (styles.qc_class(np.array([0, 168, 169, 170, 171, 172], np.uint8)) == [-1, 0, 1, 2, 3, 4]).all()


def test_small_job_quicklooks_from_memory_equal_those_read_from_the_cogs(tmp_path):
    """A small job's maps kept in memory by the writer (written in several blocks) draw byte-identical quicklooks
    to those read back from its COGs, in the background as in the engine."""
    from odc.geo.geobox import GeoBox

    from leaf_engine.backends.local.quicklook import draw_in_background, render_quicklooks
    from leaf_engine.backends.local.writer import JobTags, OutputSet

    rng = np.random.default_rng(3)
    gbox = GeoBox((90, 110), Affine(20, 0, 356100, 0, -20, 4835660), "EPSG:32631")
    maps = {"LAI": rng.integers(0, 170, (90, 110)).astype(np.uint8),
            "QC": rng.choice(np.array([168, 169, 170, 172], np.uint8), (90, 110)),
            "Date": rng.integers(182, 213, (90, 110)).astype(np.uint16)}
    for p, dn in maps.items():
        dn[:7, :9] = products.product(p).nodata  # a no-data corner
    tags = JobTags("r", "S2_SR", "SL2P", "S2_SR:leaf_sl2p_s2_20m", "x", "Jul", "2018-07-01", "2018-07-31", 1)
    out = OutputSet(tmp_path / "job", {p: f"x_{p}" for p in maps}, gbox, tags)
    for r, c, h, w in ((0, 0, 64, 64), (0, 64, 64, 46), (64, 0, 26, 110)):
        out.write_block({p: dn[r:r + h, c:c + w] for p, dn in maps.items()}, r, c)
    titles = {p: f"x {p}" for p in maps}
    drawn = draw_in_background(out.previews(), titles).result()
    cogs = out.finish()
    read_back = render_quicklooks(cogs, titles, threads=2)
    assert set(drawn) == set(maps) and all(drawn[p] == read_back[p] for p in maps)
    img = Image.open(io.BytesIO(drawn["LAI"]))
    assert img.mode == "P" and img.size[0] > 360  # paletted, the 110 px map enlarged


def test_partition_legend_holds_every_class(tmp_path):
    dn = np.tile(np.arange(1, 20, dtype=np.uint8), (60, 4))[:, :70]  # 19 land-cover classes
    png = write_quicklook(_cog(tmp_path / "p.tif", "Partition", dn), "Partition", tmp_path / "p.png", "p")
    img = Image.open(png).convert("RGB")
    # The legend lists the first 16 classes and no data below them; the image is tall enough to show them.
    assert img.size[1] >= 34 + 22 + 17 * 20
    table = styles.lut(styles.PARTITION_CMAP, 20)
    lx = 10 + 70 * 6 + 10  # the 70 px map is enlarged ×6
    swatch = img.getpixel((lx + 7, 34 + 22 + 15 * 20 + 7))  # class 16's swatch
    assert np.abs(np.subtract(swatch, table[16])).max() <= 2


def test_quicklook_switch(monkeypatch):
    assert quicklooks_enabled(False) is False and quicklooks_enabled(True) is True
    monkeypatch.setenv("LEAF_QUICKLOOKS", "0")
    assert quicklooks_enabled(None) is False
    monkeypatch.setenv("LEAF_QUICKLOOKS", "maybe")
    with pytest.raises(LeafError, match="LEAF_QUICKLOOKS='maybe' must be 0 or 1"):
        quicklooks_enabled(None)


def test_tiles_geojson_is_a_lonlat_feature_collection(capsys):
    from leaf_engine.cli import main

    assert main(["tiles", "--geojson"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(grid.production_tiles(False))
    import shapely.geometry

    for f in doc["features"]:
        geom = shapely.geometry.shape(f["geometry"])
        assert f["geometry"]["type"] == "Polygon" and geom.is_valid and geom.exterior.is_ccw  # RFC 7946
        lon0, lat0, lon1, lat1 = geom.bounds
        assert -180 <= lon0 < lon1 <= 180 and 30 <= lat0 < lat1 <= 90  # Canada, lon/lat
    ottawa = shapely.geometry.Point(-75.7, 45.4)
    holding = [f["id"] for f in doc["features"] if shapely.geometry.shape(f["geometry"]).contains(ottawa)]
    assert holding == grid.tiles_for((-75.7, 45.4))  # the outline agrees with the grid maths


def test_status_finds_the_error_record_of_an_invalid_message(tmp_path, capsys):
    """Error records are keyed ``{out_folder}/_errors/{request_id}-{message id}.json``; status lists them."""
    from leaf_engine.cli import main

    sink = LocalSink(tmp_path)
    problems = [{"key": "sensor", "value": "S9", "rule": "must be one of S2_SR, ..."}]
    sink.write_json("f/_errors/req-1-m17.json", {"request_id": "req-1", "received_at": "2026-01-01T00:00:00Z",
                                                 "problems": problems})
    sink.write_json("f/_errors/req-10-m18.json", {"request_id": "req-10", "received_at": "2026-01-02T00:00:00Z",
                                                  "problems": []})
    assert main(["status", "req-1", "--out", str(tmp_path), "--folder", "f", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "INVALID" and report["errors"] == problems
    assert report["error_records"] == [sink.uri("f/_errors/req-1-m17.json")]
    assert main(["status", "req-1", "--out", str(tmp_path), "--folder", "f"]) == 1  # INVALID: exit 1
    assert "sensor" in capsys.readouterr().out
    assert main(["status", "nope", "--out", str(tmp_path), "--folder", "f"]) == 1
    assert "no run record" in capsys.readouterr().err


def test_status_needs_a_bucket_or_a_folder(capsys):
    from leaf_engine.cli import main

    assert main(["status", "x"]) == 1
    assert "exactly one of --bucket BUCKET" in capsys.readouterr().err


def test_missing_credentials_say_what_to_do(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing-key.json")}
    leaf = Path(sys.executable).with_name("leaf")
    run = subprocess.run([str(leaf), "status", "r1", "--bucket", "some-bucket"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1
    assert "gcloud auth application-default login" in run.stderr and "STORAGE_EMULATOR_HOST" in run.stderr
    assert "unexpected error" not in run.stderr


def test_examples_plot_script(tmp_path, monkeypatch):
    """The examples script on a small run of the shipped example (two months)."""
    from leaf_engine.cli import main
    from leaf_engine.request import parse_request

    raw = json.loads((REPO / "examples" / "bouconne-2018.json").read_text())
    raw.update(months=[7, 8], scenes=str(REPO / "examples" / raw["scenes"]))
    (tmp_path / "r.json").write_text(json.dumps(raw))
    assert main(["produce", str(tmp_path / "r.json"), "--out", str(tmp_path / "out"), "--no-progress",
                 "--no-quicklooks"]) == 0
    assert not list((tmp_path / "out").rglob("*.png"))  # --no-quicklooks
    assert list((tmp_path / "out").rglob("*.qml"))  # the QGIS styles are still there
    monkeypatch.setattr(sys, "argv", ["plot_outputs.py", str(tmp_path / "out"), "Jul", str(tmp_path / "p.png")])
    runpy.run_path(str(REPO / "examples" / "plot_outputs.py"), run_name="__main__")
    assert Image.open(tmp_path / "p.png").size == (1100, 450)
    assert parse_request(raw).request_id


def test_first_run_message_knows_the_kernel_cache(tmp_path, monkeypatch):
    from leaf_engine import compiled
    from leaf_engine.cli.produce_cmds import _kernel_cached
    from leaf_engine.sl2p import kernel

    kernel.warm_up()  # loaded from numba's cache, or compiled into it
    assert _kernel_cached()  # the folder asked is the one numba uses
    monkeypatch.setattr(compiled, "cache_folder", lambda: str(tmp_path))
    assert not _kernel_cached()  # the first run says that it compiles
    (tmp_path / "kernel._run-140.py311.nbi").write_bytes(b"")
    assert _kernel_cached()
