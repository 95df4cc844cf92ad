"""Per-pixel validity: the same classes and bits as the Earth Engine backend (SPEC §5), from sensors.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...sensors import SCL_INVALID_CLASSES, VALID_REFLECTANCE, qa_pixel_invalid_mask

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
