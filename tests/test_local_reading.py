"""The per-thread pool of open source datasets: kept open between reads (so GDAL keeps their decoded tiles), never
stale (a file rewritten in place is reopened), bounded, and a failed read is not kept."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox

from leaf_engine.backends.local import reading
from leaf_engine.backends.local.scenes import AssetRef
from tests.test_local_support import write_raster

GBOX = GeoBox((8, 8), Affine(20, 0, 360000, 0, -20, 4840000), "EPSG:32631")


def _pool() -> dict:
    return getattr(reading._threads, "pool", {})


def test_sources_stay_open_between_reads_and_are_reopened_when_rewritten(tmp_path):
    path = tmp_path / "band.tif"
    ref = AssetRef(write_raster(path, np.full((8, 8), 100, np.uint16), "EPSG:32631", GBOX.transform, 0))
    first, _ = reading.read_warped(ref, GBOX)
    open_now = [ds for (name, _), ds in _pool().items() if name == ref.href]
    assert len(open_now) == 1 and not open_now[0].closed
    again, _ = reading.read_warped(ref, GBOX)
    assert [ds for (name, _), ds in _pool().items() if name == ref.href] == open_now  # the same open dataset
    write_raster(path, np.full((8, 8), 7, np.uint16), "EPSG:32631", GBOX.transform, 0)  # rewritten in place
    os.utime(path, ns=(1, 1))  # even within the timestamp resolution: the mtime moved
    rewritten, _ = reading.read_warped(ref, GBOX)
    assert (first == 100).all() and (again == 100).all() and (rewritten == 7).all()


def test_the_pool_is_bounded_and_per_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "OPEN_PER_THREAD", 3)
    refs = [AssetRef(write_raster(tmp_path / f"b{i}.tif", np.full((8, 8), i + 1, np.uint16), "EPSG:32631",
                                  GBOX.transform, 0)) for i in range(5)]
    for ref in refs:
        reading.read_warped(ref, GBOX)
    names = [name for name, _ in _pool()]
    assert names == [r.href for r in refs[-3:]]  # least recently used closed first
    seen: list[int] = []
    t = threading.Thread(target=lambda: (reading.read_warped(refs[0], GBOX), seen.append(len(_pool()))))
    t.start()
    t.join()
    assert seen == [1]  # another thread has its own pool


def test_a_failed_read_does_not_stay_in_the_pool(tmp_path):
    path = tmp_path / "band.tif"
    ref = AssetRef(write_raster(path, np.full((8, 8), 5, np.uint16), "EPSG:32631", GBOX.transform, 0))
    with pytest.raises(RuntimeError, match="boom"), reading._source(ref.href, [ref.href]) as src:
        assert not src.closed
        raise RuntimeError("boom")
    assert src.closed and all(ds is not src for ds in _pool().values())
    values, _ = reading.read_warped(ref, GBOX)  # reopened
    assert (values == 5).all()
