"""The example requests run by the local engine, their outputs read back, and the check that a run through a
STAC API on worker processes equals the threaded run from the catalogue files (shared by the STAC API and Dask
tests)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import rasterio

from leaf_engine.backends.local.engine import produce
from leaf_engine.request import ProductionRequest, parse_request

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SOURCES = {"bouconne-2018": EXAMPLES / "data/bouconne-2018/catalog.json",
           "canberra-1992-l5": EXAMPLES / "data/canberra-1992-l5/catalog.json"}
"""The examples' STAC catalogue files."""
PROBE = "canberra-1992-l5/LS5_TM_NBAR_090_084_19920323/red.tif"
"""An example COG that the loopback file server checks range requests against."""


def example_request(name: str, **extra: Any) -> ProductionRequest:
    """``examples/{name}.json`` without its ``scenes``, with ``extra`` keys."""
    doc = json.loads((EXAMPLES / f"{name}.json").read_text())
    doc.pop("scenes")
    doc.update(extra)
    return parse_request(doc)


def output_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every GeoTIFF under ``root`` (relative path → pixels)."""
    out = {}
    for p in sorted(root.rglob("*.tif")):
        with rasterio.open(p) as src:
            out[str(p.relative_to(root))] = src.read()
    return out


def worker_cluster() -> distributed.LocalCluster:
    """Two worker processes of one thread each."""
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                    memory_limit="1.5GiB")


def threaded_references(tmp_path_factory: Any) -> dict[str, dict[str, np.ndarray]]:
    """Each example from its catalogue file on threads: the reference of the runs through an API."""
    out = {}
    for name, source in SOURCES.items():
        folder = tmp_path_factory.mktemp(f"threads-{name}")
        produce(example_request(name), out_dir=folder, scenes=str(source), progress=False, quicklooks=False,
                block_size=64)
        out[name] = output_arrays(folder)
    return out


def assert_api_run_equals_threaded(api: str, shape: str, name: str, cluster: Any,
                                   threaded: dict[str, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """``name`` with scenes from the STAC API ``api`` (items in the public catalogue ``shape``) on ``cluster``
    equals the threaded run, pixel for pixel."""
    produce(example_request(name, scenes=api), out_dir=tmp_path / "workers", dask_address=cluster, progress=False,
            quicklooks=False, block_size=64)
    got = output_arrays(tmp_path / "workers")
    if shape == "planetary-computer" and name.startswith("canberra"):
        # Reshaped as a USGS Collection 2 item, the scene's QA_PIXEL is trusted to flag water (bit 7), so the
        # NDWI water test of non-USGS products (the catalogue file's Geoscience Australia NBAR) does not apply:
        # the reference is the same items on threads.
        produce(example_request(name, scenes=api), out_dir=tmp_path / "threads", progress=False, quicklooks=False,
                block_size=64)
        want = output_arrays(tmp_path / "threads")
    else:
        want = threaded[name]
    assert len(got) >= 6
    assert_same_outputs(got, want)


def assert_same_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """The same files with the same pixels."""
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def run_killing_a_worker(run: Callable[[distributed.Client], object], wait_s: float) -> None:
    """``run(client)`` on a new cluster of two worker processes, in a thread; one worker is SIGKILLed as soon as
    blocks are in flight (within ``wait_s``). The run must still be going when the worker dies and end without
    an error."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        pids = list(client.run(os.getpid).values())
        errors: list[BaseException] = []

        def target() -> None:
            try:
                run(client)
            except BaseException as e:  # reported by the test thread
                errors.append(e)

        t = threading.Thread(target=target)
        t.start()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not any(ts for ts in client.processing().values()):
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)
        assert t.is_alive()  # killed mid-run, with blocks in flight
        t.join(300)
        assert not t.is_alive() and not errors, errors
