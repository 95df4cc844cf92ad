"""What a run will write, object by object: the catalogue's yardstick for completeness and file checks.

Built once from the request and its plan when a run starts, stored in the run record, and read back by the
catalogue on every finalize event (so the catalogue needs no request parsing, grid maths or cloud SDK).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from affine import Affine
from shapely.geometry import mapping

from .. import products
from ..plan import EE_FILE_DIMENSIONS, Plan
from ..request import ProductionRequest


@dataclass(frozen=True)
class ExpectedObject:
    """One object (a whole file or one Earth Engine shard) and the grid it must have."""

    key: str
    item_id: str
    product: str
    shard: list[int] | None
    width: int
    height: int
    transform: list[float]
    """Affine coefficients a, b, c, d, e, f (GDAL order is c, a, b, f, d, e)."""
    crs: str
    dtype: str
    nodata: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpectedObject:
        return cls(**d)


@dataclass(frozen=True)
class ExpectedItem:
    """One STAC item: a region × period, and every object key it must hold."""

    item_id: str
    region: str
    year: int
    period: str
    start: str
    end: str
    geometry: dict[str, Any]
    bbox: list[float]
    products: list[str]
    objects: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpectedItem:
        return cls(**d)


def _crs_string(crs: Any) -> str:
    epsg = crs.epsg
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def expectations(req: ProductionRequest, plan: Plan) -> tuple[dict[str, ExpectedItem], dict[str, ExpectedObject]]:
    """Items and objects of a request, keyed by item id and object key."""
    jobs = {job.job_id: job for job in req.jobs()}
    objects: dict[str, ExpectedObject] = {}
    items: dict[str, ExpectedItem] = {}
    for pf in plan.files:
        job = jobs[pf.job_id]
        gbox = job.geobox()
        base = gbox.transform
        prod = products.product(pf.name.product)
        for shard in pf.shards:
            row, col = shard.shard if shard.shard is not None else (0, 0)
            width = min(EE_FILE_DIMENSIONS, pf.width - col) if shard.shard else pf.width
            height = min(EE_FILE_DIMENSIONS, pf.height - row) if shard.shard else pf.height
            t = base @ Affine.translation(col, row)
            objects[shard.key()] = ExpectedObject(
                shard.key(), pf.name.item_id, pf.name.product, list(shard.shard) if shard.shard else None,
                width, height, [t.a, t.b, t.c, t.d, t.e, t.f], _crs_string(gbox.crs), prod.dtype, prod.nodata)
    for job in req.jobs():
        keys = [k for k, o in objects.items() if o.item_id == job.job_id]
        geom = job.region.geometry
        items[job.job_id] = ExpectedItem(
            job.job_id, job.region.name, job.year, job.period, job.start.isoformat(), job.end.isoformat(),
            mapping(geom), list(geom.bounds), list(job.products), keys)
    return items, objects


def _jsonify(value: Any) -> Any:
    """Shapely's mapping() gives tuples; JSON round-trips give lists. Normalise so records compare equal."""
    if isinstance(value, (list, tuple)):
        return [_jsonify(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonify(v) for k, v in value.items()}
    return value


def expectations_dict(req: ProductionRequest, plan: Plan) -> dict[str, Any]:
    """The ``items`` and ``objects`` sections of a run record."""
    items, objects = expectations(req, plan)
    return _jsonify({"items": {k: v.to_dict() for k, v in items.items()},
                     "objects": {k: v.to_dict() for k, v in objects.items()}})
