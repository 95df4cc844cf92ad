"""Every compiled (numba) function of LEAF, compiled once at set-up and cached on disk for every later process.

``python -m leaf_engine.compiled`` (run by ``scripts/test`` and ``scripts/demo``; on a cluster, once per worker
image) compiles them, announced; afterwards a process loads them from numba's cache (next to the modules, or in
``NUMBA_CACHE_DIR``) in about a second, so the first ``leaf produce`` starts computing at once.

Numba loads a cache only from a folder it may write to. Where the installation is read-only to the process (an
image run as another user, a read-only root file system) and ``NUMBA_CACHE_DIR`` is not set, this module copies
the cache that set-up wrote next to the modules into a writable folder, in numba's layout, and points numba there
(:func:`use_shipped_cache`); otherwise every such process would compile everything again (about a minute), silently.
This module is imported by every compiled module before its functions are defined.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np

PACKAGE = Path(__file__).resolve().parent


def _writable(folder: Path) -> bool:
    """Numba's own test of a cache folder: it can be created and a file written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _shipped_caches() -> list[Path]:
    """The package's folders holding numba cache files (index ``.nbi`` and code ``.nbc``) written by set-up."""
    return sorted({f.parent for f in PACKAGE.rglob("__pycache__/*.nbi")})


def use_shipped_cache() -> Path | None:
    """Where the package's cache folders are read-only and ``NUMBA_CACHE_DIR`` is unset: copy their cache files
    into ``~/.cache/leaf/numba`` (else a folder in the temporary directory), each module's files in the sub-folder
    numba looks in, and point numba there. Returns that folder, or None when numba can use the cache in place."""
    if numba.config.CACHE_DIR:
        return None  # the user chose the folder
    shipped = _shipped_caches()
    if not shipped or all(_writable(folder) for folder in shipped):
        return None
    from numba.core.caching import _CacheLocator  # the sub-folder naming of NUMBA_CACHE_DIR's layout
    from numba.misc.appdirs import AppDirs

    for root in (Path(AppDirs("leaf", appauthor=False).user_cache_dir) / "numba",
                 Path(tempfile.gettempdir()) / f"leaf-numba-{os.getuid()}"):
        if _writable(root):
            break
    else:
        return None  # nowhere to write: numba compiles as it would have
    for folder in shipped:
        for module in {f.name.split(".")[0] for f in folder.glob("*.nbi")}:
            target = root / _CacheLocator.get_suitable_cache_subpath(str(folder.parent / f"{module}.py"))
            target.mkdir(parents=True, exist_ok=True)
            for f in folder.glob(f"{module}.*.nb[ic]"):
                copy = target / f.name
                if not copy.exists() or copy.stat().st_mtime_ns != f.stat().st_mtime_ns:  # new, or set-up rewrote it
                    part = copy.with_name(f"{copy.name}.{os.getpid()}.part")
                    shutil.copy2(f, part)  # keeps its time
                    os.replace(part, copy)  # whole: workers starting together copy the same files
    numba.config.CACHE_DIR = str(root)
    return root


SHIPPED_CACHE_COPY = use_shipped_cache()
"""Where this process loads the shipped cache from, when the installation is read-only (else None)."""


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``. Numba types read-only arrays apart from writable ones and compiles each variant
    on first use, so every compiled function takes its input arrays read-only (as the engine's shared DN tables
    are): the variant that set-up compiles is then the one every call uses, whoever made the arrays."""
    view = a.view()
    view.flags.writeable = False
    return view


_launch_lock = threading.Lock()
_threading_layer: str | None = None
"""numba's threading layer in this process, once a parallel function has run (None before)."""


@contextlib.contextmanager
def parallel_launch() -> Iterator[None]:
    """Around every call of a ``parallel=True`` function. numba's workqueue threading layer, its fallback where
    neither OpenMP (libgomp) nor TBB loads (slim containers, macOS without libomp), aborts the whole process when
    two threads launch parallel functions at once, as the engine's block threads do. There the launches take
    turns (each one uses every core anyway); the first launch takes the lock too, since until it has run numba
    has not chosen its layer."""
    global _threading_layer
    if _threading_layer is not None and _threading_layer != "workqueue":
        yield
        return
    with _launch_lock:
        yield
        _threading_layer = numba.threading_layer()


def loaded_variants() -> dict[str, set[str]]:
    """The signatures each compiled function of LEAF has loaded or compiled in this process, by qualified name."""
    from numba.core.dispatcher import Dispatcher

    return {f"{mod_name}.{name}": {str(sig) for sig in obj.signatures}
            for mod_name, mod in list(sys.modules.items()) if mod_name.startswith("leaf_engine") and mod
            for name, obj in vars(mod).items() if isinstance(obj, Dispatcher) and obj.signatures}


def warm_up() -> dict[str, float]:
    """Compile (or load from the cache) every compiled function; seconds per part."""
    from .backends.local import encode, fold
    from .sl2p import kernel

    return {"SL2P kernel": kernel.warm_up(), "composite fold": fold.warm_up(), "DN encoding": encode.warm_up()}


def cache_folder() -> str:
    """The folder numba caches the SL2P kernel in, in this process."""
    from .sl2p import kernel

    return str(kernel._run.stats.cache_path)


if __name__ == "__main__":  # python -m leaf_engine.compiled
    print("compiling LEAF's numba functions once (the SL2P kernel, the composite fold, the DN encoding; cached on "
          "disk) ...", flush=True)
    print("ready: " + ", ".join(f"{name} {s:.1f} s" for name, s in warm_up().items()) + f" (cache: {cache_folder()})")
