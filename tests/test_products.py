"""Product encoding and QC byte: property tests (hypothesis) and the documented facts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leaf_engine import products
from leaf_engine.products import BIOPHYSICAL, PRODUCTS, decode, encode, qc_byte, qc_fields
from leaf_engine.sensors import SENSORS

ENCODED = (*BIOPHYSICAL, *(f"{b}{products.UNCERTAINTY_SUFFIX}" for b in BIOPHYSICAL))
floats = st.floats(allow_nan=False, allow_infinity=True, width=64)


def _values(elements) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=20), elements=elements)


def test_catalogue_facts():
    assert PRODUCTS["LAI"].scale == 20 and PRODUCTS["LAI"].valid_range == (0.0, 15.0)
    for name in ("fCOVER", "fAPAR", "Albedo"):
        assert PRODUCTS[name].scale == 200 and PRODUCTS[name].valid_range == (0.0, 1.0)
    for name in BIOPHYSICAL:
        p = PRODUCTS[name]
        assert (p.dtype, p.nodata, p.max_dn) == ("uint8", 255, 254)
    assert PRODUCTS["LAI"].max_dn / PRODUCTS["LAI"].scale == pytest.approx(12.7)
    assert products.product("LAIunc").scale == 20 and products.product("fAPARunc").nodata == 255


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(ENCODED), data=st.data())
def test_decode_encode_within_half_step(name, data):
    p = products.product(name)
    top = p.max_dn / p.scale
    v = data.draw(_values(st.floats(0.0, top, allow_nan=False)))
    back = decode(name, encode(name, v))
    assert np.all(np.abs(back - v) <= 0.5 / p.scale * (1 + 1e-6))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(ENCODED), v=_values(floats))
def test_valid_data_never_nodata_and_saturates(name, v):
    p = products.product(name)
    dn = encode(name, v)
    assert dn.dtype == np.uint8 and dn.shape == v.shape
    assert not np.any(dn == p.nodata)
    assert np.all(dn[v <= 0] == 0)
    assert np.all(dn[v >= p.max_dn / p.scale] == p.max_dn)


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(ENCODED), v=_values(floats), mask_seed=st.integers(0, 2**32 - 1))
def test_nan_and_invalid_become_nodata_and_decode_to_nan(name, v, mask_seed):
    p = products.product(name)
    rng = np.random.default_rng(mask_seed)
    v = v.copy()
    v[rng.random(v.shape) < 0.3] = np.nan
    valid = rng.random(v.shape) < 0.7
    dn = encode(name, v, valid)
    nodata = np.isnan(v) | ~valid
    assert np.array_equal(dn == p.nodata, nodata)
    assert np.array_equal(np.isnan(decode(name, dn)), nodata)


def test_sensor_qc_values():
    assert {s: SENSORS[s].qc_value for s in SENSORS} == {
        "L5_SR": 40, "L7_SR": 56, "L8_SR": 64, "L9_SR": 72, "S2_SR": 168}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 50), seed=st.integers(0, 2**32 - 1), sensor=st.sampled_from(sorted(SENSORS)),
       per_pixel=st.booleans())
def test_qc_fields_round_trip(n, seed, sensor, per_pixel):
    rng = np.random.default_rng(seed)
    dom, oor, inv = (rng.random(n) < 0.5 for _ in range(3))
    codes = [SENSORS[s].qc_code for s in sorted(SENSORS)]
    code = rng.choice(codes, n) if per_pixel else SENSORS[sensor].qc_code
    qc = qc_byte(dom, oor, inv, code)
    assert qc.dtype == np.uint8
    f = qc_fields(qc)
    assert np.array_equal(f["domain"], dom) and np.array_equal(f["out_of_range"], oor)
    assert np.array_equal(f["invalid"], inv)
    assert np.array_equal(f["sensor_code"], np.broadcast_to(code, (n,)))
    expected = dom * 1 + oor * 2 + inv * 4 + np.asarray(code) * 8
    assert np.array_equal(qc, expected)


def test_qc_byte_documented_values():
    assert qc_byte(False, False, False, SENSORS["S2_SR"].qc_code) == 168
    assert qc_byte(True, True, True, SENSORS["L8_SR"].qc_code) == 64 + 7
    assert qc_byte(np.array([False]), np.array([False]), np.array([True]), 5)[0] == 44


def test_halves_round_up_like_earth_engine():
    # 0.125·20 = 2.5 and 0.0625·200 = 12.5 exactly: Earth Engine's round() gives 3 and 13 (numpy's rint 2 and 12)
    assert encode("LAI", np.array([0.125]))[0] == 3
    assert encode("fCOVER", np.array([0.0625]))[0] == 13
