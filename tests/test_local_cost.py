"""The local engine's core-hour estimate of ``leaf plan``."""

from datetime import date
from pathlib import Path

import pytest

from leaf_engine.backends.local import cost
from leaf_engine.cli import main


def test_core_hours_follow_pixels_and_revisits():
    job = {"width": 10_000, "height": 10_000, "start": "2020-07-01", "end": "2020-07-30"}
    assert cost.scenes_per_pixel("S2_SR", date(2020, 7, 1), date(2020, 7, 30)) == pytest.approx(6.0)
    s2 = cost.local_core_hours("S2_SR", [job], http=False)
    assert s2 == pytest.approx(1e8 * (6 * cost.READ_S + cost.PIXEL_S) / 3600)
    assert cost.local_core_hours("S2_SR", [job, job], http=False) == pytest.approx(2 * s2)
    assert cost.local_core_hours("S2_SR", [job]) > s2  # reads over HTTP cost more
    assert cost.local_core_hours("L8_SR", [job], http=False) < s2  # fewer Landsat scenes per month


def test_plan_prints_local_core_hours(capsys):
    assert main(["plan", str(Path(__file__).resolve().parents[1] / "examples/bouconne-2018.json")]) == 0
    assert "core-hours" in capsys.readouterr().out
