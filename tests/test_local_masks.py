"""Masks of the local engine: the SCL classes and QA_PIXEL bits of SPEC §5, and the reflectance range."""

from __future__ import annotations

import numpy as np

from leaf_engine.backends.local.masks import qa_pixel_invalid, quality_invalid, reflectance_invalid, scl_invalid
from leaf_engine.sensors import QA_PIXEL_INVALID_BITS, SCL_INVALID_CLASSES, VALID_REFLECTANCE


def test_every_scl_class():
    classes = np.arange(12)
    got = scl_invalid(classes)
    # 4 vegetation and 5 not vegetated are the clear classes (LEAF-Toolbox S2MaskLand; as on Earth Engine).
    assert [int(c) for c in classes[~got]] == [4, 5]
    assert {int(c) for c in classes[got]} == set(SCL_INVALID_CLASSES) & set(range(12))


def test_each_qa_pixel_bit():
    for bit in range(16):
        value = np.array([1 << bit], dtype=np.uint16)
        assert bool(qa_pixel_invalid(value)[0]) == (bit in QA_PIXEL_INVALID_BITS), bit
    clear_land = np.array([0b0101_0100_0000], dtype=np.uint16)  # Landsat 8 'clear' (21824 = bit 6 + conf bits)
    assert not qa_pixel_invalid(clear_land)[0]
    assert qa_pixel_invalid(np.array([21824 | 1 << 3], dtype=np.uint16))[0]  # cloud


def test_quality_layer_dispatch_and_absent_layer():
    assert quality_invalid(None, None) is False
    np.testing.assert_array_equal(quality_invalid("scl", np.array([4, 9])), [False, True])
    np.testing.assert_array_equal(quality_invalid("qa_pixel", np.array([64, 72])), [False, True])


def test_reflectance_range_and_nan():
    lo, hi = VALID_REFLECTANCE
    b = np.array([lo - 1e-3, lo, 0.3, hi, hi + 1e-3, np.nan], dtype=np.float32)
    ok = np.full_like(b, 0.2)
    np.testing.assert_array_equal(reflectance_invalid([ok, b]), [True, False, False, False, True, True])
