"""Quicklook PNG of an output COG: the map on the product's fixed colour scale (``leaf_engine.styles``), a
legend in physical units (calendar dates for Date, classes for QC), no data as a grey checkerboard, a scale bar
and the corner coordinates.

Rendered with numpy + Pillow (a colour lookup and a few text draws, no plotting figure): a few milliseconds
per map, so quicklooks stay a small share of a job's time. ``LEAF_QUICKLOOKS=0`` (or ``--no-quicklooks``) skips
them.
"""

from __future__ import annotations

import os
import threading
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
_PANEL_W, _TOP, _BOTTOM, _PAD = 230, 34, 58, 10
_WHITE, _INK = (255, 255, 255), (30, 30, 30)


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


def write_quicklooks(cogs: dict[str, Path], titles: dict[str, str], threads: int = 2) -> dict[str, Path]:
    """Quicklooks of a job's files (product → COG), ``threads`` at a time (reads, colour lookups and PNG
    encoding release the GIL); returns product → PNG beside each COG."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, Path]) -> tuple[str, Path]:
        product_name, cog = item
        return product_name, write_quicklook(cog, product_name, cog.with_suffix(".png"), titles[product_name])

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="leaf-quicklook") as pool:
        return dict(pool.map(one, cogs.items()))


_THREAD = threading.local()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font, one per thread (a FreeType face must not be shared across threads)."""
    fonts = _THREAD.__dict__.setdefault("fonts", {})
    if size not in fonts:
        fonts[size] = ImageFont.load_default(size=size)
    return fonts[size]


def _read_preview(path: Path) -> tuple[np.ndarray, int, dict[str, str], rasterio.Affine, object]:
    with rasterio.open(path) as src:
        f = max(1, int(np.ceil(max(src.width, src.height) / MAX_SIDE)))
        shape = (max(1, src.height // f), max(1, src.width // f))
        # Reading at a reduced shape uses the COG's overviews: the preview never loads the full image.
        dn = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        transform = src.transform @ rasterio.Affine.scale(src.width / shape[1], src.height / shape[0])
        return dn, f, src.tags(), transform, src.crs


def _checker(shape: tuple[int, int], cell: int = 6) -> np.ndarray:
    yy, xx = np.indices(shape)
    light = ((yy // cell + xx // cell) % 2).astype(bool)
    out = np.empty((*shape, 3), np.uint8)
    out[...] = styles.NODATA_CHECKER[0]
    out[light] = styles.NODATA_CHECKER[1]
    return out


def _window(tags: dict[str, str], year: int | None) -> tuple[date, date]:
    try:
        a, b = tags["window"].split("/")
        return date.fromisoformat(a), date.fromisoformat(b)
    except (KeyError, ValueError):
        y = year or date.today().year
        return date(y, 1, 1), date(y, 12, 31)


def _colourise(product_name: str, dn: np.ndarray, tags: dict[str, str], year: int | None
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, tuple[int, int, int]]] | None, object]:
    """RGB image, valid mask, and either class legend entries or a continuous legend description."""
    p = products.product(product_name)
    valid = dn != p.nodata
    rgb = _checker(dn.shape)
    if product_name == "QC":
        cls = styles.qc_class(dn)
        colours = np.array([_rgb(c) for _, c in styles.QC_CLASSES], np.uint8)
        rgb[valid] = colours[cls[valid]]
        return rgb, valid, [(n, _rgb(c)) for n, c in styles.QC_CLASSES], None
    if product_name == "Partition":
        table = styles.lut(styles.PARTITION_CMAP, 20)
        rgb[valid] = table[np.clip(dn[valid], 0, 19)]
        present = sorted(int(v) for v in np.unique(dn[valid]))[:16]
        return rgb, valid, [(f"class {v}", tuple(int(c) for c in table[v % 20])) for v in present], None
    if product_name == "Date":
        start, end = _window(tags, year)
        d0, d1 = start.timetuple().tm_yday, end.timetuple().tm_yday + (end.year - start.year) * 365
        table = styles.lut(styles.DATE_CMAP)
        t = np.clip((dn.astype(np.float32) - d0) / max(1, d1 - d0), 0, 1)
        rgb[valid] = table[(t[valid] * 255).astype(np.int64)]
        return rgb, valid, None, ("date", start, end, table)
    sc = styles.scale(product_name)
    values = products.decode(product_name, dn)
    table = styles.lut(sc.cmap)
    t = np.clip((values - sc.vmin) / (sc.vmax - sc.vmin), 0, 1)
    rgb[valid] = table[(np.nan_to_num(t[valid]) * 255).astype(np.int64)]
    return rgb, valid, None, ("values", sc, table, p.units)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def _nice(length: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^n) not above ``length``."""
    exp = 10 ** np.floor(np.log10(length))
    return float(max(m for m in (1, 2, 5) if m * exp <= length) * exp)


def _draw_ramp(draw: ImageDraw.ImageDraw, x: int, y: int, h: int, table: np.ndarray,
               labels: list[tuple[float, str]]) -> None:
    """A vertical colour ramp (top = high) with labels at fractions 0..1."""
    for i in range(h):
        c = table[int((1 - i / max(1, h - 1)) * (len(table) - 1))]
        draw.line([(x, y + i), (x + 18, y + i)], fill=tuple(int(v) for v in c))
    draw.rectangle([x, y, x + 18, y + h], outline=_INK)
    for frac, text in labels:
        yy = y + int((1 - frac) * h)
        draw.line([(x + 18, yy), (x + 23, yy)], fill=_INK)
        draw.text((x + 27, yy - 6), text, fill=_INK, font=_font(12))


def write_quicklook(cog: Path, product_name: str, png: Path, title: str, year: int | None = None) -> Path:
    """Render ``cog`` (a LEAF output) into ``png`` with a legend in physical units, a scale bar and coordinates."""
    dn, factor, tags, transform, crs = _read_preview(cog)
    rgb, valid, classes, ramp = _colourise(product_name, dn, tags, year)
    zoom = max(1, int(np.ceil(MIN_SIDE / max(dn.shape))))
    if zoom > 1:
        rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    h, w = rgb.shape[:2]
    canvas = Image.new("RGB", (w + 2 * _PAD + _PANEL_W, max(h + _TOP + _BOTTOM, 330)), _WHITE)
    canvas.paste(Image.fromarray(rgb), (_PAD, _TOP))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([_PAD - 1, _TOP - 1, _PAD + w, _TOP + h], outline=_INK)
    note = "" if factor == 1 else f" (1:{factor} preview)"
    # Pillow's built-in font has Latin glyphs only.
    draw.text((_PAD, 8), f"{title}{note}".replace("—", "-").replace("×", "x"), fill=_INK, font=_font(14))
    lx, ly = w + 2 * _PAD, _TOP
    key = (product_name, tuple(classes) if classes is not None else None,
           (ramp[1], ramp[2]) if ramp is not None and ramp[0] == "date" else None)
    panel, yy = _legend(key, classes, ramp)
    canvas.paste(panel, (lx, ly))
    yy += ly
    share = float(valid.mean()) if valid.size else 0.0
    draw.text((lx, yy), f"{share:.0%} of the map has data", fill=_INK, font=_font(11))
    _scale_bar_and_coords(draw, transform, crs, w, h, zoom)
    # 256 colours are plenty for a colour ramp and a legend, and a paletted PNG encodes several times faster.
    canvas.quantize(256, method=Image.Quantize.FASTOCTREE).save(png, optimize=False, compress_level=1)
    return png


_LEGENDS: dict[tuple, tuple[Image.Image, int]] = {}


def _legend(key: tuple, classes: list[tuple[str, tuple[int, int, int]]] | None, ramp: object
            ) -> tuple[Image.Image, int]:
    """The legend panel (drawn once per product and window, then reused: text rendering is the slow part)
    and the height below which the per-map note goes."""
    got = _LEGENDS.get(key)
    if got is None:
        if len(_LEGENDS) > 64:  # one per product and period: keep a long national run's cache small
            _LEGENDS.clear()
        product_name = key[0]
        panel = Image.new("RGB", (_PANEL_W, 300), _WHITE)
        draw = ImageDraw.Draw(panel)
        lx, ly = 0, 0
        if classes is not None:
            draw.text((lx, ly), f"{product_name}", fill=_INK, font=_font(13))
            for i, (name, colour) in enumerate(classes):
                yy = ly + 22 + i * 20
                draw.rectangle([lx, yy, lx + 14, yy + 14], fill=colour, outline=_INK)
                draw.text((lx + 20, yy), name, fill=_INK, font=_font(12))
            _nodata_swatch(draw, lx, ly + 22 + len(classes) * 20)
        elif ramp is not None and ramp[0] == "date":
            _, start, end, table = ramp
            draw.text((lx, ly), "Date of the observation", fill=_INK, font=_font(13))
            span = (end - start).days
            labels = [(k / 4, (start + timedelta(days=round(span * k / 4))).isoformat()) for k in range(5)]
            _draw_ramp(draw, lx, ly + 24, 200, table, labels)
        elif ramp is not None:
            _, sc, table, units = ramp
            draw.text((lx, ly), f"{product_name} ({units})", fill=_INK, font=_font(13))
            labels = [(k / 4, f"{sc.vmin + (sc.vmax - sc.vmin) * k / 4:g}") for k in range(5)]
            labels[-1] = (1.0, f"{sc.vmax:g} and above")
            _draw_ramp(draw, lx, ly + 24, 200, table, labels)
        yy = ly + 24 + 210 if classes is None else ly + 22 + (len(classes) + 1) * 20 + 6
        if classes is None:
            _nodata_swatch(draw, lx, yy)
            yy += 22
        got = _LEGENDS[key] = (panel, yy)
    return got


def _nodata_swatch(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    """The legend entry of no data: a piece of the map's checkerboard."""
    for i in range(2):
        for j in range(2):
            draw.rectangle([x + 7 * j, y + 7 * i, x + 7 * j + 7, y + 7 * i + 7],
                           fill=styles.NODATA_CHECKER[(i + j) % 2])
    draw.rectangle([x, y, x + 14, y + 14], outline=_INK)
    draw.text((x + 20, y), "no data", fill=_INK, font=_font(12))


def _scale_bar_and_coords(draw: ImageDraw.ImageDraw, transform: rasterio.Affine, crs: Any, w: int, h: int,
                          zoom: int) -> None:

    crs_obj: Any = _crs(crs.to_wkt()) if crs is not None else None
    y0 = _TOP + h + 8
    if crs_obj is not None and crs_obj.is_projected:
        unit = crs_obj.axis_info[0].unit_name if crs_obj.axis_info else "metre"
        px = abs(transform.a) / zoom
        length = _nice(px * w / 4)
        bar = round(length / px)
        draw.rectangle([_PAD, y0, _PAD + bar, y0 + 5], fill=_INK)
        metres = unit in ("metre", "meter")
        label = f"{length / 1000:g} km" if metres and length >= 1000 else f"{length:g} {'m' if metres else unit}"
        draw.text((_PAD + bar + 6, y0 - 4), label, fill=_INK, font=_font(12))
    if crs_obj is not None:
        to_ll = _to_lonlat(crs_obj.to_wkt())
        full_w, full_h = w / zoom, h / zoom
        (lon0, lat0), (lon1, lat1) = (to_ll.transform(*(transform @ (0, 0))),
                                      to_ll.transform(*(transform @ (full_w, full_h))))
        text = (f"top left {_ll(lat0, 'N', 'S')} {_ll(lon0, 'E', 'W')}   bottom right {_ll(lat1, 'N', 'S')} "
                f"{_ll(lon1, 'E', 'W')}   ({crs_obj.to_string()})")
        draw.text((_PAD, y0 + 14), text, fill=_INK, font=_font(11))


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
