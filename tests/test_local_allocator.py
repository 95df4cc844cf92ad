"""The allocator of a block process: with Dask's worker environment (``MALLOC_TRIM_THRESHOLD_=65536``) every
block-sized array was mapped anew and faulted in page by page; :func:`reuse_block_arrays` puts them back on the
heap. Measured in fresh interpreters, by the page faults of allocating, filling and freeing such arrays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import distributed
import pytest

from leaf_engine.backends.local import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")

_PROBE = """
import json, resource, numpy as np
from leaf_engine.backends.local.allocator import reuse_block_arrays

def faults():  # minor page faults of 100 block-sized arrays (1 MB: a 512² float32 band), each filled then freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        a = np.empty(1 << 18, np.float32)
        a.fill(1.0)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

faults()  # numpy's own first-use costs out of the way
before = faults()
tuned = reuse_block_arrays()
print(json.dumps({"before": before, "after": faults(), "tuned": tuned, "again": reuse_block_arrays()}))
"""


def _probe(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.FIXING_VARIABLES}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_with_dask_workers_environment_block_arrays_come_back_from_the_heap():
    r = _probe({"MALLOC_TRIM_THRESHOLD_": "65536"})
    assert r["tuned"] and r["again"]
    # 100 arrays of 256 pages: each mapped anew before, reused from the heap after
    assert r["before"] >= 100 * 200, r
    assert r["after"] <= r["before"] / 20, r


def test_glibc_adaptive_thresholds_and_a_users_larger_setting_are_left_alone():
    default = _probe({})
    assert not default["tuned"]
    assert default["before"] < 100 * 20, default  # glibc's adaptive threshold already reuses them
    large = _probe({"MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD * 2),
                    "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD)})
    assert not large["tuned"]


def test_the_worker_processes_that_computed_blocks_have_their_thresholds_set(cluster, tmp_path):
    """The workers of a LocalCluster (started with Dask's default ``pre-spawn-environ``) after a job."""
    from leaf_engine.backends.local import produce
    from tests.test_local_dask import BLOCK, CATALOG, _request

    produce(_request(), out_dir=tmp_path, scenes=str(CATALOG), dask_address=cluster, progress=False,
            quicklooks=False, block_size=BLOCK, open_jobs=1)
    with distributed.Client(cluster) as client:
        env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        states = client.run(lambda: allocator._state.get("done"))
    assert set(env.values()) == {"65536"}
    assert True in states.values() and False not in states.values(), states  # None: a worker given no block
