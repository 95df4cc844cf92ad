"""Output GeoTIFFs: compressed tile by tile as the blocks arrive, then assembled into Cloud-Optimised GeoTIFFs.

Tags (SPEC §6) say how to read the numbers: scale factor, units, nodata, QC bit meanings, algorithm, network
set, sensor, request id and the compositing score, all taken from products.py / composite.py.
"""

from __future__ import annotations

import json
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
import rasterio.crs
import rasterio.shutil
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling
from rasterio.windows import Window

from ... import __version__, composite, products
from .levels import LevelStream
from .quicklook import MAX_SIDE, Preview

INTERNAL_TILE = 512
DEFLATE_LEVEL = 1
"""libdeflate's level 1: on our 8-bit maps (noisy estimates, smooth class maps) within 1 % of level 6's size in
all (the estimates even a little smaller, QC/Date 5–25 % larger), for 35–60 % less CPU; DEFLATE was the largest
cost of the local engine after warping."""
COG_OPTIONS = {"COMPRESS": "DEFLATE", "LEVEL": str(DEFLATE_LEVEL), "PREDICTOR": "2", "BLOCKSIZE": str(INTERNAL_TILE),
               "BIGTIFF": "IF_SAFER", "OVERVIEWS": "AUTO"}
_TILE_OPTIONS = {"compress": "deflate", "zlevel": DEFLATE_LEVEL, "predictor": 2, "tiled": True,
                 "blockxsize": INTERNAL_TILE, "blockysize": INTERNAL_TILE, "BIGTIFF": "IF_SAFER"}
"""The full-resolution tiles, compressed as the blocks arrive exactly as the COG stores them (same codec, predictor,
level and tile size), so the COG phase copies their bytes instead of compressing them again."""
_CATEGORICAL = products.ANCILLARY  # class and bit-field bands: no averaging in overviews
COG_CACHE_BYTES = 32 * 1024 * 1024
"""GDAL block cache while building the overviews. The COG phase reads each block about twice (tiles, overviews)
in order, so a big cache buys nothing, and it filled up to the engine's 256 MB with region size: peak memory grew
with the region (a 144 MB raster: 292 MB peak with 256 MB, 132 MB with 32 MB)."""
GDAL_LEVEL_BYTES = 16 * 1024 * 1024
"""Largest averaged overview level (pixels × bytes) that GDAL computes in one resampled read of the level above
(:meth:`ProductWriter._gdal_levels`); a larger one goes through GDAL's COG driver, which streams it, so memory
stays bounded whatever the region size."""
REOPEN_BYTES = 16 * 1024 * 1024
"""Uncompressed bytes written into a product's tile file before it is closed and reopened. GDAL keeps written
tiles in its block cache (up to the engine's 256 MB) until the file is closed; closing now and then compresses
and writes them, so the writer's memory stays flat in region size."""

@dataclass(frozen=True)
class JobTags:
    """What every output of a job says about how it was made."""

    request_id: str
    sensor: str
    algorithm: str
    network_sets: str
    region: str
    period: str
    start: str
    end: str
    scenes: int
    mask_rule: str = ""  # which quality rule masked the scenes (backends/local/masks.py describe_masks)

    def for_product(self, name: str) -> dict[str, str]:
        p = products.product(name)
        tags = {
            "product": name, "description": p.description, "units": p.units,
            "scale_factor": repr(p.step), "add_offset": "0", "value": "DN * scale_factor",
            "nodata": str(p.nodata), "algorithm": self.algorithm, "network_set": self.network_sets,
            "sensor": self.sensor, "request_id": self.request_id, "region": self.region, "period": self.period,
            "window": f"{self.start}/{self.end}", "scenes_used": str(self.scenes),
            "composite_score": composite.SCORE_DOC, "software": f"leaf-engine {__version__} (local backend)",
            "mask_rule": self.mask_rule,
        }
        if p.valid_range is not None:
            tags["valid_range"] = f"{p.valid_range[0]}..{p.valid_range[1]}"
        if name == "QC":
            tags["qc_bits"] = json.dumps(products.QC_BITS)
        return tags


def overview_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """The overview levels GDAL's COG driver makes (``OVERVIEWS=AUTO``): halving (rounded down) until the level
    fits in one internal tile."""
    shapes = []
    while max(height, width) > INTERNAL_TILE:
        height, width = max(1, height // 2), max(1, width // 2)
        shapes.append((height, width))
    return shapes


def halve(data: np.ndarray, nodata: float, categorical: bool) -> np.ndarray:
    """One overview level from an array of even height and width, as GDAL computes it: NEAREST keeps the top-left
    pixel of every 2×2; AVERAGE is the mean of the 2×2's valid pixels rounded half up (nodata where none is
    valid). ``tests/test_local_writer.py`` checks both against GDAL's own overviews."""
    if categorical:
        return data[::2, ::2].copy()
    corners = (data[0::2, 0::2], data[0::2, 1::2], data[1::2, 0::2], data[1::2, 1::2])
    total = np.zeros(corners[0].shape, np.int64 if data.dtype.itemsize > 2 else np.int32)
    n = np.zeros(corners[0].shape, np.int32)
    for corner in corners:  # strided views: four passes, no reduction over a reshaped axis (≈ 4× faster)
        valid = corner != nodata
        total += np.where(valid, corner, 0)
        n += valid
    mean = (total + n // 2) // np.maximum(n, 1)
    return np.where(n > 0, mean, nodata).astype(data.dtype)


def nearest_index(parent: int, size: int) -> np.ndarray:
    """For each pixel of an overview axis of ``size`` pixels, the pixel of its parent axis (``parent`` pixels)
    that GDAL's NEAREST overview takes: ``int(0.5 + i × parent / size)`` in double precision (its overview
    resampler's rule, for any ratio; ``2i`` when the ratio is 2). One source pixel per overview pixel, so a
    class map's every level can be made from the blocks, whatever their sizes."""
    return (0.5 + np.arange(size) * (parent / size)).astype(np.int64)


class ProductWriter:
    """One product: its full-resolution tiles compressed into a tiled GeoTIFF block by block, and as many of its
    overview levels as can be computed block by block (``halve``) into one such GeoTIFF each; :meth:`to_cog`
    assembles the COG from those compressed tiles."""

    def __init__(self, path: Path, name: str, gbox: GeoBox, tags: dict[str, str]):
        p = products.product(name)
        self.name = name
        self.path = path
        self._nodata = p.nodata
        self._categorical = name in _CATEGORICAL
        self._shapes = overview_shapes(gbox.height, gbox.width)
        # Levels computed from the blocks, for an integer map: every level of a class map (NEAREST takes one
        # source pixel, :func:`nearest_index`); an averaged map's while every parent level has an even size
        # (GDAL's 2×2 case). The rest are GDAL's, from the last of these, at the end.
        self._levels = 0
        parent = (gbox.height, gbox.width)
        self._index: list[tuple[np.ndarray, np.ndarray]] = []  # class maps: per level, parent row/col per pixel
        self._halves: list[bool] = []  # class maps: per level, whether its ratio is exactly 2 (index 2i)
        for shape in self._shapes:
            if not np.issubdtype(np.dtype(p.dtype), np.integer) or \
                    (not self._categorical and (parent[0] % 2 or parent[1] % 2)):
                break
            if self._categorical:
                self._index.append((nearest_index(parent[0], shape[0]), nearest_index(parent[1], shape[1])))
                self._halves.append(parent[0] == 2 * shape[0] and parent[1] == 2 * shape[1])
            self._levels += 1
            parent = shape
        self._level_paths = [path] + [path.with_name(f"{path.stem}.L{k}.tif") for k in range(1, self._levels + 1)]
        profile = {
            "driver": "GTiff", "count": 1, "dtype": p.dtype, "crs": gbox.crs.wkt, "nodata": p.nodata,
            **_TILE_OPTIONS,
        }
        self._profile, self._gbox = profile, gbox
        self._gdal_paths: list[Path] = []
        self._ds = []
        for k, level_path in enumerate(self._level_paths):
            h, w = (gbox.height, gbox.width) if k == 0 else self._shapes[k - 1]
            self._ds.append(self._create_level(level_path, (h, w)))
        self._stream = self._new_stream()
        self._tags = tags
        self._describe(self._ds[0])
        # The COG's structure is written from an empty copy of the tile file's header (:meth:`prepare_cog`).
        self._template = path.with_name(f"{path.stem}.header.tif")
        with self._create_level(self._template, (gbox.height, gbox.width)) as header:
            self._describe(header)
        self._skeleton: Path | None = None
        self._unflushed = 0
        # Pixels never written (blocks outside every scene still get written) read back as nodata.

    def _describe(self, ds: rasterio.io.DatasetWriter) -> None:
        """The product's tags, band description, scale and units on ``ds``."""
        p = products.product(self.name)
        ds.update_tags(**self._tags)
        ds.set_band_description(1, f"{self.name} ({p.units})")
        if not self._categorical:
            ds.scales = (p.step,)
            ds.units = (p.units,)

    def write(self, data: np.ndarray, row: int, col: int) -> None:
        for k in range(len(self._ds)):
            if k > self._levels:
                break
            if k > 0 and self._categorical and self._halves[k - 1] and not (row % 2 or col % 2):
                data, row, col = data[::2, ::2], row // 2, col // 2  # the index rule for a ratio of 2, as a view
            elif k > 0 and self._categorical:  # the level's pixels whose source pixel lies in this block
                rows, cols = self._index[k - 1]
                r0, r1 = np.searchsorted(rows, (row, row + data.shape[0]))
                c0, c1 = np.searchsorted(cols, (col, col + data.shape[1]))
                if r0 == r1 or c0 == c1:
                    break
                data, row, col = data[rows[r0:r1, None] - row, cols[None, c0:c1] - col], int(r0), int(c0)
            elif k > 0:  # the 2×2 of this level must not straddle two blocks
                if row % 2 or col % 2 or data.shape[0] % 2 or data.shape[1] % 2:
                    self._levels = k - 1  # a block grid that does not halve: GDAL makes the rest at the end
                    self._drop_stream()
                    break
                data, row, col = halve(data, self._nodata, self._categorical), row // 2, col // 2
            self._ds[k].write(data, 1, window=Window(col, row, data.shape[1], data.shape[0]))
            self._unflushed += data.nbytes
            if k == self._levels and self._stream is not None and not self._stream.add(data, row, col):
                self._drop_stream()
        if self._unflushed >= REOPEN_BYTES:
            for k, ds in enumerate(self._ds):  # compresses and writes the cached tiles (see REOPEN_BYTES)
                ds.close()
                self._ds[k] = rasterio.open(self._level_paths[k], "r+")
            self._unflushed = 0

    @property
    def levels_from_blocks(self) -> int:
        """How many overview levels are being computed from the blocks (the rest are GDAL's)."""
        return self._levels

    @property
    def levels_streamed(self) -> bool:
        """Whether GDAL's levels are being made while the blocks arrive (:mod:`.levels`), not at the end."""
        return self._stream is not None

    def _new_stream(self) -> LevelStream | None:
        """GDAL's levels below the last one made from the blocks, made while they arrive: an averaged map's."""
        if self._categorical or self._levels == len(self._shapes) or \
                not np.issubdtype(np.dtype(self._profile["dtype"]), np.integer):
            return None
        parent = (self._gbox.height, self._gbox.width) if self._levels == 0 else self._shapes[self._levels - 1]
        shapes = self._shapes[self._levels:]
        paths = [self.path.with_name(f"{self.path.stem}.S{k}.tif")
                 for k in range(self._levels + 1, len(self._shapes) + 1)]
        return LevelStream(parent, shapes, np.dtype(self._profile["dtype"]), self._nodata, paths,
                           self._create_level, INTERNAL_TILE)

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.discard()
            self._stream = None

    def close(self) -> None:
        for ds in self._ds:
            ds.close()
        if self._stream is not None:
            self._stream.close()

    def prepare_cog(self, dst: Path) -> None:
        """Write the COG's structure (header, IFDs, tags) at ``dst``, every level empty, for :meth:`to_cog` to
        fill: the COG driver's copy of a VRT that reads as nodata, with an empty (sparse) level wherever the data
        will be. It needs no pixel, so it can be made while the blocks are computed, off the job's serial tail."""
        resampling = "NEAREST" if self._categorical else "AVERAGE"
        vrts = [dst.with_name(f"{dst.stem}.L{k}.vrt") for k in range(len(self._shapes) + 1)]
        try:
            for k in range(1, len(vrts)):
                _empty_vrt(self._template, self._shapes[k - 1], vrts[k])
            _empty_vrt(self._template, None, vrts[0], overviews=vrts[1:])
            rasterio.shutil.copy(vrts[0], dst, driver="COG", RESAMPLING=resampling, SPARSE_OK="TRUE",
                                 **{**COG_OPTIONS, "OVERVIEWS": "FORCE_USE_EXISTING" if self._shapes else "NONE"})
        finally:
            for v in vrts:
                v.unlink(missing_ok=True)
        self._skeleton = dst

    def to_cog(self, dst: Path) -> Path:
        """Assemble the COG (internal tiles, overviews, deflate); categorical maps use nearest overviews.

        The compressed tiles of every level are appended to the COG's empty structure (:meth:`prepare_cog`, made
        here unless it was made before) in the order and framing the COG layout prescribes (:func:`_append_tiles`).
        Overview levels not computed from the blocks are GDAL's, from the last level that was: made while the
        blocks arrived (:mod:`.levels`) or, when that gave up, now: resampled reads (:meth:`_gdal_levels`), or
        for a large averaged level the COG driver, into a scratch COG."""
        self.close()
        resampling = "NEAREST" if self._categorical else "AVERAGE"
        scratch = dst.with_name(dst.stem + ".ovr.tif")
        try:
            sources: list[tuple[Path, int]] = [(p, 0) for p in self._level_paths[:self._levels + 1]]
            if self._stream is not None and not self._stream.complete:  # gave up, or a block was never written
                self._drop_stream()
            with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_BYTES):
                if self._stream is not None:
                    sources += [(p, 0) for p in self._stream.paths]
                elif self._levels < len(self._shapes) and self._reads_levels():
                    sources += self._gdal_levels(dst)
                elif self._levels < len(self._shapes):
                    rasterio.shutil.copy(sources[-1][0], scratch, driver="COG", COMPRESS="NONE",
                                         OVERVIEW_COMPRESS="DEFLATE", OVERVIEW_PREDICTOR="2", LEVEL=str(DEFLATE_LEVEL),
                                         BLOCKSIZE=str(INTERNAL_TILE), BIGTIFF="IF_SAFER", OVERVIEWS="AUTO",
                                         RESAMPLING=resampling)
                    with rasterio.open(scratch) as ovr:
                        made = len(ovr.overviews(1))
                    if self._levels + made != len(self._shapes):
                        raise RuntimeError(f"{dst}: GDAL made {made} overview levels below level {self._levels}, "
                                           f"expected {len(self._shapes) - self._levels}")
                    sources += [(scratch, j) for j in range(1, made + 1)]
            if self._skeleton != dst:
                self.prepare_cog(dst)
            _append_tiles(sources, dst)
        finally:
            scratch.unlink(missing_ok=True)
            for p in [*self._level_paths[1:], *self._gdal_paths, *(self._stream.paths if self._stream else []),
                      self._template]:
                p.unlink(missing_ok=True)
        return dst

    def _create_level(self, path: Path, shape: tuple[int, int]) -> rasterio.io.DatasetWriter:
        """A new tiled GeoTIFF for one level of ``shape`` (the full grid or an overview of it)."""
        h, w = shape
        return rasterio.open(path, "w", width=w, height=h, **self._profile,
                             transform=self._gbox.transform @ Affine.scale(self._gbox.width / w, self._gbox.height / h))

    def _reads_levels(self) -> bool:
        """Whether GDAL's remaining levels are made by resampled reads (:meth:`_gdal_levels`): an averaged map
        whose first such level is at most ``GDAL_LEVEL_BYTES``."""
        h, w = self._shapes[self._levels]
        return not self._categorical and h * w * np.dtype(self._profile["dtype"]).itemsize <= GDAL_LEVEL_BYTES

    def _gdal_levels(self, dst: Path) -> list[tuple[Path, int]]:
        """The overview levels below the last one made from the blocks, each an AVERAGE resampled read of the
        level above by GDAL (the overview resampler the COG driver uses, weighted for ratios that are not 2;
        ``tests/test_local_writer.py`` checks every level against the COG driver's) compressed into a tiled
        GeoTIFF like the others. It skips the COG driver's scratch COG, which copies the whole parent level
        uncompressed and compresses its overviews twice."""
        out: list[tuple[Path, int]] = []
        parent = self._level_paths[self._levels]
        for k in range(self._levels + 1, len(self._shapes) + 1):
            h, w = self._shapes[k - 1]
            with rasterio.open(parent) as src:
                data = src.read(1, out_shape=(h, w), resampling=Resampling.average)
            path = dst.with_name(f"{dst.stem}.G{k}.tif")
            self._gdal_paths.append(path)
            with self._create_level(path, (h, w)) as ds:
                ds.write(data, 1)
            out.append((path, 0))
            parent = path
        return out


def _empty_vrt(tiles: Path, shape: tuple[int, int] | None, vrt: Path, overviews: list[Path] = ()) -> None:
    """A VRT of ``tiles`` (its grid, tags, nodata, scale, units, description), resized to ``shape`` if given, that
    reads as nodata everywhere, with the VRTs ``overviews`` as its overviews."""
    import xml.etree.ElementTree as ET

    rasterio.shutil.copy(tiles, vrt, driver="VRT")
    tree = ET.parse(vrt)
    root = tree.getroot()
    band = root.find("VRTRasterBand")
    if band is None:
        raise RuntimeError(f"GDAL wrote no VRTRasterBand into {vrt}")
    for source in [e for e in band if e.tag.endswith("Source")]:
        band.remove(source)
    if shape is not None:
        root.set("rasterYSize", str(shape[0]))
        root.set("rasterXSize", str(shape[1]))
    for path in overviews:
        ovr = ET.SubElement(band, "Overview")
        ET.SubElement(ovr, "SourceFilename", relativeToVRT="0").text = str(path)
        ET.SubElement(ovr, "SourceBand").text = "1"
    tree.write(vrt)


# TIFF field types of tile offsets / byte counts: SHORT, LONG, LONG8.
_INT_TYPES = {3: "H", 4: "I", 16: "Q"}
_TILE_OFFSETS, _TILE_BYTE_COUNTS = 324, 325


@dataclass(frozen=True)
class _TileArray:
    """Where one IFD's TileOffsets or TileByteCounts values lie in the file."""

    pos: int
    code: str  # struct code of one value
    count: int

    def read(self, f: BinaryIO, order: str) -> list[int]:
        f.seek(self.pos)
        return list(struct.unpack(f"{order}{self.count}{self.code}", f.read(self.count * struct.calcsize(self.code))))

    def write(self, f: BinaryIO, order: str, values: list[int]) -> None:
        if len(values) != self.count or max(values) >= 1 << (8 * struct.calcsize(self.code)):
            raise RuntimeError(f"{len(values)} tile values up to {max(values)} do not fit a TIFF array of "
                               f"{self.count} {self.code!r} values (the COG would need BIGTIFF)")
        f.seek(self.pos)
        f.write(struct.pack(f"{order}{self.count}{self.code}", *values))


def _tile_arrays(f: BinaryIO) -> tuple[str, list[tuple[_TileArray, _TileArray]]]:
    """Byte order and, for every IFD in file order, its (TileOffsets, TileByteCounts) arrays. (GDAL exposes a
    tile's offset and size but not where the TIFF keeps them, which filling an empty COG level needs.)"""
    f.seek(0)
    head = f.read(16)
    order = {b"II": "<", b"MM": ">"}[head[:2]]
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    count_fmt, entry, word = (order + "Q", 20, "Q") if big else (order + "H", 12, "I")
    (ifd,) = struct.unpack(order + word, head[8:16] if big else head[4:8])
    out = []
    while ifd:
        f.seek(ifd)
        (n,) = struct.unpack(count_fmt, f.read(struct.calcsize(count_fmt)))
        raw = f.read(n * entry)
        (nxt,) = struct.unpack(order + word, f.read(struct.calcsize(word)))
        found = {}
        for i in range(n):
            e = raw[i * entry:(i + 1) * entry]
            tag, typ = struct.unpack(order + "HH", e[:4])
            if tag in (_TILE_OFFSETS, _TILE_BYTE_COUNTS):
                count, value = struct.unpack(order + word + word, e[4:])
                code = _INT_TYPES[typ]
                inline = count * struct.calcsize(code) <= struct.calcsize(word)
                value_pos = ifd + struct.calcsize(count_fmt) + i * entry + 4 + struct.calcsize(word)
                found[tag] = _TileArray(value_pos if inline else value, code, count)
        out.append((found[_TILE_OFFSETS], found[_TILE_BYTE_COUNTS]))
        ifd = nxt
    return order, out


def _append_tiles(sources: list[tuple[Path, int]], cog: Path) -> None:
    """Fill the COG ``cog``, written by the COG driver with every level empty (all offsets 0), with the compressed
    tiles of its levels: ``sources[k]`` is the (file, IFD index) holding level k's tiles (0: full resolution).
    Tiles are appended smallest level first, each row-major, with the block leader and trailer that the COG's
    layout header announces, as the COG driver itself orders them; then the offsets and byte counts are set."""
    with open(cog, "r+b") as out:
        order, arrays = _tile_arrays(out)
        if len(arrays) != len(sources):
            raise RuntimeError(f"{cog} has {len(arrays)} levels, {len(sources)} were made")
        out.seek(0)
        ghost = out.read(1024)
        leader = b"BLOCK_LEADER=SIZE_AS_UINT4" in ghost
        trailer = b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in ghost
        pos = out.seek(0, 2)
        for (d_off, d_cnt), (path, ifd) in reversed(list(zip(arrays, sources, strict=True))):
            with open(path, "rb") as src:
                s_order, s_arrays = _tile_arrays(src)
                offsets, counts = s_arrays[ifd][0].read(src, s_order), s_arrays[ifd][1].read(src, s_order)
                if d_off.count != len(offsets) or any(d_off.read(out, order)):
                    raise RuntimeError(f"{cog}: the COG driver did not leave an empty level of {len(offsets)} "
                                       f"tiles for {path}")
                if 0 in counts:
                    raise RuntimeError(f"{path}: a tile was never written")
                out.seek(pos)
                new_offsets = []
                for off, n in zip(offsets, counts, strict=True):
                    src.seek(off)
                    data = src.read(n)
                    if leader:
                        out.write(struct.pack(order + "I", n))
                    new_offsets.append(out.tell())
                    out.write(data)
                    if trailer:
                        out.write(data[-4:])
                pos = out.tell()
                d_off.write(out, order, new_offsets)
                d_cnt.write(out, order, counts)


class OutputSet:
    """The product files of one job."""

    def __init__(self, folder: Path, names: dict[str, str], gbox: GeoBox, tags: JobTags):
        """``names``: product → file stem (unique within the folder)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._tags = {p: tags.for_product(p) for p in names}
        self.writers = {p: ProductWriter(folder / f"{stem}.tmp.tif", p, gbox, self._tags[p])
                        for p, stem in names.items()}
        self.stems = names
        self.gbox = gbox
        # A small job's maps (at most MAX_SIDE² pixels each) are also kept in memory: they are their own
        # quicklook previews, so the quicklooks need not read the COGs back. Larger maps' previews are read
        # from the COG overviews.
        self._maps = ({p: np.full((gbox.height, gbox.width), products.product(p).nodata, products.product(p).dtype)
                       for p in names} if max(gbox.width, gbox.height) <= MAX_SIDE else None)
        self._pool: ThreadPoolExecutor | None = None
        self._prepared: dict[str, Future[None]] = {}

    def start_threads(self, threads: int = 2) -> None:
        """Start the threads that will convert the COGs (:meth:`finish`) now, while the blocks are computed, and
        write the COGs' empty structures on them (:meth:`ProductWriter.prepare_cog`): a thread's first GDAL call
        that touches a CRS sets up its PROJ context (≈ 15–40 ms), and the structures need no pixel; both would
        otherwise lengthen the job's serial tail."""
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="leaf-cog")
        wkt = self.gbox.crs.to_wkt() if self.gbox.crs is not None else None
        ready = threading.Barrier(max(1, threads))  # one warm-up per thread: each waits for the others

        def warm_up() -> None:
            ready.wait(timeout=10)
            if wkt is not None:
                rasterio.crs.CRS.from_wkt(wkt).to_wkt()

        for _ in range(max(1, threads)):
            self._pool.submit(warm_up)
        self._prepared = {name: self._pool.submit(w.prepare_cog, self._cog_path(name))
                          for name, w in self.writers.items()}

    def write_block(self, arrays: dict[str, np.ndarray], row: int, col: int) -> None:
        # One thread: writing the products on two measured 0.3–1.3 CPU-s more at 4001² (and no faster).
        for name, data in arrays.items():
            self.writers[name].write(data, row, col)
            if self._maps is not None:
                self._maps[name][row:row + data.shape[0], col:col + data.shape[1]] = data

    def previews(self) -> dict[str, Preview]:
        """Product → its whole map as a quicklook preview; empty when the maps are too large to be kept."""
        if self._maps is None:
            return {}
        crs = self.gbox.crs.to_wkt() if self.gbox.crs is not None else None
        return {p: Preview(dn, 1, self._tags[p], self.gbox.transform, crs) for p, dn in self._maps.items()}

    def finish(self, threads: int = 2) -> dict[str, Path]:
        """Close every file and convert them to COGs (``threads`` at a time: GDAL releases the GIL; on the threads
        of :meth:`start_threads` if it was called); returns product → COG path."""

        def convert(item: tuple[str, ProductWriter]) -> tuple[str, Path]:
            name, w = item
            if name in self._prepared:
                self._prepared[name].result()
            path = w.to_cog(self._cog_path(name))
            w.path.unlink(missing_ok=True)
            return name, path

        self.start_threads(threads)
        assert self._pool is not None
        try:
            return dict(self._pool.map(convert, self.writers.items()))
        finally:
            self._stop_threads()

    def abort(self) -> None:
        for w in self.writers.values():
            w.close()
        self._stop_threads()

    def _cog_path(self, name: str) -> Path:
        return self.folder / f"{self.stems[name]}.tif"

    def _stop_threads(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ------------------------------------------------------------------------------------------ QGIS styles


def qml_style(product_name: str, start: date | None = None, end: date | None = None) -> bytes:
    """A QGIS layer style (``.qml``) for a product file: its fixed colour scale from ``leaf_engine.styles``,
    mapped onto the file's DN with labels in physical units (dates for Date, classes for QC). Saved beside the
    ``.tif`` with the same name, QGIS applies it when the file is opened; no data stays transparent."""
    import xml.etree.ElementTree as ET

    from ... import styles
    from ...sensors import SENSORS

    p = products.product(product_name)
    root = ET.Element("qgis", {"version": "3.28.0", "styleCategories": "AllStyleCategories"})
    pipe = ET.SubElement(root, "pipe")
    if product_name in ("QC", "Partition"):
        renderer = ET.SubElement(pipe, "rasterrenderer", {"type": "paletted", "band": "1", "opacity": "1",
                                                          "alphaBand": "-1", "nodataColor": ""})
        palette = ET.SubElement(renderer, "colorPalette")
        if product_name == "QC":
            for s in SENSORS.values():
                for flags in range(8):
                    dn = np.array([flags | s.qc_value], np.uint8)
                    name, colour = styles.QC_CLASSES[int(styles.qc_class(dn)[0])]
                    ET.SubElement(palette, "paletteEntry", {"value": str(int(dn[0])), "color": colour,
                                                            "alpha": "255",
                                                            "label": f"{s.id.removesuffix('_SR')}: {name}"})
        else:
            table = styles.lut(styles.PARTITION_CMAP, 20)
            for v in range(1, 20):
                ET.SubElement(palette, "paletteEntry", {"value": str(v), "color": styles.hex_colour(table[v]),
                                                        "alpha": "255", "label": f"NALCMS class {v}"})
    else:
        if product_name == "Date":
            if start is None or end is None:
                raise ValueError("the Date style needs the window (start, end)")
            lo, hi = float(start.timetuple().tm_yday), float(start.timetuple().tm_yday + (end - start).days)
            table = styles.lut(styles.DATE_CMAP, 9)
            stops = [(lo + (hi - lo) * k / 8, (start + timedelta(days=round((end - start).days * k / 8))).isoformat())
                     for k in range(9)]
        else:
            sc = styles.scale(product_name)
            table = styles.lut(sc.cmap, 9)
            lo, hi = sc.vmin * p.scale, sc.vmax * p.scale
            stops = [(lo + (hi - lo) * k / 8, f"{sc.vmin + (sc.vmax - sc.vmin) * k / 8:g} {p.units}")
                     for k in range(9)]
        renderer = ET.SubElement(pipe, "rasterrenderer", {
            "type": "singlebandpseudocolor", "band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": "",
            "classificationMin": f"{lo:g}", "classificationMax": f"{hi:g}"})
        shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader", {
            "colorRampType": "INTERPOLATED", "classificationMode": "1", "clip": "0",
            "minimumValue": f"{lo:g}", "maximumValue": f"{hi:g}"})
        for (value, label), colour in zip(stops, table, strict=True):
            ET.SubElement(shader, "item", {"value": f"{value:g}", "label": label, "alpha": "255",
                                           "color": styles.hex_colour(colour)})
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.indent(root)
    return b"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="utf-8")
