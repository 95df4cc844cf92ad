"""The C allocator of a process that computes blocks: block-sized arrays are reused from the heap.

glibc maps every allocation above its mmap threshold with ``mmap`` and unmaps it when freed. Its default threshold
adapts (a freed mapping of size S raises it to S), so the arrays of one block (1 MB each for 512² float32, plus
GDAL's decoded tiles) soon come from the heap and are reused by the next block. Setting ``MALLOC_TRIM_THRESHOLD_``
or ``MALLOC_MMAP_THRESHOLD_`` switches that adaptation off, and Dask's nanny starts every worker with
``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``, to hand freed memory back to the OS).
Each array of every block is then mapped anew and zero-filled page by page as it is first written: measured on
a 2001² job with one block thread, 7.5 s with the adaptive thresholds against 8.8–9.2 s with Dask's setting.

:func:`reuse_block_arrays` restores heap reuse in such a process, with fixed thresholds that bound what the heap
keeps: arrays up to :data:`MMAP_THRESHOLD` come from the heap, and at most :data:`TRIM_THRESHOLD` of free memory
stays at its top before it is returned to the OS.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Allocations below this come from the heap: glibc's own upper bound for its adaptive threshold (64-bit)."""
TRIM_THRESHOLD = 64 * 1024 * 1024
"""Free memory at the heap's top beyond this goes back to the OS (glibc's adaptive rule: twice the mmap one)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
FIXING_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
"""Environment variables that fix glibc's thresholds (and so switch off its adaptive mmap threshold)."""

_lock = threading.Lock()
_state: dict[str, bool] = {}


def _fixed_below_ours() -> bool:
    """Whether the environment fixed a threshold below ours (a user's larger setting is kept)."""
    limits = {"MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    for name in FIXING_VARIABLES:
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            if int(raw) < limits[name]:
                return True
        except ValueError:
            continue  # glibc ignores a value it cannot parse, and so do we
    return False


def reuse_block_arrays() -> bool:
    """Once per process, before its first block: if the environment fixed glibc's thresholds low, set
    :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD`. True when this process's thresholds were set (now or
    earlier); False where nothing needed changing or the C library is not glibc."""
    with _lock:
        if "done" not in _state:
            _state["done"] = _fixed_below_ours() and sys.platform.startswith("linux") and _set_glibc_thresholds()
        return _state["done"]


def _set_glibc_thresholds() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no glibc mallopt, their allocator does its own thing
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
