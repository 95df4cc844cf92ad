"""LEAF: vegetation biophysical maps (LAI, fCOVER, fAPAR, Albedo) with SL2P on the CCRS tile grid.

Importing this package loads no cloud SDK: Earth Engine, GCS and Pub/Sub clients are imported where used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leaf-engine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"



def open_outputs(path, products=None, **kwargs):  # type: ignore[no-untyped-def]
    """LEAF outputs as an xarray Dataset in physical units (see :func:`leaf_engine.outputs.open_outputs`)."""
    from .outputs import open_outputs as _open

    return _open(path, products, **kwargs)


__all__ = ["__version__", "open_outputs"]
