"""The kernel's tanh: how its coefficients were fitted, and a check of its error bound on EVERY float32 input.

    python benchmarks/tanh_bound.py            # exhaustive check over [0, 9] (~1.1e9 floats, ~1 min on 2 cores)
    python benchmarks/tanh_bound.py --fit      # refit x·P(x²)/Q(x²), deg P = 4, deg Q = 3, on [0, 7.9]

The function is odd (P·x/Q with x² shared: tanh~(−x) = −tanh~(x) bit for bit), and beyond ``TANH_CLAMP`` it is
held at its value there, so [0, 9] and the clamp cover every float32. The measured maximum must stay below
``kernel.TANH_MAX_ERROR``, the figure that ``kernel.error_bound`` propagates through the network layers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from numba import njit, prange

from leaf_engine.sl2p import kernel


def fit(deg_p: int = 4, deg_q: int = 3, x_max: float = kernel.TANH_CLAMP, iters: int = 600
        ) -> tuple[float, np.ndarray, np.ndarray]:
    """Near-minimax fit by Lawson's iteration on the linearised residual f·Q − x·P (weights ∝ |error|)."""
    n = 8000
    x = np.unique(np.concatenate([x_max * np.sin(np.linspace(0, np.pi / 2, n)), np.linspace(0, x_max, n)]))
    f, u = np.tanh(x), x * x
    p_cols = np.stack([x * u**i for i in range(deg_p + 1)], 1)
    q_cols = np.stack([u**i for i in range(1, deg_q + 1)], 1)
    a = np.hstack([p_cols, -f[:, None] * q_cols])
    w, q_prev = np.ones(len(x)), np.ones(len(x))
    best: tuple[float, np.ndarray, np.ndarray] = (math.inf, np.zeros(0), np.zeros(0))
    for _ in range(iters):
        sw = np.sqrt(w) / q_prev
        z = np.linalg.lstsq(a * sw[:, None], f * sw, rcond=None)[0]
        p, q = z[:deg_p + 1], z[deg_p + 1:]
        q_prev = 1 + q_cols @ q
        r = p_cols @ p / q_prev - f
        if np.abs(r).max() < best[0] and q_prev.min() > 0:
            best = (float(np.abs(r).max()), p, q)
        w = w * np.abs(r)
        w /= w.sum()
    return best


@njit(parallel=True, cache=True)
def _max_error(lo_bits: int, hi_bits: int) -> tuple[float, int]:
    n_parts = 64
    errs = np.zeros(n_parts)
    where = np.zeros(n_parts, np.int64)
    step = (hi_bits - lo_bits + n_parts - 1) // n_parts
    for part in prange(n_parts):
        bits = np.empty(1, np.int32)
        for b in range(lo_bits + part * step, min(hi_bits, lo_bits + (part + 1) * step)):
            bits[0] = b
            x = bits.view(np.float32)[0]
            e = abs(np.float64(kernel._tanh(x)) - math.tanh(np.float64(x)))
            if e > errs[part]:
                errs[part] = e
                where[part] = b
    i = np.argmax(errs)
    return errs[i], where[i]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="print refitted coefficients instead of checking")
    args = ap.parse_args(argv)
    if args.fit:
        err, p, q = fit()
        print(f"fit error (float64) {err:.3e}\nP (x, x^3, ...): {p.tolist()}\nQ (x^2, x^4, ...): {q.tolist()}")
        return 0
    t0 = time.perf_counter()
    hi = int(np.float32(9.0).view(np.int32))
    err, bits = _max_error(0, hi + 1)
    x = np.int32(bits).view(np.float32)
    ok = err <= kernel.TANH_MAX_ERROR
    print(f"max |tanh~ − tanh| over all {hi + 1:,} float32 in [0, 9]: {err:.3e} at x = {x!r} "
          f"(bound {kernel.TANH_MAX_ERROR:g}: {'holds' if ok else 'VIOLATED'}; {time.perf_counter() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
