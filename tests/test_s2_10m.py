"""The Sentinel-2 10 m network sets (inputs B2, B3, B4, B8): accepted only where the sensor supplies their inputs
(one rule for request validation and both executors), read and run at 10 m by both executors, and a Bouconne
example at 10 m on real THEIA L3A spectra (tests/data/bouconne_10m/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from leaf_engine import products, sensors
from leaf_engine.backends.gee import masks, session
from leaf_engine.backends.local.scenes import load_items, scene_from_item
from leaf_engine.cli import main
from leaf_engine.errors import NetworkFileError, RequestError
from leaf_engine.request import parse_request
from leaf_engine.sl2p import estimate, load_network_set
from tests.support.ee_interpreter import Img, evaluate

ROOT = Path(__file__).resolve().parents[1]
JULY = ROOT / "examples" / "data" / "bouconne-2018" / "SENTINEL2X_20180708_L3A_bouconne"
TEN_M = ROOT / "tests" / "data" / "bouconne_10m"
S2 = sensors.SENSORS["S2_SR"]
BASE = {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42"], "GCS_bucket": "leaf-out",
        "out_folder": "o", "prod_names": ["LAI"]}


@pytest.mark.parametrize("set_id", ["leaf_sl2p_s2_10m", "leaf_sl2pccrs_s2_10m"])
def test_s2_supplies_the_10m_sets_and_landsat_does_not(set_id: str) -> None:
    nets = load_network_set(set_id)
    assert set(nets.band_inputs) == {"B2", "B3", "B4", "B8"}
    assert sensors.network_inputs_problem("S2_SR", set_id, nets.inputs) is None
    for other in ("L8_SR", "LS_SR", "L5_SR"):
        problem = sensors.network_inputs_problem(other, set_id, nets.inputs)
        assert problem is not None and "B2" in problem and set_id in problem
    with pytest.raises(NetworkFileError, match="does not supply"):
        sensors.require_network_inputs("L8_SR", set_id, nets.inputs)


def test_request_validation_applies_the_rule() -> None:
    parse_request({**BASE, "networks": "leaf_sl2p_s2_10m", "resolution": 10})
    with pytest.raises(RequestError) as e:
        parse_request({**BASE, "sensor": "L8_SR", "networks": "leaf_sl2p_s2_10m"})
    assert [p.key for p in e.value.problems] == ["networks"]
    assert "B2" in str(e.value) and "L8_SR" in str(e.value)
    with pytest.raises(RequestError):
        parse_request({**BASE, "networks": "leaf_sl2p_l8"})  # S2 has no SR_B3..SR_B7


def test_a_job_reads_the_sets_bands_plus_the_score_bands() -> None:
    ten = load_network_set("leaf_sl2p_s2_10m")
    assert [b.net_input for b in S2.bands_for(ten.inputs)] == ["B2", "B3", "B4", "B8", "B8A"]
    assert S2.bands_for(load_network_set("leaf_sl2p_s2_20m").inputs) == S2.bands
    assert {b.ee_band for b in S2.bands_for(ten.inputs)} == {"B2", "B3", "B4", "B8", "B8A"}


def test_earth_engine_reads_the_10m_bands(ee_standin) -> None:
    session.initialize("leaf-test")
    import ee

    ten = load_network_set("leaf_sl2p_s2_10m")
    rng = np.random.default_rng(1)
    dn = {b.ee_band: rng.integers(0, 10000, 50).astype(float) for b in S2.supplied_bands}
    got = evaluate(masks.reflectance(ee.Image("scene"), S2, ten.inputs), {"scene": Img.from_arrays(dn)})
    assert got.names() == ["B2", "B3", "B4", "B8", "B8A"]
    np.testing.assert_allclose(got.array("B8"), dn["B8"] * 1e-4, rtol=1e-12)


def _ten_m_catalogue(tmp: Path) -> Path:
    """The July Bouconne item with B2 and B8 added (absolute hrefs, so it can live anywhere)."""
    item = json.loads((JULY / f"{JULY.name}.json").read_text())
    item["links"] = []
    for asset in item["assets"].values():
        asset["href"] = str(JULY / Path(asset["href"]).name)
    for key, common in (("B02", "blue"), ("B08", "nir")):
        item["assets"][key] = {**item["assets"]["B03"], "href": str(TEN_M / f"{key}.tif"),
                               "title": f"{key} surface reflectance ×1e-4", "eo:bands": [{"name": key,
                                                                                        "common_name": common}]}
    path = tmp / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    return path


def test_local_scene_has_the_10m_assets(tmp_path: Path) -> None:
    items = load_items(str(_ten_m_catalogue(tmp_path)))
    scene = scene_from_item(items[0], S2, load_network_set("leaf_sl2p_s2_10m").inputs)
    assert list(scene.bands) == ["B2", "B3", "B4", "B8", "B8A"]
    assert scene.bands["B2"].href.endswith("B02.tif") and scene.bands["B8"].href.endswith("B08.tif")


def test_bouconne_at_10m_with_the_10m_networks(tmp_path: Path) -> None:
    """Real spectra, the 10 m set, 10 m grid: plausible broadleaf-forest LAI, close to the 20 m set's."""
    cat = _ten_m_catalogue(tmp_path)
    region = {"type": "Polygon", "coordinates": [[[1.2160, 43.6390], [1.2420, 43.6390], [1.2420, 43.6600],
                                                  [1.2160, 43.6600], [1.2160, 43.6390]]]}
    out = {}
    for set_id, res in (("leaf_sl2p_s2_10m", 10), ("leaf_sl2p_s2_20m", 20)):
        req = {"sensor": "S2_SR", "year": 2018, "months": [7], "regions": {"bouconne": region},
               "prod_names": ["LAI", "fCOVER"], "projection": "EPSG:32631", "resolution": res,
               "out_location": "local", "out_folder": set_id, "scenes": str(cat), "networks": set_id}
        path = tmp_path / f"{set_id}.json"
        path.write_text(json.dumps(req))
        assert main(["produce", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
        folder = tmp_path / "out" / set_id / "bouconne" / "2018"
        with rasterio.open(folder / f"bouconne_2018_Jul_LAI_{res}m.tif") as src:
            assert src.res == (res, res)
            lai = products.decode("LAI", src.read(1))
            assert set_id in json.dumps(src.tags())
        with rasterio.open(folder / f"bouconne_2018_Jul_QC_{res}m.tif") as src:
            qc = src.read(1)
        inside = qc != products.product("QC").nodata
        clear = inside & (products.qc_fields(qc)["invalid"] == 0)
        assert clear.sum() > 0.99 * inside.sum()  # all but the Bouconne lake (the spectral water test)
        assert np.isfinite(lai[clear]).all()
        out[res] = float(np.median(lai[clear]))
    # The same networks on the same spectra outside the pipeline (nominal angles of the item): the 10 m grid of
    # the region is not the source grid, so medians, not pixels, are compared.
    nets = load_network_set("leaf_sl2p_s2_10m")
    x = {}
    for name, path in (("B2", TEN_M / "B02.tif"), ("B3", JULY / "B03.tif"), ("B4", JULY / "B04.tif"),
                       ("B8", TEN_M / "B08.tif")):
        with rasterio.open(path) as src:
            x[name] = src.read(1).astype(float).ravel() * 1e-4
    n = x["B2"].size
    x.update({"cosVZA": np.full(n, np.cos(np.radians(5.0))), "cosSZA": np.full(n, np.cos(np.radians(90 - 63.26))),
              "cosRAA": np.full(n, np.cos(np.radians(135.533)))})
    direct = float(np.median(estimate(nets, x, ("LAI",), precision="float64").values["LAI"]))
    assert abs(out[10] - direct) < 0.1, (out, direct)
    # Measured: the 4-band 10 m set gives this forest a higher LAI than the 8-band 20 m set (about 5.2 vs 3.35).
    assert 2.5 < out[20] < 4.5 and 2.5 < out[10] < 7.0, out
    shutil.rmtree(tmp_path / "out")


@pytest.mark.parametrize(("set_id", "tokens"), [
    ("leaf_sl2p_s2_10m", ("LAI", "fCOVER", "fAPAR", "Albedo", "LAIunc", "QC")),
    ("leaf_sl2pccrs_s2_10m", ("LAI", "fAPAR", "LAIunc", "QC")),
])
def test_the_earth_engine_graph_equals_the_local_engine_for_the_10m_sets(ee_standin, set_id: str, tokens) -> None:
    """The executor-equality check of tests/test_gee_sl2p_graph.py, for the 10 m sets: estimates to 1e-6, QC and
    DNs exactly."""
    from leaf_engine.backends.gee import sl2p_graph
    from tests.test_gee_sl2p_graph import SHAPE, _inputs, _local

    session.initialize("leaf-test")
    import ee

    nets = load_network_set(set_id)
    rng = np.random.default_rng(10)
    inputs = _inputs(nets, rng)
    valid = rng.random(SHAPE) > 0.2
    code = np.full(SHAPE, 21, np.uint8)
    landcover = rng.choice([0, *range(1, 20), 42], SHAPE) if nets.is_ccrs else None
    images = {"leaf/inputs": Img.from_arrays(inputs, mask=valid),
              "leaf/valid": Img.from_arrays({"valid": valid.astype(float)}),
              "leaf/code": Img.from_arrays({"sensor_code": code}),
              "leaf/landcover": Img.from_arrays({"landcover": landcover if landcover is not None
                                                 else np.zeros(SHAPE)})}
    lc = ee.Image("leaf/landcover") if nets.is_ccrs else None
    graph = sl2p_graph.products_image(ee.Image("leaf/inputs"), {21: nets}, tokens, valid=ee.Image("leaf/valid"),
                                      sensor_code=ee.Image("leaf/code"), landcover=lc)
    est = evaluate(sl2p_graph.estimates_image(ee.Image("leaf/inputs"), nets, [t for t in tokens if t in
                                              products.BIOPHYSICAL], uncertainty=True, landcover=lc), images)
    got = evaluate(graph, images)
    values, _, domain, want = _local({21: nets}, inputs, tokens, valid, code, landcover)
    for v, arr in values.items():
        np.testing.assert_allclose(est.array(v)[valid], arr[valid], rtol=0, atol=1e-6, err_msg=v)
    for t in tokens:
        np.testing.assert_array_equal(got.array(t).astype(products.product(t).dtype), want[t], err_msg=t)
    if nets.domain is not None:
        assert 0 < domain[valid].mean() < 1
