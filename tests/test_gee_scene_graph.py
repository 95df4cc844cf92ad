"""Per-scene Earth Engine graphs — reflectance scaling, clear-sky masks, angles, compositing score — evaluated
with the numpy interpreter and compared with the local engine's rules; and the collection graph's structure."""


from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pytest

from leaf_engine import composite as score_rule
from leaf_engine import sensors
from leaf_engine.backends.gee import collections, composite, masks, session
from leaf_engine.backends.local import masks as local_masks
from tests.support.ee_interpreter import Img, evaluate
from tests.support.ee_standin import EEStandIn

N = 600


@pytest.fixture
def ee_client(ee_standin: EEStandIn):
    session.initialize("leaf-test")
    import ee

    return ee


@pytest.mark.parametrize("sensor_id", ["S2_SR", "L5_SR", "L8_SR"])
def test_reflectance_scaling_and_names(ee_client, sensor_id: str) -> None:
    s = sensors.SENSORS[sensor_id]
    rng = np.random.default_rng(1)
    dn = {b.ee_band: rng.integers(0, 65535, N).astype(float) for b in s.bands}
    got = evaluate(masks.reflectance(ee_client.Image("scene"), s), {"scene": Img.from_arrays(dn)})
    assert got.names() == list(s.band_names())
    for b in s.bands:
        np.testing.assert_allclose(got.array(b.net_input), dn[b.ee_band] * s.dn_scale + s.dn_offset, rtol=1e-12)


def test_landsat_mask_matches_the_local_rule_plus_radsat(ee_client) -> None:
    rng = np.random.default_rng(2)
    qa = rng.integers(0, 1 << 16, N)
    radsat = np.where(rng.random(N) < 0.1, rng.integers(1, 256, N), 0)
    got = evaluate(masks.landsat_clear(ee_client.Image("scene"), sensors.SENSORS["L8_SR"]),
                   {"scene": Img.from_arrays({"QA_PIXEL": qa, "QA_RADSAT": radsat})})
    want = ~local_masks.qa_pixel_invalid(qa) & ~local_masks.saturation_invalid(radsat)
    assert 0 < want.mean() < 1
    np.testing.assert_array_equal(got.array("QA_PIXEL") == 1, want)


def test_s2_scl_and_qa60_masks(ee_client) -> None:
    rng = np.random.default_rng(3)
    scl = rng.integers(0, 12, N)
    qa60 = rng.choice([0, 1 << 10, 1 << 11, (1 << 10) | (1 << 11), 1 << 5], N)
    scene = {"scene": Img.from_arrays({"SCL": scl, "QA60": qa60})}
    got_scl = evaluate(masks.s2_scl_clear(ee_client.Image("scene")), scene)
    np.testing.assert_array_equal(got_scl.array("remapped") == 1, ~local_masks.scl_invalid(scl))
    got_qa = evaluate(masks.s2_qa60_clear(ee_client.Image("scene")), scene)
    np.testing.assert_array_equal(got_qa.array("QA60") == 1, (qa60 & ((1 << 10) | (1 << 11))) == 0)
    # Since 2022 QA60 is empty (masked), and some scenes lack it: neither may mask the scene away.
    empty = Img.from_arrays({"SCL": scl, "QA60": qa60})
    empty.bands[1].mask[:] = False
    got_empty = evaluate(masks.s2_qa60_clear(ee_client.Image("scene")), {"scene": empty})
    assert (got_empty.array("QA60", fill=0) == 1).all()
    got_missing = evaluate(masks.s2_qa60_clear(ee_client.Image("scene")), {"scene": Img.from_arrays({"SCL": scl})})
    assert (got_missing.bands[0].data == 1).all()


def test_reflectance_range_test_matches_local(ee_client) -> None:
    s = sensors.SENSORS["L8_SR"]
    rng = np.random.default_rng(4)
    refl = {n: rng.uniform(-0.02, 1.08, N) for n in s.band_names()}
    got = evaluate(masks.reflectance_ok(ee_client.Image("r")), {"r": Img.from_arrays(refl)})
    np.testing.assert_array_equal(got.array("min") == 1, ~local_masks.reflectance_invalid(list(refl.values())))


def test_landsat_angles_hundredths_and_signed_relative_azimuth(ee_client) -> None:
    rng = np.random.default_rng(5)
    vza, sza = rng.integers(0, 1500, N), rng.integers(2000, 8000, N)
    saa, vaa = rng.integers(-18000, 18000, N), rng.integers(-18000, 18000, N)
    ee = ee_client
    graph = collections.angle_cosines(ee.Image("toa").select("VZA"), ee.Image("toa").select("SZA"),
                                      ee.Image("toa").select("SAA"), ee.Image("toa").select("VAA"),
                                      collections.LANDSAT_ANGLE_SCALE)
    got = evaluate(graph, {"toa": Img.from_arrays({"VZA": vza, "SZA": sza, "SAA": saa, "VAA": vaa})})
    assert got.names() == list(sensors.ANGLE_INPUTS)
    np.testing.assert_allclose(got.array("cosVZA"), np.cos(np.radians(vza / 100)), atol=1e-12)
    np.testing.assert_allclose(got.array("cosSZA"), np.cos(np.radians(sza / 100)), atol=1e-12)
    np.testing.assert_allclose(got.array("cosRAA"), np.cos(np.radians((saa - vaa) / 100)), atol=1e-12)


@pytest.mark.parametrize("window", [(date(2020, 7, 1), date(2020, 7, 31)), (date(2020, 6, 15), date(2020, 9, 15)),
                                    (date(2021, 3, 3), date(2021, 3, 3))])
def test_score_equals_the_local_score(ee_client, window: tuple[date, date]) -> None:
    ee = ee_client
    start, end = window
    s = sensors.SENSORS["S2_SR"]
    rng = np.random.default_rng(6)
    refl = {n: rng.uniform(0, 0.5, N) for n in s.band_names()}
    refl["B4"][:10] = 0.0
    refl["B8A"][:10] = 0.0  # NDVI undefined: spectral term 0
    for day in range(0, (end - start).days + 1, 3):
        cloud = float(rng.uniform(-5, 105))
        scene = composite.scene_term(day, cloud, start, end)
        graph = composite.spectral_term(ee.Image("r"), s).multiply(score_rule.W_SPECTRAL).add(
            ee.Image.constant(scene))
        got = evaluate(graph, {"r": Img.from_arrays(refl)}).bands[0].data
        want = score_rule.score(refl["B4"], refl["B8A"], start + timedelta(days=day), start, end, cloud)
        want = np.where(np.isnan(want), score_rule.score(np.ones(1), np.ones(1), start + timedelta(days=day),
                                                         start, end, cloud)[0], want)
        np.testing.assert_allclose(got, want, atol=1e-6)  # local score is float32


def _graph_text(obj) -> str:
    import ee

    return json.dumps(ee.serializer.encode(obj, for_cloud_api=True))


def test_collections_filters_and_landsat_toa_join(ee_client) -> None:
    ee = ee_client
    geom = ee.Geometry.Rectangle([-100, 50, -99, 51])
    l8 = sensors.SENSORS["L8_SR"]
    text = _graph_text(composite.best_pixel(sensors.members("LS_SR"), geom, date(2020, 7, 1), date(2020, 7, 31)))
    for needle in ("LANDSAT/LC08/C02/T1_L2", "LANDSAT/LC09/C02/T1_L2", "LANDSAT/LC08/C02/T1_TOA",
                   "LANDSAT/LC09/C02/T1_TOA", "CLOUD_COVER", "system:index", "ImageCollection.mosaic", "reduce.max",
                   "QA_PIXEL", "QA_RADSAT", '"VZA"', '"SAA"'):
        assert needle in text, needle
    # Inclusive window: filterDate's exclusive end is the day after the window's last day.
    assert "2020-08-01" in text and "2020-07-31" not in text
    assert l8.ee_collection in text
    s2 = _graph_text(composite.best_pixel(sensors.members("S2_SR"), geom, date(2020, 7, 1), date(2020, 7, 31)))
    for needle in ("COPERNICUS/S2_SR_HARMONIZED", "CLOUDY_PIXEL_PERCENTAGE", "SCL", "QA60", "MSK_CLASSI_OPAQUE",
                   "MEAN_SOLAR_ZENITH_ANGLE", "MEAN_INCIDENCE_AZIMUTH_ANGLE_B8A"):
        assert needle in s2, needle


def test_landcover_is_nalcms_filled_by_copernicus(ee_client) -> None:
    from leaf_engine.backends.gee import landcover

    text = _graph_text(landcover.landcover_image())
    assert landcover.NALCMS_IMAGE in text and landcover.COPERNICUS_IMAGE in text and "Image.unmask" in text
    assert set(landcover.COPERNICUS_TO_NALCMS.values()) <= set(range(1, 20))
