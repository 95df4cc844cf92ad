"""Read scene assets warped into a target pixel grid (a job's geobox or one block of it).

Each read takes the asset from the thread's pool of open datasets, wraps it in a GDAL warped VRT on the block's
CRS/transform/shape and reads that window only: the arrays follow the block size, never the scene or region size,
and the source tiles GDAL decoded stay in its block cache (capped by ``GDAL_CACHEMAX``) for the next blocks.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import shapely
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom

from .scenes import AssetRef


def _sign_planetary_computer(href: str) -> str:
    """The href with a current SAS token of Planetary Computer (its package caches one per container and asks for
    a new one a minute before it expires); a token already on the href, from the search, is replaced."""
    import planetary_computer

    return str(planetary_computer.sign_url(urlsplit(href)._replace(query="").geturl()))


SIGNERS: dict[str, Callable[[str], str]] = {"planetary-computer": _sign_planetary_computer}
"""``AssetRef.signer`` → the function that makes the asset's href readable, called before every read."""


def readable(ref: AssetRef) -> str:
    """The href GDAL opens for ``ref``: signed anew where the asset needs it (:attr:`AssetRef.signer`)."""
    return SIGNERS[ref.signer](ref.href) if ref.signer else ref.href


_COARSENING = 1.25
"""Target pixels this many times larger than the source's are averaged; otherwise nearest neighbour (as GEE)."""


def fill_value(dtype: str, declared: float | None) -> float:
    """The value that marks 'no data' after warping: the declared nodata, else one the data type cannot hold
    as a real measurement (NaN for floats, the most negative integer for signed, 0 for unsigned types)."""
    if declared is not None:
        return declared
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return float("nan")
    if dt.kind == "i":
        return float(np.iinfo(dt).min)
    return 0.0


def _resampling(src: rasterio.DatasetReader, gbox: GeoBox, categorical: bool) -> Resampling:
    if categorical:
        return Resampling.nearest
    same_units = src.crs is not None and src.crs.is_projected == gbox.crs.proj.is_projected
    if same_units and abs(gbox.resolution.x) > _COARSENING * abs(src.res[0]):
        return Resampling.average
    return Resampling.nearest


def _inside_source(src: rasterio.DatasetReader, gbox: GeoBox) -> np.ndarray | None:
    """Target pixels whose centre lies on the source raster (None: all of them).

    GDAL's averaging warper gives a value to a target pixel that only touches the source's edge within
    rounding; the pixel-centre rule (as for nearest neighbour) keeps scene edges where they are.
    """
    footprint = shapely.geometry.shape(transform_geom(src.crs, gbox.crs.wkt, shapely.geometry.mapping(
        shapely.segmentize(shapely.box(*src.bounds), max(src.res) * 64)), precision=-1))
    block = shapely.box(*gbox.extent.boundingbox)
    if footprint.contains(block):
        return None
    return geometry_mask([footprint], out_shape=(gbox.height, gbox.width), transform=gbox.transform, invert=True)


OPEN_PER_THREAD = 64
"""Source datasets each thread keeps open between reads. GDAL keeps a dataset's decoded tiles in its block cache
only while the dataset is open: closed after every read, a source tile that several blocks overlap was decompressed
(and, over HTTP, fetched) once per block."""

_threads = threading.local()


def _files_state(files: Sequence[str]) -> tuple[tuple[int, int] | None, ...]:
    """Modification time and size of each local file: a file rewritten in place is reopened, never read from the
    tiles of its earlier content. Remote assets (URLs, /vsi paths) are read as immutable, as archives publish them."""
    state: list[tuple[int, int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
            state.append((st.st_mtime_ns, st.st_size))
        except OSError:
            state.append(None)
    return tuple(state)


@contextmanager
def _source(name: str, files: Sequence[str]) -> Iterator[rasterio.DatasetReader]:
    """The open dataset ``name`` (a path, URL or VRT document over ``files``) from this thread's pool, least
    recently used closed first; a read that fails closes it, so that a retry reopens it."""
    pool: OrderedDict[tuple, rasterio.DatasetReader] = getattr(_threads, "pool", None) or OrderedDict()
    _threads.pool = pool
    key = (name, _files_state(files))
    src = pool.pop(key, None)
    if src is None or src.closed:
        src = rasterio.open(name)
        while len(pool) >= OPEN_PER_THREAD:
            pool.popitem(last=False)[1].close()
    try:
        yield src
    except BaseException:
        src.close()
        raise
    pool[key] = src


def read_warped(ref: AssetRef, gbox: GeoBox, *, categorical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The asset's first band on ``gbox`` as raw DN, and a boolean 'has data' array (False off the scene and on
    nodata)."""
    href = readable(ref)
    with _source(href, [href]) as src:
        fill = fill_value(src.dtypes[0], ref.nodata if ref.nodata is not None else src.nodata)
        resampling = _resampling(src, gbox, categorical)
        # Averaging (e.g. 10 m → 20 m) works in float64: in the integer DN type GDAL would round each mean to a
        # whole DN, which flips some products by one DN. Nearest neighbour keeps the source type (exact DN).
        dtype = "float64" if resampling == Resampling.average and np.dtype(src.dtypes[0]).kind in "iu" else None
        with WarpedVRT(src, crs=gbox.crs.wkt, transform=gbox.transform, width=gbox.width, height=gbox.height,
                       resampling=resampling, src_nodata=fill, nodata=fill, dtype=dtype) as vrt:
            data = vrt.read(1)
        inside = _inside_source(src, gbox) if resampling == Resampling.average else None
    has_data = ~np.isnan(data) if np.isnan(fill) else data != fill
    if inside is not None:
        has_data &= inside
    return data, has_data


def _lut(ref: AssetRef, dtype: np.dtype, out_dtype: str) -> np.ndarray:
    """DN → value table for 8/16-bit rasters, computed in float64 then rounded once to ``out_dtype`` (so a DN of
    3000 ×1e-4 is exactly float32(0.3), as the input-domain test expects)."""
    return _lut_for(ref.scale, ref.offset, np.dtype(dtype).str, out_dtype)


@lru_cache(maxsize=64)
def _lut_for(scale: float, offset: float, dtype: str, out_dtype: str) -> np.ndarray:
    """Built once per scaling: every band of every scene and block shares it (read-only)."""
    info = np.iinfo(np.dtype(dtype))
    dn = np.arange(info.min, info.max + 1, dtype=np.float64)
    table = (dn * scale + offset).astype(out_dtype)
    table.flags.writeable = False
    return table


def dn_tables(refs: Sequence[AssetRef], dtype: np.dtype) -> np.ndarray | None:
    """The float32 DN → value tables of :func:`physical` for rasters of 8/16-bit unsigned ``dtype``, one row per
    asset ([n, 2**bits], shared and read-only); None for other types."""
    if np.dtype(dtype) not in (np.uint8, np.uint16):
        return None
    return _stacked_tables(tuple((r.scale, r.offset) for r in refs), np.dtype(dtype).str)


@lru_cache(maxsize=64)
def _stacked_tables(scalings: tuple[tuple[float, float], ...], dtype: str) -> np.ndarray:
    table = np.stack([_lut_for(scale, offset, dtype, "float32") for scale, offset in scalings])
    table.flags.writeable = False
    return table


def read_scaled(ref: AssetRef, gbox: GeoBox, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Physical values (DN·scale + offset) on ``gbox``; NaN where there is no data."""
    raw, has_data = read_warped(ref, gbox)
    return scaled(ref, raw, has_data, dtype), has_data


# ------------------------------------------------------------------------------------------ stacked reads

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}


@dataclass(frozen=True)
class _Grid:
    """What must match for assets to be warped together in one pass."""

    crs_wkt: str
    transform: tuple[float, ...]
    width: int
    height: int
    dtype: str
    fill: float
    projected: bool


@lru_cache(maxsize=4096)
def _grid_of(href: str, declared_nodata: float | None) -> tuple[_Grid, str | None]:
    """The asset's grid and the name GDAL opened it by (``/vsicurl/…`` for a URL, the absolute path of a file;
    None when GDAL does not say, and the asset is then read on its own)."""
    with rasterio.open(href) as src:
        fill = fill_value(src.dtypes[0], declared_nodata if declared_nodata is not None else src.nodata)
        name = src.files[0] if src.files else None
        return (_Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height, src.dtypes[0], fill,
                      bool(src.crs.is_projected)),
                name if name is None or name.startswith("/vsi") else os.path.abspath(name))


def _stack_vrt(names: Sequence[str], grid: _Grid) -> str:
    """An in-memory VRT holding each (single-band) file as one band, all on the same grid."""
    t = grid.transform
    bands = "".join(
        f'<VRTRasterBand dataType="{_GDAL_TYPES[grid.dtype]}" band="{i + 1}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{escape(n)}</SourceFilename>'
        f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        for i, n in enumerate(names))
    return (f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}"><SRS>{escape(grid.crs_wkt)}</SRS>'
            f"<GeoTransform>{t[2]!r},{t[0]!r},{t[1]!r},{t[5]!r},{t[3]!r},{t[4]!r}</GeoTransform>{bands}</VRTDataset>")


def _stackable(ref: AssetRef, gbox: GeoBox, categorical: bool) -> tuple[_Grid, str] | None:
    """The asset's grid and GDAL file name when it can share a warp pass: a file or URL (not another GDAL dataset
    name) read with nearest neighbour."""
    if "://" not in ref.href and not os.path.isfile(ref.href):
        return None
    grid, name = _grid_of(readable(ref), ref.nodata)
    if name is None:
        return None
    coarsening = grid.projected == gbox.crs.proj.is_projected and \
        abs(gbox.resolution.x) > _COARSENING * abs(grid.transform[0])
    if grid.dtype not in _GDAL_TYPES or (coarsening and not categorical):
        return None  # averaged reads keep their own pass (and their pixel-centre edge rule)
    return grid, name


def read_many(refs: Sequence[AssetRef], gbox: GeoBox, categorical: Sequence[bool]
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Like :func:`read_warped` for several assets. Single-band files or URLs on one grid, read with nearest
    neighbour and sharing a nodata value, are warped in a single pass (the coordinate transformation is computed
    once, not once per band); pixel values are identical to separate reads."""
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(refs)
    groups: dict[_Grid, list[tuple[int, str]]] = {}  # grid → (position, GDAL file name) of its assets
    for i, (ref, cat) in enumerate(zip(refs, categorical, strict=True)):
        stackable = _stackable(ref, gbox, cat)
        if stackable is None:
            out[i] = read_warped(ref, gbox, categorical=cat)
        else:
            groups.setdefault(stackable[0], []).append((i, stackable[1]))
    for grid, group in groups.items():
        members = [i for i, _ in group]
        if len(members) == 1:
            out[members[0]] = read_warped(refs[members[0]], gbox, categorical=categorical[members[0]])
            continue
        with _source(_stack_vrt([name for _, name in group], grid), [refs[i].href for i in members]) as src, \
                WarpedVRT(src, crs=gbox.crs.wkt, transform=gbox.transform, width=gbox.width, height=gbox.height,
                          resampling=Resampling.nearest, src_nodata=grid.fill, nodata=grid.fill) as vrt:
            data = vrt.read()
        for band, i in enumerate(members):
            d = data[band]
            out[i] = (d, ~np.isnan(d) if np.isnan(grid.fill) else d != grid.fill)
    return [o for o in out if o is not None]


def scaled(ref: AssetRef, raw: np.ndarray, has_data: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """DN → physical values, NaN where there is no data."""
    out = physical(ref, raw, np.empty(raw.shape, dtype))
    out[~has_data] = np.nan
    return out


def physical(ref: AssetRef, raw: np.ndarray, out: np.ndarray) -> np.ndarray:
    """DN → physical values into ``out`` (nodata DN included: mask them apart). 8/16-bit DN go through one table
    look-up instead of convert-multiply-add-round passes over the block."""
    if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2:
        index = raw.astype(np.intp) - np.iinfo(raw.dtype).min if raw.dtype.kind == "i" else raw
        # indices are in range by construction; mode "raise" would buffer the output
        return _lut(ref, raw.dtype, out.dtype.name).take(index, out=out, mode="clip")
    np.copyto(out, raw.astype(np.float64) * ref.scale + ref.offset, casting="unsafe")
    return out
