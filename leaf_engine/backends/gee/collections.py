"""Scene collections of a job: filtered by region, inclusive window and scene cloud cover, with view/sun angles.

Landsat angles come from the matching Collection 2 TOA scene's angle bands (VZA, VAA, SZA, SAA in hundredths of
a degree), joined on ``system:index``; the relative azimuth is signed (sun − view), as the networks were trained.
Sentinel-2 angles come from the scene metadata (mean solar angles, mean B8A incidence angles).
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

from ...composite import MAX_SCENE_CLOUD_COVER
from ...sensors import ANGLE_INPUTS, Sensor

S2_CLOUD_PROPERTY = "CLOUDY_PIXEL_PERCENTAGE"
LANDSAT_CLOUD_PROPERTY = "CLOUD_COVER"
S2_ANGLE_PROPERTIES = {
    "vza": "MEAN_INCIDENCE_ZENITH_ANGLE_B8A", "vaa": "MEAN_INCIDENCE_AZIMUTH_ANGLE_B8A",
    "sza": "MEAN_SOLAR_ZENITH_ANGLE", "saa": "MEAN_SOLAR_AZIMUTH_ANGLE",
}
LANDSAT_ANGLE_BANDS = {"vza": "VZA", "vaa": "VAA", "sza": "SZA", "saa": "SAA"}
LANDSAT_ANGLE_SCALE = 0.01
"""C2 TOA angle bands are in hundredths of a degree."""
TOA_PROPERTY = "leaf_toa"


def cloud_property(sensor: Sensor) -> str:
    return sensor.cloud_property


def scenes(sensor: Sensor, geometry: Any, start: date, end: date,
           max_cloud_cover: float = MAX_SCENE_CLOUD_COVER) -> Any:
    """The sensor's scenes touching ``geometry`` within the inclusive window [start, end]."""
    import ee

    # filterDate's end is exclusive: the day after ``end`` makes the window inclusive.
    return (ee.ImageCollection(sensor.ee_collection)
            .filterBounds(geometry)
            .filterDate(start.isoformat(), (end + timedelta(days=1)).isoformat())
            .filter(ee.Filter.lte(cloud_property(sensor), max_cloud_cover)))


def with_toa(l2: Any, sensor: Sensor, geometry: Any, start: date, end: date) -> Any:
    """Landsat L2 scenes, each carrying its C2 TOA scene (same ``system:index``) in property ``leaf_toa``."""
    import ee

    toa = (ee.ImageCollection(sensor.ee_toa_collection).filterBounds(geometry)
           .filterDate(start.isoformat(), (end + timedelta(days=1)).isoformat()))
    join = ee.Join.saveFirst(TOA_PROPERTY)
    return ee.ImageCollection(join.apply(l2, toa, ee.Filter.equals(leftField="system:index",
                                                                    rightField="system:index")))


def angle_cosines(vza: Any, sza: Any, saa: Any, vaa: Any, scale: float = 1.0) -> Any:
    """cosVZA, cosSZA, cosRAA from angle images in ``scale`` degrees; RAA = SAA − VAA, signed (never cast)."""
    import ee

    to_rad = scale * math.pi / 180.0
    cosines = [a.toDouble().multiply(to_rad).cos() for a in (vza, sza, saa.toDouble().subtract(vaa))]
    return ee.Image.cat(cosines).rename(list(ANGLE_INPUTS))


def landsat_angles(img: Any) -> Any:
    """Per-pixel angles from the joined C2 TOA scene's angle bands (hundredths of a degree)."""
    import ee

    toa = ee.Image(img.get(TOA_PROPERTY))
    b = {k: toa.select(v) for k, v in LANDSAT_ANGLE_BANDS.items()}
    return angle_cosines(b["vza"], b["sza"], b["saa"], b["vaa"], LANDSAT_ANGLE_SCALE)


def s2_angles(img: Any) -> Any:
    """The scene's mean angles (degrees) from its metadata, constant over the scene."""
    import ee

    p = {k: ee.Image.constant(ee.Number(img.get(v))) for k, v in S2_ANGLE_PROPERTIES.items()}
    return angle_cosines(p["vza"], p["sza"], p["saa"], p["vaa"])


ANGLE_SOURCES = {"toa_angle_bands": landsat_angles, "scene_metadata": s2_angles}
"""``Sensor.angle_source`` → the graph that builds the angle cosines."""


def angles(img: Any, sensor: Sensor) -> Any:
    return ANGLE_SOURCES[sensor.angle_source](img)
