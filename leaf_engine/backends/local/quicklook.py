"""Quicklook PNG of an output COG: the map on the product's fixed colour scale (``leaf_engine.styles``), a
legend in physical units (calendar dates for Date, classes for QC), no data as a grey checkerboard, a scale bar
and the corner coordinates.

Drawn straight into a paletted image (numpy arrays of palette indices, no RGB compositing and no colour
quantisation): the map is one DN → index lookup, the palette holds the product's exact colour scale, and the
legend panel, the checkerboard and every rendered label are made once per process and pasted. A map costs a
few milliseconds (mostly reading the COG and encoding the PNG), so quicklooks stay a small share of a job's
time (``benchmarks/bench_quicklooks.py``). ``LEAF_QUICKLOOKS=0`` (or ``--no-quicklooks``) skips them.
"""

from __future__ import annotations

import io
import os
import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from ... import products, styles
from ...errors import LeafError

MAX_SIDE = 640
"""Previews are read from the COG overviews at most this many pixels on their long side."""
MIN_SIDE = 360
"""Small maps are enlarged (nearest neighbour) to at least this many pixels on their long side."""
ENV = "LEAF_QUICKLOOKS"
PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs: paletted quicklooks are mostly flat colour, so level 3 is nearly as small as 9 and
several times faster."""
_PANEL_W, _PANEL_H, _TOP, _BOTTOM, _PAD, _MIN_H = 230, 300, 34, 58, 10, 330
_WHITE, _INK = (255, 255, 255), (30, 30, 30)

# Palette layout shared by every quicklook: text is drawn antialiased on white, so 16 levels from white to ink
# cover it; then the two greys of no data; then the product's colours (its classes or a 238-step colour ramp).
_N_GREY = 16
_W, _K = 0, _N_GREY - 1  # white, ink
_CHECK = (_N_GREY, _N_GREY + 1)
_FIRST = _N_GREY + 2
_RAMP = 256 - _FIRST
_CELL = 6
"""Checkerboard cell, in preview pixels."""


def quicklooks_enabled(value: bool | None) -> bool:
    """``value`` when given, else ``LEAF_QUICKLOOKS`` (``0``/``1``, default 1)."""
    if value is not None:
        return value
    raw = os.environ.get(ENV, "1").strip().lower()
    if raw in ("1", "true", "yes", "on", ""):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise LeafError(f"{ENV}={raw!r} must be 0 or 1 (write quicklook PNGs or not)")


def write_quicklooks(cogs: dict[str, Path], titles: dict[str, str], threads: int = 2,
                     previews: dict[str, Preview] | None = None) -> dict[str, Path]:
    """Quicklooks of a job's files (product → COG) written beside each COG; returns product → PNG path.
    See :func:`render_quicklooks`."""
    pngs = render_quicklooks(cogs, titles, threads, previews)
    out = {}
    for product_name, data in pngs.items():
        out[product_name] = cogs[product_name].with_suffix(".png")
        out[product_name].write_bytes(data)
    return out


def render_quicklooks(cogs: dict[str, Path], titles: dict[str, str], threads: int = 2,
                      previews: dict[str, Preview] | None = None) -> dict[str, bytes]:
    """PNG bytes of the quicklooks of a job's files (product → COG), ``threads`` at a time (reads and PNG
    encoding release the GIL). ``previews``: maps already in memory (product → preview, ``OutputSet.previews``),
    rendered without reading their COG back."""
    previews = previews or {}

    def one(item: tuple[str, Path]) -> tuple[str, bytes]:
        product_name, cog = item
        return product_name, render_quicklook(cog, product_name, titles[product_name],
                                              preview=previews.get(product_name))

    if threads <= 1:
        return dict(map(one, cogs.items()))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="leaf-quicklook") as pool:
        return dict(pool.map(one, cogs.items()))


_BACKGROUND: list[Any] = []
_BACKGROUND_LOCK = threading.Lock()


def draw_in_background(previews: dict[str, Preview], titles: dict[str, str]) -> Future[dict[str, bytes]]:
    """Start drawing the quicklooks of maps already in memory (``OutputSet.previews``) on a background thread,
    so that they overlap the job's COG conversion and storing (GDAL and zlib release the GIL); the future's
    result is product → PNG bytes."""
    if not previews:
        done: Future[dict[str, bytes]] = Future()
        done.set_result({})
        return done
    from concurrent.futures import ThreadPoolExecutor

    with _BACKGROUND_LOCK:
        if not _BACKGROUND:  # one thread for the process: jobs finishing at once draw one after another
            _BACKGROUND.append(ThreadPoolExecutor(1, thread_name_prefix="leaf-quicklook"))
        pool = _BACKGROUND[0]
    return pool.submit(lambda: {p: render_quicklook(Path(p), p, titles[p], preview=pv) for p, pv in previews.items()})


# ---------------------------------------------------------------------------------------------------------------
# Colours


@dataclass(frozen=True)
class _Style:
    palette: bytes
    """768 bytes: the PNG palette (greys, checkerboard, then ``colours``)."""
    colours: np.ndarray
    """The product's colours (classes, or the ramp from low to high), palette entries from ``_FIRST`` on."""


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


@lru_cache(maxsize=64)
def _style(product_name: str) -> _Style:
    if product_name == "QC":
        colours = np.array([_rgb(c) for _, c in styles.QC_CLASSES], np.uint8)
    elif product_name == "Partition":
        colours = styles.lut(styles.PARTITION_CMAP, 20)
    else:
        cmap = styles.DATE_CMAP if product_name == "Date" else styles.scale(product_name).cmap
        colours = styles.lut(cmap, _RAMP)
    k = np.linspace(0.0, 1.0, _N_GREY)[:, None]
    greys = np.round(np.array(_WHITE) * (1 - k) + np.array(_INK) * k).astype(np.uint8)
    pal = np.zeros((256, 3), np.uint8)
    pal[:_N_GREY] = greys
    pal[_CHECK[0]], pal[_CHECK[1]] = styles.NODATA_CHECKER
    pal[_FIRST:_FIRST + len(colours)] = colours
    return _Style(pal.tobytes(), colours)


@lru_cache(maxsize=64)
def _value_index(product_name: str) -> np.ndarray:
    """Palette index of every DN of an 8-bit continuous product (nodata maps anywhere: it is masked later)."""
    sc = styles.scale(product_name)
    p = products.product(product_name)
    values = products.decode(product_name, np.arange(256, dtype=p.dtype))
    t = np.clip(np.nan_to_num((values - sc.vmin) / (sc.vmax - sc.vmin)), 0, 1)
    return (_FIRST + np.round(t * (_RAMP - 1))).astype(np.uint8)


@lru_cache(maxsize=1)
def _qc_index() -> np.ndarray:
    return (_FIRST + np.maximum(styles.qc_class(np.arange(256, dtype=np.uint8)), 0)).astype(np.uint8)


@lru_cache(maxsize=16)
def _checker(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    out = np.where((yy // _CELL + xx // _CELL) % 2 == 1, _CHECK[1], _CHECK[0]).astype(np.uint8)
    out.flags.writeable = False  # shared by every map of this shape
    return out


def _window(tags: dict[str, str], year: int | None) -> tuple[date, date]:
    try:
        a, b = tags["window"].split("/")
        return date.fromisoformat(a), date.fromisoformat(b)
    except (KeyError, ValueError):
        y = year or date.today().year
        return date(y, 1, 1), date(y, 12, 31)


def _indices(product_name: str, dn: np.ndarray, tags: dict[str, str], year: int | None
             ) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Palette indices of the map (no data as the checkerboard), valid mask, and the legend's key."""
    p = products.product(product_name)
    valid = dn != p.nodata
    if product_name == "QC":
        idx = _qc_index()[dn]
        key: tuple = ("classes", product_name, tuple(name for name, _ in styles.QC_CLASSES))
    elif product_name == "Partition":
        idx = (_FIRST + np.clip(dn, 0, 19)).astype(np.uint8)
        present = tuple(int(v) for v in np.unique(dn[valid])[:16])
        key = ("partition", product_name, present)
    elif product_name == "Date":
        start, end = _window(tags, year)
        d0, d1 = start.timetuple().tm_yday, end.timetuple().tm_yday + (end.year - start.year) * 365
        t = np.clip((dn.astype(np.float32) - d0) / max(1, d1 - d0), 0, 1)
        idx = (_FIRST + np.round(t * (_RAMP - 1))).astype(np.uint8)
        key = ("date", product_name, start, end)
    elif p.dtype == "uint8":
        idx = _value_index(product_name)[dn]
        key = ("values", product_name)
    else:  # no such product today; the general path keeps a new one working
        sc = styles.scale(product_name)
        t = np.clip(np.nan_to_num((products.decode(product_name, dn) - sc.vmin) / (sc.vmax - sc.vmin)), 0, 1)
        idx = (_FIRST + np.round(t * (_RAMP - 1))).astype(np.uint8)
        key = ("values", product_name)
    return np.where(valid, idx, _checker(dn.shape)), valid, key


# ---------------------------------------------------------------------------------------------------------------
# Drawing into arrays of palette indices


_THREAD = threading.local()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font, one per thread (a FreeType face must not be shared across threads)."""
    fonts = _THREAD.__dict__.setdefault("fonts", {})
    if size not in fonts:
        fonts[size] = ImageFont.load_default(size=size)
    return fonts[size]


_GREY_OF = ((np.arange(256) * (_N_GREY - 1) + 127) // 255).astype(np.uint8)
"""Text coverage 0..255 → palette grey (white → ink)."""


@lru_cache(maxsize=512)
def _label(text: str, size: int) -> np.ndarray:
    """``text`` rendered once (antialiased coverage → palette greys), positioned as ``ImageDraw.text`` at (0, 0)
    places it. Labels repeat across maps (legend ticks, coordinates of a job's products), so they are cached."""
    # Pillow's built-in font has Latin glyphs only.
    text = text.replace("—", "-").replace("×", "x")
    font = _font(size)
    # The advance width and 1.5 × the size hold every glyph (a layout pass cheaper than getbbox's).
    img = Image.new("L", (int(font.getlength(text)) + 2, size * 3 // 2 + 2), 0)
    ImageDraw.Draw(img).text((0, 0), text, fill=255, font=font)
    out = _GREY_OF[np.asarray(img)]
    out.flags.writeable = False
    return out


def _text(a: np.ndarray, xy: tuple[int, int], text: str, size: int) -> None:
    """Draw ``text`` on a white part of ``a`` (darkest wins, so overlapping labels stay legible)."""
    _blit_max(a, _label(text, size), xy)


def _title(a: np.ndarray, xy: tuple[int, int], text: str, size: int) -> None:
    """A title whose words recur across maps (region, year, month, product, sensor): drawn word by word from
    the label cache, each at its advance, so a new title costs no new rendering once its words were seen."""
    x, y = xy
    for piece in re.split(r"(?<=[_ ])", text):
        if piece:
            _blit_max(a, _label(piece, size), (round(x), y))
            x += _advance(piece, size)


@lru_cache(maxsize=512)
def _advance(text: str, size: int) -> float:
    return float(_font(size).getlength(text.replace("—", "-").replace("×", "x")))


def _blit_max(a: np.ndarray, patch: np.ndarray, xy: tuple[int, int]) -> None:
    x, y = xy
    h, w = patch.shape
    y0, x0, y1, x1 = max(0, y), max(0, x), min(a.shape[0], y + h), min(a.shape[1], x + w)
    if y1 > y0 and x1 > x0:
        region = a[y0:y1, x0:x1]
        np.maximum(region, patch[y0 - y:y1 - y, x0 - x:x1 - x], out=region)


def _rect(a: np.ndarray, x0: int, y0: int, x1: int, y1: int, fill: int | None = None,
          outline: int | None = None) -> None:
    """``ImageDraw.rectangle`` on an index array: corners inclusive."""
    if fill is not None:
        a[y0:y1 + 1, x0:x1 + 1] = fill
    if outline is not None:
        a[y0, x0:x1 + 1] = a[y1, x0:x1 + 1] = outline
        a[y0:y1 + 1, x0] = a[y0:y1 + 1, x1] = outline


def _paste(a: np.ndarray, patch: np.ndarray, xy: tuple[int, int]) -> None:
    x, y = xy
    h, w = min(patch.shape[0], a.shape[0] - y), min(patch.shape[1], a.shape[1] - x)
    a[y:y + h, x:x + w] = patch[:h, :w]


# ---------------------------------------------------------------------------------------------------------------
# The quicklook


@dataclass(frozen=True)
class Preview:
    """A map at quicklook resolution with what its quicklook shows besides the pixels."""

    dn: np.ndarray
    factor: int
    """Preview pixel = ``factor`` × ``factor`` map pixels."""
    tags: dict[str, str]
    transform: rasterio.Affine
    """Of the preview's pixels."""
    crs_wkt: str | None


def _read_preview(path: Path) -> Preview:
    with rasterio.open(path) as src:
        f = max(1, int(np.ceil(max(src.width, src.height) / MAX_SIDE)))
        shape = (max(1, src.height // f), max(1, src.width // f))
        # Reading at a reduced shape uses the COG's overviews: the preview never loads the full image.
        dn = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        transform = src.transform @ rasterio.Affine.scale(src.width / shape[1], src.height / shape[0])
        return Preview(dn, f, src.tags(), transform, src.crs.to_wkt() if src.crs is not None else None)


def write_quicklook(cog: Path, product_name: str, png: Path, title: str, year: int | None = None,
                    preview: Preview | None = None) -> Path:
    """Render ``cog`` (a LEAF output) into ``png``: see :func:`render_quicklook`."""
    png.write_bytes(render_quicklook(cog, product_name, title, year, preview))
    return png


def render_quicklook(cog: Path, product_name: str, title: str, year: int | None = None,
                     preview: Preview | None = None) -> bytes:
    """``cog`` (a LEAF output) as PNG bytes, with a legend in physical units, a scale bar and coordinates.
    ``preview``: the map already in memory (a small job's whole map), so the COG is not read back."""
    pv = preview if preview is not None else _read_preview(cog)
    idx, valid, key = _indices(product_name, pv.dn, pv.tags, year)
    zoom = max(1, int(np.ceil(MIN_SIDE / max(pv.dn.shape))))
    if zoom > 1:  # nearest neighbour in C on one byte per pixel
        idx = np.asarray(Image.fromarray(idx).resize((idx.shape[1] * zoom, idx.shape[0] * zoom),
                                                     Image.Resampling.NEAREST))
    h, w = idx.shape
    panel, yy = _legend(key)
    canvas = np.zeros((max(h + _TOP + _BOTTOM, _MIN_H, _TOP + yy + 20), w + 2 * _PAD + _PANEL_W), np.uint8)  # white
    canvas[_TOP:_TOP + h, _PAD:_PAD + w] = idx
    _rect(canvas, _PAD - 1, _TOP - 1, _PAD + w, _TOP + h, outline=_K)
    note = "" if pv.factor == 1 else f" (1:{pv.factor} preview)"
    _title(canvas, (_PAD, 8), f"{title}{note}", 14)
    lx = w + 2 * _PAD
    _paste(canvas, panel, (lx, _TOP))
    share = float(valid.mean()) if valid.size else 0.0
    _text(canvas, (lx, _TOP + yy), f"{share:.0%} of the map has data", 11)
    _scale_bar_and_coords(canvas, pv.transform, pv.crs_wkt, w, h, zoom)
    img = Image.fromarray(canvas)  # shares the array's memory
    img.putpalette(_style(product_name).palette)  # L → P: the indices are the palette's
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


_LEGENDS: dict[tuple, tuple[np.ndarray, int]] = {}
_LEGENDS_LOCK = threading.Lock()


def _legend(key: tuple) -> tuple[np.ndarray, int]:
    """The legend panel (drawn once per product and window, then pasted) and the height below which the
    per-map note goes."""
    with _LEGENDS_LOCK:
        got = _LEGENDS.get(key)
    if got is None:
        got = _draw_legend(key)
        with _LEGENDS_LOCK:
            if len(_LEGENDS) > 64:  # one per product and period: keep a long national run's cache small
                _LEGENDS.clear()
            _LEGENDS[key] = got
    return got


def _draw_legend(key: tuple) -> tuple[np.ndarray, int]:
    kind, product_name = key[0], key[1]
    if kind in ("classes", "partition"):
        names = list(key[2]) if kind == "classes" else [f"class {v}" for v in key[2]]
        # Up to 16 Partition classes and the no-data entry: taller than the ramp legends.
        panel = np.zeros((max(_PANEL_H, 22 + (len(names) + 1) * 20 + 26), _PANEL_W), np.uint8)
        slots = list(range(len(names))) if kind == "classes" else [v % 20 for v in key[2]]
        _text(panel, (0, 0), product_name, 13)
        for i, (name, slot) in enumerate(zip(names, slots, strict=True)):
            y = 22 + i * 20
            _rect(panel, 0, y, 14, y + 14, fill=_FIRST + slot, outline=_K)
            _text(panel, (20, y), name, 12)
        _nodata_swatch(panel, 0, 22 + len(names) * 20)
        return panel, 22 + (len(names) + 1) * 20 + 6
    panel = np.zeros((_PANEL_H, _PANEL_W), np.uint8)
    if kind == "date":
        start, end = key[2], key[3]
        _text(panel, (0, 0), "Date of the observation", 13)
        span = (end - start).days
        labels = [(k / 4, (start + timedelta(days=round(span * k / 4))).isoformat()) for k in range(5)]
    else:
        sc = styles.scale(product_name)
        _text(panel, (0, 0), f"{product_name} ({products.product(product_name).units})", 13)
        labels = [(k / 4, f"{sc.vmin + (sc.vmax - sc.vmin) * k / 4:g}") for k in range(5)]
        labels[-1] = (1.0, f"{sc.vmax:g} and above")
    _draw_ramp(panel, 0, 24, 200, labels)
    _nodata_swatch(panel, 0, 24 + 210)
    return panel, 24 + 210 + 22


def _draw_ramp(a: np.ndarray, x: int, y: int, h: int, labels: list[tuple[float, str]]) -> None:
    """A vertical colour ramp (top = high) with labels at fractions 0..1."""
    rows = _FIRST + ((1 - np.arange(h) / max(1, h - 1)) * (_RAMP - 1)).astype(np.uint8)
    a[y:y + h, x:x + 19] = rows[:, None]
    _rect(a, x, y, x + 18, y + h, outline=_K)
    for frac, text in labels:
        yy = y + int((1 - frac) * h)
        a[yy, x + 18:x + 24] = _K
        _text(a, (x + 27, yy - 6), text, 12)


def _nodata_swatch(a: np.ndarray, x: int, y: int) -> None:
    """The legend entry of no data: a piece of the map's checkerboard."""
    for i in range(2):
        for j in range(2):
            _rect(a, x + 7 * j, y + 7 * i, x + 7 * j + 7, y + 7 * i + 7, fill=_CHECK[(i + j) % 2])
    _rect(a, x, y, x + 14, y + 14, outline=_K)
    _text(a, (x + 20, y), "no data", 12)


def _nice(length: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^n) not above ``length``."""
    exp = 10 ** np.floor(np.log10(length))
    return float(max(m for m in (1, 2, 5) if m * exp <= length) * exp)


def _scale_bar_and_coords(a: np.ndarray, transform: rasterio.Affine, crs_wkt: str | None, w: int, h: int,
                          zoom: int) -> None:
    y0 = _TOP + h + 8
    bar, label, coords = _footer(tuple(transform)[:6], crs_wkt, w, h, zoom)
    if bar:
        _rect(a, _PAD, y0, _PAD + bar, y0 + 5, fill=_K)
        _text(a, (_PAD + bar + 6, y0 - 4), label, 12)
    if coords:
        _text(a, (_PAD, y0 + 14), coords, 11)


@lru_cache(maxsize=64)
def _footer(transform: tuple[float, ...], crs_wkt: str | None, w: int, h: int, zoom: int) -> tuple[int, str, str]:
    """Scale-bar length (preview pixels, 0 for none) and label, and the corner coordinates: the same for every
    product of a job, so worked out once."""
    crs_obj: Any = _crs(crs_wkt) if crs_wkt is not None else None
    bar, label, coords = 0, "", ""
    tr = rasterio.Affine(*transform)
    if crs_obj is not None and crs_obj.is_projected:
        unit = crs_obj.axis_info[0].unit_name if crs_obj.axis_info else "metre"
        px = abs(tr.a) / zoom
        length = _nice(px * w / 4)
        bar = round(length / px)
        metres = unit in ("metre", "meter")
        label = f"{length / 1000:g} km" if metres and length >= 1000 else f"{length:g} {'m' if metres else unit}"
    if crs_obj is not None:
        to_ll = _to_lonlat(crs_wkt)
        full_w, full_h = w / zoom, h / zoom
        (lon0, lat0), (lon1, lat1) = (to_ll.transform(*(tr @ (0, 0))), to_ll.transform(*(tr @ (full_w, full_h))))
        coords = (f"top left {_ll(lat0, 'N', 'S')} {_ll(lon0, 'E', 'W')}   bottom right {_ll(lat1, 'N', 'S')} "
                  f"{_ll(lon1, 'E', 'W')}   ({crs_obj.to_string()})")
    return bar, label, coords


@lru_cache(maxsize=8)
def _crs(wkt: str) -> object:
    from pyproj import CRS

    return CRS.from_wkt(wkt)


@lru_cache(maxsize=8)
def _to_lonlat(wkt: str) -> object:
    from pyproj import Transformer

    return Transformer.from_crs(wkt, "EPSG:4326", always_xy=True)


def _ll(v: float, pos: str, neg: str) -> str:
    return f"{abs(v):.3f}°{pos if v >= 0 else neg}"
