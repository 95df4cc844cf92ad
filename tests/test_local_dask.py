"""Jobs of a request overlapped (engine._Pipeline): the same files as one job after another, on threads and on a
``distributed.LocalCluster`` of two worker processes, also when a worker is killed mid-run; bounded blocks in
flight and open jobs; a failing job never leaves a file of its own, and the others are whole or absent.

The multi-job request is the Bouconne example (real Sentinel-2 L3A spectra): seven monthly windows, seven jobs.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError

from leaf_engine.backends.local import engine
from leaf_engine.backends.local.engine import ProduceError, produce
from leaf_engine.backends.local.executors import DaskExecutor, ThreadExecutor, in_groups
from tests.support.local_runs import (
    SOURCES,
    assert_same_outputs,
    example_request,
    output_arrays,
    run_killing_a_worker,
)

CATALOG = SOURCES["bouconne-2018"]
BLOCK = 32  # about 16 blocks a job: several blocks of several jobs in flight at once
MONTHS = ("Apr", "May", "Jul", "Aug", "Sep", "Oct", "Nov")


def _request(**extra: Any) -> Any:
    return example_request("bouconne-2018", **extra)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert len(want) == 7 * 6
    assert_same_outputs(got, want)


class RecordingExecutor(ThreadExecutor):
    """The thread executor, recording the most blocks submitted and not yet handed back, and the most jobs whose
    spec is shared at once (a job shares it from its discovery until its last block is written)."""

    def __init__(self, workers: int = 2):
        super().__init__(workers)
        self.lock = threading.Lock()
        self.blocks = self.max_blocks = self.jobs = self.max_jobs = 0

    def share(self, obj: Any) -> Any:
        with self.lock:
            self.jobs += 1
            self.max_jobs = max(self.max_jobs, self.jobs)
        return super().share(obj)

    def unshare(self, handle: Any) -> None:
        with self.lock:
            self.jobs -= 1

    def submit(self, fn: Any, handle: Any, key: Any, done: Any, group: int | None = None) -> Any:
        with self.lock:
            self.blocks += 1
            self.max_blocks = max(self.max_blocks, self.blocks)
        return super().submit(fn, handle, key, done, group)

    def release(self, fut: Any) -> None:
        with self.lock:
            self.blocks -= 1


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> tuple[Path, Any]:
    """The reference: the jobs one after another on threads, as before jobs overlapped."""
    out = tmp_path_factory.mktemp("sequential")
    result = produce(_request(), out_dir=out, scenes=str(CATALOG), progress=False, quicklooks=False,
                     block_size=BLOCK, open_jobs=1)
    return out, result


def test_overlapped_jobs_on_threads_equal_the_sequential_run_within_bounds(sequential, tmp_path, monkeypatch):
    ref_dir, ref = sequential
    recorder = RecordingExecutor()
    monkeypatch.setattr(engine, "make_executor", lambda *_: recorder)
    result = produce(_request(), out_dir=tmp_path, scenes=str(CATALOG), progress=False, quicklooks=False,
                     block_size=BLOCK, open_jobs=3)
    _assert_same(output_arrays(tmp_path), output_arrays(ref_dir))
    # the result lists jobs and files in request order, whatever order they finished in
    assert result.files == ref.files
    assert [(j.job_id, j.scenes, j.pixels_in_region, j.pixels_with_obs) for j in result.jobs] == \
        [(j.job_id, j.scenes, j.pixels_in_region, j.pixels_with_obs) for j in ref.jobs]
    assert recorder.blocks == 0 and recorder.jobs == 0  # everything handed back
    assert recorder.max_blocks == recorder.in_flight == 4  # one window for all jobs: 2 per worker thread
    assert 2 <= recorder.max_jobs <= 3  # jobs did overlap, never more than open_jobs


def test_one_open_job_runs_them_one_after_another(tmp_path, monkeypatch):
    recorder = RecordingExecutor()
    monkeypatch.setattr(engine, "make_executor", lambda *_: recorder)
    req = _request(months=[7, 8])
    produce(req, out_dir=tmp_path, scenes=str(CATALOG), progress=False, quicklooks=False, block_size=BLOCK,
            open_jobs=1)
    assert recorder.max_jobs == 1 and recorder.max_blocks == 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ProduceError, match="open_jobs"):
            produce(req, out_dir=tmp_path, scenes=str(CATALOG), progress=False, open_jobs=bad)


def test_progress_bars_of_overlapped_jobs(sequential, tmp_path):
    """The rich bars (one overall, one per job whose blocks run) with quicklooks, as ``leaf produce`` shows."""
    from leaf_engine.cli._app import console_err

    with console_err.capture() as captured:
        result = produce(_request(months=[7, 8, 9]), out_dir=tmp_path, scenes=str(CATALOG), progress=True,
                         block_size=BLOCK, open_jobs=3)
    text = captured.get()
    assert "all 3 job(s), blocks" in text
    assert sum(1 for k in result.files if k.endswith(".png")) == 3 * 6
    ref_dir, _ = sequential
    for key, arr in output_arrays(tmp_path).items():
        with rasterio.open(ref_dir / key) as src:
            np.testing.assert_array_equal(arr, src.read(), err_msg=key)


def _broken_catalog(tmp: Path, month: int) -> Path:
    """The example's scenes with one band of one month's scene replaced by bytes no GDAL driver reads."""
    data = tmp / "scenes"
    shutil.copytree(CATALOG.parent, data)
    [scene] = data.glob(f"SENTINEL2X_2018{month:02d}*")
    (scene / "B8A.tif").write_bytes(b"not a GeoTIFF " * 100)
    return data / "catalog.json"


def _job_files(out: Path) -> dict[str, set[str]]:
    folder = out / "bouconne-2018" / "bouconne" / "2018"
    files = {p.name for p in folder.iterdir()} if folder.exists() else set()
    return {m: {f for f in files if f.startswith(f"bouconne_2018_{m}_")} for m in MONTHS}


@pytest.mark.parametrize("open_jobs,on_cluster", [(1, False), (3, False), (3, True)])
def test_a_failing_job_leaves_no_file_and_the_others_whole(tmp_path, open_jobs, on_cluster, request):
    """August's scene cannot be read: its blocks fail (on the cluster after their retries), ``produce`` raises that
    error; August has no file; the jobs before it are stored whole, as one after another; the jobs after it are
    whole or absent (absent when run one after another); the sink holds no temporary file."""
    catalog = _broken_catalog(tmp_path, 8)
    out = tmp_path / "out"
    dask = request.getfixturevalue("cluster") if on_cluster else None
    # From a worker process the error comes back as an Exception naming it (rasterio's does not unpickle).
    with pytest.raises(Exception if on_cluster else RasterioIOError, match=r"B8A\.tif' not recognized"):
        produce(_request(), out_dir=out, scenes=str(catalog), dask_address=dask, progress=False, quicklooks=False,
                block_size=BLOCK, open_jobs=open_jobs)
    files = _job_files(out)
    whole = {f"bouconne_2018_{{}}_{p}_20m.{ext}" for p in ("LAI", "fCOVER", "fAPAR", "Albedo", "QC", "Date")
             for ext in ("tif", "qml")}
    for month in ("Apr", "May", "Jul"):
        assert files[month] == {f.format(month) for f in whole}, month
    assert files["Aug"] == set()
    for month in ("Sep", "Oct", "Nov"):
        assert files[month] in (set(), {f.format(month) for f in whole}), month
        if open_jobs == 1:
            assert files[month] == set()
    leftovers = [p for p in out.rglob("*") if p.is_file() and ".leaf" not in p.parts and p.name.endswith(".tmp")]
    assert leftovers == []


def test_overlapped_jobs_on_two_worker_processes_equal_the_sequential_run(sequential, cluster, tmp_path):
    ref_dir, ref = sequential
    result = produce(_request(), out_dir=tmp_path, scenes=str(CATALOG), dask_address=cluster, progress=False,
                     quicklooks=False, block_size=BLOCK, open_jobs=3)
    _assert_same(output_arrays(tmp_path), output_arrays(ref_dir))
    assert result.files == ref.files


def test_a_killed_worker_in_a_multi_job_run_costs_only_its_blocks(sequential, tmp_path):
    """SIGKILL one of two worker processes while blocks of overlapped jobs are in flight: the scheduler recomputes
    its blocks on the other and every job's files are those of the sequential threaded run."""
    ref_dir, _ = sequential
    run_killing_a_worker(lambda client: produce(
        _request(), out_dir=tmp_path, scenes=str(CATALOG), dask_address=client, progress=False, quicklooks=False,
        block_size=BLOCK, open_jobs=3), wait_s=120)
    _assert_same(output_arrays(tmp_path), output_arrays(ref_dir))


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (1, 7), (3, 3)])
@pytest.mark.parametrize("groups", [1, 2, 3, 16])
def test_blocks_in_groups_are_contiguous_bands_submitted_in_turn(shape, groups):
    rows, cols = shape
    keys = [(r * 10, c * 10, 10, 10) for r in range(rows) for c in range(cols)]  # row-major, as engine.blocks
    order = in_groups(keys, groups)
    assert sorted(k for k, _ in order) == sorted(keys)  # every block once
    by_group: dict[int | None, list[tuple[int, int, int, int]]] = {}
    for k, g in order:
        by_group.setdefault(g, []).append(k)
    n = len(by_group)
    assert n == min(groups, max(rows, cols))
    across = 1 if cols >= rows else 0  # bands across the grid's longer side
    spans = sorted((min(k[across] for k in b), max(k[across] for k in b)) for b in by_group.values())
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))  # disjoint bands (together: every block)
    for b in by_group.values():
        assert b == sorted(b)  # each band row-major
    if n == 1:  # nothing to keep apart: the blocks as given, placed by the scheduler
        assert order == [(k, None) for k in keys]
    else:
        assert sorted(g for _, g in order[:n]) == list(range(n))  # one block of every band before a second one


def _where(shared: Any, key: Any) -> str:
    import time

    from distributed import get_worker

    time.sleep(0.05)
    return get_worker().address


def test_each_group_of_blocks_runs_on_one_worker(cluster):
    """On two worker processes the two bands of a job's blocks each run on one worker (the scheduler alone would
    deal neighbouring blocks out in turn, and both workers would fetch and decode the tiles they share)."""
    keys = [(r * 10, c * 10, 10, 10) for r in range(4) for c in range(6)]
    executor = DaskExecutor(cluster)
    try:
        assert executor.groups == 2
        ran = dict(executor.map_unordered(_where, None, keys))
    finally:
        executor.close()
    groups = dict(in_groups(keys, 2))
    workers = {g: [ran[k] for k in keys if groups[k] == g] for g in (0, 1)}
    main = {g: max(set(w), key=w.count) for g, w in workers.items()}
    assert main[0] != main[1]
    for g, w in workers.items():
        assert w.count(main[g]) >= 0.75 * len(w), workers  # loosely placed: the scheduler may move one
