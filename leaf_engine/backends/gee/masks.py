"""Clear-sky masks and reflectance scaling of one scene, as Earth Engine graphs.

The classes and bits that make an observation invalid come from :mod:`leaf_engine.sensors`:
Sentinel-2 SCL classes plus QA60 opaque/cirrus bits (or the MSK_CLASSI bands that replace QA60 in newer
processing baselines); Landsat QA_PIXEL fill/dilated cloud/cirrus/cloud/shadow/snow/water and QA_RADSAT.
Reflectance outside :data:`leaf_engine.sensors.VALID_REFLECTANCE` is invalid too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ... import sensors
from ...sensors import Sensor

S2_CLASSI_BANDS = ("MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS")
"""Cloud classification bands of S2 baseline ≥ 04.00 products, present where QA60 is no longer filled."""


def reflectance(img: Any, sensor: Sensor, inputs: Sequence[str] | None = None) -> Any:
    """The bands a job reads (:meth:`Sensor.bands_for` of the set's ``inputs``) as 0–1 reflectance, renamed to
    the networks' input names (double)."""
    bands = sensor.bands_for(inputs)
    dn = img.select([b.ee_band for b in bands], [b.net_input for b in bands])
    return dn.toDouble().multiply(sensor.dn_scale).add(sensor.dn_offset)


def s2_scl_clear(img: Any) -> Any:
    """1 where the scene classification (SCL) class is not an invalid one."""
    classes = list(range(256))
    return img.select("SCL").remap(classes, [0 if c in sensors.SCL_INVALID_CLASSES else 1 for c in classes], 0)


def s2_qa60_clear(img: Any) -> Any:
    """1 where QA60 flags neither opaque cloud nor cirrus. QA60 is empty (masked) in scenes since 2022 and absent
    from some: masked or missing counts as "no flag", else those scenes would lose every pixel."""
    import ee

    bits = sum(1 << b for b in sensors.S2_QA60_INVALID_BITS)
    has_qa60 = img.bandNames().contains("QA60")
    return ee.Image(ee.Algorithms.If(
        has_qa60, img.select("QA60").unmask(0).bitwiseAnd(bits).eq(0), ee.Image.constant(1)))


def s2_classi_clear(img: Any) -> Any:
    """1 where the MSK_CLASSI cloud bands (baseline ≥ 04.00) flag nothing; 1 everywhere for scenes without them."""
    import ee

    has_classi = img.bandNames().containsAll(list(S2_CLASSI_BANDS))
    return ee.Image(ee.Algorithms.If(
        has_classi, img.select(list(S2_CLASSI_BANDS)).unmask(0).reduce(ee.Reducer.max()).eq(0),
        ee.Image.constant(1)))


def s2_clear(img: Any) -> Any:
    """1 where a Sentinel-2 pixel is clear: SCL class valid, QA60 and MSK_CLASSI show no cloud or cirrus."""
    return s2_scl_clear(img).And(s2_qa60_clear(img)).And(s2_classi_clear(img))


def landsat_clear(img: Any, sensor: Sensor) -> Any:
    """1 where a Landsat C2 L2 pixel is clear: no QA_PIXEL invalid flag and no saturated band (QA_RADSAT)."""
    qa_ok = img.select("QA_PIXEL").bitwiseAnd(sensors.qa_pixel_invalid_mask()).eq(0)
    radsat_ok = img.select(sensor.saturation_band).eq(0)
    return qa_ok.And(radsat_ok)


def reflectance_ok(refl: Any) -> Any:
    """1 where every band lies within the valid reflectance range."""
    lo, hi = sensors.VALID_REFLECTANCE
    import ee

    return refl.gte(lo).And(refl.lte(hi)).reduce(ee.Reducer.min())


def clear(img: Any, sensor: Sensor, inputs: Sequence[str] | None = None) -> Any:
    """The full validity test of one scene: quality layer and the range of every band the job reads."""
    quality = landsat_clear(img, sensor) if sensor.is_landsat else s2_clear(img)
    return quality.And(reflectance_ok(reflectance(img, sensor, inputs)))
