"""Scene discovery, asset keys, DN scaling and angles of the local engine, on crafted STAC items."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import shapely
from odc.geo.geobox import GeoBox

from leaf_engine.backends.local.reading import read_scaled
from leaf_engine.backends.local.scenes import (
    SceneError,
    discover,
    load_items,
    scene_from_item,
    select_scenes,
)
from leaf_engine.sensors import S2_BOA_OFFSET_DN, SENSORS
from tests.test_local_support import VEGETATION, make_item, save_collection

WHEN = datetime(2019, 7, 10, 10, 40, tzinfo=UTC)


def _grid_of(item) -> GeoBox:
    from affine import Affine

    return GeoBox((20, 20), Affine(20, 0, 360000, 0, -20, 4840000), "EPSG:32631")


@pytest.mark.parametrize("key_style", ["common", "B"])
def test_s2_asset_keys_of_both_catalogue_styles(tmp_path, key_style):
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION, key_style=key_style)
    scene = scene_from_item(item, SENSORS["S2_SR"])
    assert list(scene.bands) == list(SENSORS["S2_SR"].band_names())
    for band in SENSORS["S2_SR"].bands:
        values, has = read_scaled(scene.bands[band.net_input], _grid_of(item))
        assert has.all()
        np.testing.assert_allclose(values, VEGETATION[band.common_name], atol=1e-6)


def test_raster_bands_scale_and_offset_are_honoured(tmp_path):
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION, scale=2e-4, offset=-0.05)
    scene = scene_from_item(item, SENSORS["S2_SR"])
    values, _ = read_scaled(scene.bands["B8A"], _grid_of(item))
    np.testing.assert_allclose(values, VEGETATION["nir08"], atol=1e-4)


def test_s2_baseline_4_offset_applies_without_raster_bands(tmp_path):
    s2 = SENSORS["S2_SR"]
    offset = S2_BOA_OFFSET_DN * s2.dn_scale  # DN written with the −1000 offset of baseline ≥ 04.00
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION, offset=offset, raster_bands=False,
                     properties={"s2:processing_baseline": "04.00"})
    values, _ = read_scaled(scene_from_item(item, s2).bands["B4"], _grid_of(item))
    np.testing.assert_allclose(values, VEGETATION["red"], atol=1e-6)
    old = make_item(tmp_path / "old", "s2old", "S2_SR", WHEN, VEGETATION, offset=0.0, raster_bands=False,
                    properties={"s2:processing_baseline": "02.14"})
    values, _ = read_scaled(scene_from_item(old, s2).bands["B4"], _grid_of(old))
    np.testing.assert_allclose(values, VEGETATION["red"], atol=1e-6)


def test_landsat_c2_scaling_without_raster_bands(tmp_path):
    l8 = SENSORS["L8_SR"]
    item = make_item(tmp_path, "l8", "L8_SR", WHEN, VEGETATION, raster_bands=False)
    scene = scene_from_item(item, l8)
    values, _ = read_scaled(scene.bands["SR_B5"], _grid_of(item))
    np.testing.assert_allclose(values, VEGETATION["nir08"], atol=l8.dn_scale)


def test_angles_from_view_and_s2_properties(tmp_path):
    item = make_item(tmp_path, "a", "S2_SR", WHEN, VEGETATION,
                     properties={"view:sun_elevation": 60.0, "view:sun_azimuth": 140.0,
                                 "view:incidence_angle": 7.0, "view:azimuth": 100.0})
    s = scene_from_item(item, SENSORS["S2_SR"])
    # S2 items' view:azimuth is the granule's mean incidence azimuth (stactools-sentinel2): ground-to-sensor, as
    # the Earth Engine path's S2 mean incidence azimuth, so it is read as published.
    assert (s.sun_zenith, s.sun_azimuth, s.view_zenith, s.view_azimuth) == (30.0, 140.0, 7.0, 100.0)
    item2 = make_item(tmp_path, "b", "S2_SR", WHEN, VEGETATION)
    del item2.properties["view:sun_elevation"], item2.properties["view:sun_azimuth"]
    item2.properties.update({"s2:mean_solar_zenith": 41.5, "s2:mean_solar_azimuth": 160.0})
    s2 = scene_from_item(item2, SENSORS["S2_SR"])
    assert (s2.sun_zenith, s2.sun_azimuth, s2.view_zenith) == (41.5, 160.0, 0.0)
    del item2.properties["s2:mean_solar_zenith"]
    with pytest.raises(SceneError, match="sun angles"):
        scene_from_item(item2, SENSORS["S2_SR"])


def test_missing_band_is_named(tmp_path):
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION)
    del item.assets["swir22"]
    with pytest.raises(SceneError, match="B12"):
        scene_from_item(item, SENSORS["S2_SR"])


def test_no_quality_asset_is_accepted(tmp_path):
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION)
    scene = scene_from_item(item, SENSORS["S2_SR"])
    assert scene.mask is None and scene.mask_kind is None


def test_discovery_filters_window_region_cloud_and_sensor(tmp_path):
    days = [datetime(2019, 6, 30, 23, tzinfo=UTC), datetime(2019, 7, 1, 10, tzinfo=UTC),
            datetime(2019, 7, 31, 12, tzinfo=UTC), datetime(2019, 8, 1, 0, 1, tzinfo=UTC)]
    items = [make_item(tmp_path, f"s{i}", "S2_SR", d, VEGETATION) for i, d in enumerate(days)]
    items.append(make_item(tmp_path, "cloudy", "S2_SR", days[1], VEGETATION, cloud_cover=95.0))
    items.append(make_item(tmp_path, "landsat", "L8_SR", days[1], VEGETATION))
    path = save_collection(items, tmp_path / "items.json")
    region = shapely.geometry.shape(items[0].geometry).buffer(-0.0005)
    scenes = discover(path, "S2_SR", region, date(2019, 7, 1), date(2019, 7, 31))
    assert [s.id for s in scenes] == ["s1", "s2"]  # inclusive window, cloud cover ≤ 90 %, S2 only
    far = shapely.box(10, 10, 11, 11)
    assert select_scenes(load_items(path), "S2_SR", far, date(2019, 7, 1), date(2019, 7, 31)) == []
    assert [s.id for s in discover(path, "LS_SR", region, date(2019, 7, 1), date(2019, 7, 31))] == ["landsat"]


def test_catalog_of_the_example_loads(tmp_path):
    from pathlib import Path

    cat = Path(__file__).resolve().parents[1] / "examples" / "data" / "bouconne-2018" / "catalog.json"
    items = load_items(str(cat))
    assert len(items) == 7
    scene = scene_from_item(items[0], SENSORS["S2_SR"])
    assert scene.mask is None and items[0].properties["leaf:angles_source"] == "computed"


def test_unreadable_catalogue_says_what_to_do(tmp_path):
    with pytest.raises(SceneError, match="scenes"):
        load_items(str(tmp_path / "missing.json"))


def test_relative_asset_hrefs_of_an_item_collection(tmp_path):
    item = make_item(tmp_path, "rel", "S2_SR", WHEN, VEGETATION)
    for asset in item.assets.values():
        asset.href = "./" + asset.href.rsplit("/", 1)[-1]
    path = save_collection([item], tmp_path / "items.json")
    scene = scene_from_item(load_items(path)[0], SENSORS["S2_SR"])
    values, has = read_scaled(scene.bands["B3"], _grid_of(item))
    assert has.all() and np.allclose(values, VEGETATION["green"], atol=1e-6)


@pytest.mark.parametrize("served", ["file", "http"])
def test_stacked_reads_equal_separate_reads(tmp_path, served):
    """Bands warped together in one pass give exactly the values of one pass per band, nodata included, from
    local files and over HTTP (range requests) alike."""
    import contextlib
    import dataclasses

    from affine import Affine

    from leaf_engine.backends.local import reading
    from leaf_engine.backends.local.reading import read_many, read_warped
    from tests.support.stac_api_server import serve_files

    rng = np.random.default_rng(1)
    refl = {k: rng.uniform(0.0, 0.5, (20, 20)) for k in VEGETATION}
    item = make_item(tmp_path, "s", "S2_SR", WHEN, refl, quality=rng.integers(0, 12, (20, 20)).astype(np.uint8))
    scene = scene_from_item(item, SENSORS["S2_SR"])
    refs = [*scene.bands.values(), scene.mask]
    files = [Path(r.href).resolve() for r in refs]
    with contextlib.ExitStack() as stack:
        if served == "http":
            url = stack.enter_context(serve_files(tmp_path, str(files[0].relative_to(tmp_path))))
            # a signed query, as Planetary Computer's SAS tokens: '&' and escapes in the VRT's XML
            refs = [dataclasses.replace(r, href=f"{url}/{f.relative_to(tmp_path)}?sv=2024-01-01&sig=a%2Fb%3D")
                    for r, f in zip(refs, files, strict=True)]
        # Another CRS (web mercator: rotated and scaled against UTM), finer pixels, partly off the scene.
        from pyproj import Transformer

        x, y = Transformer.from_crs("EPSG:32631", "EPSG:3857", always_xy=True).transform(360100, 4840200)
        target = GeoBox((40, 40), Affine(15, 0, x, 0, -15, y), "EPSG:3857")
        together = read_many(refs, target, [False] * 8 + [True])
        stacked = [k[0] for k in reading._threads.pool if k[0].startswith("<VRTDataset")]
        assert stacked, "the co-gridded bands were not warped in one pass"
        assert ("/vsicurl/http://" in stacked[-1]) == (served == "http")
        for ref, cat, (raw, has) in zip(refs, [False] * 8 + [True], together, strict=True):
            raw1, has1 = read_warped(ref, target, categorical=cat)
            np.testing.assert_array_equal(raw, raw1)
            np.testing.assert_array_equal(has, has1)
        assert not together[0][1].all() and together[0][1].any()


def test_s2_baseline_4_offset_applies_when_raster_bands_give_only_a_scale(tmp_path):
    s2 = SENSORS["S2_SR"]
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION, offset=S2_BOA_OFFSET_DN * s2.dn_scale,
                     properties={"s2:processing_baseline": "05.00"})
    for asset in item.assets.values():
        del asset.extra_fields["raster:bands"][0]["offset"]  # a catalogue that states the scale only
    values, _ = read_scaled(scene_from_item(item, s2).bands["B4"], _grid_of(item))
    np.testing.assert_allclose(values, VEGETATION["red"], atol=1e-6)


def test_missing_cloud_cover_reads_as_zero(tmp_path):
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION)
    item.properties["eo:cloud_cover"] = None
    assert scene_from_item(item, SENSORS["S2_SR"]).cloud_cover == 0.0


def test_landsat_saturated_pixels_are_not_clear(tmp_path):
    from leaf_engine.backends.local.pipeline import read_observation
    from tests.test_local_support import write_raster

    l8 = SENSORS["L8_SR"]
    clear_qa = np.full((20, 20), 1 << 6, np.uint16)  # QA_PIXEL bit 6: clear
    item = make_item(tmp_path, "l8", "L8_SR", WHEN, VEGETATION, quality=clear_qa)
    radsat = np.zeros((20, 20), np.uint16)
    radsat[:5] = 1 << 3  # band 4 saturated in the top five rows
    href = write_raster(tmp_path / "l8_qa_radsat.tif", radsat, "EPSG:32631", item_transform(), None)
    item.add_asset(l8.saturation_asset, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
    scene = scene_from_item(item, l8)
    assert scene.saturation is not None
    _, clear = read_observation(scene, _grid_of(item))
    assert not clear[:5].any() and clear[5:].all()


def item_transform():
    from affine import Affine

    return Affine(20, 0, 360000, 0, -20, 4840000)


def test_stac_11_band_fields_name_the_band_and_its_scaling(tmp_path):
    """STAC 1.1 (eo and raster v2): ``bands[].eo:common_name`` with the v2 red-edge names, ``raster:scale`` /
    ``raster:offset`` on the asset, the band's own value taking precedence, and asset keys with a resolution
    suffix preferred by their original sampling."""
    item = make_item(tmp_path, "s2", "S2_SR", WHEN, VEGETATION, scale=2e-4, offset=-0.05)
    v2_names = {"rededge1": "rededge071", "rededge2": "rededge075", "rededge3": "rededge078"}
    for key in list(item.assets):
        asset = item.assets.pop(key)
        if not asset.extra_fields.get("eo:bands"):
            item.assets[key] = asset
            continue
        common = asset.extra_fields.pop("eo:bands")[0]["common_name"]
        scaling = asset.extra_fields.pop("raster:bands")[0]
        asset.extra_fields.update({"raster:scale": 1.0, "raster:offset": 0.0, "nodata": 0})  # overridden below
        asset.extra_fields["bands"] = [{"name": key, "eo:common_name": v2_names.get(common, common),
                                        "raster:scale": scaling["scale"], "raster:offset": scaling["offset"]}]
        asset.roles = ["data", "sampling:original"]
        item.assets[f"X{key}_20m"] = asset
        coarse = asset.clone()
        coarse.roles = ["data", "sampling:downsampled"]
        coarse.href = "no-such-file.tif"
        item.assets[f"X{key}_60m"] = coarse
    scene = scene_from_item(item, SENSORS["S2_SR"])
    assert list(scene.bands) == list(SENSORS["S2_SR"].band_names())
    for band in SENSORS["S2_SR"].bands:
        ref = scene.bands[band.net_input]
        assert (ref.scale, ref.offset, ref.nodata) == (2e-4, -0.05, 0.0)
        values, _ = read_scaled(ref, _grid_of(item))
        np.testing.assert_allclose(values, VEGETATION[band.common_name], atol=1e-4)
