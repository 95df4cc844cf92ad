"""Stand-in for a backend's exports: small valid GeoTIFFs with exactly the planned names and grids.

Used by the service and catalogue tests to play "Earth Engine wrote its files" without running the engine.
The grids come from the run record's expectations, so a file written here passes the catalogue's check unless
a test asks for a defect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from leaf_engine.catalogue.expectations import ExpectedObject


def geotiff_bytes(exp: ExpectedObject, tmp: Path, *, fill: int | None = None, width: int | None = None) -> bytes:
    """A GeoTIFF for ``exp`` (valid data unless ``fill`` is given; ``width`` overrides the width, a defect)."""
    w = width or exp.width
    data = np.full((exp.height, w), fill if fill is not None else 1, dtype=exp.dtype)
    if fill is None:
        data[: exp.height // 2] = 2  # some structure, so compression has work to do
    path = tmp / "fake.tif"
    profile = {"driver": "GTiff", "width": w, "height": exp.height, "count": 1, "dtype": exp.dtype,
               "crs": exp.crs, "transform": Affine(*exp.transform), "nodata": exp.nodata, "compress": "deflate",
               "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path.read_bytes()
