"""Run blocks in parallel — a thread pool on this machine or a Dask cluster — with a bounded number of blocks in
flight, handing each finished block to the caller.

Both executors have the same small interface, so the engine drives them with one code path: ``share`` an object
every block of a job reads (the job spec: sent once to the Dask cluster), ``submit`` a block with a callback
that fires when it is done, ``release``/``cancel`` futures, ``unshare`` when the job is done. ``in_flight`` is how
many blocks the caller keeps submitted at once (all jobs together): bounding it bounds memory, since results are
written as they arrive, never accumulated. :func:`map_unordered` is the one-job loop on top.

Neighbouring blocks read the same source tiles, which a worker process fetches and decodes once and keeps in
its GDAL caches. On a cluster the scheduler would deal consecutive blocks out to the workers in turn, so every
tile shared by two blocks would be fetched and decoded by two workers; instead the blocks of a job are split
into ``groups`` contiguous bands (:func:`in_groups`), one per worker, each submitted to its worker when it can.
"""

from __future__ import annotations

import math
import queue
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

DEFAULT_WORKERS = 2
WORKERS_TTL = 2.0
"""Seconds the Dask executor trusts its list of the cluster's workers (one scheduler call)."""


class BlockFuture(Protocol):
    def result(self) -> Any: ...
    def cancelled(self) -> bool: ...


class BlockExecutor(Protocol):
    in_flight: int
    """Blocks the caller keeps submitted at once: 2 per worker thread, so a worker never waits for the client."""

    @property
    def groups(self) -> int:
        """Parts of a job's blocks to keep on one worker each (its caches are its own): 1 for threads."""
        ...

    def share(self, obj: Any) -> Any: ...
    def unshare(self, handle: Any) -> None: ...
    def submit(self, fn: Callable[[Any, Any], Any], handle: Any, key: Any,
               done: Callable[[Any], None], group: int | None = None) -> BlockFuture: ...
    def release(self, fut: Any) -> None: ...
    def cancel(self, futures: list[Any]) -> None: ...
    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Sequence[Block]) -> Iterator[tuple[Block, T]]: ...
    def close(self) -> None: ...


Block = tuple[int, int, int, int]
"""(row, col, height, width) of a block in its job's grid."""


def in_groups(keys: Sequence[Block], groups: int) -> list[tuple[Block, int | None]]:
    """The blocks with their group: ``groups`` contiguous bands of the block grid across its longer side, in the
    order to submit them, one block of each band in turn (so that every band has blocks in flight), each band
    row-major. One group (one worker, threads, or a single block): the blocks as given, group None, placed
    wherever the scheduler likes."""
    if groups <= 1 or len(keys) <= 1:
        return [(k, None) for k in keys]
    rows = sorted({k[0] for k in keys})
    cols = sorted({k[1] for k in keys})
    across, pos = (cols, 1) if len(cols) >= len(rows) else (rows, 0)
    n = min(groups, len(across))
    index = {v: i * n // len(across) for i, v in enumerate(across)}  # band of each column (or row)
    bands: list[list[Block]] = [[] for _ in range(n)]
    for k in keys:
        bands[index[k[pos]]].append(k)
    order: list[tuple[Block, int | None]] = []
    for i in range(max(len(b) for b in bands)):
        order += [(b[i], g) for g, b in enumerate(bands) if i < len(b)]
    return order


def map_unordered(executor: BlockExecutor, fn: Callable[..., T], shared: Any,
                  keys: Sequence[Block]) -> Iterator[tuple[Block, T]]:
    """``fn(shared, key)`` for every block, at most ``executor.in_flight`` at once, yielded in completion order."""
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handle = executor.share(shared)
    pending: dict[Any, Block] = {}
    it = iter(in_groups(keys, executor.groups))

    def submit(key: Block, group: int | None) -> None:
        pending[executor.submit(fn, handle, key, finished.put, group)] = key

    try:
        for key, group in it:
            submit(key, group)
            if len(pending) >= executor.in_flight:
                break
        while pending:
            fut = finished.get()
            key = pending.pop(fut)
            yield key, fut.result()
            executor.release(fut)
            for nxt, group in it:
                submit(nxt, group)
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

    @property
    def groups(self) -> int:
        return 1  # one process: its threads share GDAL's cache of fetched bytes

    def submit(self, fn: Callable[[Any, Any], Any], handle: Any, key: Any,
               done: Callable[[Any], None], group: int | None = None) -> BlockFuture:
        fut = self._pool.submit(fn, handle, key)
        fut.add_done_callback(done)
        return fut

    def release(self, fut: Any) -> None:
        pass

    def cancel(self, futures: list[Any]) -> None:
        for fut in futures:
            fut.cancel()  # a block already running finishes; its result is dropped

    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Sequence[Block]) -> Iterator[tuple[Block, T]]:
        return map_unordered(self, fn, shared, keys)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Blocks as tasks on a dask.distributed cluster: ``target`` is a scheduler address (``tcp://host:8786``), a
    ``distributed.Client`` or a cluster object (``LocalCluster``, dask-kubernetes, dask-gateway, Coiled). Each job
    spec is sent once, as a task the job's blocks depend on (``share``).

    A task lost with its worker is recomputed by the scheduler on another worker; a task that fails is retried
    ``retries`` times. Results come back to this process, which alone writes the outputs, so a lost worker
    costs only its blocks and never touches a file.

    ``groups`` is the number of workers: each group of a job's blocks is placed on one worker, the least loaded
    when the group's first block comes (loosely: the scheduler may still move a block to another worker, as when
    its worker is gone)."""

    def __init__(self, target: Any, in_flight: int | None = None, retries: int = 2):
        from distributed import Client

        if isinstance(target, Client):
            self.client, self._own = target, False
        else:
            self.client, self._own = Client(target), True  # an address or a cluster object
        self.retries = retries
        n_threads = sum(self.client.nthreads().values()) or DEFAULT_WORKERS
        self.in_flight = in_flight or 2 * n_threads
        self._placed: dict[str, dict[int, str]] = {}
        """The worker of each group of each shared job (by its handle's key)."""
        self._known: tuple[float, list[str]] = (-math.inf, [])

    @property
    def groups(self) -> int:
        return max(1, len(self._workers()))

    def _workers(self) -> list[str]:
        """The cluster's workers, asked of the scheduler at most every ``WORKERS_TTL`` seconds."""
        t, workers = self._known
        if time.monotonic() - t > WORKERS_TTL:
            workers = sorted(self.client.scheduler_info().get("workers", {}))
            self._known = (time.monotonic(), workers)
        return workers

    def _worker_of(self, handle: Any, group: int) -> str | None:
        """The worker of a job's group: the one it was given, else the worker with the fewest groups of the jobs
        in progress (None while the cluster has no worker)."""
        placed = self._placed.setdefault(handle.key, {})
        workers = self._workers()
        worker = placed.get(group)
        if worker not in workers and workers:  # a new group, or its worker left
            load = Counter(w for p in self._placed.values() for w in p.values())
            worker = placed[group] = min(workers, key=lambda w: (load[w], w))
        return worker

    def share(self, obj: Any) -> Any:
        # A task that returns the object, not scattered data: when the worker holding it dies, the scheduler
        # recomputes it from the task (scattered data would be lost, and scattering while a worker dies fails).
        # Each worker fetches it once, the first time one of its blocks needs it.
        return self.client.submit(_identity, obj, pure=False)

    def unshare(self, handle: Any) -> None:
        self._placed.pop(handle.key, None)
        handle.release()

    def submit(self, fn: Callable[[Any, Any], Any], handle: Any, key: Any,
               done: Callable[[Any], None], group: int | None = None) -> BlockFuture:
        worker = None if group is None else self._worker_of(handle, group)
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        fut = self.client.submit(fn, handle, key, pure=False, retries=self.retries, **where)
        fut.add_done_callback(done)  # called on a client thread, also when the task errs or is cancelled
        return fut

    def release(self, fut: Any) -> None:
        fut.release()

    def cancel(self, futures: list[Any]) -> None:
        if futures:
            self.client.cancel(futures)

    def map_unordered(self, fn: Callable[..., T], shared: Any, keys: Sequence[Block]) -> Iterator[tuple[Block, T]]:
        return map_unordered(self, fn, shared, keys)

    def close(self) -> None:
        if self._own:
            self.client.close()


def _identity(obj: Any) -> Any:
    return obj


def make_executor(dask: Any = None, workers: int = DEFAULT_WORKERS) -> BlockExecutor:
    """Threads on this machine, or the Dask cluster ``dask`` (address, Client or cluster object)."""
    return DaskExecutor(dask) if dask is not None and dask != "" else ThreadExecutor(workers)
