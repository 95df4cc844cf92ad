"""After set-up, a first job compiles nothing: every variant of a compiled function that the engine calls is one
that ``python -m leaf_engine.compiled`` compiles. Checked in a fresh process, where no earlier test has loaded
a variant, on scenes as the public catalogues publish them (16-bit unsigned DN through shared read-only tables)
and on the examples' signed 16-bit rasters; and from an installation numba cannot write to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

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


LOADS = """
import json
from leaf_engine import compiled
from leaf_engine.backends.local import encode, fold
from leaf_engine.sl2p import kernel

compiled.warm_up()
functions = (kernel._run, fold._fold, encode._encode)
print(json.dumps({"package": compiled.__file__, "cache": compiled.cache_folder(),
                  "compiled": sum(sum(f.stats.cache_misses.values()) for f in functions),
                  "loaded": sum(sum(f.stats.cache_hits.values()) for f in functions)}))
"""


@pytest.fixture
def read_only_mount(tmp_path):
    """A folder that becomes read-only after it is filled (a tmpfs remounted read-only: needs root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("a read-only mount needs root (mount -t tmpfs)")

    def seal() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    yield folder, seal
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_installation_loads_the_cache_set_up_wrote(tmp_path, read_only_mount):
    """An image run as another user, or on a read-only root file system: numba would not load the cache beside the
    modules (it loads only from folders it may write to) and each process would compile again for a minute."""
    import leaf_engine

    folder, seal = read_only_mount
    package = Path(leaf_engine.__file__).parent
    assert list(package.rglob("__pycache__/kernel._run-*.nbi")), "set-up (python -m leaf_engine.compiled) has not run"
    shutil.copytree(package, folder / "leaf_engine")
    seal()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")} | {
        "HOME": str(tmp_path / "home"), "PYTHONPATH": str(folder), "XDG_CACHE_HOME": str(tmp_path / "home" / ".cache")}
    for attempt in ("first process", "second process"):
        run = subprocess.run([sys.executable, "-c", LOADS], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        got = json.loads(run.stdout.strip().splitlines()[-1])
        assert got["package"].startswith(str(folder)), got  # the read-only copy was imported
        assert got["cache"].startswith(str(tmp_path / "home" / ".cache" / "leaf")), got
        assert got["compiled"] == 0 and got["loaded"] > 0, f"{attempt}: {got}"
