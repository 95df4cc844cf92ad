"""The ``leaf`` command line as a user runs it: exit codes, stdout/stderr, no tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leaf_engine.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from leaf_engine.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        input=stdin,
    )


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("leaf ")


def test_validate_example(capsys):
    assert main(["validate", str(EXAMPLES / "legacy-notebook.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resolution"] == 20 and out["GCS_bucket"] == "leaf-outputs-example"
    assert len(out["warnings"]) == 3


def test_validate_invalid_exits_2_with_every_problem():
    bad = {"sensor": "X", "year": 2020, "months": [13], "tile_names": ["tile99"], "GCS_bucket": "B"}
    r = run("validate", "-", stdin=json.dumps(bad))
    assert r.returncode == 2 and r.stdout == ""
    for fragment in ("sensor: 'X'", "months: 13", "tile_names: 'tile99'", "GCS_bucket: 'B'"):
        assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_missing_file_and_not_json(tmp_path):
    r = run("validate", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "x.json").write_text("{oops")
    r = run("validate", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "JSON" in r.stderr


def test_tiles_json(capsys):
    assert main(["tiles", "--json"]) == 0
    tiles = json.loads(capsys.readouterr().out)
    assert len(tiles) == 27 and tiles[0]["name"] == "tile13"
    assert tiles[0]["bounds_epsg3979"] == [-800000.0, 3014920.0, 100000.0, 3914920.0]
    assert tiles[0]["lonlat_polygon"]["type"] == "Polygon"
    assert main(["tiles", "--json", "--subtiles"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 27 * 14


def test_tiles_table():
    r = run("tiles")
    assert r.returncode == 0 and "tile65" in r.stdout


def test_plan(capsys):
    assert main(["plan", str(EXAMPLES / "tile42-2020-landsat.json"), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["totals"]["jobs"] == 6 and p["totals"]["files"] == 36
    r = run("plan", str(EXAMPLES / "tile42-2020-landsat.json"))
    assert r.returncode == 0 and "Earth Engine task(s)" in r.stdout


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_unexpected_errors_have_no_traceback_unless_debug(tmp_path):
    r = run(
        "plan",
        "-",
        stdin=json.dumps(
            {
                "sensor": "S2_SR",
                "year": 2020,
                "months": [6],
                "regions": {"r": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}},
                "projection": "EPSG:4326",
                "out_location": "local",
            }
        ),
    )
    assert r.returncode == 0, r.stderr
    r = run("nonsense-command")
    assert r.returncode == 2 and "Traceback" not in r.stderr
