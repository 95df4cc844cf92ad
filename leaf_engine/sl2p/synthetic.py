"""Seeded, realistic Sentinel-2 20 m SL2P inputs for benchmarks and tests (not for science).

Reflectances are vegetation / bare-soil / shade mixtures with brightness variation and noise, quantised like
L2A (DN/10000); angles are per pixel and typical of Sentinel-2 (view zenith ≤ 11°, sun zenith 25–65°).
"""

from __future__ import annotations

import numpy as np

from .networks import load_network_set

S2_20M_SET = "leaf_sl2p_s2_20m"
# Endmember reflectances for B3 B4 B5 B6 B7 B8A B11 B12: green canopy, bare soil, shade.
_ENDMEMBERS = np.array([
    [0.08, 0.04, 0.12, 0.30, 0.38, 0.42, 0.22, 0.10],
    [0.10, 0.14, 0.17, 0.19, 0.21, 0.23, 0.30, 0.25],
    [0.03, 0.02, 0.03, 0.05, 0.06, 0.07, 0.04, 0.02],
])


def s2_20m_inputs(n: int, seed: int = 0, block: int = 1 << 20) -> dict[str, np.ndarray]:
    """``n`` pixels keyed by the inputs of ``leaf_sl2p_s2_20m`` (float32), generated block by block."""
    nets = load_network_set(S2_20M_SET)
    out = {name: np.empty(n, np.float32) for name in nets.inputs}
    rng = np.random.default_rng(seed)
    for s in range(0, n, block):
        m = min(block, n - s)
        frac = rng.dirichlet((2.0, 1.5, 0.7), size=m)
        refl = frac @ _ENDMEMBERS * rng.uniform(0.8, 1.2, (m, 1)) + rng.normal(0, 0.004, (m, 8))
        dn = np.clip(np.rint(refl * 10000), 1, 10000)  # L2A quantisation: reflectance = DN / 10000
        for i, band in enumerate(nets.band_inputs):
            out[band][s:s + m] = dn[:, i] / 10000
        out["cosVZA"][s:s + m] = np.cos(np.radians(rng.uniform(0, 11, m)))
        out["cosSZA"][s:s + m] = np.cos(np.radians(rng.uniform(25, 65, m)))
        out["cosRAA"][s:s + m] = np.cos(np.radians(rng.uniform(0, 180, m)))
    return out
