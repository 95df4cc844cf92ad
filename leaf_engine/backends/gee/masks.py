"""Clear-sky masks and reflectance scaling of one scene, as Earth Engine graphs.

The classes and bits that make an observation invalid are the sensor's quality layers in
:mod:`leaf_engine.sensors` (the LEAF-Toolbox rules): Sentinel-2 SCL classes 4/5 kept, QA60 opaque/cirrus bits and
the MSK_CLASSI bands that replace QA60 in newer processing baselines (both where present); Landsat QA_PIXEL
fill/dilated cloud/cirrus/cloud/shadow/snow/water and QA_RADSAT.
Reflectance outside :data:`leaf_engine.sensors.VALID_REFLECTANCE` is invalid too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ... import sensors
from ...sensors import QualityLayer, Sensor

S2_CLASSI_BANDS = sensors.S2_CLASSI_BANDS


def reflectance(img: Any, sensor: Sensor, inputs: Sequence[str] | None = None) -> Any:
    """The bands a job reads (:meth:`Sensor.bands_for` of the set's ``inputs``) as 0–1 reflectance, renamed to
    the networks' input names (double)."""
    bands = sensor.bands_for(inputs)
    dn = img.select([b.ee_band for b in bands], [b.net_input for b in bands])
    return dn.toDouble().multiply(sensor.dn_scale).add(sensor.dn_offset)


def layer_clear(img: Any, layer: QualityLayer) -> Any:
    """1 where one quality layer (a fact of :mod:`leaf_engine.sensors`) flags nothing.

    An optional layer that the scene lacks flags nothing, and its masked pixels flag nothing (QA60 is empty in
    scenes since 2022, and absent from some); the local engine applies the same fallback."""
    import ee

    def rule(band: Any) -> Any:
        if layer.clear_classes is not None:
            classes = list(range(256))
            return band.remap(classes, [1 if c in layer.clear_classes else 0 for c in classes], 0)
        if layer.invalid_bits:
            return band.bitwiseAnd(sum(1 << b for b in layer.invalid_bits)).eq(0)
        return band.eq(0)  # any_nonzero

    if not layer.optional:
        return rule(img.select(layer.band))
    return ee.Image(ee.Algorithms.If(img.bandNames().contains(layer.band),
                                     rule(img.select(layer.band).unmask(0)), ee.Image.constant(1)))


def quality_clear(img: Any, sensor: Sensor) -> Any:
    """1 where none of the sensor's quality layers flags the pixel."""
    out = None
    for layer in sensor.quality:
        ok = layer_clear(img, layer)
        out = ok if out is None else out.And(ok)
    return out


def _layer(sensor_id: str, band: str) -> QualityLayer:
    return next(q for q in sensors.SENSORS[sensor_id].quality if q.band == band)


def s2_scl_clear(img: Any) -> Any:
    """1 where the scene classification (SCL) class is a clear one (4, 5)."""
    return layer_clear(img, _layer("S2_SR", "SCL"))


def s2_qa60_clear(img: Any) -> Any:
    """1 where QA60 flags neither opaque cloud nor cirrus (masked or missing QA60 flags nothing)."""
    return layer_clear(img, _layer("S2_SR", "QA60"))


def s2_clear(img: Any) -> Any:
    """1 where a Sentinel-2 pixel is clear: SCL class valid, QA60 and MSK_CLASSI show no cloud or cirrus."""
    return quality_clear(img, sensors.SENSORS["S2_SR"])


def landsat_clear(img: Any, sensor: Sensor) -> Any:
    """1 where a Landsat C2 L2 pixel is clear: no QA_PIXEL invalid flag and no saturated band (QA_RADSAT)."""
    return quality_clear(img, sensor)


def reflectance_ok(refl: Any) -> Any:
    """1 where every band lies within the valid reflectance range."""
    lo, hi = sensors.VALID_REFLECTANCE
    import ee

    return refl.gte(lo).And(refl.lte(hi)).reduce(ee.Reducer.min())


def clear(img: Any, sensor: Sensor, inputs: Sequence[str] | None = None) -> Any:
    """The full validity test of one scene: quality layer and the range of every band the job reads."""
    return quality_clear(img, sensor).And(reflectance_ok(reflectance(img, sensor, inputs)))
