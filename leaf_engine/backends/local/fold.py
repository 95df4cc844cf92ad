"""Fold one scene's observation into a block's best-pixel composite, in one compiled pass over the pixels.

The rules are those of :func:`leaf_engine.composite.score` and of ``masks.reflectance_invalid`` /
``masks.water_invalid``, evaluated per pixel with the same float32 arithmetic (thresholds rounded to float32 as
numpy compares a float32 array with a Python float; no fused multiply-add), so the composite is bit for bit the
one the numpy formulation gives (``tests/test_local_fold.py``). In numpy they were a dozen passes over the block
with their temporaries: about 40 % of a block's work besides warping. The blocks pass 8/16-bit DN with each
band's table (``reading.dn_tables``, the tables of ``reading.physical``): the look-up happens per chunk, in cache,
instead of a float32 copy of every scene's bands per block.

Compiled once at set-up with the SL2P kernel (``python -m leaf_engine.compiled``) and cached on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from ... import composite
from ...compiled import read_only
from ...sensors import VALID_REFLECTANCE, WATER_TEST


@dataclass(frozen=True)
class FoldRule:
    """What one scene's observation is judged by: band positions in its reflectance stack and its score term."""

    red: int
    nir: int
    water_green: int
    """Position of the water test's green band, or −1 when the scene's quality layers flag water."""
    water_nir: int
    scene_term: float
    """The score's date and cloud terms (:func:`composite.scene_term`)."""


CHUNK = 2048
"""Pixels per pass of each loop: the chunk's bands and masks stay in cache, every loop is a simple one over pixels
that LLVM vectorises (selects, no branches)."""


@njit(cache=True, nogil=True, error_model="numpy")  # nogil: the other block threads run Python meanwhile
def _fold(bands, luts, clear, red, nir, wgreen, wnir, lo, hi, wthr, w_spec, term, angles, angle_values, doy, code,
          c_score, c_bands, c_angles, c_doy, c_code):  # pragma: no cover - compiled
    n_bands, npix = bands.shape
    ok = np.empty(CHUNK, np.bool_)
    buf = np.empty((n_bands, CHUNK), np.float32)  # the chunk's reflectance
    for s in range(0, npix, CHUNK):
        m = min(CHUNK, npix - s)
        for b in range(n_bands):
            src = bands[b, s:s + m]  # views indexed from 0: ``x[s + p]`` would be gathered lane by lane
            dst = buf[b]
            if luts.shape[0] > 0:  # DN through the band's table (reading.physical's, so the same float32 values)
                lut = luts[b]
                for p in range(m):
                    dst[p] = lut[np.intp(src[p])]
            else:
                for p in range(m):
                    dst[p] = src[p]
        cl = clear[s:s + m]
        for p in range(m):
            ok[p] = cl[p]
        for b in range(n_bands):  # masks.reflectance_invalid: NaN fails both comparisons
            v = buf[b]
            for p in range(m):
                ok[p] &= (v[p] >= lo) & (v[p] <= hi)
        if wgreen >= 0:  # masks.water_invalid
            g = buf[wgreen]
            n = buf[wnir]
            for p in range(m):
                ok[p] &= not ((g[p] - n[p]) / (g[p] + n[p]) > wthr)
        rd = buf[red]
        nr = buf[nir]
        sc = c_score[s:s + m]
        for p in range(m):  # composite.score; ties keep the earlier scene
            total = nr[p] + rd[p]
            ndvi = (nr[p] - rd[p]) / total
            ndvi = ndvi if total != np.float32(0.0) else np.float32(0.0)
            spectral = min(max(ndvi, np.float32(0.0)), np.float32(1.0))
            score = w_spec * spectral + term  # float32, as composite.score
            ok[p] &= score > sc[p]
            sc[p] = score if ok[p] else sc[p]
        for b in range(n_bands):
            v = buf[b]
            cb = c_bands[b, s:s + m]
            for p in range(m):
                cb[p] = v[p] if ok[p] else cb[p]
        for a in range(3):
            ca = c_angles[a, s:s + m]
            if angles.shape[1] == 0:
                va = angle_values[a]
                for p in range(m):
                    ca[p] = va if ok[p] else ca[p]
            else:
                av = angles[a, s:s + m]
                for p in range(m):
                    ca[p] = av[p] if ok[p] else ca[p]
        cd = c_doy[s:s + m]
        cc = c_code[s:s + m]
        for p in range(m):
            cd[p] = doy if ok[p] else cd[p]
            cc[p] = code if ok[p] else cc[p]


def fold(comp, bands: np.ndarray, clear: np.ndarray, rule: FoldRule,  # type: ignore[no-untyped-def]
         angles: tuple[np.ndarray | float, ...], doy: int, code: int, luts: np.ndarray | None = None) -> None:
    """Update ``comp`` (a ``pipeline.Composite``) in place where the observation is valid and scores higher:
    ``bands`` [n, h, w] in the scene's band order, float32 reflectance, or 8/16-bit unsigned DN with ``luts``
    [n, 2**bits] float32 (each band's DN → reflectance table); ``clear`` the pixels its data and quality layers
    allow, ``angles`` cos(VZA), cos(SZA), cos(RAA) (per pixel, or one value each)."""
    f32 = np.float32
    npix = clear.size
    per_pixel = any(np.ndim(a) for a in angles)
    stack = np.stack([np.broadcast_to(np.asarray(a, f32), clear.shape).reshape(npix) for a in angles]) \
        if per_pixel else np.zeros((3, 0), f32)
    if luts is None:
        bands, luts = np.ascontiguousarray(bands, f32), np.zeros((0, 0), f32)
    elif bands.dtype not in (np.uint8, np.uint16) or luts.shape != (len(bands), np.iinfo(bands.dtype).max + 1):
        raise ValueError(f"DN of type {bands.dtype} need 8/16-bit unsigned bands and one full table per band "
                         f"(got tables {luts.shape} for {len(bands)} bands)")
    _fold(read_only(np.ascontiguousarray(bands).reshape(len(bands), npix)),
          read_only(np.ascontiguousarray(luts, f32)), read_only(np.ascontiguousarray(clear).reshape(npix)),
          rule.red, rule.nir, rule.water_green, rule.water_nir, f32(VALID_REFLECTANCE[0]),
          f32(VALID_REFLECTANCE[1]), f32(WATER_TEST.threshold), f32(composite.W_SPECTRAL), f32(rule.scene_term),
          read_only(stack), read_only(np.array([0.0 if per_pixel else a for a in angles], f32)), np.uint16(doy),
          np.uint8(code),
          comp.score.reshape(npix), comp.bands.reshape(len(bands), npix), comp.angles.reshape(3, npix),
          comp.doy.reshape(npix), comp.sensor_code.reshape(npix))


def warm_up() -> float:
    """Compile :func:`_fold` (or load it from numba's on-disk cache); seconds."""
    from .pipeline import Composite

    t0 = time.perf_counter()
    comp = Composite.empty(2, (2, 2))
    rule, angles = FoldRule(0, 1, 0, 1, 0.5), (1.0, np.ones((2, 2), np.float32), 1.0)
    fold(comp, np.full((2, 2, 2), 0.3, np.float32), np.ones((2, 2), bool), rule, angles, 1, 1)
    for dtype in (np.uint8, np.uint16):  # DN through tables: the types of L2 surface reflectance rasters
        luts = np.zeros((2, np.iinfo(dtype).max + 1), np.float32)
        fold(comp, np.full((2, 2, 2), 3, dtype), np.ones((2, 2), bool), rule, angles, 1, 1, luts=luts)
    return time.perf_counter() - t0
