"""``leaf sl2p-table`` end to end on CSV files, through ``leaf_engine.cli.main``."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from leaf_engine.cli import main

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "data" / "test_vectors"
NETS = ROOT / "leaf_engine" / "data" / "nets"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def l8() -> dict:
    return json.loads((VECTORS / "leaf_l8_lai_notebook.json").read_text())


def _l8_csv(tmp_path: Path, l8: dict, header: list[str] | None = None) -> Path:
    rows = [[*x, p, f"plot{i}"] for i, (x, p) in enumerate(zip(l8["X"], l8["partition"], strict=True))]
    return _write_csv(tmp_path / "in.csv", [*(header or l8["inputs"]), "partition", "plot"], rows)


def test_sl2p_table_l8_vectors(tmp_path, l8, capsys):
    out = tmp_path / "out.csv"
    assert main(["sl2p-table", str(_l8_csv(tmp_path, l8)), "--networks", "leaf_sl2p_l8", "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert [r["plot"] for r in rows] == [f"plot{i}" for i in range(10)]
    lai = np.array([float(r["LAI"]) for r in rows])
    err = np.array([float(r["LAI_uncertainty"]) for r in rows])
    np.testing.assert_allclose(lai, [e["estimateLAI"] for e in l8["expected_SL2P"]], atol=1e-6, rtol=0)
    np.testing.assert_allclose(err, [e["errorLAI"] for e in l8["expected_SL2P"]], atol=1e-6, rtol=0)
    expected_cols = {"LAI", "LAI_uncertainty", "fAPAR", "fAPAR_uncertainty", "fCOVER", "fCOVER_uncertainty",
                     "Albedo", "Albedo_uncertainty", "input_out_of_domain", "LAI_out_of_range",
                     "fAPAR_out_of_range", "fCOVER_out_of_range", "Albedo_out_of_range"}
    assert expected_cols <= set(rows[0])
    assert {r["input_out_of_domain"] for r in rows} == {"0"}


def test_sl2p_table_ccrs_uses_partition_and_lowercase_columns(tmp_path, l8):
    out = tmp_path / "out.csv"
    src = _l8_csv(tmp_path, l8, header=[n.lower() for n in l8["inputs"]])
    assert main(["sl2p-table", str(src), "--networks", "leaf_sl2pccrs_l8", "--out", str(out),
                 "--variables", "LAI"]) == 0
    rows = _read_csv(out)
    assert [int(r["network_index"]) for r in rows] == [2] * 5 + [3] * 5
    lai = [float(r["LAI"]) for r in rows[:5]]
    np.testing.assert_allclose(lai, [e["estimateLAI"] for e in l8["expected_SL2PCCRS"][:5]], atol=1e-6, rtol=0)
    assert "fAPAR" not in rows[0]


def test_sl2p_table_s2_domain_flags(tmp_path):
    vec = json.loads((VECTORS / "leaf_s2_20m_qc_gee.json").read_text())
    src = _write_csv(tmp_path / "s2.csv", vec["inputs"], vec["X"])
    out = tmp_path / "out.csv"
    assert main(["sl2p-table", str(src), "--networks", "leaf_sl2p_s2_20m", "--out", str(out)]) == 0
    assert [int(r["input_out_of_domain"]) for r in _read_csv(out)] == vec["qc_gee"]


def test_bands_first_file_without_uncertainty_and_domain(tmp_path, capsys):
    doc = json.loads((NETS / "leaf_sl2p_s2_20m.json").read_text())
    order = doc["inputs"][3:] + doc["inputs"][:3]
    perm = [doc["inputs"].index(n) for n in order]
    variables = {}
    for name, body in doc["variables"].items():
        net = body["estimate"]
        for key in ("inputs", "input_min", "input_max", "input_slope", "input_offset"):
            net[key] = [net[key][i] for i in perm]
        net["layer1_weights"] = [[row[i] for i in perm] for row in net["layer1_weights"]]
        variables[name.upper()] = {"estimate": net}
    snap_like = {"schema": "sl2p-nets/1", "set_id": "bands_first", "inputs": order, "variables": variables}
    nets_path = tmp_path / "bands_first.json"
    nets_path.write_text(json.dumps(snap_like))
    vec = json.loads((VECTORS / "leaf_s2_20m_qc_gee.json").read_text())
    src = _write_csv(tmp_path / "s2.csv", vec["inputs"], vec["X"][:20])
    out, ref = tmp_path / "out.csv", tmp_path / "ref.csv"
    assert main(["sl2p-table", str(src), "--networks", str(nets_path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "has no Albedo" not in err  # the file has it, as ALBEDO
    assert "uncertainty" in err and "domain" in err
    assert main(["sl2p-table", str(src), "--networks", "leaf_sl2p_s2_20m", "--out", str(ref)]) == 0
    got, want = _read_csv(out), _read_csv(ref)
    for g, w in zip(got, want, strict=True):
        for v in ("LAI", "fAPAR", "fCOVER", "Albedo"):
            assert abs(float(g[v]) - float(w[v])) < 1e-12
            assert g[f"{v}_uncertainty"] == ""
        assert g["input_out_of_domain"] == ""
    # columns are named as asked for
    assert main(["sl2p-table", str(src), "--networks", str(nets_path), "--out", str(out),
                 "--variables", "FAPAR,lai"]) == 0
    rows = _read_csv(out)
    assert {"FAPAR", "FAPAR_uncertainty", "FAPAR_out_of_range", "lai"} <= set(rows[0]) and "fAPAR" not in rows[0]
    np.testing.assert_allclose([float(r["FAPAR"]) for r in rows], [float(w["fAPAR"]) for w in want], atol=1e-12)


def test_landsat5_names_accept_common_or_band_names(tmp_path):
    header = ["cosVZA", "cosSZA", "cosRAA", "green", "RED", "B4", "swir1", "swir2(B7)", "id"]
    src = _write_csv(tmp_path / "l5.csv", header, [[0.99, 0.8, 0.3, 0.05, 0.04, 0.3, 0.15, 0.07, 1],
                                                   [""] * 8 + [2]])
    out = tmp_path / "out.csv"
    assert main(["sl2p-table", str(src), "--networks", "leaf_sl2p_l5", "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert 0 < float(rows[0]["LAI"]) < 8 and rows[1]["LAI"] == ""


def test_missing_columns_exit_1_naming_them(tmp_path, capsys):
    src = _write_csv(tmp_path / "bad.csv", ["cosVZA", "SR_B3"], [[1, 0.1]])
    code = main(["sl2p-table", str(src), "--networks", "leaf_sl2p_l8", "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert code == 1 and "cosSZA" in err and "SR_B7" in err and "Traceback" not in err


def test_ccrs_without_partition_column_and_unknown_variable(tmp_path, l8, capsys):
    src = _write_csv(tmp_path / "np.csv", l8["inputs"], l8["X"])
    assert main(["sl2p-table", str(src), "--networks", "leaf_sl2pccrs_l8", "--out", str(tmp_path / "o.csv")]) == 1
    assert "partition" in capsys.readouterr().err
    assert main(["sl2p-table", str(src), "--networks", "leaf_sl2p_l8", "--out", str(tmp_path / "o.csv"),
                 "--variables", "LAI,DASF"]) == 1
    assert "DASF" in capsys.readouterr().err
    bad = _write_csv(tmp_path / "text.csv", l8["inputs"], [["x"] * 8])
    assert main(["sl2p-table", str(bad), "--networks", "leaf_sl2p_l8", "--out", str(tmp_path / "o.csv")]) == 1
    assert "not a number" in capsys.readouterr().err
