"""SL2P-CCRS on the local engine: the land-cover partition comes from a raster, is written as the Partition map,
and picks a different network per class."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer

from leaf_engine import products
from leaf_engine.backends.local import ProduceError, produce
from leaf_engine.request import parse_request
from tests.test_local_support import VEGETATION, make_item, save_collection, write_raster

TRANSFORM = Affine(30, 0, 360000, 0, -30, 4840000)
SHAPE = (40, 40)


def _request(scenes: str) -> dict:
    to_ll = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)
    x0, y1 = 360000 + 60, 4840000 - 60
    x1, y0 = x0 + 36 * 30, y1 - 36 * 30
    ring = [to_ll.transform(x, y) for x, y in [(x0, y1), (x1, y1), (x1, y0), (x0, y0), (x0, y1)]]
    return {"sensor": "L8_SR", "year": 2019, "months": [7], "algorithm": "SL2P-CCRS", "projection": "EPSG:32631",
            "resolution": 30, "out_location": "local", "prod_names": ["LAI"], "scenes": scenes,
            "regions": {"ccrs": {"type": "Polygon", "coordinates": [ring]}}}


@pytest.fixture
def scenes(tmp_path) -> str:
    item = make_item(tmp_path, "l8", "L8_SR", datetime(2019, 7, 16, 16, tzinfo=UTC), VEGETATION,
                     transform=TRANSFORM, shape=SHAPE, quality=np.full(SHAPE, 1 << 6, np.uint16))
    return save_collection([item], tmp_path / "items.json")


def test_partition_from_the_landcover_raster(tmp_path, scenes):
    classes = np.full(SHAPE, 1, np.uint8)  # NALCMS 1: temperate needleleaf forest
    classes[:, 20:] = 10  # NALCMS 10: temperate grassland
    landcover = write_raster(tmp_path / "nalcms.tif", classes, "EPSG:32631", TRANSFORM, nodata=0)
    req = parse_request(_request(scenes))
    produce(req, out_dir=tmp_path / "out", landcover=landcover, progress=False, quicklooks=False)
    folder = tmp_path / "out" / "ccrs" / "2019"
    with rasterio.open(folder / "ccrs_2019_Jul_Partition_30m.tif") as src:
        part = src.read(1)
        # map output pixels back to the land-cover grid: same CRS and resolution, offset by whole pixels
        col0 = round((src.transform.c - TRANSFORM.c) / 30)
    with rasterio.open(folder / "ccrs_2019_Jul_LAI_30m.tif") as src:
        lai = products.decode("LAI", src.read(1))
    inside = part != 0
    cols = np.arange(part.shape[1]) + col0
    expected = np.where(cols < 20, 1, 10)[None, :].repeat(part.shape[0], 0)
    assert (part[inside] == expected[inside]).all()
    forest, grass = lai[inside & (expected == 1)], lai[inside & (expected == 10)]
    assert forest.size and grass.size
    assert np.nanmedian(forest) != np.nanmedian(grass)  # one network per class: same spectra, other estimate


def test_ccrs_without_landcover_says_what_to_pass(tmp_path, scenes):
    with pytest.raises(ProduceError, match="--landcover"):
        produce(parse_request(_request(scenes)), out_dir=tmp_path, progress=False)
