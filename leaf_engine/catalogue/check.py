"""Check an output file before the catalogue lists it: readable, expected size, grid and type, not all nodata.

Problems are sorted in two kinds. *Errors* (unreadable, wrong size, grid or data type) keep the item incomplete
until a new generation of the object fixes them. *Warnings* (every pixel is nodata, which a cloudy month can
legitimately produce) are recorded on the asset but do not block completeness.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .expectations import ExpectedObject

_OVERVIEW_TARGET = 1024
"""Nodata test reads a decimated view (served from overviews when the COG has them) of about this many pixels a side."""
_GRID_TOLERANCE = 1e-6
"""Allowed transform difference, as a fraction of the pixel size."""


@dataclass
class FileCheck:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mask_rule: str | None = None
    """The file's ``mask_rule`` tag (local engine outputs say which rule masked their scenes; Earth Engine
    exports carry no tags)."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, list[str]]:
        return {"errors": list(self.errors), "warnings": list(self.warnings)}


def _same_crs(actual: object, expected: str) -> bool:
    from pyproj import CRS

    if actual is None:
        return False
    try:
        return CRS.from_user_input(actual.to_wkt()) == CRS.from_user_input(expected)  # type: ignore[attr-defined]
    except Exception:
        return False


def _grid_errors(src: object, exp: ExpectedObject) -> list[str]:
    errors = []
    if (src.width, src.height) != (exp.width, exp.height):  # type: ignore[attr-defined]
        errors.append(f"size is {src.width}x{src.height} px, expected {exp.width}x{exp.height}")  # type: ignore
    t = src.transform  # type: ignore[attr-defined]
    actual = [t.a, t.b, t.c, t.d, t.e, t.f]
    pixel = max(abs(exp.transform[0]), abs(exp.transform[4]))
    if any(not math.isclose(a, e, abs_tol=_GRID_TOLERANCE * pixel) for a, e in zip(actual, exp.transform, strict=True)):
        errors.append(f"grid transform is {actual}, expected {exp.transform}")
    if not _same_crs(src.crs, exp.crs):  # type: ignore[attr-defined]
        errors.append(f"CRS is {src.crs}, expected {exp.crs}")  # type: ignore[attr-defined]
    if src.dtypes[0] != exp.dtype:  # type: ignore[attr-defined]
        errors.append(f"data type is {src.dtypes[0]}, expected {exp.dtype}")  # type: ignore[attr-defined]
    return errors


def _all_nodata(src: object, nodata: float) -> bool:
    factor = max(1, max(src.width, src.height) // _OVERVIEW_TARGET)  # type: ignore[attr-defined]
    shape = (max(1, src.height // factor), max(1, src.width // factor))  # type: ignore[attr-defined]
    data = src.read(1, out_shape=shape)  # type: ignore[attr-defined]
    return bool(np.all(data == nodata))


def check_file(path: Path | str, exp: ExpectedObject, opener: Callable[..., Any] | None = None) -> FileCheck:
    """Open ``path`` with rasterio (through ``opener`` when given) and compare it with what the plan expects."""
    import rasterio
    from rasterio.errors import RasterioError

    result = FileCheck()
    try:
        # No sidecar probing (.ovr, .aux.xml): outputs are self-contained COGs, and each probe is a request.
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path, opener=opener) as src:
            result.errors += _grid_errors(src, exp)
            result.mask_rule = src.tags().get("mask_rule") or None
            nodata = src.nodata if src.nodata is not None else exp.nodata
            if src.nodata is None:
                result.warnings.append(f"no nodata value set in the file (expected {exp.nodata})")
            if not result.errors and _all_nodata(src, nodata):
                result.warnings.append(f"every pixel is nodata ({nodata:g})")
    except RasterioError as e:
        result.errors.append(f"not a readable GeoTIFF: {e}")
    return result


def check_object(sink: Any, key: str, exp: ExpectedObject) -> FileCheck:
    """Check the object ``key`` of a sink: in place on disk, by range reads on GCS, else from a downloaded copy."""
    missing = FileCheck(errors=["object not found when the catalogue read it"])
    if hasattr(sink, "local_path"):
        path = sink.local_path(key)
        return check_file(path, exp) if path.is_file() else missing
    if hasattr(sink, "open_reader"):
        if sink.stat(key) is None:
            return missing

        def opener(path: str, mode: str = "rb") -> Any:
            reader = sink.open_reader(key) if path == key else None
            if reader is None:
                raise FileNotFoundError(path)  # GDAL asks for sidecars: there are none
            return reader

        return check_file(key, exp, opener=opener)
    with tempfile.TemporaryDirectory(prefix="leaf-check-") as tmp:
        path = Path(tmp) / "object.tif"
        return check_file(path, exp) if sink.download(key, path) else missing
