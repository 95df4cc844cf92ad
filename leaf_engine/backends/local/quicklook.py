"""Quicklook PNG of an output COG: decoded values with a colour bar (or a class legend), nodata transparent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from ... import products

MAX_SIDE = 1024
_CMAPS = {"LAI": "YlGn", "fCOVER": "YlGn", "fAPAR": "YlGn", "Albedo": "gray", "Date": "viridis",
          "Partition": "tab20"}


def _read_preview(path: Path) -> tuple[np.ndarray, int]:
    with rasterio.open(path) as src:
        f = max(1, int(np.ceil(max(src.width, src.height) / MAX_SIDE)))
        shape = (max(1, src.height // f), max(1, src.width // f))
        # Reading at a reduced shape uses the COG's overviews: the preview never loads the full image.
        return src.read(1, out_shape=shape, resampling=Resampling.nearest), f


def _qc_classes(dn: np.ndarray) -> tuple[np.ndarray, list[str]]:
    fields = products.qc_fields(dn)
    cls = np.full(dn.shape, np.nan, np.float32)
    cls[dn != products.product("QC").nodata] = 0
    cls[fields["domain"]] = 1
    cls[fields["out_of_range"]] = 2
    cls[fields["invalid"]] = 3
    return cls, ["good", "input out of domain", "output out of range", "invalid / no clear observation"]


def _colour_range(product_name: str, values: np.ndarray) -> tuple[float, float]:
    """Fractions over their full 0..1 range; LAI from 0 to its 99th percentile; Date/classes over the data."""
    p = products.product(product_name)
    finite = values[np.isfinite(values)]
    if p.valid_range is not None and product_name != "LAI":
        return p.valid_range
    if not finite.size:
        return 0.0, 1.0
    lo = 0.0 if product_name.startswith("LAI") else float(finite.min())
    hi = float(np.percentile(finite, 99)) if product_name.startswith("LAI") else float(finite.max())
    return lo, max(hi, lo + p.step)


def write_quicklook(cog: Path, product_name: str, png: Path, title: str) -> Path:
    """Render ``cog`` (a LEAF output) into ``png`` with a legend in physical units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    dn, factor = _read_preview(cog)
    p = products.product(product_name)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    if product_name == "QC":
        cls, labels = _qc_classes(dn)
        cmap = ListedColormap(["#1a9850", "#fee08b", "#fc8d59", "#7f7f7f"])
        im = ax.imshow(cls, cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, ticks=range(4))
        bar.ax.set_yticklabels(labels)
    else:
        values = products.decode(product_name, dn)
        vmin, vmax = _colour_range(product_name, values)
        im = ax.imshow(values, cmap=_CMAPS.get(product_name.removesuffix(products.UNCERTAINTY_SUFFIX), "viridis"),
                       vmin=vmin, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=ax, label=f"{product_name} ({p.units})")
    note = "" if factor == 1 else f" (1:{factor} preview)"
    ax.set_title(f"{title}{note}", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
