"""Input-domain test (QC bit 0), SPEC §5: the reference numpy implementation of the one rule.

Rule, per reflectance band ρ (0–1 units) in the order of the set's ``definition_domain.bands``:

* ``c = ceil(min(10·ρ, 1e9) − 1e-5)``, computed in float64: a reflectance less than 1e-6 above a boundary ``k/10``
  counts as ``k/10``. This absorbs float32 storage and DN scaling (``float32(0.3)`` is 1.2e-8 above 0.3 and
  would otherwise give 4, flipping ~0.1 % of realistic S2 flags) while no sensor's DN step (S2 1e-4,
  Landsat C2 2.75e-5) is small enough for a genuine value to be moved.
* ``digit = c mod 10`` for ``c > 0``; **``digit = 0`` for ``c ≤ 0``**, i.e. for every ρ ≤ 0 including ρ ≤ −0.1.
  This is Earth Engine's result (its ``mod`` keeps the dividend's sign and the ``uint8`` cast clamps negatives to
  0), so the local and Earth Engine executors agree; numpy's ``%`` would give 9 for −0.1 ≥ ρ > −0.2.
* ``code = Σ digitᵢ·10ⁱ`` (first band = units digit); the pixel is **out of domain** when ``code`` is not in the
  set's sorted ``codes``, or when any of its bands is NaN or infinite. Angles are not tested.

The fast kernel (``kernel.py``) implements the same rule; tests hold them equal.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .networks import Domain

BOUNDARY_TOLERANCE = 1e-5
"""Subtracted from 10·ρ before ``ceil``: reflectances < 1e-6 above k/10 count as k/10 (see the module docstring)."""


DIGIT_CAP = 1e9
"""10·ρ is capped here first, so the digit arithmetic stays exact in float64 (ρ > 1e8 is absurd anyway)."""


def _ceil10(rho: np.ndarray) -> np.ndarray:
    t = np.asarray(rho, dtype=np.float64) * 10.0
    return np.ceil(np.where(t > DIGIT_CAP, DIGIT_CAP, t) - BOUNDARY_TOLERANCE)


def band_digits(rho: np.ndarray) -> np.ndarray:
    """Domain digit (0–9, int64) of each reflectance; see the module docstring for the rule. NaN gives 0."""
    c = _ceil10(rho)
    with np.errstate(invalid="ignore"):
        digit = np.where(c > 0, c - 10.0 * np.floor(c * 0.1), 0.0)
    return np.nan_to_num(digit, nan=0.0).astype(np.int64)


def domain_codes(bands: Mapping[str, np.ndarray], order: tuple[str, ...]) -> np.ndarray:
    """Decimal domain code per pixel (int64) of the bands named in ``order`` (first = units digit)."""
    code: np.ndarray | None = None
    for i, name in enumerate(order):
        part = band_digits(bands[name]) * np.int64(10) ** i
        code = part if code is None else code + part
    assert code is not None
    return code


def out_of_domain(domain: Domain, bands: Mapping[str, np.ndarray]) -> np.ndarray:
    """True where a pixel's code is not in the domain or a band is not finite."""
    codes = domain_codes(bands, domain.bands)
    pos = np.clip(np.searchsorted(domain.codes, codes), 0, max(len(domain.codes) - 1, 0))
    inside = domain.codes[pos] == codes if len(domain.codes) else np.zeros(codes.shape, bool)
    finite = np.ones(codes.shape, dtype=bool)
    for name in domain.bands:
        finite &= np.isfinite(np.asarray(bands[name]))
    return ~(inside & finite)
