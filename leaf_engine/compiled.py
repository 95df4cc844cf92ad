"""Every compiled (numba) function of LEAF, compiled once at set-up and cached on disk for every later process.

``python -m leaf_engine.compiled`` (run by ``scripts/test`` and ``scripts/demo``; on a cluster, once per worker
image) compiles them, announced; afterwards a process loads them from numba's cache (next to the modules, or in
``NUMBA_CACHE_DIR``) in about a second, so the first ``leaf produce`` starts computing at once.
"""

from __future__ import annotations

import sys

import numpy as np


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``. Numba types read-only arrays apart from writable ones and compiles each variant
    on first use, so every compiled function takes its input arrays read-only (as the engine's shared DN tables
    are): the variant that set-up compiles is then the one every call uses, whoever made the arrays."""
    view = a.view()
    view.flags.writeable = False
    return view


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


if __name__ == "__main__":  # python -m leaf_engine.compiled
    print("compiling LEAF's numba functions once (the SL2P kernel, the composite fold, the DN encoding; cached on "
          "disk) ...", flush=True)
    print("ready: " + ", ".join(f"{name} {s:.1f} s" for name, s in warm_up().items()))
