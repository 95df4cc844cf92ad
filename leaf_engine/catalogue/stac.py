"""STAC documents of a run: one Item per region × period, one Collection per request.

Assets are keyed by product (``LAI``, ``QC``, ...): one asset per product. Earth Engine shards of a large export
are listed inside their product's asset under ``leaf:shards`` (each with href, offset, size, checksum, shape and
transform); the asset's own ``href`` is the first shard, and ``proj:*`` on the asset describe the whole file.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pystac
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from .. import products
from .expectations import ExpectedItem, ExpectedObject

COG_MEDIA_TYPE = str(pystac.MediaType.COG)
LEAF_PREFIX = "leaf:"
EXTENSIONS = [ProjectionExtension.get_schema_uri(), RasterExtension.get_schema_uri(), FileExtension.get_schema_uri()]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _window(exp: ExpectedItem) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(exp.start).replace(tzinfo=UTC)
    end = datetime.fromisoformat(exp.end).replace(hour=23, minute=59, second=59, tzinfo=UTC)
    return start, end


def new_item(exp: ExpectedItem, request_id: str, collection_id: str) -> dict[str, Any]:
    """An empty item for ``exp``: geometry, window, and the list of objects it must hold."""
    start, end = _window(exp)
    item = pystac.Item(
        id=exp.item_id, geometry=exp.geometry, bbox=exp.bbox, datetime=None,
        start_datetime=start, end_datetime=end, properties={}, stac_extensions=list(EXTENSIONS),
        collection=collection_id,
    )
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    d["properties"].update({
        "leaf:request_id": request_id, "leaf:region": exp.region, "leaf:year": exp.year,
        "leaf:period": exp.period, "leaf:expected": list(exp.objects), "leaf:complete": False,
        "leaf:problems": {}, "leaf:tile_ready": None, "created": now_iso(), "updated": now_iso(),
    })
    return d


def checksum_multihash(md5_b64: str | None) -> str | None:
    """GCS ``md5Hash`` (base64) → STAC ``file:checksum`` (multihash hex: 0xd5 = md5, 0x10 = 16 bytes)."""
    if not md5_b64:
        return None
    try:
        return "d510" + base64.b64decode(md5_b64).hex()
    except ValueError:
        return None


def shard_entry(href: str, exp: ExpectedObject, size: int | None, md5_b64: str | None, generation: int | None,
                check: dict[str, list[str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "href": href, "leaf:object": exp.key, "leaf:offset": exp.shard or [0, 0],
        "proj:shape": [exp.height, exp.width], "proj:transform": exp.transform,
        "file:size": size, "leaf:generation": generation,
    }
    checksum = checksum_multihash(md5_b64)
    if checksum:
        entry["file:checksum"] = checksum
    if check["errors"] or check["warnings"]:
        entry["leaf:check"] = check
    return entry


def product_asset(product_name: str, shards: list[dict[str, Any]], exp: ExpectedObject,
                  full_shape: list[int], full_transform: list[float]) -> dict[str, Any]:
    """One asset per product; its shards (one entry for an unsplit file) sorted by offset."""
    p = products.product(product_name)
    shards = sorted(shards, key=lambda s: tuple(s["leaf:offset"]))
    sizes = [s.get("file:size") for s in shards]
    asset: dict[str, Any] = {
        "href": shards[0]["href"], "type": COG_MEDIA_TYPE, "title": p.description,
        "roles": ["data"] if p.valid_range is not None or product_name.endswith(products.UNCERTAINTY_SUFFIX)
        else ["metadata"],
        "proj:code": exp.crs if exp.crs.startswith("EPSG:") else None,
        "proj:shape": full_shape, "proj:transform": full_transform,
        "raster:bands": [{"nodata": p.nodata, "data_type": p.dtype, "scale": 1.0 / p.scale, "offset": 0.0,
                          "unit": p.units}],
        "leaf:shards": shards,
    }
    if len(shards) == 1:
        for k in ("file:size", "file:checksum"):
            if k in shards[0]:
                asset[k] = shards[0][k]
    elif all(isinstance(s, int) for s in sizes):
        asset["file:size"] = sum(sizes)  # type: ignore[arg-type]
    if asset["proj:code"] is None:
        del asset["proj:code"]
        asset["proj:wkt2"] = exp.crs
    return asset


def new_collection(request_id: str, items: dict[str, ExpectedItem], description: str) -> dict[str, Any]:
    """The run's collection: spatial/temporal extent of every expected item, item status under ``leaf:items``."""
    bboxes = [e.bbox for e in items.values()]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
            max(b[3] for b in bboxes)] if bboxes else [-180.0, -90.0, 180.0, 90.0]
    windows = [_window(e) for e in items.values()]
    interval = [min(w[0] for w in windows), max(w[1] for w in windows)] if windows else [None, None]
    coll = pystac.Collection(
        id=collection_id(request_id), description=description,
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license="proprietary", stac_extensions=list(EXTENSIONS),
    )
    d = coll.to_dict(include_self_link=False, transform_hrefs=False)
    d["leaf:request_id"] = request_id
    d["leaf:items"] = {item_id: "pending" for item_id in items}
    return d


def collection_id(request_id: str) -> str:
    return f"leaf-{request_id}"
