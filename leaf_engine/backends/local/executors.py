"""Run a job's blocks in parallel — a thread pool on this machine or a Dask cluster — with a bounded number of
blocks in flight, handing each finished block to the caller in completion order.

Bounding the in-flight blocks bounds memory: results are written as they arrive, never accumulated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_WORKERS = 2


class BlockExecutor(Protocol):
    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Iterable[K]) -> Iterator[tuple[K, T]]: ...
    def close(self) -> None: ...


class ThreadExecutor:
    """Threads: rasterio/GDAL and the SL2P kernel release the GIL, so two threads use both cores."""

    def __init__(self, workers: int = DEFAULT_WORKERS, in_flight: int | None = None):
        self.workers = max(1, workers)
        self.in_flight = in_flight or 2 * self.workers
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="leaf-block")

    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Iterable[K]) -> Iterator[tuple[K, T]]:
        pending: dict[Future, K] = {}
        it = iter(keys)
        for key in it:
            pending[self._pool.submit(fn, shared, key)] = key
            if len(pending) >= self.in_flight:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                key = pending.pop(fut)
                yield key, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending[self._pool.submit(fn, shared, nxt)] = nxt

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Blocks as tasks on a dask.distributed cluster: ``target`` is a scheduler address (``tcp://host:8786``), a
    ``distributed.Client`` or a cluster object (``LocalCluster``, dask-kubernetes, dask-gateway, Coiled). The job
    spec is scattered once to every worker.

    A task lost with its worker is recomputed by the scheduler on another worker; a task that fails is retried
    ``retries`` times. Results come back to this process, which alone writes the outputs, so a lost worker
    costs only its blocks and never touches a file."""

    def __init__(self, target: Any, in_flight: int | None = None, retries: int = 2):
        from distributed import Client

        if isinstance(target, Client):
            self.client, self._own = target, False
        else:
            self.client, self._own = Client(target), True  # an address or a cluster object
        self.retries = retries
        n_threads = sum(self.client.nthreads().values()) or DEFAULT_WORKERS
        self.in_flight = in_flight or 2 * n_threads

    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Iterable[K]) -> Iterator[tuple[K, T]]:
        from distributed import as_completed

        [shared_f] = self.client.scatter([shared], broadcast=True, hash=False)  # one future, even for a tuple
        it = iter(keys)
        futures = {}
        for key in it:
            futures[self.client.submit(fn, shared_f, key, pure=False, retries=self.retries)] = key
            if len(futures) >= self.in_flight:
                break
        ac = as_completed(list(futures))
        try:
            for fut in ac:
                key = futures.pop(fut)
                yield key, fut.result()
                fut.release()
                nxt = next(it, None)
                if nxt is not None:
                    new = self.client.submit(fn, shared_f, nxt, pure=False, retries=self.retries)
                    futures[new] = nxt
                    ac.add(new)
        finally:
            self.client.cancel(list(futures))
            shared_f.release()

    def close(self) -> None:
        if self._own:
            self.client.close()


def make_executor(dask: Any = None, workers: int = DEFAULT_WORKERS) -> BlockExecutor:
    """Threads on this machine, or the Dask cluster ``dask`` (address, Client or cluster object)."""
    return DaskExecutor(dask) if dask is not None and dask != "" else ThreadExecutor(workers)
