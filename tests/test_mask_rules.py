"""Masks as the authors define them (LEAF-Toolbox), written once as sensor facts and identical on both executors:
every quality layer's rule, the fallback where an optional layer is absent or masked, the spectral water test
where the input's quality layer cannot flag inland water, and the rule recorded in the outputs' tags."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from leaf_engine import products, sensors
from leaf_engine.backends.gee import masks as gee_masks
from leaf_engine.backends.gee import session
from leaf_engine.backends.local import masks as local_masks
from leaf_engine.backends.local.pipeline import read_observation
from leaf_engine.backends.local.scenes import load_items, scene_from_item
from leaf_engine.cli import main
from tests.support.ee_interpreter import Img, evaluate
from tests.test_local_support import VEGETATION, make_item

N = 2000
ROOT = Path(__file__).resolve().parents[1]
CANBERRA = ROOT / "examples" / "data" / "canberra-1992-l5" / "catalog.json"


@pytest.fixture
def ee_client(ee_standin):
    session.initialize("leaf-test")
    import ee

    return ee


def _layer_values(layer: sensors.QualityLayer, rng: np.random.Generator) -> np.ndarray:
    if layer.clear_classes is not None:
        return rng.integers(0, 12, N)
    if layer.invalid_bits:
        return rng.integers(0, 1 << 16, N)
    return np.where(rng.random(N) < 0.2, rng.integers(1, 256, N), 0)


@pytest.mark.parametrize("sensor_id", ["S2_SR", "L8_SR"])
def test_both_executors_apply_the_same_quality_rules(ee_client, sensor_id: str) -> None:
    """Every subset of the optional layers present, with masked (nodata) pixels in every layer."""
    ee = ee_client
    sensor = sensors.SENSORS[sensor_id]
    rng = np.random.default_rng(sum(map(ord, sensor_id)))
    optional = [q for q in sensor.quality if q.optional]
    for k in range(len(optional) + 1):
        for present in itertools.combinations(optional, k):
            layers = [q for q in sensor.quality if not q.optional or q in present]
            values = {q.band: _layer_values(q, rng) for q in layers}
            has = {q.band: rng.random(N) > 0.05 for q in layers}
            img = Img.from_arrays(values)
            for b in img.bands:
                b.mask = has[b.name].copy()
            got = evaluate(gee_masks.quality_clear(ee.Image("scene"), sensor), {"scene": img})
            ee_clear = got.bands[0].mask & (np.broadcast_to(got.bands[0].data, (N,)) == 1)
            local_clear = np.ones(N, bool)
            for q in layers:
                local_clear &= ~local_masks.layer_invalid(q, values[q.band], has[q.band])
            np.testing.assert_array_equal(ee_clear, local_clear, err_msg=str([q.band for q in layers]))
            assert 0 < local_clear.mean() < 1


def test_the_author_rules_as_facts() -> None:
    s2 = {q.band: q for q in sensors.SENSORS["S2_SR"].quality}
    assert s2["SCL"].clear_classes == {4, 5} and not s2["SCL"].optional
    assert s2["QA60"].invalid_bits == (10, 11) and s2["QA60"].optional
    assert s2["MSK_CLASSI_OPAQUE"].optional and s2["MSK_CLASSI_CIRRUS"].optional
    l8 = {q.band: q for q in sensors.SENSORS["L8_SR"].quality}
    assert l8["QA_PIXEL"].invalid_bits == (0, 1, 2, 3, 4, 5, 7)
    for scl, clear in ((2, False), (4, True), (5, True), (6, False), (7, False), (11, False)):
        assert bool(local_masks.layer_invalid(s2["SCL"], np.array([scl]), np.array([True]))[0]) is not clear, scl


def _item(tmp: Path, sensor_id: str, quality: np.ndarray | None, properties: dict | None = None):
    refl = dict(VEGETATION)
    green = np.full((20, 20), VEGETATION["green"])
    nir = np.full((20, 20), VEGETATION["nir08"])
    green[:5], nir[:5] = 0.05, 0.02  # a lake: NDWI = 0.43
    refl["green"], refl["nir08"] = green, nir
    return make_item(tmp, f"{sensor_id}-{quality is not None}-{bool(properties)}", sensor_id,
                     datetime(2020, 7, 10, tzinfo=UTC), refl, quality=quality, properties=properties)


def test_the_water_test_applies_where_no_layer_flags_inland_water(tmp_path: Path) -> None:
    gbox = GeoBox.from_bbox((360000, 4839600, 360400, 4840000), "EPSG:32631", resolution=20)
    scl = np.full((20, 20), 4, np.uint8)
    qa = np.full((20, 20), 1 << 6, np.uint16)  # clear
    cases = {
        "S2 with SCL": (_item(tmp_path, "S2_SR", scl), "S2_SR", False),
        "S2 without SCL (L3A)": (_item(tmp_path, "S2_SR", None), "S2_SR", True),
        "Landsat C2 QA_PIXEL": (_item(tmp_path, "L8_SR", qa, {"landsat:collection_number": "02"}), "L8_SR", False),
        "QA_PIXEL-style layer of another product": (_item(tmp_path, "L8_SR", qa), "L8_SR", True),
    }
    for name, (item, sid, water_test) in cases.items():
        scene = scene_from_item(item, sensors.SENSORS[sid])
        assert scene.water_test is water_test, name
        _, clear = read_observation(scene, gbox)
        assert clear[5:].all(), name
        # The lake's SCL / QA says land here: only the NDWI test catches it.
        assert bool((~clear[:5]).all() if water_test else clear[:5].all()), name
        assert ("NDWI" in scene.mask_rule) is water_test
        # The same words as the Earth Engine path's rule (sensor facts), then what this item had.
        assert scene.mask_rule.startswith(sensors.mask_rule(scene.sensor))
        layers = ", ".join(q.band for q, _ in scene.quality) or "none, nodata only"
        assert scene.mask_rule.endswith(f"(layers present: {layers})"), name


def test_earth_engine_rule_names_every_member_and_layer() -> None:
    text = sensors.request_mask_rule("LS_SR")
    parts = text.split(" | ")
    assert [p.split(":")[0] for p in parts] == ["L8_SR", "L9_SR"]
    for part in parts:
        assert "QA_PIXEL: fill, dilated cloud" in part and "QA_RADSAT (where present): radiometric" in part
        assert "NDWI" not in part and "layers present" not in part


def test_canberra_lake_burley_griffin_is_masked(tmp_path: Path) -> None:
    """GA NBAR pixel quality flags only the sea: the lake must be invalid, not LAI ~0.6 with QC good."""
    item = load_items(str(CANBERRA))[0]
    scene = scene_from_item(item, sensors.SENSORS["L5_SR"])
    assert scene.water_test
    assert main(["produce", str(ROOT / "examples" / "canberra-1992-l5.json"), "--out", str(tmp_path),
                 "--no-progress"]) == 0
    folder = tmp_path / "canberra-1992-l5" / "canberra" / "1992"
    with rasterio.open(folder / "canberra_1992_Mar_QC_30m.tif") as src:
        qc, tags, grid = src.read(1), src.tags(), (src.crs, src.transform, src.width, src.height)
    assert "NDWI" in tags["mask_rule"] and "QA_PIXEL" in tags["mask_rule"]
    # NDWI of the input on the output grid: every water pixel (NDWI > 0.1, well inside the lake) is invalid.
    from rasterio.vrt import WarpedVRT

    ndwi_parts = []
    for key in ("green", "nir08"):
        with rasterio.open(item.assets[key].get_absolute_href()) as src, \
                WarpedVRT(src, crs=grid[0], transform=grid[1], width=grid[2], height=grid[3]) as vrt:
            ndwi_parts.append(vrt.read(1).astype(float))
    g, n = ndwi_parts
    with np.errstate(invalid="ignore", divide="ignore"):
        water = ((g - n) / (g + n) > 0.1) & (g > 0) & (n > 0)
    water &= qc != products.product("QC").nodata  # inside the region
    assert water.sum() > 1000
    fields = products.qc_fields(qc[water])
    assert (fields["invalid"] == 1).all()
    assert json.loads(json.dumps(tags))  # tags are plain strings
