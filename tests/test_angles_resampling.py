"""Per-scene view angles from item metadata in the Earth Engine path's convention, averaging in floating point,
and the Albedo product named for what SL2P estimates (black-sky albedo) in tags and STAC titles."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox

from leaf_engine import products
from leaf_engine.backends.local.reading import read_scaled, read_warped
from leaf_engine.backends.local.scenes import AssetRef, scene_angles
from leaf_engine.backends.local.writer import JobTags
from leaf_engine.sensors import SENSORS

S2, L8 = SENSORS["S2_SR"], SENSORS["L8_SR"]


def _item(props: dict) -> pystac.Item:
    return pystac.Item("x", None, None, datetime(2020, 7, 1, 10, tzinfo=UTC),
                       {"view:sun_elevation": 50.0, "view:sun_azimuth": 150.0, **props})


def test_s2_mean_incidence_angles_come_first_as_on_earth_engine() -> None:
    item = _item({"s2:mean_incidence_zenith_angle_b8a": 8.2, "s2:mean_incidence_azimuth_angle_b8a": 104.0,
                  "view:incidence_angle": 3.0, "view:azimuth": 10.0})
    assert scene_angles(item, S2) == (40.0, 150.0, 8.2, 104.0)


def test_stac_view_azimuth_is_turned_to_the_ground_to_sensor_direction() -> None:
    _, _, vza, vaa = scene_angles(_item({"view:incidence_angle": 5.0, "view:azimuth": 280.0}), L8)
    assert (vza, vaa) == (5.0, 100.0)
    # S2 catalogues (stactools-sentinel2) copy the granule's mean incidence azimuth: already ground-to-sensor
    assert scene_angles(_item({"view:incidence_angle": 5.0, "view:azimuth": 280.0}), S2)[3] == 280.0


def test_off_nadir_becomes_the_view_zenith_at_the_ground() -> None:
    _, _, vza, _ = scene_angles(_item({"view:off_nadir": 7.5}), L8)
    want = math.degrees(math.asin((6371.0 + 705.0) / 6371.0 * math.sin(math.radians(7.5))))
    assert vza == pytest.approx(want) and vza > 7.5 + 0.7
    assert scene_angles(_item({}), L8)[2:] == (0.0, 0.0)  # nadir when the item says nothing


def test_ten_to_twenty_metre_averaging_is_in_floating_point(tmp_path: Path) -> None:
    """Averaging DN 1000, 1001, 1001, 1001 gives 1000.75, not a DN rounded to 1001."""
    data = np.tile(np.array([[1000, 1001], [1001, 1001]], np.uint16), (10, 10))
    path = tmp_path / "b.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint16", crs="EPSG:32631",
                       transform=Affine(10, 0, 360000, 0, -10, 4840000), nodata=0) as ds:
        ds.write(data, 1)
    gbox = GeoBox.from_bbox((360000, 4839800, 360200, 4840000), "EPSG:32631", resolution=20)
    ref = AssetRef(str(path), 1e-4, -0.1, 0)
    raw, has = read_warped(ref, gbox)
    assert has.all()
    np.testing.assert_array_equal(raw, 1000.75)
    values, _ = read_scaled(ref, gbox)
    np.testing.assert_allclose(values, np.float32(1000.75 * 1e-4 - 0.1), rtol=0, atol=0)


def test_albedo_is_named_black_sky_in_tags_and_stac_titles() -> None:
    assert "black-sky albedo" in products.product("Albedo").description
    tags = JobTags("r", "S2_SR", "SL2P", "S2_SR:leaf_sl2p_s2_20m", "x", "Jul", "2020-07-01", "2020-07-31",
                   1).for_product("Albedo")
    assert tags["description"].startswith("black-sky albedo")
