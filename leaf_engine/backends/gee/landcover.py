"""Land-cover partition for SL2P-CCRS: NALCMS 2020, filled by Copernicus Global Land Cover 100 m where absent
(inside NALCMS's footprint where it has no data, and everywhere outside it).

Copernicus classes are mapped to the nearest NALCMS class (1–19) so one partition table serves both.
"""

from __future__ import annotations

from typing import Any

NALCMS_IMAGE = "USGS/NLCD_RELEASES/2020_REL/NALCMS"
NALCMS_BAND = "landcover"
COPERNICUS_IMAGE = "COPERNICUS/Landcover/100m/Proba-V-C3/Global/2019"
COPERNICUS_BAND = "discrete_classification"
COPERNICUS_TO_NALCMS: dict[int, int] = {
    111: 1, 113: 1, 121: 1, 123: 1,  # evergreen / deciduous needleleaf forest → temperate needleleaf
    112: 3, 122: 3,  # evergreen broadleaf → tropical broadleaf evergreen
    114: 5, 124: 5,  # deciduous broadleaf → temperate broadleaf deciduous
    115: 6, 116: 6, 125: 6, 126: 6,  # mixed / unknown forest → mixed forest
    20: 8,  # shrubs → temperate shrubland
    30: 10,  # herbaceous vegetation → temperate grassland
    90: 14,  # herbaceous wetland → wetland
    100: 13,  # moss and lichen → polar barren-lichen-moss
    40: 15,  # cropland
    50: 17,  # urban
    60: 16,  # bare / sparse vegetation → barren
    70: 19,  # snow and ice
    80: 18, 200: 18,  # water, open sea
}


def landcover_image() -> Any:
    """NALCMS classes, with Copernicus (remapped) where NALCMS has no data; band ``landcover``."""
    import ee

    nalcms = ee.Image(NALCMS_IMAGE).select(NALCMS_BAND).selfMask()
    src = list(COPERNICUS_TO_NALCMS)
    cgls = ee.Image(COPERNICUS_IMAGE).select(COPERNICUS_BAND).remap(src, [COPERNICUS_TO_NALCMS[c] for c in src])
    # sameFootprint=False: the fill must extend past NALCMS's footprint (North America). With the default (true)
    # ``unmask`` keeps the input's footprint, so every pixel outside it stays masked (Earth Engine's algorithm list,
    # Image.unmask: "If false, the footprint of the output is the union of the input footprint with the footprint
    # of the value image").
    return nalcms.unmask(cgls, False).rename("landcover")
