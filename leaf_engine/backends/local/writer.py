"""Output GeoTIFFs: compressed tile by tile as the blocks arrive, then assembled into Cloud-Optimised GeoTIFFs.

Tags (SPEC §6) say how to read the numbers: scale factor, units, nodata, QC bit meanings, algorithm, network
set, sensor, request id and the compositing score, all taken from products.py / composite.py.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
import rasterio.shutil
from odc.geo.geobox import GeoBox
from rasterio.windows import Window

from ... import __version__, composite, products
from .quicklook import MAX_SIDE, Preview

INTERNAL_TILE = 512
COG_OPTIONS = {"COMPRESS": "DEFLATE", "PREDICTOR": "2", "BLOCKSIZE": str(INTERNAL_TILE), "BIGTIFF": "IF_SAFER",
               "OVERVIEWS": "AUTO"}
_TILE_OPTIONS = {"compress": "deflate", "predictor": 2, "tiled": True, "blockxsize": INTERNAL_TILE,
                 "blockysize": INTERNAL_TILE, "BIGTIFF": "IF_SAFER"}
"""The full-resolution tiles, compressed as the blocks arrive exactly as the COG stores them (same codec, predictor,
level and tile size), so the COG phase copies their bytes instead of compressing them again."""
_CATEGORICAL = products.ANCILLARY  # class and bit-field bands: no averaging in overviews
COG_CACHE_BYTES = 32 * 1024 * 1024
"""GDAL block cache while building the overviews. The COG phase reads each block about twice (tiles, overviews)
in order, so a big cache buys nothing, and it filled up to the engine's 256 MB with region size: peak memory grew
with the region (a 144 MB raster: 292 MB peak with 256 MB, 132 MB with 32 MB)."""
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


class ProductWriter:
    """One product: its full-resolution tiles compressed into a tiled GeoTIFF block by block, then assembled into
    a COG by :meth:`to_cog`."""

    def __init__(self, path: Path, name: str, gbox: GeoBox, tags: dict[str, str]):
        p = products.product(name)
        self.name = name
        self.path = path
        profile = {
            "driver": "GTiff", "width": gbox.width, "height": gbox.height, "count": 1, "dtype": p.dtype,
            "crs": gbox.crs.wkt, "transform": gbox.transform, "nodata": p.nodata, **_TILE_OPTIONS,
        }
        self._ds = rasterio.open(path, "w", **profile)
        self._ds.update_tags(**tags)
        self._ds.set_band_description(1, f"{name} ({p.units})")
        if name not in _CATEGORICAL:
            self._ds.scales = (p.step,)
            self._ds.units = (p.units,)
        self._unflushed = 0
        # Pixels never written (blocks outside every scene still get written) read back as nodata.

    def write(self, data: np.ndarray, row: int, col: int) -> None:
        self._ds.write(data, 1, window=Window(col, row, data.shape[1], data.shape[0]))
        self._unflushed += data.nbytes
        if self._unflushed >= REOPEN_BYTES:
            self._ds.close()  # compresses and writes the cached tiles (see REOPEN_BYTES)
            self._ds = rasterio.open(self.path, "r+")
            self._unflushed = 0

    def close(self) -> None:
        self._ds.close()

    def to_cog(self, dst: Path) -> Path:
        """Assemble the COG (internal tiles, overviews, deflate); categorical maps use nearest overviews.

        The overviews are GDAL's own (the COG driver's levels and resampling, computed from the full-resolution
        tiles and written uncompressed to a scratch COG); the COG itself is first written by the COG driver with
        those overviews and an empty (sparse) full-resolution level, whose tiles are then appended as the bytes
        already compressed while the blocks were computed (:func:`_append_tiles`)."""
        self.close()
        resampling = "NEAREST" if self.name in _CATEGORICAL else "AVERAGE"
        scratch = dst.with_name(dst.stem + ".ovr.tif")
        vrt = dst.with_name(dst.stem + ".vrt")
        try:
            with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_BYTES):
                rasterio.shutil.copy(self.path, scratch, driver="COG", COMPRESS="NONE", OVERVIEW_COMPRESS="NONE",
                                     BLOCKSIZE=str(INTERNAL_TILE), BIGTIFF="IF_SAFER", OVERVIEWS="AUTO",
                                     RESAMPLING=resampling)
                with rasterio.open(scratch) as ovr:
                    levels = len(ovr.overviews(1))
                _empty_vrt_with_overviews(self.path, scratch, levels, vrt)
                rasterio.shutil.copy(vrt, dst, driver="COG", RESAMPLING=resampling, SPARSE_OK="TRUE",
                                     **{**COG_OPTIONS, "OVERVIEWS": "FORCE_USE_EXISTING" if levels else "NONE"})
            _append_tiles(self.path, dst)
        finally:
            scratch.unlink(missing_ok=True)
            vrt.unlink(missing_ok=True)
        return dst


def _empty_vrt_with_overviews(tiles: Path, overviews: Path, levels: int, vrt: Path) -> None:
    """A VRT of ``tiles`` (its grid, tags, nodata, scale, units, description) that reads as nodata everywhere,
    with the ``levels`` overviews of the COG ``overviews`` as its own."""
    import xml.etree.ElementTree as ET

    rasterio.shutil.copy(tiles, vrt, driver="VRT")
    tree = ET.parse(vrt)
    band = tree.getroot().find("VRTRasterBand")
    if band is None:
        raise RuntimeError(f"GDAL wrote no VRTRasterBand into {vrt}")
    for source in [e for e in band if e.tag.endswith("Source")]:
        band.remove(source)
    for k in range(levels):  # GTIFF_DIR:1 is the full resolution, 2… the overviews, largest first
        ovr = ET.SubElement(band, "Overview")
        ET.SubElement(ovr, "SourceFilename", relativeToVRT="0").text = f"GTIFF_DIR:{k + 2}:{overviews}"
        ET.SubElement(ovr, "SourceBand").text = "1"
    tree.write(vrt)


# TIFF field types of tile offsets / byte counts: SHORT, LONG, LONG8.
_INT_TYPES = {3: "H", 4: "I", 16: "Q"}


def _tile_arrays(f: BinaryIO) -> tuple[str, list[tuple[int, str, int]]]:
    """Byte order and, for TileOffsets then TileByteCounts of the first IFD (the full resolution):
    (file position of the array, struct code, count)."""
    f.seek(0)
    head = f.read(16)
    order = {b"II": "<", b"MM": ">"}[head[:2]]
    (magic,) = struct.unpack(order + "H", head[2:4])
    big = magic == 43
    (ifd,) = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])
    f.seek(ifd)
    (n,) = struct.unpack(order + ("Q" if big else "H"), f.read(8 if big else 2))
    entry = 20 if big else 12
    raw = f.read(n * entry)
    found: dict[int, tuple[int, str, int]] = {}
    for i in range(n):
        e = raw[i * entry:(i + 1) * entry]
        tag, typ = struct.unpack(order + "HH", e[:4])
        if tag not in (324, 325):  # TileOffsets, TileByteCounts
            continue
        count, value = struct.unpack(order + ("QQ" if big else "II"), e[4:])
        code = _INT_TYPES[typ]
        inline = count * struct.calcsize(code) <= (8 if big else 4)
        pos = ifd + (8 if big else 2) + i * entry + (12 if big else 8) if inline else value
        found[tag] = (pos, code, count)
    return order, [found[324], found[325]]


def _read_array(f: BinaryIO, order: str, spec: tuple[int, str, int]) -> list[int]:
    pos, code, count = spec
    f.seek(pos)
    return list(struct.unpack(f"{order}{count}{code}", f.read(count * struct.calcsize(code))))


def _append_tiles(tiles: Path, cog: Path) -> None:
    """Append the compressed full-resolution tiles of ``tiles`` to ``cog`` (written by the COG driver with an empty
    full-resolution level: every offset 0) after its overview data, in row-major order with the block leader and
    trailer its layout header announces, and point its TileOffsets / TileByteCounts at them."""
    with open(tiles, "rb") as src, open(cog, "r+b") as out:
        s_order, (s_off, s_cnt) = _tile_arrays(src)
        order, (d_off, d_cnt) = _tile_arrays(out)
        offsets, counts = _read_array(src, s_order, s_off), _read_array(src, s_order, s_cnt)
        if d_off[2] != len(offsets) or any(_read_array(out, order, d_off)):
            raise RuntimeError(f"{cog}: the COG driver did not leave an empty full-resolution level of "
                               f"{len(offsets)} tiles to fill")
        out.seek(0)
        ghost = out.read(1024)
        leader, trailer = b"BLOCK_LEADER=SIZE_AS_UINT4" in ghost, b"BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in ghost
        pos = out.seek(0, 2)
        new_offsets = []
        for off, n in zip(offsets, counts, strict=True):
            if n == 0:
                raise RuntimeError(f"{tiles}: tile at offset {off} was never written")
            src.seek(off)
            data = src.read(n)
            if leader:
                out.write(struct.pack(order + "I", n))
                pos += 4
            new_offsets.append(pos)
            out.write(data)
            pos += n
            if trailer:
                out.write(data[-4:])
                pos += 4
        for spec, values in ((d_off, new_offsets), (d_cnt, counts)):
            limit = 1 << (8 * struct.calcsize(spec[1]))
            if max(values) >= limit:
                raise RuntimeError(f"{cog}: tile offset {max(values)} does not fit the TIFF field (BIGTIFF)")
            out.seek(spec[0])
            out.write(struct.pack(f"{order}{len(values)}{spec[1]}", *values))


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

    def write_block(self, arrays: dict[str, np.ndarray], row: int, col: int) -> None:
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
        """Close every file and convert them to COGs (``threads`` at a time: GDAL releases the GIL); returns
        product → COG path."""

        def convert(item: tuple[str, ProductWriter]) -> tuple[str, Path]:
            name, w = item
            path = w.to_cog(self.folder / f"{self.stems[name]}.tif")
            w.path.unlink(missing_ok=True)
            return name, path

        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="leaf-cog") as pool:
            return dict(pool.map(convert, self.writers.items()))

    def abort(self) -> None:
        for w in self.writers.values():
            w.close()


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
