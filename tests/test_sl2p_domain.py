"""Input-domain rule (SPEC §5 with the Earth Engine rule for ρ ≤ 0) in the reference and the fast kernel."""

import numpy as np
import pytest

from leaf_engine.sl2p import estimate, load_network_set
from leaf_engine.sl2p.domain import band_digits, domain_codes, out_of_domain
from leaf_engine.sl2p.networks import Domain
from leaf_engine.sl2p.synthetic import s2_20m_inputs


def test_digit_rule_including_negative_reflectance():
    rho = np.array([0.0, 0.01, 0.1, 0.10001, 0.35, 0.95, 1.0, 1.05, -0.05, -0.1, -0.15, -0.25, -1.3, np.nan])
    # ceil(10ρ) mod 10, and 0 whenever ceil(10ρ) <= 0 (Earth Engine's uint8 clamp), NaN → 0
    assert band_digits(rho).tolist() == [0, 1, 1, 2, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boundaries_k_over_10_count_as_exact(dtype):
    k = np.arange(-20, 121)
    rho = (k / 10).astype(dtype)
    expected = np.where(k > 0, k % 10, 0)
    assert band_digits(rho).tolist() == expected.tolist()
    # less than 1e-6 above a boundary still counts as the boundary; a DN step above is the next digit
    assert band_digits(rho.astype(float) + 5e-7).tolist() == expected.tolist()
    above = np.where(k >= 0, (k + 1) % 10, 0).tolist()
    assert band_digits(rho.astype(float) + 2.75e-5).tolist() == above
    assert band_digits(np.nextafter(rho, dtype(-np.inf))).tolist() == np.where(k > 0, k % 10, 0).tolist()


def test_float32_dn_reflectances_flag_like_float64():
    dn = np.arange(-2000, 12001)
    for f64 in (dn / 10000, dn * 2.75e-5 - 0.2):  # S2 L2A and Landsat C2 L2 scaling
        assert np.array_equal(band_digits(f64), band_digits(f64.astype(np.float32)))
    # S2 exactly from the integer DN: ceil(10·DN/10000) = ceil(DN/1000)
    c = -(-dn // 1000)
    assert np.array_equal(band_digits((dn / 10000).astype(np.float32)), np.where(c > 0, c % 10, 0))


def test_code_first_band_is_units_digit():
    bands = {"a": np.array([0.12]), "b": np.array([0.35]), "c": np.array([0.01])}
    assert domain_codes(bands, ("a", "b", "c")).tolist() == [142]
    dom = Domain(bands=("a", "b", "c"), codes=np.array([142, 999]))
    bands_nan = {"a": np.array([0.12, np.nan, 0.12]), "b": np.array([0.35, 0.35, 0.45]), "c": np.full(3, 0.01)}
    assert out_of_domain(dom, bands_nan).tolist() == [False, True, True]


def _nasty_inputs(n: int, dtype) -> dict[str, np.ndarray]:
    """Realistic pixels with boundary values, negatives, > 1 and NaN mixed in."""
    x = s2_20m_inputs(n, seed=11)
    rng = np.random.default_rng(5)
    nets = load_network_set("leaf_sl2p_s2_20m")
    for b in nets.band_inputs:
        v = x[b].astype(np.float64)
        pick = rng.random(n)
        v[pick < 0.05] = rng.integers(-3, 12, (pick < 0.05).sum()) / 10
        v[(pick >= 0.05) & (pick < 0.08)] = rng.uniform(-0.4, 0.0, ((pick >= 0.05) & (pick < 0.08)).sum())
        v[pick > 0.999] = np.nan
        absurd = (pick > 0.998) & (pick <= 0.999)
        v[absurd] = rng.choice([np.inf, -np.inf, 1e30, -1e30, 3.3e15, 7e8, 1e8 + 0.5], absurd.sum())
        x[b] = v.astype(dtype)
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_domain_flags_equal_reference(dtype):
    nets = load_network_set("leaf_sl2p_s2_20m")
    x = _nasty_inputs(50_000, dtype)
    fast = estimate(nets, x, ["LAI"], precision="float32").input_out_of_domain
    ref = out_of_domain(nets.domain, {b: x[b] for b in nets.domain.bands})
    assert 0.02 < ref.mean() < 0.98  # both outcomes present
    np.testing.assert_array_equal(fast, ref)


def test_kernel_binary_search_path_for_large_code_spaces(monkeypatch):
    from leaf_engine.sl2p import kernel

    nets = load_network_set("leaf_sl2p_s2_20m")
    x = _nasty_inputs(20_000, np.float32)
    with_bitset = estimate(nets, x, ["LAI"]).input_out_of_domain
    monkeypatch.setattr(kernel, "BITSET_MAX_BANDS", 4)
    kernel.domain_bitset.cache_clear()
    try:
        np.testing.assert_array_equal(estimate(nets, x, ["LAI"]).input_out_of_domain, with_bitset)
    finally:
        kernel.domain_bitset.cache_clear()


def _near_boundaries(ulps: int) -> np.ndarray:
    """Every float32 within ``ulps`` of each digit boundary (k + 1e-5)/10, |k| ≤ 16, both signs."""
    out = []
    for k in range(-16, 17):
        centre = np.float32(abs(k + 1e-5) / 10).view(np.int32)
        vals = (np.int64(centre) + np.arange(-ulps, ulps + 1)).astype(np.int32).view(np.float32)
        out += [vals, -vals]
    return np.concatenate(out)


def test_float32_digits_are_trusted_only_where_they_equal_float64():
    """The kernel's float32 digits (ceil(10ρ − 1e-5) in float32, with or without a fused multiply-add) are
    used only where ``10ρ − 1e-5`` is at least ``DIGIT_GUARD`` from an integer and below ``DIGIT_RANGE`` in
    magnitude: checked on every float32 near every boundary, where they do differ from float64."""
    from leaf_engine.sl2p import kernel

    rho = _near_boundaries(20_000)
    ref = np.ceil(rho.astype(np.float64) * 10.0 - 1e-5)
    tol = np.float32(1e-5)
    mismatches = 0
    for sv in ((rho.astype(np.float64) * 10.0 - np.float64(tol)).astype(np.float32),  # fused: one rounding
               (rho * np.float32(10.0)) - tol):  # two roundings
        c = np.ceil(sv)
        f = c - sv
        trusted = (np.abs(sv) < kernel.DIGIT_RANGE) & (f >= kernel.DIGIT_GUARD) & (f <= 1 - kernel.DIGIT_GUARD)
        mismatches += int(np.sum(c != ref))
        assert np.array_equal(c[trusted], ref[trusted])
    assert mismatches > 0  # the guard is needed: float32 alone gets some of these wrong


def test_kernel_domain_flags_equal_reference_next_to_every_boundary():
    """Pixels whose bands sit within a few ulps of digit boundaries (chunks mixing safe and unsafe values)."""
    nets = load_network_set("leaf_sl2p_s2_20m")
    near = _near_boundaries(300)
    rng = np.random.default_rng(3)
    x = s2_20m_inputs(near.size, seed=4)
    for i, b in enumerate(nets.domain.bands):
        v = x[b].copy()
        pick = rng.random(near.size) < 0.3  # a third of each band's pixels next to a boundary
        v[pick] = np.roll(near, 997 * i)[pick]
        x[b] = v
    fast = estimate(nets, x, ["LAI"]).input_out_of_domain
    ref = out_of_domain(nets.domain, {b: x[b] for b in nets.domain.bands})
    assert 0.02 < ref.mean() < 0.98
    np.testing.assert_array_equal(fast, ref)
