"""After set-up, a first job compiles nothing: every variant of a compiled function that the engine calls is one
that ``python -m leaf_engine.compiled`` compiles. Checked in a fresh process, where no earlier test has loaded
a variant, on scenes as the public catalogues publish them (16-bit unsigned DN through shared read-only tables)
and on the examples' signed 16-bit rasters."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.test_local_support import VEGETATION, make_item, save_collection

REPO = Path(__file__).resolve().parents[1]

FIRST_JOBS = """
import json, sys
from pathlib import Path
from leaf_engine import compiled
from leaf_engine.backends.local import produce
from leaf_engine.request import parse_request

compiled.warm_up()
before = compiled.loaded_variants()
for path, out in zip(sys.argv[1::2], sys.argv[2::2]):
    doc = json.loads(Path(path).read_text())
    doc["scenes"] = str(Path(path).parent / doc["scenes"])
    produce(parse_request(doc), out_dir=Path(out), progress=False, quicklooks=False)
after = compiled.loaded_variants()
print(json.dumps({name: sorted(sigs - before.get(name, set())) for name, sigs in after.items()
                  if sigs - before.get(name, set())}))
"""


def _request(tmp_path: Path, name: str, sensor: str, resolution: int, item) -> Path:  # type: ignore[no-untyped-def]
    w, s, e, n = item.bbox
    dx, dy = (e - w) / 4, (n - s) / 4
    ring = [[w + dx, s + dy], [e - dx, s + dy], [e - dx, n - dy], [w + dx, n - dy], [w + dx, s + dy]]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "sensor": sensor, "year": 2019, "months": [7], "projection": "EPSG:32631", "resolution": resolution,
        "out_location": "local", "scenes": save_collection([item], tmp_path / f"{name}-items.json"),
        "regions": {name: {"type": "Polygon", "coordinates": [ring]}}}))
    return path


def test_a_first_job_after_set_up_compiles_nothing(tmp_path):
    when = datetime(2019, 7, 10, 10, 40, tzinfo=UTC)
    s2 = make_item(tmp_path / "s2", "s2", "S2_SR", when, VEGETATION, shape=(60, 60))
    clear = np.full((60, 60), 1 << 6, np.uint16)  # QA_PIXEL bit 6: clear
    l8 = make_item(tmp_path / "l8", "l8", "L8_SR", when, VEGETATION, shape=(60, 60), quality=clear)
    assert s2.assets["red"].extra_fields["raster:bands"][0]["nodata"] == 0  # uint16 DN, as published
    jobs = [_request(tmp_path, "s2", "S2_SR", 20, s2), _request(tmp_path, "l8", "L8_SR", 30, l8),
            REPO / "examples" / "canberra-1992-l5.json"]
    args = [str(a) for job in jobs for a in (job, tmp_path / f"out-{job.stem}")]
    run = subprocess.run([sys.executable, "-c", FIRST_JOBS, *args], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    compiled_at_first_use = json.loads(run.stdout.strip().splitlines()[-1])
    assert compiled_at_first_use == {}, "variants the set-up does not compile (the first job would compile them)"
    for job in jobs:
        assert list((tmp_path / f"out-{job.stem}").rglob("*_LAI_*.tif")), f"{job.name} wrote no LAI map"
