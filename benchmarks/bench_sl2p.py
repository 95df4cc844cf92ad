"""SL2P throughput: the fast kernel against a plain numpy float64 formulation, measured in the same run.

    python benchmarks/bench_sl2p.py --pixels 20000000 [--json] [--baseline-pixels 1000000] [--seed 0]

Inputs are realistic Sentinel-2 20 m pixels (seeded): vegetation/soil/shade mixtures quantised like L2A DN/10000,
plus per-pixel angles, all float32 as the local backend produces them. Work per pixel, for both formulations:
LAI, fCOVER, fAPAR and Albedo estimates, the input-domain flag and the encoded DN (plus output-range flags).
The baseline runs on ``--baseline-pixels`` pixels (plain numpy needs ~400 bytes per pixel of temporaries);
``ratio_to_plain_numpy`` compares throughputs: best of ``--repeat`` runs of each, alternated (fast, numpy, fast, …), so
a slow spell of a shared machine falls on both. ``peak_rss_mb`` is taken after the first fast run, before the
baseline.
``memory_ceiling_mpix_per_s`` is the machine's ceiling for this work: the same inputs read and the same outputs
written, on the same threads and blocks, with no arithmetic beyond one add per input. ``in_cache_mpix_per_s`` is
the kernel on one engine block (512² pixels) at a time whose inputs are already in cache, as they are when the
engine has just warped them (the headline figure reads every input from memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numba
import numpy as np

from leaf_engine import products
from leaf_engine.sl2p import kernel, load_network_set, reference
from leaf_engine.sl2p.synthetic import S2_20M_SET, s2_20m_inputs

SET_ID = S2_20M_SET
VARIABLES = ("LAI", "fCOVER", "fAPAR", "Albedo")
BLOCK_PIXELS = 512 * 512


def _ranges() -> dict[str, tuple[float, float]]:
    return {v: products.PRODUCTS[v].valid_range for v in VARIABLES}  # type: ignore[misc]


def run_fast(inputs: dict[str, np.ndarray]) -> kernel.KernelResult:
    nets = load_network_set(SET_ID)
    return kernel.run(nets, [inputs[n] for n in nets.inputs], VARIABLES, ranges=_ranges(), values=False, dn=True)


def run_plain_numpy(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The straightforward formulation: float64 arrays, one numpy expression per step, no chunking."""
    nets = load_network_set(SET_ID)
    x = np.stack([inputs[n].astype(np.float64) for n in nets.inputs])
    out: dict[str, np.ndarray] = {}
    for v in VARIABLES:
        y = reference.forward(nets.variables[v].estimate[0], x)
        lo, hi = _ranges()[v]
        out[f"{v}_oor"] = (y < lo) | (y > hi)
        out[v] = products.encode(v, y)
    assert nets.domain is not None
    code = np.zeros(x.shape[1], np.int64)
    for i, b in enumerate(nets.domain.bands):
        c = np.ceil(10 * x[nets.inputs.index(b)])
        code += np.where(c > 0, c % 10, 0).astype(np.int64) * 10**i
    out["ood"] = ~np.isin(code, nets.domain.codes)
    return out


@numba.njit(parallel=True, fastmath=True)
def _stream(xs, dn, oor, ood, n_blocks):  # type: ignore[no-untyped-def]
    """Read every input and write every output of the kernel in its chunks of 256 pixels: the memory traffic."""
    n = xs[0].shape[0]
    n_chunks = (n + 255) // 256
    for b in numba.prange(n_blocks):
        acc = np.empty(256, np.float32)
        for c in range(b * n_chunks // n_blocks, (b + 1) * n_chunks // n_blocks):
            s = c * 256
            m = min(256, n - s)
            acc[:m] = 0.0
            for i in range(len(xs)):
                xv = xs[i][s:s + m]
                for p in range(m):
                    acc[p] += xv[p]
            for h in range(dn.shape[0]):
                out = dn[h, s:s + m]
                for p in range(m):
                    out[p] = np.uint8(acc[p])
            for h in range(oor.shape[0]):
                outb = oor[h, s:s + m]
                for p in range(m):
                    outb[p] = acc[p] > h
            oo = ood[s:s + m]
            for p in range(m):
                oo[p] = acc[p] > 5.0


def run_memory_only(inputs: dict[str, np.ndarray]) -> None:
    nets = load_network_set(SET_ID)
    xs = tuple(inputs[n] for n in nets.inputs)
    n = len(xs[0])
    with numba.parallel_chunksize(1):
        _stream(xs, np.empty((len(VARIABLES), n), np.uint8), np.empty((len(VARIABLES), n), np.bool_),
                np.empty(n, np.bool_), numba.get_num_threads() * 8)


def _timed(fn, *args) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Wall seconds and CPU seconds (all threads) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", type=int, default=5_000_000)
    ap.add_argument("--baseline-pixels", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of each formulation, alternated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args(argv)
    inputs = s2_20m_inputs(args.pixels, args.seed)
    run_fast({k: v[:1024] for k, v in inputs.items()})  # compile or load the cached kernel outside the timing
    nb = min(args.baseline_pixels, args.pixels)
    baseline = {k: v[:nb] for k, v in inputs.items()}
    # The two formulations alternate, best of --repeat each: a slow spell of a shared machine falls on both.
    fast_runs, base_runs = [], []
    for k in range(max(1, args.repeat)):
        fast_runs.append(_timed(run_fast, inputs))
        if k == 0:  # the fast path's peak, before the baseline's temporaries raise it
            peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base_runs.append(_timed(run_plain_numpy, baseline)[0])
    fast_s, fast_cpu = min(fast_runs)
    base_s = min(base_runs)
    run_memory_only({k: v[:1024] for k, v in inputs.items()})  # compile outside the timing
    memory_s, _ = min(_timed(run_memory_only, inputs) for _ in range(max(1, args.repeat)))
    block = {k: v[:BLOCK_PIXELS].copy() for k, v in inputs.items()}
    block_s = min(_timed(run_fast, block)[0] for _ in range(20 * max(1, args.repeat)))
    result = {
        "mpix_per_s": round(args.pixels / fast_s / 1e6, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "pixels": args.pixels,
        "ratio_to_plain_numpy": round((args.pixels / fast_s) / (nb / base_s), 1),
        "plain_numpy_mpix_per_s": round(nb / base_s / 1e6, 3),
        "plain_numpy_pixels": nb,
        "threads": kernel.numba.get_num_threads(),
        "cpu_cores_used": round(fast_cpu / fast_s, 2),  # < threads: the machine was busy with other work
        "memory_ceiling_mpix_per_s": round(args.pixels / memory_s / 1e6, 2),
        "in_cache_mpix_per_s": round(BLOCK_PIXELS / block_s / 1e6, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
