"""How LEAF maps are coloured: one fixed colour scale per product, used by the quicklook PNGs and by the QGIS
styles (``.qml``) written beside each product file, so the same colour means the same value in every map.

| product            | range          | colour map | why                                                  |
|--------------------|----------------|------------|------------------------------------------------------|
| LAI                | 0 – 8 m²/m²    | YlGn       | crops and forests peak at 4–7; > 8 shows as 8       |
| fCOVER, fAPAR      | 0 – 1          | YlGn       | fractions over their whole range                     |
| Albedo             | 0 – 0.3        | cividis    | vegetated land is 0.08–0.25; snow (> 0.3) saturates  |
| LAIunc             | 0 – 2 m²/m²    | Purples    | uncertainty maps: darker = less certain              |
| fCOVERunc, ...unc  | 0 – 0.2        | Purples    |                                                      |
| Date               | window start – end | viridis | calendar dates of the chosen observation            |
| QC                 | classes        | see QC_CLASSES | good / out of domain / out of range / both / invalid |
| Partition          | classes 1–19   | tab20      | NALCMS land-cover classes                            |

No data is never a colour of the scale: it is transparent in the ``.qml`` styles and a grey checkerboard in the
quicklooks (so LAI 0, pale yellow, is not mistaken for a gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import products


@dataclass(frozen=True)
class Scale:
    vmin: float
    vmax: float
    cmap: str


SCALES: dict[str, Scale] = {
    "LAI": Scale(0.0, 8.0, "YlGn"),
    "fCOVER": Scale(0.0, 1.0, "YlGn"),
    "fAPAR": Scale(0.0, 1.0, "YlGn"),
    "Albedo": Scale(0.0, 0.3, "cividis"),
    "LAIunc": Scale(0.0, 2.0, "Purples"),
    "fCOVERunc": Scale(0.0, 0.2, "Purples"),
    "fAPARunc": Scale(0.0, 0.2, "Purples"),
    "Albedounc": Scale(0.0, 0.2, "Purples"),
}
DATE_CMAP = "viridis"
PARTITION_CMAP = "tab20"
NODATA_CHECKER = ((189, 189, 189), (224, 224, 224))
"""The two greys of the no-data checkerboard in quicklooks."""

QC_CLASSES: tuple[tuple[str, str], ...] = (
    ("good", "#1a9850"),
    ("input out of domain", "#fee08b"),
    ("estimate out of range", "#fc8d59"),
    ("out of domain and out of range", "#d73027"),
    ("invalid: no clear observation", "#4d4d4d"),
)
"""QC legend classes (index = :func:`qc_class`) and their colours."""


def scale(product_name: str) -> Scale:
    try:
        return SCALES[product_name]
    except KeyError:
        raise KeyError(f"no continuous colour scale for {product_name!r}; scaled products: {', '.join(SCALES)}") \
            from None


def qc_class(dn: np.ndarray) -> np.ndarray:
    """QC byte → legend class index (0..4, see :data:`QC_CLASSES`); -1 where QC is no data."""
    f = products.qc_fields(dn)
    cls = np.where(f["domain"], 1, 0) + np.where(f["out_of_range"], 2, 0)
    cls = np.where(f["invalid"], 4, cls)
    return np.where(np.asarray(dn) == products.product("QC").nodata, -1, cls).astype(np.int8)


@lru_cache(maxsize=32)
def lut(cmap: str, n: int = 256) -> np.ndarray:
    """``n`` RGB colours (uint8) of a matplotlib colour map (no figure: only the colour table)."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, n))[:, :3] * 255 + 0.5).astype(np.uint8)


def hex_colour(rgb: np.ndarray | tuple[int, int, int]) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"
