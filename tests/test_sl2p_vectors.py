"""The shipped test vectors: Landsat-8 LAI and error (SL2P, SL2P-CCRS) and 1,050 Sentinel-2 domain flags."""

import json
from pathlib import Path

import numpy as np
import pytest

from leaf_engine.sl2p import estimate, load_network_set

VECTORS = Path(__file__).parent / "data" / "test_vectors"
TOL = 1e-6  # the notebook prints 6 decimals


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def _inputs(vec: dict, dtype=np.float64) -> dict[str, np.ndarray]:
    x = np.asarray(vec["X"], dtype=dtype)
    return {name: x[:, i] for i, name in enumerate(vec["inputs"])}


@pytest.fixture(scope="module")
def l8() -> dict:
    return _load("leaf_l8_lai_notebook.json")


@pytest.fixture(scope="module")
def s2() -> dict:
    return _load("leaf_s2_20m_qc_gee.json")


def test_l8_sl2p_lai_and_error_all_rows(l8):
    est = estimate(load_network_set("leaf_sl2p_l8"), _inputs(l8), ["LAI"], uncertainty=True, precision="float64")
    exp = l8["expected_SL2P"]
    np.testing.assert_allclose(est.values["LAI"], [r["estimateLAI"] for r in exp], atol=TOL, rtol=0)
    np.testing.assert_allclose(est.uncertainty["LAI"], [r["errorLAI"] for r in exp], atol=TOL, rtol=0)
    assert not est.input_out_of_domain.any() and not est.out_of_range["LAI"].any()


def test_l8_sl2pccrs_partition5_rows(l8):
    part = np.asarray(l8["partition"])
    est = estimate(load_network_set("leaf_sl2pccrs_l8"), _inputs(l8), ["LAI"], partition=part,
                   uncertainty=True, precision="float64")
    rows = part == 5  # partition-1 rows used networks replaced since (nets README)
    exp = [r for r, keep in zip(l8["expected_SL2PCCRS"], rows, strict=True) if keep]
    assert rows.sum() == 5
    np.testing.assert_allclose(est.values["LAI"][rows], [r["estimateLAI"] for r in exp], atol=TOL, rtol=0)
    np.testing.assert_allclose(est.uncertainty["LAI"][rows], [r["errorLAI"] for r in exp], atol=TOL, rtol=0)
    np.testing.assert_array_equal(est.network_index, [r["networkID"] for r in l8["expected_SL2PCCRS"]])


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_l8_fast_kernel_close_to_notebook(l8, precision):
    est = estimate(load_network_set("leaf_sl2p_l8"), _inputs(l8), ["LAI"], uncertainty=True, precision=precision)
    np.testing.assert_allclose(est.values["LAI"], [r["estimateLAI"] for r in l8["expected_SL2P"]], atol=5e-6)


@pytest.mark.parametrize(("precision", "dtype"), [("float64", np.float64), ("float32", np.float64),
                                                  ("float32", np.float32), ("float64", np.float32)])
def test_s2_all_1050_domain_flags_exact(s2, precision, dtype):
    est = estimate(load_network_set("leaf_sl2p_s2_20m"), _inputs(s2, dtype), precision=precision)
    assert len(s2["qc_gee"]) == 1050
    np.testing.assert_array_equal(est.input_out_of_domain.astype(int), s2["qc_gee"])


def test_s2_regression_estimates(s2):
    est = estimate(load_network_set("leaf_sl2p_s2_20m"), _inputs(s2), ["LAI"], precision="float64")
    np.testing.assert_allclose(est.values["LAI"], s2["derived_not_independent"]["LAI"], atol=TOL, rtol=0)
