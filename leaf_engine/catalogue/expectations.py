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
    """Items and objects of a request, keyed by item id and object key. Linear in the number of objects: each
    job's grid is computed once, and objects are grouped by item as they are made."""
    jobs = {job.job_id: job for job in req.jobs()}
    grids: dict[str, Any] = {}
    objects: dict[str, ExpectedObject] = {}
    by_item: dict[str, list[str]] = {job_id: [] for job_id in jobs}
    for pf in plan.files:
        if pf.job_id not in grids:
            gbox = jobs[pf.job_id].geobox()
            grids[pf.job_id] = (gbox.transform, _crs_string(gbox.crs))
        base, crs = grids[pf.job_id]
        prod = products.product(pf.name.product)
        for shard in pf.shards:
            row, col = shard.shard if shard.shard is not None else (0, 0)
            width = min(EE_FILE_DIMENSIONS, pf.width - col) if shard.shard else pf.width
            height = min(EE_FILE_DIMENSIONS, pf.height - row) if shard.shard else pf.height
            t = base @ Affine.translation(col, row)
            key = shard.key()
            objects[key] = ExpectedObject(
                key, pf.name.item_id, pf.name.product, list(shard.shard) if shard.shard else None,
                width, height, [t.a, t.b, t.c, t.d, t.e, t.f], crs, prod.dtype, prod.nodata)
            by_item[pf.name.item_id].append(key)
    items: dict[str, ExpectedItem] = {}
    for job in jobs.values():
        geom = job.region.geometry
        items[job.job_id] = ExpectedItem(
            job.job_id, job.region.name, job.year, job.period, job.start.isoformat(), job.end.isoformat(),
            _jsonify(mapping(geom)), list(geom.bounds), list(job.products), by_item[job.job_id])
    return items, objects


@dataclass(frozen=True)
class Expectations:
    """What one run must write: its items and objects (see :func:`record_expectations`)."""

    items: dict[str, ExpectedItem]
    objects: dict[str, ExpectedObject]

    def item_objects(self, item_id: str) -> list[ExpectedObject]:
        return [self.objects[k] for k in self.items[item_id].objects]


def record_request(record: dict[str, Any]) -> ProductionRequest:
    """The request stored in a run record, rebuilt without validating again (it was validated when the run
    started; validating again could depend on today's date or on files of the starting machine)."""
    raw = dict(record["request"])
    request_id = raw.pop("request_id", record["request_id"])
    return ProductionRequest.model_validate({**raw, "supplied_request_id": request_id})


def record_expectations(record: dict[str, Any]) -> Expectations:
    """Expectations of a run record: derived from its request, or the explicit ``items``/``objects`` of a record
    that lists them (test records that simulate Earth Engine shards)."""
    if record.get("objects") and record.get("items"):
        return Expectations({k: ExpectedItem.from_dict(v) for k, v in record["items"].items()},
                            {k: ExpectedObject.from_dict(v) for k, v in record["objects"].items()})
    req = record_request(record)
    from ..plan import make_plan

    items, objects = expectations(req, make_plan(req))
    return Expectations(items, objects)


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
