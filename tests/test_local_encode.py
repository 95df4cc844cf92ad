"""The compiled DN encoding of the blocks equals ``products.encode`` bit for bit, on every value where the
rounding, the clamp or the nodata rule could go either way."""

from __future__ import annotations

import numpy as np
import pytest

from leaf_engine import products
from leaf_engine.backends.local.encode import encode


def _edges(name: str) -> np.ndarray:
    """Each DN boundary (k − 0.5)/scale and its float32 neighbours, the clamp's ends, zero, negatives, NaN, ±inf,
    values that overflow when scaled, and random values."""
    p = products.product(name)
    k = np.arange(-2, p.max_dn + 3, dtype=np.float64)
    bounds = ((k - 0.5) / p.scale).astype(np.float32)
    around, up, down = [bounds], bounds, bounds
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        around += [up, down]
    special = np.array([0.0, -0.0, -1e-30, 1e-30, np.nan, np.inf, -np.inf, 3e38, -3e38, p.max_dn / p.scale,
                        (p.max_dn + 0.5) / p.scale, 1e6], np.float32)
    rng = np.random.default_rng(0)
    return np.concatenate([*around, special, rng.uniform(-1, 2 * p.max_dn / p.scale, 10_000).astype(np.float32)])


@pytest.mark.parametrize("name", [n for n, p in products.PRODUCTS.items() if p.dtype == "uint8" and n not in
                                  products.ANCILLARY])
def test_compiled_encoding_equals_products_encode(name):
    values = _edges(name)
    ok = np.ones(values.shape, bool)
    ok[::7] = False
    np.testing.assert_array_equal(encode(name, values, ok), products.encode(name, values, ok))
    block = values[: 64 * 64].reshape(64, 64)  # a block's 2-D arrays keep their shape
    assert encode(name, block, ok[: 64 * 64].reshape(64, 64)).shape == (64, 64)


def test_other_types_take_the_numpy_path():
    values = np.array([0.1, np.nan, 0.7], np.float64)
    ok = np.array([True, True, False])
    np.testing.assert_array_equal(encode("LAI", values, ok), products.encode("LAI", values, ok))
