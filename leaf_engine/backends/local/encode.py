"""Estimates → 8-bit DN for a block, in one compiled pass per product.

The rule is :func:`leaf_engine.products.encode` (DN = round half up of value·scale, clamped to 0..max DN, NaN and
invalid pixels nodata), evaluated with the same float32 operations in the same order (no fused multiply-add) by
``sl2p.kernel.dn_value``, which the SL2P kernel's DN use too, so the DN are bit for bit those of the numpy
formulation (``tests/test_local_encode.py``). In numpy it is six passes over the block with their temporaries.

Compiled once at set-up with the other numba functions (``python -m leaf_engine.compiled``) and cached on disk.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from ... import products
from ...compiled import read_only
from ...sl2p.kernel import dn_value


@njit(cache=True, nogil=True, error_model="numpy")
def _encode(values, ok, scale, max_dn, nodata, out):  # pragma: no cover - compiled
    for i in range(values.shape[0]):
        out[i] = dn_value(values[i], scale, max_dn, nodata) if ok[i] else nodata


def encode(name: str, values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``products.encode(name, values, ok)``: float32 estimates of an 8-bit product → DN (nodata where ``ok`` is
    False or the value is NaN). Other types go through ``products.encode`` itself."""
    p = products.product(name)
    if p.dtype != "uint8" or values.dtype != np.float32:
        return products.encode(name, values, ok)
    out = np.empty(values.shape, np.uint8)
    _encode(read_only(np.ascontiguousarray(values).reshape(-1)),
            read_only(np.ascontiguousarray(ok, dtype=bool).reshape(-1)),
            np.float32(p.scale), np.float32(p.max_dn), np.uint8(p.nodata), out.reshape(-1))
    return out


def warm_up() -> float:
    """Compile :func:`_encode` (or load it from numba's on-disk cache); seconds."""
    t0 = time.perf_counter()
    encode("LAI", np.zeros(2, np.float32), np.ones(2, bool))
    return time.perf_counter() - t0
