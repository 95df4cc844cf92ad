"""Best-pixel compositing of the local engine: clear pixels only, highest documented score, ties to the
earliest, 1-based day of year in the Date band, no-observation pixels flagged in QC."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from leaf_engine import composite, products
from leaf_engine.backends.local.pipeline import JobSpec, process_block
from leaf_engine.backends.local.scenes import scene_from_item
from leaf_engine.sensors import SENSORS
from leaf_engine.sl2p import estimate, load_network_set
from tests.test_local_support import BARE, VEGETATION, make_item

S2 = SENSORS["S2_SR"]
GBOX = GeoBox((20, 20), Affine(20, 0, 360000, 0, -20, 4840000), "EPSG:32631")
START, END = date(2019, 7, 1), date(2019, 7, 31)
SCL_VEGETATION, SCL_CLOUD = 4, 9


def _spec(scenes, products_=("LAI", "QC", "Date")) -> JobSpec:
    bounds = tuple(tuple(GBOX.extent.boundingbox) for _ in scenes)
    return JobSpec(scenes=tuple(scenes), scene_bounds=bounds, nets={"S2_SR": load_network_set("leaf_sl2p_s2_20m")},
                   variables=tuple(p for p in products_ if p in products.BIOPHYSICAL), products=products_,
                   uncertainty=False, start=START, end=END, region=None, default_sensor_code=S2.qc_code)


def _scene(tmp_path, name, when, refl, scl, cloud=5.0):
    item = make_item(tmp_path, name, "S2_SR", when, refl, quality=scl.astype(np.uint8), cloud_cover=cloud)
    return scene_from_item(item, S2)


def _score(refl, when, cloud):
    return composite.score(np.float32(refl["red"]), np.float32(refl["nir08"]), when.date(), START, END, cloud)


def test_cloudy_pixels_are_skipped_and_the_best_score_wins(tmp_path):
    t_green, t_bare = datetime(2019, 7, 5, tzinfo=UTC), datetime(2019, 7, 16, tzinfo=UTC)
    scl = np.full((20, 20), SCL_VEGETATION)
    scl[:, :10] = SCL_CLOUD
    green = _scene(tmp_path, "green", t_green, VEGETATION, scl)
    bare = _scene(tmp_path, "bare", t_bare, BARE, np.full((20, 20), SCL_VEGETATION))
    out = process_block(_spec([green, bare]), GBOX)
    # Left half: only the bare scene is clear. Right half: whichever scores higher under the documented score.
    right_choice = green if _score(VEGETATION, t_green, 5.0) > _score(BARE, t_bare, 5.0) else bare
    assert (out["Date"][:, :10] == bare.day_of_year).all()
    assert (out["Date"][:, 10:] == right_choice.day_of_year).all()
    assert right_choice is green  # NDVI 0.85 vs 0.26 outweighs 11 days off the middle
    assert green.day_of_year == 186  # 1-based: 5 July 2019
    # The LAI is the network's estimate on the chosen observation's reflectance and angles.
    inputs = {"cosVZA": np.float32(1.0), "cosSZA": np.cos(np.radians(np.float32(35.0))),
              "cosRAA": np.cos(np.radians(np.float32(150.0)))}
    for band in S2.bands:
        inputs[band.net_input] = np.float32(VEGETATION[band.common_name])
    lai = estimate(load_network_set("leaf_sl2p_s2_20m"), inputs, ["LAI"]).values["LAI"]
    assert (out["LAI"][:, 10:] == products.encode("LAI", np.asarray(lai))).all()


def test_ties_go_to_the_earliest_and_date_term_favours_the_middle(tmp_path):
    clear = np.full((20, 20), SCL_VEGETATION)
    early = _scene(tmp_path, "early", datetime(2019, 7, 6, tzinfo=UTC), VEGETATION, clear)
    late = _scene(tmp_path, "late", datetime(2019, 7, 26, tzinfo=UTC), VEGETATION, clear)  # same distance
    middle = _scene(tmp_path, "middle", datetime(2019, 7, 16, tzinfo=UTC), VEGETATION, clear)
    assert (process_block(_spec([early, late]), GBOX)["Date"] == early.day_of_year).all()
    assert (process_block(_spec([early, middle, late]), GBOX)["Date"] == middle.day_of_year).all()


def test_scene_cloud_cover_breaks_equal_spectra(tmp_path):
    clear = np.full((20, 20), SCL_VEGETATION)
    a = _scene(tmp_path, "a", datetime(2019, 7, 16, tzinfo=UTC), VEGETATION, clear, cloud=60.0)
    b = _scene(tmp_path, "b", datetime(2019, 7, 16, 12, tzinfo=UTC), VEGETATION, clear, cloud=10.0)
    assert (process_block(_spec([a, b]), GBOX)["Date"] == b.day_of_year).all()
    assert (process_block(_spec([a]), GBOX)["Date"] == a.day_of_year).all()


def test_no_clear_observation_is_nodata_with_invalid_qc(tmp_path):
    cloud = np.full((20, 20), SCL_CLOUD)
    cloud[0, 0] = SCL_VEGETATION
    s = _scene(tmp_path, "c", datetime(2019, 7, 16, tzinfo=UTC), VEGETATION, cloud)
    out = process_block(_spec([s]), GBOX)
    assert out["LAI"][0, 0] != 255 and (out["LAI"].ravel()[1:] == products.product("LAI").nodata).all()
    assert (out["Date"].ravel()[1:] == 0).all()
    qc = products.qc_fields(out["QC"])
    assert qc["invalid"].ravel()[1:].all() and not qc["invalid"][0, 0]
    assert (qc["sensor_code"] == S2.qc_code).all()  # sensor code written everywhere inside the region


@pytest.mark.parametrize("products_", [("LAI", "fCOVER", "QC", "Date"), ("LAI", "LAIunc", "fAPAR", "QC")])
def test_sl2p_on_the_whole_block_equals_sl2p_on_the_observed_pixels(tmp_path, monkeypatch, products_):
    """The whole-block shortcut (views, unobserved pixels computed and masked) gives the same products as
    gathering the observed pixels only."""
    from leaf_engine.backends.local import pipeline

    scl = np.full((20, 20), SCL_VEGETATION)
    scl[:3, :7] = SCL_CLOUD  # 21 of 400 pixels without a clear observation
    s = _scene(tmp_path, "partly", datetime(2019, 7, 16, tzinfo=UTC), VEGETATION, scl)
    spec = replace(_spec([s], products_), uncertainty="LAIunc" in products_)
    monkeypatch.setattr(pipeline, "WHOLE_BLOCK_SHARE", 0.0)
    whole = process_block(spec, GBOX)
    monkeypatch.setattr(pipeline, "WHOLE_BLOCK_SHARE", 2.0)  # never: always gather
    gathered = process_block(spec, GBOX)
    for name in products_:
        np.testing.assert_array_equal(whole[name], gathered[name], err_msg=name)
    assert (whole["LAI"][:3, :7] == products.product("LAI").nodata).all() and (whole["LAI"][3:] != 255).all()
    assert products.qc_fields(whole["QC"])["invalid"][:3, :7].all()
    assert not products.qc_fields(whole["QC"])["domain"][:3, :7].any()  # NaN inputs: no domain flag shows


def test_per_pixel_angle_assets_are_used(tmp_path):
    """An item with a solar-zenith raster (hundredths of a degree, as Landsat's SZA band) gets per-pixel angles."""
    import pystac

    from tests.test_local_support import write_raster

    item = make_item(tmp_path, "ang", "S2_SR", datetime(2019, 7, 16, tzinfo=UTC), VEGETATION,
                     quality=np.full((20, 20), SCL_VEGETATION, np.uint8))
    sza = np.full((20, 20), 2000, np.int16)
    sza[:, 10:] = 6000
    href = write_raster(tmp_path / "sza.tif", sza, "EPSG:32631", GBOX.transform)
    item.add_asset("sza", pystac.Asset(href))
    scene = scene_from_item(item, S2)
    assert set(scene.angle_assets) == {"sza"}
    lai = process_block(_spec([scene]), GBOX)["LAI"]
    nets = load_network_set("leaf_sl2p_s2_20m")
    for cols, zenith in ((slice(0, 10), 20.0), (slice(10, 20), 60.0)):
        inputs = {"cosVZA": np.float32(1.0), "cosSZA": np.cos(np.float32(zenith) * np.float32(np.pi / 180)),
                  "cosRAA": np.cos(np.float32(150.0) * np.float32(np.pi / 180))}
        inputs.update({b.net_input: np.float32(VEGETATION[b.common_name]) for b in S2.bands})
        expected = products.encode("LAI", np.asarray(estimate(nets, inputs, ["LAI"]).values["LAI"]))
        assert (lai[:, cols] == expected).all()
    assert lai[0, 0] != lai[0, 19]


def test_ndvi_is_zero_where_undefined_as_in_earth_engine():
    from leaf_engine import composite

    red = np.array([-0.002, 0.0, 0.1], np.float32)
    nir = np.array([0.002, 0.0, 0.3], np.float32)
    np.testing.assert_allclose(composite.ndvi(red, nir), [0.0, 0.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("origin", [(0, 0), (100, -100), (300, -300), (700, -700), (1000, -1000), (-50, 50),
                                    (1e-9, -1e-9), (-1e-9, 1e-9), (700, -100), (705, -95), (-5, 5), (5, -5)])
def test_region_mask_of_a_block_equals_the_rasterized_polygon(origin):
    """Blocks inside the region polygon (sharing its edge, or a rounding past it), with pixel centres on its edge,
    straddling it and outside it: the shortcut for blocks whose pixel centres the polygon contains gives the
    pixel-centre rasterization's answer."""
    from types import SimpleNamespace

    import shapely
    from rasterio.features import geometry_mask

    from leaf_engine.backends.local.pipeline import _inside_region

    region = shapely.Polygon([(0, 0), (900, 0), (900, -600), (450, -900), (0, -900)])
    gbox = GeoBox((20, 20), Affine(10, 0, origin[0], 0, -10, origin[1]), "EPSG:3979")
    expected = geometry_mask([region], out_shape=(20, 20), transform=gbox.transform, invert=True)
    np.testing.assert_array_equal(_inside_region(SimpleNamespace(region=region), gbox), expected)
