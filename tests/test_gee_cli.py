"""``leaf produce --backend gee`` and ``leaf tasks`` against the local Earth Engine stand-in."""


from __future__ import annotations

import json

import pytest

from leaf_engine.cli import main
from tests.support.ee_standin import EEStandIn

REQUEST = {"sensor": "L8_SR", "year": 2020, "months": [7], "tile_names": ["tile42_411"], "GCS_bucket": "leaf-out",
           "prod_names": ["LAI"]}


@pytest.fixture
def request_file(tmp_path):
    p = tmp_path / "req.json"
    p.write_text(json.dumps(REQUEST))
    return p


def test_produce_prints_task_ids_and_tasks_shows_states(ee_standin: EEStandIn, request_file, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_EE_STARTS_PER_SECOND", "0")
    assert main(["produce", str(request_file), "--backend", "gee", "--project", "leaf-test"]) == 0
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]  # task id first
    assert len(printed) == len(ee_standin.exports) == 3  # LAI, QC, Date
    assert set(printed) == {op.rsplit("/", 1)[-1] for op in ee_standin.operations}

    ee_standin.set_state(printed[0], "RUNNING")
    assert main(["tasks", *printed[:2], "--project", "leaf-test", "--json"]) == 0
    states = json.loads(capsys.readouterr().out)
    assert states[printed[0]]["state"] == "RUNNING"
    assert states[printed[1]]["state"] == "PENDING"
    assert states[printed[0]]["description"].startswith("leaf_tile42_411_2020_Jul_")

    assert main(["tasks", "--project", "leaf-test"]) == 0
    table = capsys.readouterr().out
    assert all(task_id in table for task_id in printed)


def test_non_loopback_url_is_refused(request_file, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_EE_URL", "https://earthengine.googleapis.com")
    assert main(["tasks", "--project", "p"]) == 1
    assert "loopback" in capsys.readouterr().err
