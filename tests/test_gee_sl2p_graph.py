"""The Earth Engine SL2P/QC/encoding graph computes what the local engine computes.

The graph is built by the real ``earthengine-api`` client (initialised against the local stand-in), serialised,
and evaluated by a compact numpy interpreter of the Earth Engine image operations it uses. The reference is
``leaf_engine.sl2p.estimate(precision="float64")`` with ``leaf_engine.products.encode`` / ``qc_byte``, combined
the way the local engine combines them. Estimates must agree to 1e-6, QC bytes and DNs exactly.
"""


from __future__ import annotations

import json

import numpy as np
import pytest

from leaf_engine import products, sensors
from leaf_engine.backends.gee import session, sl2p_graph
from leaf_engine.request import SHIPPED_NETWORKS_DIR
from leaf_engine.sl2p import estimate, load_network_set
from tests.support.ee_interpreter import Img, evaluate
from tests.support.ee_standin import EEStandIn

SHAPE = (30, 40)


@pytest.fixture
def ee_client(ee_standin: EEStandIn):
    session.initialize("leaf-test")
    import ee

    return ee


def _inputs(nets, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible angles and reflectances, with values exactly on k/10 boundaries, negatives and outliers."""
    n = SHAPE[0] * SHAPE[1]
    x = {
        "cosVZA": np.cos(np.radians(rng.uniform(0, 12, n))),
        "cosSZA": np.cos(np.radians(rng.uniform(20, 70, n))),
        "cosRAA": np.cos(np.radians(rng.uniform(-180, 180, n))),
    }
    for i, b in enumerate(nets.band_inputs):
        base = 0.02 + 0.04 * i + rng.gamma(2.0, 0.05, n)
        dn = rng.integers(-50, 6000, n)
        pick = rng.random(n)
        near = dn // 1000 * 1000 / 10000 + rng.choice([0.0, 3e-7, -3e-7, 2e-6], n)  # on and near k/10
        x[b] = np.where(pick < 0.15, near, np.where(pick < 0.2, dn / 10000, base))
    return {k: v.reshape(SHAPE) for k, v in x.items()}


def _local(nets_by_code, inputs, tokens, valid, code, landcover):
    """The local engine's composition: per-sensor estimates, then products.encode / qc_byte."""
    variables = tuple(t for t in tokens if t in products.BIOPHYSICAL)
    unc = any(t.endswith(products.UNCERTAINTY_SUFFIX) for t in tokens)
    values = {v: np.full(SHAPE, np.nan) for v in variables}
    uncs = {v: np.full(SHAPE, np.nan) for v in variables}
    domain = np.zeros(SHAPE, bool)
    oor = np.zeros(SHAPE, bool)
    for c, nets in nets_by_code.items():
        sel = code == c
        est = estimate(nets, {k: v[sel] for k, v in inputs.items()}, variables, uncertainty=unc,
                       partition=None if landcover is None else landcover[sel], precision="float64")
        for v in variables:
            values[v][sel] = est.values[v]
            if unc:
                uncs[v][sel] = est.uncertainty[v]
        domain[sel] = est.input_out_of_domain
        oor[sel] = np.logical_or.reduce([est.out_of_range[v] for v in variables])
    out = {}
    for t in tokens:
        base = t.removesuffix(products.UNCERTAINTY_SUFFIX)
        if t in values:
            out[t] = products.encode(t, values[t], valid)
        elif base in uncs:
            out[t] = products.encode(t, uncs[base], valid)
        elif t == "QC":
            out[t] = products.qc_byte(domain & valid, oor & valid, ~valid, code)
    return values, uncs, domain, out


CASES = {
    "S2 SL2P with uncertainty": ("S2_SR", "SL2P", ("LAI", "fCOVER", "fAPAR", "Albedo", "LAIunc", "fAPARunc", "QC")),
    "S2 SL2P-CCRS": ("S2_SR", "SL2P-CCRS", ("LAI", "fCOVER", "fAPAR", "Albedo", "LAIunc", "QC")),
    "LS_SR merged L8+L9": ("LS_SR", "SL2P", ("LAI", "fCOVER", "fAPAR", "Albedo", "QC")),
    "L8 SL2P-CCRS": ("L8_SR", "SL2P-CCRS", ("LAI", "fAPAR", "QC")),
    "L7 SL2P (no domain list)": ("L7_SR", "SL2P", ("LAI", "fCOVER", "QC")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_graph_equals_local_engine(ee_client, case: str) -> None:
    ee = ee_client
    sensor, algorithm, tokens = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    members = sensors.members(sensor)
    nets_by_code = {s.qc_code: load_network_set(s.networks[algorithm]) for s in members}
    first = next(iter(nets_by_code.values()))
    inputs = _inputs(first, rng)
    valid = rng.random(SHAPE) > 0.2
    code = rng.choice([s.qc_code for s in members], SHAPE).astype(np.uint8)
    landcover = rng.choice([0, *range(1, 20), 42], SHAPE) if algorithm == "SL2P-CCRS" else None

    images = {
        "leaf/inputs": Img.from_arrays(inputs, mask=valid),  # the composite is masked where nothing is clear
        "leaf/valid": Img.from_arrays({"valid": valid.astype(float)}),
        "leaf/code": Img.from_arrays({"sensor_code": code}),
        "leaf/landcover": Img.from_arrays({"landcover": landcover if landcover is not None else np.zeros(SHAPE)}),
    }
    lc = ee.Image("leaf/landcover") if landcover is not None else None
    est_graph = None
    for c, nets in nets_by_code.items():
        e = sl2p_graph.estimates_image(ee.Image("leaf/inputs"), nets, [t for t in tokens if t in products.BIOPHYSICAL],
                                       uncertainty=True, landcover=lc)
        est_graph = e if est_graph is None else est_graph.where(ee.Image("leaf/code").eq(c), e)
    prod_graph = sl2p_graph.products_image(ee.Image("leaf/inputs"), nets_by_code, tokens,
                                           valid=ee.Image("leaf/valid"), sensor_code=ee.Image("leaf/code"),
                                           landcover=lc)
    got_est = evaluate(est_graph, images)
    got = evaluate(prod_graph, images)

    values, uncs, domain, want = _local(nets_by_code, inputs, tokens, valid, code, landcover)
    for v, arr in values.items():
        np.testing.assert_allclose(got_est.array(v)[valid], arr[valid], rtol=0, atol=1e-6, err_msg=v)
        if f"{v}unc" in tokens:
            np.testing.assert_allclose(got_est.array(f"{v}unc")[valid], uncs[v][valid], rtol=0, atol=1e-6)
    flag = np.broadcast_to(got_est.array(sl2p_graph.DOMAIN_FLAG), SHAPE)  # a constant 0 when there is no domain
    np.testing.assert_array_equal(flag[valid] == 1, domain[valid])
    assert got.names() == list(tokens)
    for t in tokens:
        dn = got.array(t)
        assert not np.isnan(dn).any(), f"{t} has masked pixels: products must be unmasked with their nodata"
        np.testing.assert_array_equal(dn.astype(products.product(t).dtype), want[t], err_msg=t)
    # The inputs exercise what the test is about: boundaries, both domain outcomes, invalid pixels.
    if first.domain is not None:
        assert 0 < domain[valid].mean() < 1
    assert (want["QC"] & products.QC_INVALID).any()
    assert set(np.unique(want["QC"] >> products.QC_SENSOR_SHIFT)) == {s.qc_code for s in members}


def test_date_and_partition_bands(ee_client) -> None:
    ee = ee_client
    nets = load_network_set("leaf_sl2pccrs_s2_20m")
    rng = np.random.default_rng(7)
    valid = rng.random(SHAPE) > 0.3
    doy = rng.integers(1, 367, SHAPE)
    lc = rng.integers(0, 20, SHAPE)
    images = {
        "leaf/inputs": Img.from_arrays(_inputs(nets, rng), mask=valid),
        "leaf/valid": Img.from_arrays({"valid": valid.astype(float)}),
        "leaf/code": Img.from_arrays({"sensor_code": np.full(SHAPE, 21)}),
        "leaf/landcover": Img.from_arrays({"landcover": lc}),
        "leaf/doy": Img.from_arrays({"doy": doy}, mask=valid),
    }
    graph = sl2p_graph.products_image(ee.Image("leaf/inputs"), {21: nets}, ("Date", "Partition"),
                                      valid=ee.Image("leaf/valid"), sensor_code=ee.Image("leaf/code"),
                                      landcover=ee.Image("leaf/landcover"), date=ee.Image("leaf/doy"))
    got = evaluate(graph, images)
    np.testing.assert_array_equal(got.array("Date"), np.where(valid, doy, products.product("Date").nodata))
    np.testing.assert_array_equal(got.array("Partition"), lc)


def test_domain_codes_follow_the_shared_rule(ee_client) -> None:
    """Boundaries (k/10), negatives down to −0.25 and values ≥ 1 give the codes of leaf_engine.sl2p.domain."""
    from leaf_engine.sl2p.domain import domain_codes

    ee = ee_client
    nets = load_network_set("leaf_sl2p_s2_20m")
    bands = nets.domain.bands
    rng = np.random.default_rng(3)
    special = np.array([-0.25, -0.15, -0.1, -0.004, -0.0, 0.0, 1e-9, 0.1, 0.3, 0.30000000000000004, 0.3 + 5e-7,
                        0.3 + 2e-6, 0.4 - 1e-7, float(np.float32(0.7)), 0.7, 0.95, 1.0, 1.04])
    values = {b: rng.choice(np.concatenate([special, rng.uniform(-0.3, 1.1, 50)]), 500) for b in bands}
    got = evaluate(sl2p_graph.domain_code(ee.Image("leaf/x"), bands), {"leaf/x": Img.from_arrays(values)})
    np.testing.assert_array_equal(got.array("sum"), domain_codes(values, bands))


def test_missing_uncertainty_networks_give_an_all_nodata_map(ee_client, tmp_path) -> None:
    """As the local engine: a user's set without uncertainty networks still yields the map, all masked."""
    raw = json.loads((SHIPPED_NETWORKS_DIR / "leaf_sl2p_s2_20m.json").read_text())
    for v in raw["variables"].values():
        v.pop("uncertainty", None)
    path = tmp_path / "no_unc.json"
    path.write_text(json.dumps(raw))
    nets = load_network_set(path)
    inputs = _inputs(nets, np.random.default_rng(7))
    graph = sl2p_graph.estimates_image(ee_client.Image("leaf/inputs"), nets, ["LAI"], uncertainty=True)
    got = evaluate(graph, {"leaf/inputs": Img.from_arrays(inputs)})
    assert np.isfinite(got.array("LAI")).all()
    assert np.isnan(got.array("LAIunc")).all()
