"""Run blocks in parallel — a thread pool on this machine or a Dask cluster — with a bounded number of blocks in
flight, handing each finished block to the caller.

Both executors have the same small interface, so the engine drives them with one code path: ``share`` an object
every block of a job reads (the job spec: sent once to the Dask cluster), ``submit`` a block with a callback
that fires when it is done, ``release``/``cancel`` futures, ``unshare`` when the job is done. ``in_flight`` is how
many blocks the caller keeps submitted at once (all jobs together): bounding it bounds memory, since results are
written as they arrive, never accumulated. :func:`map_unordered` is the one-job loop on top.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_WORKERS = 2


class BlockFuture(Protocol):
    def result(self) -> Any: ...
    def cancelled(self) -> bool: ...


class BlockExecutor(Protocol):
    in_flight: int
    """Blocks the caller keeps submitted at once: 2 per worker thread, so a worker never waits for the client."""

    def share(self, obj: Any) -> Any: ...
    def unshare(self, handle: Any) -> None: ...
    def submit(self, fn: Callable[[Any, Any], Any], handle: Any, key: Any,
               done: Callable[[Any], None]) -> BlockFuture: ...
    def release(self, fut: Any) -> None: ...
    def cancel(self, futures: list[Any]) -> None: ...
    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Iterable[K]) -> Iterator[tuple[K, T]]: ...
    def close(self) -> None: ...


def map_unordered(executor: BlockExecutor, fn: Callable[..., T], shared: Any,
                  keys: Iterable[K]) -> Iterator[tuple[K, T]]:
    """``fn(shared, key)`` for every key, at most ``executor.in_flight`` at once, yielded in completion order."""
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handle = executor.share(shared)
    pending: dict[Any, K] = {}
    it = iter(keys)

    def submit(key: K) -> None:
        pending[executor.submit(fn, handle, key, finished.put)] = key

    try:
        for key in it:
            submit(key)
            if len(pending) >= executor.in_flight:
                break
        while pending:
            fut = finished.get()
            key = pending.pop(fut)
            yield key, fut.result()
            executor.release(fut)
            for nxt in it:
                submit(nxt)
                break
    finally:
        executor.cancel(list(pending))
        executor.unshare(handle)


class ThreadExecutor:
    """Threads: rasterio/GDAL and the SL2P kernel release the GIL, so two threads use both cores."""

    def __init__(self, workers: int = DEFAULT_WORKERS, in_flight: int | None = None):
        self.workers = max(1, workers)
        self.in_flight = in_flight or 2 * self.workers
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="leaf-block")

    def share(self, obj: Any) -> Any:
        return obj

    def unshare(self, handle: Any) -> None:
        pass

    def submit(self, fn: Callable[[Any, Any], Any], handle: Any, key: Any,
               done: Callable[[Any], None]) -> BlockFuture:
        fut = self._pool.submit(fn, handle, key)
        fut.add_done_callback(done)
        return fut

    def release(self, fut: Any) -> None:
        pass

    def cancel(self, futures: list[Any]) -> None:
        for fut in futures:
            fut.cancel()  # a block already running finishes; its result is dropped

    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Iterable[K]) -> Iterator[tuple[K, T]]:
        return map_unordered(self, fn, shared, keys)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Blocks as tasks on a dask.distributed cluster: ``target`` is a scheduler address (``tcp://host:8786``), a
    ``distributed.Client`` or a cluster object (``LocalCluster``, dask-kubernetes, dask-gateway, Coiled). Each job
    spec is sent once, as a task the job's blocks depend on (``share``).

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

    def share(self, obj: Any) -> Any:
        # A task that returns the object, not scattered data: when the worker holding it dies, the scheduler
        # recomputes it from the task (scattered data would be lost, and scattering while a worker dies fails).
        # Each worker fetches it once, the first time one of its blocks needs it.
        return self.client.submit(_identity, obj, pure=False)

    def unshare(self, handle: Any) -> None:
        handle.release()

    def submit(self, fn: Callable[[Any, Any], Any], handle: Any, key: Any,
               done: Callable[[Any], None]) -> BlockFuture:
        fut = self.client.submit(fn, handle, key, pure=False, retries=self.retries)
        fut.add_done_callback(done)  # called on a client thread, also when the task errs or is cancelled
        return fut

    def release(self, fut: Any) -> None:
        fut.release()

    def cancel(self, futures: list[Any]) -> None:
        if futures:
            self.client.cancel(futures)

    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Iterable[K]) -> Iterator[tuple[K, T]]:
        return map_unordered(self, fn, shared, keys)

    def close(self) -> None:
        if self._own:
            self.client.close()


def _identity(obj: Any) -> Any:
    return obj


def make_executor(dask: Any = None, workers: int = DEFAULT_WORKERS) -> BlockExecutor:
    """Threads on this machine, or the Dask cluster ``dask`` (address, Client or cluster object)."""
    return DaskExecutor(dask) if dask is not None and dask != "" else ThreadExecutor(workers)
