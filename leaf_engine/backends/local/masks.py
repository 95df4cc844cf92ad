"""Per-pixel validity: the same quality layers, classes and bits as the Earth Engine backend (SPEC §5), from the
sensor facts in sensors.py, plus the spectral water test for inputs whose quality layer cannot flag inland water."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...sensors import SCL_INVALID_CLASSES, VALID_REFLECTANCE, WATER_TEST, QualityLayer, qa_pixel_invalid_mask

if TYPE_CHECKING:  # pragma: no cover
    from .scenes import Scene

_SCL_INVALID_LUT = np.zeros(256, dtype=bool)
_SCL_INVALID_LUT[list(SCL_INVALID_CLASSES)] = True


def scl_invalid(scl: np.ndarray) -> np.ndarray:
    """Sentinel-2 scene classification: True for no data, saturated, shadow, water, cloud, cirrus, snow."""
    s = np.asarray(scl)
    out_of_table = (s < 0) | (s > 255)
    return _SCL_INVALID_LUT[np.clip(s, 0, 255).astype(np.intp)] | out_of_table


def qa_pixel_invalid(qa: np.ndarray) -> np.ndarray:
    """Landsat C2 QA_PIXEL: True where any of fill, dilated cloud, cirrus, cloud, shadow, snow, water is set."""
    return (np.asarray(qa).astype(np.uint32) & qa_pixel_invalid_mask()) != 0


def saturation_invalid(radsat: np.ndarray) -> np.ndarray:
    """Landsat C2 QA_RADSAT: True where any band is saturated (or the pixel dropped/occluded): any bit set."""
    return np.asarray(radsat) != 0


def quality_invalid(kind: str | None, layer: np.ndarray | None) -> np.ndarray | bool:
    """Invalid pixels from a scene's quality layer; ``False`` (nothing masked) when the scene has none."""
    if kind is None or layer is None:
        return False
    if kind == "scl":
        return scl_invalid(layer)
    if kind == "qa_pixel":
        return qa_pixel_invalid(layer)
    raise ValueError(f"unknown quality layer kind {kind!r}: expected 'scl' or 'qa_pixel'")


def reflectance_invalid(bands: Sequence[np.ndarray]) -> np.ndarray:
    """True where any band is NaN or outside ``VALID_REFLECTANCE`` (saturation, bad retrievals)."""
    lo, hi = VALID_REFLECTANCE
    bad = np.zeros(np.shape(bands[0]), dtype=bool)
    for b in bands:
        bad |= ~((b >= lo) & (b <= hi))  # NaN compares False: invalid
    return bad


def layer_invalid(layer: QualityLayer, values: np.ndarray, has_data: np.ndarray) -> np.ndarray:
    """Pixels one quality layer makes invalid. A required layer's nodata pixels are invalid; an optional one's
    flag nothing (as on Earth Engine, where the masked pixels of optional layers are unmasked to 0)."""
    v = np.asarray(values)
    if layer.clear_classes is not None:
        clear = np.zeros(256, dtype=bool)
        clear[list(layer.clear_classes)] = True
        bad = ~clear[np.clip(v, 0, 255).astype(np.intp)] | (v < 0) | (v > 255)
    elif layer.invalid_bits:
        bad = (v.astype(np.int64) & sum(1 << b for b in layer.invalid_bits)) != 0
    else:
        bad = v != 0
    return bad & has_data if layer.optional else bad | ~has_data


def quality_clear(scene: Scene, reads: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | bool:
    """Clear pixels by every quality layer the scene has (reads in the order of ``scene.quality``)."""
    clear: np.ndarray | bool = True
    for (layer, _), (values, has) in zip(scene.quality, reads, strict=True):
        clear = clear & ~layer_invalid(layer, values, has)
    return clear


def water_invalid(scene: Scene, bands: np.ndarray) -> np.ndarray:
    """The spectral water test (:data:`leaf_engine.sensors.WATER_TEST`) where the scene needs it; False else.
    ``bands`` is the scene's reflectance stack in ``scene.bands`` order."""
    if not scene.water_test:
        return np.zeros(bands.shape[1:], dtype=bool)
    common = [scene.sensor.band(n).common_name for n in scene.bands]
    green, nir = bands[common.index(WATER_TEST.green)], bands[common.index(WATER_TEST.nir)]
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = (green - nir) / (green + nir)
    return ndwi > WATER_TEST.threshold


def describe_masks(scenes: Sequence[Scene]) -> str:
    """The mask rules a job's scenes were masked by, for the outputs' ``mask_rule`` tag (each distinct rule once,
    with the number of scenes it applied to)."""
    counts: dict[str, int] = {}
    for s in scenes:
        counts[s.mask_rule] = counts.get(s.mask_rule, 0) + 1
    return " | ".join(f"{rule} [{n} scene(s)]" for rule, n in counts.items()) or "no scenes"
