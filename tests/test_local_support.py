"""Crafted STAC scenes for the local-engine tests (no tests here: shared builders).

Scenes are tiny GeoTIFFs with known reflectances, written with a chosen DN scaling and described by STAC items
that use the public catalogues' asset keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds

from leaf_engine.sensors import SENSORS

# Typical green-vegetation reflectances (0-1) per common name.
VEGETATION = {"green": 0.06, "red": 0.03, "rededge1": 0.09, "rededge2": 0.25, "rededge3": 0.32, "nir08": 0.36,
              "swir16": 0.17, "swir22": 0.08}
BARE = {"green": 0.10, "red": 0.14, "rededge1": 0.17, "rededge2": 0.20, "rededge3": 0.22, "nir08": 0.24,
        "swir16": 0.30, "swir22": 0.25}


def write_raster(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None = None) -> str:
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": data.dtype,
               "crs": crs, "transform": transform, "nodata": nodata, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return str(path)


def make_item(folder: Path, item_id: str, sensor_id: str, when: datetime, reflectance: Mapping[str, float | np.ndarray],
              *, crs: str = "EPSG:32631", transform: Affine | None = None, shape: tuple[int, int] = (20, 20),
              scale: float | None = None, offset: float | None = None, nodata: int = 0,
              quality: np.ndarray | None = None, key_style: str = "common", raster_bands: bool = True,
              cloud_cover: float = 5.0, properties: Mapping | None = None) -> pystac.Item:
    """A scene of ``sensor_id`` whose bands hold ``reflectance`` (by common name; scalars or arrays).

    DN = (ρ − offset) / scale; with ``raster_bands`` False the item omits scale/offset (the reader must use the
    collection's known scaling, which the caller passes as scale/offset to encode the DN).
    """
    sensor = SENSORS[sensor_id]
    transform = transform or Affine(20, 0, 360000, 0, -20, 4840000)
    scale = sensor.dn_scale if scale is None else scale
    offset = sensor.dn_offset if offset is None else offset
    folder.mkdir(parents=True, exist_ok=True)
    bounds = rasterio.transform.array_bounds(shape[0], shape[1], transform)
    w, s, e, n = transform_bounds(crs, "EPSG:4326", *bounds)
    geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    props = {"platform": "sentinel-2a" if sensor_id == "S2_SR" else f"landsat-{sensor_id[1]}",
             "eo:cloud_cover": cloud_cover, "view:sun_elevation": 55.0, "view:sun_azimuth": 150.0}
    props.update(properties or {})
    item = pystac.Item(item_id, geom, [w, s, e, n], when, props)
    for band in sensor.bands:
        rho = np.broadcast_to(np.asarray(reflectance[band.common_name], dtype=np.float64), shape)
        dn = np.rint((rho - offset) / scale).astype(np.uint16 if nodata == 0 else np.int16)
        key = band.common_name if key_style == "common" else band.stac_keys[-1]
        href = write_raster(folder / f"{item_id}_{key}.tif", dn, crs, transform, None)
        extra = {"raster:bands": [{"scale": scale, "offset": offset, "nodata": nodata}]} if raster_bands else {}
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF, extra_fields=extra))
    if quality is not None:
        key = sensor.mask_asset if key_style == "common" else sensor.mask_asset.upper()
        href = write_raster(folder / f"{item_id}_{key}.tif", quality, crs, transform)
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.GEOTIFF))
    return item


def save_collection(items: list[pystac.Item], path: Path) -> str:
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    return str(path)
