"""Reflectance scaling from sensor facts, on item JSON in the shapes the public catalogues publish: the S2 BOA
offset from the processing baseline in each catalogue's spelling (else the acquisition date of the baseline
change), and the Landsat Collection 2 offset when raster:bands gives the scale only."""

from __future__ import annotations

from typing import Any

import pystac
import pytest

from leaf_engine.backends.local.scenes import has_boa_offset, reflectance_ref, s2_baseline
from leaf_engine.sensors import S2_OFFSET_SINCE, SENSORS

S2, L8 = SENSORS["S2_SR"], SENSORS["L8_SR"]
GEOM = {"type": "Polygon", "coordinates": [[[1, 43], [2, 43], [2, 44], [1, 44], [1, 43]]]}


def _item(item_id: str, when: str, props: dict[str, Any], asset: dict[str, Any], key: str = "red") -> pystac.Item:
    return pystac.Item.from_dict({
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": GEOM, "bbox": [1, 43, 2, 44],
        "properties": {"datetime": when, **props}, "links": [],
        "assets": {key: {"href": f"https://example.invalid/{item_id}/{key}.tif", "type": "image/tiff", **asset}},
    })


# Earth Search (element84, sentinel-2-l2a v1): baseline as s2:processing_baseline and the offset stated.
EARTH_SEARCH = _item(
    "S2B_31TCJ_20230712_0_L2A", "2023-07-12T10:56:21.104000Z",
    {"platform": "sentinel-2b", "constellation": "sentinel-2", "s2:processing_baseline": "05.09",
     "s2:product_uri": "S2B_MSIL2A_20230712T103629_N0509_R008_T31TCJ_20230712T134156.SAFE", "eo:cloud_cover": 3.1},
    {"raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}],
     "eo:bands": [{"name": "red", "common_name": "red"}]})
# Planetary Computer (sentinel-2-l2a): s2:processing_baseline, no raster:bands on the band assets.
PLANETARY = _item(
    "S2B_MSIL2A_20230712T103629_R008_T31TCJ_20230712T134156", "2023-07-12T10:36:29.024000Z",
    {"platform": "Sentinel-2B", "s2:processing_baseline": "05.09", "eo:cloud_cover": 3.1},
    {"eo:bands": [{"name": "B04", "common_name": "red"}], "gsd": 10.0}, key="B04")
# Copernicus Data Space STAC (new shape): processing:version, raster:bands with the scale only.
CDSE = _item(
    "S2A_MSIL2A_20231107T144731_N0509_R139_T20QRF_20231107T182159", "2023-11-07T14:47:31.024000Z",
    {"platform": "sentinel-2a", "processing:version": "05.09", "product:type": "S2MSI2A",
     "s2:datatake_id": "GS2A_20231107T144731_043751_N05.09"},
    {"raster:bands": [{"data_type": "uint16", "scale": 0.0001, "nodata": 0}]}, key="B04_10m")
# Copernicus Data Space, baseline only in the product name (no property).
CDSE_NAME_ONLY = _item("S2A_MSIL2A_20220301T104901_N0400_R051_T31TCJ_20220301T140405", "2022-03-01T10:49:01Z",
                       {"platform": "sentinel-2a"}, {}, key="B04")
OLD_BASELINE = _item("S2A_MSIL2A_20210710T104621_N0301_R051_T31TCJ_20210710T134452", "2021-07-10T10:46:21Z",
                     {"platform": "sentinel-2a", "sentinel2:processing_baseline": "03.01"}, {}, key="B04")
DATE_ONLY_AFTER = _item("s2-after", "2022-06-01T10:00:00Z", {"platform": "sentinel-2a"}, {})
DATE_ONLY_BEFORE = _item("s2-before", "2021-06-01T10:00:00Z", {"platform": "sentinel-2a"}, {})


@pytest.mark.parametrize(("item", "baseline", "spelling"), [
    (EARTH_SEARCH, 5.09, "s2:processing_baseline"), (PLANETARY, 5.09, "s2:processing_baseline"),
    (CDSE, 5.09, "processing:version"), (CDSE_NAME_ONLY, 4.0, "id"),
    (OLD_BASELINE, 3.01, "sentinel2:processing_baseline"),
    (DATE_ONLY_AFTER, None, ""),
])
def test_baseline_spellings(item: pystac.Item, baseline: float | None, spelling: str) -> None:
    assert s2_baseline(item) == (baseline, spelling)


@pytest.mark.parametrize(("item", "key", "scale", "offset"), [
    (EARTH_SEARCH, "red", 1e-4, -0.1),  # the catalogue states the offset: used as stated, never added twice
    (PLANETARY, "B04", 1e-4, -0.1),  # no raster:bands: collection scaling + BOA offset (baseline 05.09)
    (CDSE, "B04_10m", 1e-4, -0.1),  # scale only + processing:version 05.09
    (CDSE_NAME_ONLY, "B04", 1e-4, -0.1),  # N0400 in the product name
    (OLD_BASELINE, "B04", 1e-4, 0.0),  # stated 03.01 wins over nothing
    (DATE_ONLY_AFTER, "red", 1e-4, -0.1),  # no baseline anywhere: acquired after 2022-01-25
    (DATE_ONLY_BEFORE, "red", 1e-4, 0.0),
])
def test_s2_reflectance_maps(item: pystac.Item, key: str, scale: float, offset: float) -> None:
    ref = reflectance_ref(item, key, S2)
    assert ref.scale == pytest.approx(scale) and ref.offset == pytest.approx(offset, abs=1e-12)


def test_the_date_fallback_is_the_baseline_change() -> None:
    assert S2_OFFSET_SINCE.isoformat() == "2022-01-25"
    day_before = _item("a", "2022-01-24T23:59:59Z", {}, {})
    day_of = _item("b", "2022-01-25T00:00:00Z", {}, {})
    assert not has_boa_offset(day_before, S2) and has_boa_offset(day_of, S2)
    assert not has_boa_offset(day_of, L8)  # a Sentinel-2 fact only


# Landsat Collection 2 Level-2 on Earth Search / Planetary Computer: raster:bands scale and offset stated;
# some catalogues give the scale only.
def _landsat(asset: dict[str, Any]) -> pystac.Item:
    return _item("LC08_L2SP_047027_20200727_20200908_02_T1", "2020-07-27T18:58:00Z",
                 {"platform": "landsat-8", "landsat:collection_number": "02"}, asset, key="red")


@pytest.mark.parametrize(("raster_band", "offset"), [
    ({"scale": 2.75e-05, "offset": -0.2, "nodata": 0, "data_type": "uint16"}, -0.2),
    ({"scale": 2.75e-05, "nodata": 0, "data_type": "uint16"}, -0.2),  # scale only: the C2 offset, not 0
    ({"scale": 0.0001, "nodata": -999, "data_type": "int16"}, 0.0),  # another product's scale: no C2 offset
])
def test_landsat_c2_offset(raster_band: dict[str, Any], offset: float) -> None:
    ref = reflectance_ref(_landsat({"raster:bands": [raster_band]}), "red", L8)
    assert ref.offset == pytest.approx(offset)
    assert ref.scale == pytest.approx(raster_band["scale"])


def test_landsat_without_raster_bands_uses_the_collection_scaling() -> None:
    ref = reflectance_ref(_landsat({}), "red", L8)
    assert (ref.scale, ref.offset) == (pytest.approx(2.75e-5), pytest.approx(-0.2))
