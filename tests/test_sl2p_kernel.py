"""The fast float32 kernel against the float64 numpy reference: accuracy, CCRS, NaN, DN encoding, flags."""

import os
import subprocess
import sys

import numpy as np
import pytest

from leaf_engine import products
from leaf_engine.sl2p import estimate, kernel, load_network_set
from leaf_engine.sl2p.synthetic import s2_20m_inputs

TOL = 1e-4  # the bound; the DN step is 0.05 (LAI) and 0.005 (others)
ALL = ("LAI", "fCOVER", "fAPAR", "Albedo", "CCC", "CWC", "DASF")


@pytest.fixture(scope="module")
def s2() -> dict[str, np.ndarray]:
    return s2_20m_inputs(200_000, seed=1)


def _rel_tol(variable: str) -> float:
    # CCC is in µg/cm² (0–600, not encoded to DN): float32 keeps ~1e-7 of it, i.e. ~1e-4 absolute
    return 1e-3 if variable == "CCC" else TOL


def test_tanh_approximation_accuracy():
    # every 16th float32 from 0 to 9 (benchmarks/tanh_bound.py checks every one), plus the far range
    bits = np.arange(0, np.float32(9.0).view(np.int32), 16, dtype=np.int32)
    x = np.concatenate([bits.view(np.float32), np.float32([7.9, 8.0, 50.0, 1e30, np.inf])])
    fast = kernel.tanh32(x)
    err = np.abs(fast.astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= kernel.TANH_MAX_ERROR
    assert err.max() > kernel.TANH_MAX_ERROR / 4  # the bound is tight, not a loose guess
    np.testing.assert_array_equal(kernel.tanh32(-x), -fast)  # odd, so the bound holds for x < 0 too


def test_folded_activations_within_their_bound():
    """Every neuron of every shipped set, as the kernel evaluates it (the output weight folded into tanh's
    numerator), within ACTIVATION_MAX_ERROR per unit of |w2|."""
    from leaf_engine.sl2p.networks import shipped_sets

    rng = np.random.default_rng(5)
    worst = 0.0
    for set_id in shipped_sets():
        nets = load_network_set(set_id)
        packed = kernel.pack(nets, tuple(nets.variables), uncertainty=True)
        tp = packed.tanh_p.reshape(-1, 5)
        w2 = packed.w2.reshape(-1).astype(np.float64)
        for a in np.flatnonzero(w2):
            x = np.concatenate([rng.uniform(-9, 9, 3000), rng.normal(0, 1.5, 3000)]).astype(np.float32)
            err = np.abs(kernel.activations32(x, tp[a]) - w2[a] * np.tanh(x.astype(np.float64)))
            worst = max(worst, err.max() / abs(w2[a]))
    assert worst <= kernel.ACTIVATION_MAX_ERROR
    assert worst > kernel.TANH_MAX_ERROR / 2  # the samples reach the tanh's own worst region


@pytest.mark.parametrize("set_id", ["leaf_sl2p_s2_20m", "leaf_sl2p_l8", "leaf_sl2pccrs_s2_20m", "leaf_sl2p_s2_10m"])
def test_propagated_error_bound(s2, set_id):
    """The activation part of the a-priori bound is far inside the 1e-4 budget for every estimate; the full
    bound (worst-case float32 rounding included) covers the measured error."""
    nets = load_network_set(set_id)
    for v in ("LAI", "fCOVER", "fAPAR", "Albedo"):
        b = kernel.error_bound(nets, v)
        assert b.tanh < 2e-5, (v, b)
        assert b.rounding < 5e-4, (v, b)
    if set_id == "leaf_sl2p_s2_20m":
        fast = estimate(nets, s2, ("LAI", "fCOVER"))
        ref = estimate(nets, s2, ("LAI", "fCOVER"), precision="float64")
        for v in ("LAI", "fCOVER"):
            assert np.abs(fast.values[v] - ref.values[v]).max() <= kernel.error_bound(nets, v).total


@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
def test_float32_kernel_within_1e4_of_float64(s2, input_dtype):
    nets = load_network_set("leaf_sl2p_s2_20m")
    x = {k: v.astype(input_dtype) for k, v in s2.items()}
    fast = estimate(nets, x, ALL, uncertainty=True, precision="float32")
    ref = estimate(nets, x, ALL, uncertainty=True, precision="float64")
    for v in ALL:
        assert fast.values[v].dtype == np.float32
        np.testing.assert_allclose(fast.values[v], ref.values[v], rtol=0, atol=_rel_tol(v), err_msg=v)
        np.testing.assert_allclose(fast.uncertainty[v], ref.uncertainty[v], rtol=0, atol=_rel_tol(v), err_msg=v)
    np.testing.assert_array_equal(fast.input_out_of_domain, ref.input_out_of_domain)
    assert 0 < ref.input_out_of_domain.mean() < 0.5


def test_ccrs_kernel_with_mixed_partitions_matches_reference(s2):
    nets = load_network_set("leaf_sl2pccrs_s2_20m")
    rng = np.random.default_rng(2)
    n = len(s2["B3"])
    # runs of one class (as on a map) mixed with isolated pixels and classes outside the table
    part = np.repeat(rng.integers(1, 20, n // 300 + 1), 300)[:n]
    noisy = rng.random(n) < 0.1
    part[noisy] = rng.integers(0, 25, noisy.sum())
    fast = estimate(nets, s2, ALL[:4], partition=part, uncertainty=True)
    ref = estimate(nets, s2, ALL[:4], partition=part, uncertainty=True, precision="float64")
    np.testing.assert_array_equal(fast.network_index, ref.network_index)
    assert len(np.unique(fast.network_index)) >= 8
    for v in ALL[:4]:
        np.testing.assert_allclose(fast.values[v], ref.values[v], rtol=0, atol=TOL, err_msg=v)
        np.testing.assert_allclose(fast.uncertainty[v], ref.uncertainty[v], rtol=0, atol=TOL, err_msg=v)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_nan_inputs_give_nan_outputs(precision):
    nets = load_network_set("leaf_sl2p_l8")
    x = {n: np.full((3, 4), v) for n, v in zip(nets.inputs, [0.999, 0.78, 0.5, 0.05, 0.04, 0.28, 0.15, 0.07],
                                               strict=True)}
    x["SR_B5"][0, 1] = np.nan
    x["cosSZA"][2, 3] = np.nan
    x["SR_B4"][1, 2] = np.inf
    est = estimate(nets, x, uncertainty=True, precision=precision)
    bad = np.zeros((3, 4), bool)
    bad[0, 1] = bad[2, 3] = bad[1, 2] = True
    for v, arr in (*est.values.items(), *est.uncertainty.items()):
        assert arr.shape == (3, 4)
        np.testing.assert_array_equal(np.isnan(arr), bad, err_msg=v)
        assert not est.out_of_range.get(v, np.zeros(1, bool))[bad].any()
    assert est.input_out_of_domain[0, 1] and est.input_out_of_domain[1, 2]
    # a NaN angle leaves the domain flag to the bands (angles are not tested)
    clean = estimate(nets, {k: np.nan_to_num(v, nan=0.5, posinf=0.5) for k, v in x.items()}, precision=precision)
    assert est.input_out_of_domain[2, 3] == clean.input_out_of_domain[2, 3]


def test_scalar_angles_broadcast():
    nets = load_network_set("leaf_sl2p_s2_20m")
    x = s2_20m_inputs(1000, seed=4)
    scalar = {**x, "cosVZA": np.float32(0.99), "cosSZA": np.float32(0.7), "cosRAA": np.float32(0.2)}
    full = {**x, **{k: np.full(1000, v, np.float32) for k, v in scalar.items() if k.startswith("cos")}}
    np.testing.assert_array_equal(estimate(nets, scalar).values["LAI"], estimate(nets, full).values["LAI"])


def test_fused_dn_and_range_flags_equal_products_encoding(s2):
    nets = load_network_set("leaf_sl2p_s2_20m")
    variables = ("LAI", "fCOVER", "fAPAR", "Albedo")
    x = [s2[n][:50_000].copy() for n in nets.inputs]
    x[4][:50] = np.nan  # some no-data pixels
    # narrow ranges so that both flag values occur on realistic pixels
    ranges = {v: (1.0, 3.0) if v == "LAI" else (0.1, 0.5) for v in variables}
    out = kernel.run(nets, x, variables, ranges=ranges, values=True, dn=True, uncertainty=True)
    for h, (v, unc) in enumerate(out.heads):
        name = f"{v}{products.UNCERTAINTY_SUFFIX}" if unc else v
        np.testing.assert_array_equal(out.dn[h], products.encode(name, out.values[h]), err_msg=name)
        assert (out.dn[h][:50] == products.PRODUCTS[v].nodata).all()
    for i, v in enumerate(variables):
        lo, hi = ranges[v]
        np.testing.assert_array_equal(out.out_of_range[i], (out.values[i] < lo) | (out.values[i] > hi))
    assert 0.05 < out.out_of_range.mean() < 0.95


def test_dn_encoding_equals_products_encode_at_every_rounding_boundary():
    """The kernel's DN step on the float32 values next to every half step of every product scale (the values whose
    DN a fused multiply-add or a float64 sum could move), with NaN, negative and saturating values."""
    scales = sorted({p.scale for p in products.PRODUCTS.values() if p.dtype == np.uint8 and p.scale != 1})
    for scale in scales:
        name = next(n for n, p in products.PRODUCTS.items() if p.scale == scale and p.dtype == np.uint8)
        p = products.product(name)
        halves = ((np.arange(-2, p.max_dn + 3) + 0.5) / scale).astype(np.float32)
        near = halves.view(np.int32)[:, None] + np.arange(-40, 41, dtype=np.int32)[None, :]
        y = np.concatenate([near.reshape(-1).view(np.float32), np.float32([np.nan, -np.inf, np.inf, 1e30])])
        dn = np.zeros((1, y.size), np.uint8)
        kernel._encode_dn(y[None, :], dn, 0, y.size, np.float32([scale]), np.float32(p.max_dn), np.uint8(p.nodata))
        np.testing.assert_array_equal(dn[0], products.encode(name, y), err_msg=name)


CONCURRENT_LAUNCHES = """
from concurrent.futures import ThreadPoolExecutor
import numba
import numpy as np
from leaf_engine.sl2p import kernel, load_network_set
from leaf_engine.sl2p.synthetic import s2_20m_inputs

nets = load_network_set("leaf_sl2p_s2_20m")
blocks = [s2_20m_inputs(20_000, seed=k) for k in range(16)]
run = lambda x: kernel.run(nets, [x[n] for n in nets.inputs], ("LAI", "fCOVER"), dn=True).dn
with ThreadPoolExecutor(4) as pool:  # as the engine's block threads launch the kernel
    together = list(pool.map(run, blocks))
alone = [run(x) for x in blocks]
assert all(np.array_equal(a, b) for a, b in zip(together, alone))
print(numba.threading_layer())
"""


@pytest.mark.parametrize("layer", ["workqueue", "default"])
def test_block_threads_launch_the_kernel_together_on_every_threading_layer(layer):
    """numba's workqueue layer (its fallback without OpenMP or TBB) aborts the process when two threads launch a
    parallel function at once: the kernel's launches take turns there, and run together elsewhere."""
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    done = subprocess.run([sys.executable, "-c", CONCURRENT_LAUNCHES], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if layer == "workqueue":
        assert done.stdout.strip() == "workqueue"
