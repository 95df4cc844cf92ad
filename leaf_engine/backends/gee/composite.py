"""Best-pixel composite in Earth Engine, with the same score as the local engine (:mod:`leaf_engine.composite`).

    score = W_SPECTRAL·clip(NDVI, 0, 1) + W_DATE·(1 − |day − mid| / half_width) + W_CLOUD·(1 − cloud_cover/100)

``day`` is the observation's UTC calendar day, so the date term equals the local engine's for the same scene.
Each observation carries its day of year (1-based) and sensor code, so the composite's Date and QC follow the
chosen observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from ... import composite as score_rule
from ...sensors import Sensor
from . import collections, masks
from .sl2p_graph import select_exact

SCORE = "score"
DOY = "doy"
SENSOR_CODE = "sensor_code"


def _band_named(sensor: Sensor, common: str) -> str:
    return next(b.net_input for b in sensor.supplied_bands if b.common_name == common)


def spectral_term(refl: Any, sensor: Sensor) -> Any:
    """clip(NDVI, 0, 1); 0 where NDVI is undefined (red + nir = 0), as in the local engine.

    Earth Engine's ``divide`` returns 0 for a division by 0, which gives exactly that.
    """
    red, nir = (select_exact(refl, [_band_named(sensor, c)]) for c in ("red", "nir08"))
    return nir.subtract(red).divide(nir.add(red)).clamp(0, 1)


def scene_term(day: Any, cloud_cover: Any, start: date, end: date) -> Any:
    """W_DATE·date term + W_CLOUD·cloud term of a scene (an ``ee.Number``).

    ``day`` is the observation's whole days after ``start`` (0 = the first day of the window).
    """
    import ee

    mid, half = score_rule.window_middle(start, end)
    offset = mid - start.toordinal()
    date_term = ee.Number(1).subtract(ee.Number(day).subtract(offset).abs().divide(half)).max(0)
    cloud = ee.Number(cloud_cover).max(0).min(100)
    return date_term.multiply(score_rule.W_DATE).add(
        ee.Number(1).subtract(cloud.divide(100)).multiply(score_rule.W_CLOUD))


def score_image(refl: Any, img: Any, sensor: Sensor, start: date, end: date) -> Any:
    """Per-pixel score of one observation (double)."""
    import ee

    day = ee.Date(img.get("system:time_start")).difference(ee.Date(start.isoformat()), "day").floor()
    scene = scene_term(day, img.get(collections.cloud_property(sensor)), start, end)
    return (spectral_term(refl, sensor).multiply(score_rule.W_SPECTRAL).add(ee.Image.constant(scene))
            .rename(SCORE))


def observation(img: Any, sensor: Sensor, start: date, end: date, inputs: Sequence[str] | None = None) -> Any:
    """One scene as an observation: network inputs, score, day of year and sensor code, masked to clear pixels.

    ``inputs``: the network set's inputs (None: the sensor's default sets'), as :meth:`Sensor.bands_for` reads."""
    import ee

    refl = masks.reflectance(img, sensor, inputs)
    doy = ee.Date(img.get("system:time_start")).getRelative("day", "year").add(1)
    obs = ee.Image.cat([
        collections.angles(img, sensor), refl, score_image(refl, img, sensor, start, end),
        ee.Image.constant(doy).toDouble().rename(DOY), ee.Image.constant(sensor.qc_code).toDouble().rename(SENSOR_CODE),
    ]).updateMask(masks.clear(img, sensor, inputs))
    # One mask for the whole observation (a pixel lacking any band is no observation, as locally), so the
    # band-by-band mosaic below never mixes two scenes in one pixel.
    return obs.updateMask(obs.mask().reduce(ee.Reducer.min())).set("system:time_start", img.get("system:time_start"))


def observations(sensor: Sensor, geometry: Any, start: date, end: date,
                 inputs: Sequence[str] | None = None) -> Any:
    """Every clear observation of one sensor in the window."""
    col = collections.scenes(sensor, geometry, start, end)
    if sensor.ee_toa_collection:  # per-pixel angles come from the matching TOA scene
        col = collections.with_toa(col, sensor, geometry, start, end)
    return col.map(lambda img: observation(img, sensor, start, end, inputs))


def best_pixel(members: tuple[Sensor, ...], geometry: Any, start: date, end: date,
               inputs: Mapping[str, Sequence[str]] | None = None) -> Any:
    """Per pixel the observation with the highest score over all member sensors (``inputs``: each member's
    network set inputs by sensor id; default: its default sets')."""
    inputs = inputs or {}
    col = observations(members[0], geometry, start, end, inputs.get(members[0].id))
    for s in members[1:]:
        col = col.merge(observations(s, geometry, start, end, inputs.get(s.id)))
    return best_of(col)


def best_of(col: Any) -> Any:
    """Per pixel the observation with the highest score; among equal scores the earliest, as the local engine.

    ``qualityMosaic`` does not document which image wins a tie, so the rule is built from documented parts: each
    observation is masked to the pixels where its score equals the maximum (``reduce.max``), and ``mosaic``, which
    puts later images on top, runs over the collection sorted latest first, so the earliest tied one wins.
    """
    best = col.select([SCORE]).max()
    tied = col.map(lambda img: img.updateMask(img.select(SCORE).eq(best)))
    return tied.sort("system:time_start", False).mosaic()
