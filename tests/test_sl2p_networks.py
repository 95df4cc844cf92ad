"""Network files: loading by id or path, mapping inputs by name, partial files, CCRS partition, errors."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from leaf_engine.errors import LeafError, NetworkFileError
from leaf_engine.sl2p import estimate, load_network_set, shipped_sets
from leaf_engine.sl2p.networks import NetworkFileWarning
from leaf_engine.sl2p.synthetic import s2_20m_inputs

NETS = Path(__file__).resolve().parents[1] / "leaf_engine" / "data" / "nets"
PER_INPUT = ("inputs", "input_min", "input_max", "input_slope", "input_offset")


def _doc(set_id: str) -> dict:
    return json.loads((NETS / f"{set_id}.json").read_text())


def _permute_net(net: dict, perm: list[int]) -> None:
    for key in PER_INPUT:
        if key in net:
            net[key] = [net[key][i] for i in perm]
    net["layer1_weights"] = [[row[i] for i in perm] for row in net["layer1_weights"]]


def _permuted(doc: dict, order: list[str]) -> dict:
    """The same networks with inputs stored in another order."""
    out = copy.deepcopy(doc)
    perm = [doc["inputs"].index(n) for n in order]
    out["inputs"] = order
    for body in out["variables"].values():
        for kind in ("estimate", "uncertainty"):
            nets = body.get(kind)
            for net in nets if isinstance(nets, list) else [nets]:
                _permute_net(net, perm)
    return out


def _write(tmp_path: Path, doc: dict, name: str) -> Path:
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.fixture(scope="module")
def s2_inputs() -> dict[str, np.ndarray]:
    x = s2_20m_inputs(2000, seed=3)
    return {k: v.astype(np.float64) for k, v in x.items()}


def _run(nets, inputs, **kw):
    return estimate(nets, inputs, ("LAI", "fAPAR", "fCOVER", "Albedo"), uncertainty=True, precision="float64", **kw)


def test_shipped_sets_listed_and_loadable():
    ids = shipped_sets()
    assert "leaf_sl2p_s2_20m" in ids and "leaf_sl2pccrs_l8" in ids
    for sid in ids:
        nets = load_network_set(sid)
        assert nets.set_id == sid
        assert set(nets.inputs[:3]) == {"cosVZA", "cosSZA", "cosRAA"}
        for v in nets.variables.values():
            assert len(v.estimate) == nets.n_networks
    assert (NETS / "LICENSES-MIT.txt").is_file()


def test_load_by_path_and_cache(tmp_path):
    by_id = load_network_set("leaf_sl2p_l8")
    assert load_network_set("leaf_sl2p_l8") is by_id
    assert load_network_set(NETS / "leaf_sl2p_l8.json") is by_id
    copy_path = _write(tmp_path, _doc("leaf_sl2p_l8"), "mine")
    assert load_network_set(str(copy_path)).inputs == by_id.inputs


def test_landsat_sets_hide_dasf_s2_keeps_it():
    for sid in ("leaf_sl2p_l5", "leaf_sl2p_l8", "leaf_sl2pccrs_l9"):
        nets = load_network_set(sid)
        assert "DASF" not in nets.variables
        assert {"LAI", "fAPAR", "fCOVER", "Albedo", "CCC", "CWC"} <= set(nets.variables)
    assert "DASF" in load_network_set("leaf_sl2p_s2_20m").variables


def test_network_arrays_are_public_float64():
    net = load_network_set("leaf_sl2p_s2_20m").variables["LAI"].estimate[0]
    assert net.layer1_weights.shape == (5, 11) and net.layer1_weights.dtype == np.float64
    assert net.input_slope.shape == net.input_offset.shape == (11,) and net.layer1_bias.shape == (5,)
    assert isinstance(net.layer2_bias, float) and isinstance(net.output_slope, float)


@pytest.mark.parametrize("order", ["reversed", "bands_first"])
def test_inputs_are_mapped_by_name(tmp_path, s2_inputs, order):
    doc = _doc("leaf_sl2p_s2_20m")
    names = doc["inputs"]
    new = names[::-1] if order == "reversed" else names[3:] + names[:3]
    nets = load_network_set(_write(tmp_path, _permuted(doc, new), order))
    assert nets.inputs == tuple(new)
    ref, got = _run(load_network_set("leaf_sl2p_s2_20m"), s2_inputs), _run(nets, s2_inputs)
    for v in ref.values:
        np.testing.assert_allclose(got.values[v], ref.values[v], rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.uncertainty[v], ref.uncertainty[v], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got.input_out_of_domain, ref.input_out_of_domain)
    # the fast kernel maps by name too
    k_ref = estimate(load_network_set("leaf_sl2p_s2_20m"), s2_inputs, precision="float32")
    k_got = estimate(nets, s2_inputs, precision="float32")
    np.testing.assert_allclose(k_got.values["LAI"], k_ref.values["LAI"], atol=1e-5)


def test_network_with_own_input_order(tmp_path, s2_inputs):
    """Each network may list its inputs in its own order (as SNAP's do); the set order still rules."""
    doc = _doc("leaf_sl2p_s2_20m")
    other = copy.deepcopy(doc)
    lai = other["variables"]["LAI"]["estimate"]
    perm = list(range(len(doc["inputs"])))[::-1]
    _permute_net(lai, perm)
    nets = load_network_set(_write(tmp_path, other, "own_order"))
    ref = _run(load_network_set("leaf_sl2p_s2_20m"), s2_inputs)
    np.testing.assert_allclose(_run(nets, s2_inputs).values["LAI"], ref.values["LAI"], atol=1e-12)


def test_partial_file_no_uncertainty_no_domain_capitalised_names(tmp_path, s2_inputs):
    doc = _doc("leaf_sl2p_s2_20m")
    doc["variables"] = {k.upper(): {"estimate": v["estimate"]} for k, v in doc["variables"].items()}
    del doc["definition_domain"], doc["qc_output_ranges"]
    with pytest.warns(NetworkFileWarning, match="uncertainty"):
        nets = load_network_set(_write(tmp_path, doc, "partial"))
    assert "fAPAR" in nets.variables and "FAPAR" not in nets.variables
    assert nets.domain is None and nets.variables["LAI"].uncertainty is None
    est = estimate(nets, s2_inputs, ["FAPAR", "lai"], uncertainty=True, precision="float64")
    ref = _run(load_network_set("leaf_sl2p_s2_20m"), s2_inputs)
    np.testing.assert_allclose(est.values["fAPAR"], ref.values["fAPAR"], atol=1e-12)
    assert est.uncertainty == {} and not est.domain_available and not est.input_out_of_domain.any()
    assert any("uncertainty" in w for w in est.warnings) and any("domain" in w for w in est.warnings)


def test_min_max_scaling_when_slopes_absent(tmp_path, s2_inputs):
    doc = _doc("leaf_sl2p_s2_20m")
    for body in doc["variables"].values():
        for kind in ("estimate", "uncertainty"):
            for key in ("input_slope", "input_offset", "output_slope", "output_offset"):
                body[kind].pop(key)
    est = _run(load_network_set(_write(tmp_path, doc, "minmax")), s2_inputs)
    ref = _run(load_network_set("leaf_sl2p_s2_20m"), s2_inputs)
    np.testing.assert_allclose(est.values["LAI"], ref.values["LAI"], atol=1e-9)


def test_unknown_domain_method_is_ignored_with_warning(tmp_path):
    doc = _doc("leaf_sl2p_l8")
    doc["definition_domain"]["method"] = "convex_hull"
    with pytest.warns(NetworkFileWarning, match="convex_hull"):
        nets = load_network_set(_write(tmp_path, doc, "hull"))
    assert nets.domain is None


def test_ccrs_partition_selects_network_and_unknown_classes_use_0():
    nets = load_network_set("leaf_sl2pccrs_l8")
    assert nets.is_ccrs and nets.partition[5] == 2 and nets.partition[18] == 0
    x = {n: np.full(4, v) for n, v in zip(nets.inputs, [0.999, 0.78, 0.5, 0.05, 0.04, 0.28, 0.15, 0.07],
                                          strict=True)}
    est = estimate(nets, x, ["LAI"], partition=np.array([5, 18, 99, -3]), precision="float64")
    np.testing.assert_array_equal(est.network_index, [2, 0, 0, 0])
    generic = nets.variables["LAI"].estimate[0]
    deciduous = nets.variables["LAI"].estimate[2]
    from leaf_engine.sl2p.reference import forward

    xm = np.stack([x[n] for n in nets.inputs])
    np.testing.assert_allclose(est.values["LAI"], [forward(deciduous, xm)[0], *forward(generic, xm)[1:]])
    with pytest.raises(NetworkFileError, match="partition"):
        estimate(nets, x, ["LAI"])


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(schema="other/2"), "schema"),
    (lambda d: d.update(inputs=[]), "inputs"),
    (lambda d: d["variables"]["LAI"]["estimate"].update(layer1_weights=[[1.0, 2.0]]), "shapes"),
    (lambda d: d["variables"]["LAI"]["estimate"].update(inputs=["a"] * 8), "differ"),
    (lambda d: d["variables"]["LAI"].pop("estimate"), "estimate"),
])
def test_bad_files_raise_network_file_error(tmp_path, mutate, message):
    doc = _doc("leaf_sl2p_l8")
    mutate(doc)
    with pytest.raises(NetworkFileError, match=message):
        load_network_set(_write(tmp_path, doc, "bad"))


def test_unknown_set_and_missing_inputs():
    with pytest.raises(NetworkFileError, match="shipped set ids"):
        load_network_set("no_such_set")
    with pytest.raises(NetworkFileError, match="does not exist"):
        load_network_set("nowhere/nets.json")
    nets = load_network_set("leaf_sl2p_l8")
    with pytest.raises(NetworkFileError, match="SR_B7"):
        estimate(nets, {n: np.zeros(2) for n in nets.inputs if n != "SR_B7"})
    with pytest.raises(LeafError, match="CCC"):
        estimate(load_network_set("leaf_sl2p_l8"), {n: np.zeros(2) for n in nets.inputs}, ["XYZ"])


def test_flat_qc_output_ranges_are_read():
    from leaf_engine.sl2p.networks import _parse_ranges

    assert _parse_ranges({"LAI": [0, 15], "CCC": [0, 600]}) == {"LAI": (0.0, 15.0), "CCC": (0.0, 600.0)}
