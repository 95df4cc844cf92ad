"""LEAF: vegetation biophysical maps (LAI, fCOVER, fAPAR, Albedo) with SL2P on the CCRS tile grid.

Importing this package loads no cloud SDK: Earth Engine, GCS and Pub/Sub clients are imported where used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leaf-engine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
