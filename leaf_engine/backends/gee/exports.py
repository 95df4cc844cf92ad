"""Exports straight to Cloud Storage: one Earth Engine export per product file of a job.

What each export writes is decided here without Earth Engine (:func:`export_specs`), so it can be checked and
planned offline: the object prefix from the naming module, the pixel grid from the job's geobox (anchored on the
tile's NW corner, so neighbouring tiles align pixel for pixel), a fixed ``fileDimensions`` so the shard names are
known in advance, and a deterministic Earth Engine ``requestId`` so handling a request twice starts nothing twice.

Starting is paced (:class:`StartPacer`) and 429/5xx answers are retried with exponential backoff; a start that
Earth Engine rejects because its ``requestId`` was already used counts as success (the task exists).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ... import products
from ...errors import TransientError
from ...naming import OutputName
from .session import EarthEngineError

REQUEST_ID_NAMESPACE = uuid.UUID("6f1c8a52-3d7e-4b0a-9c41-1e5a2f0b7d93")
"""UUID5 namespace of export request ids (any fixed UUID; changing it would restart every export)."""
MAX_PIXELS = 10**11
"""A 900 km tile at 10 m is 8.1e9 pixels; Earth Engine's default (1e8) would refuse it."""
DESCRIPTION_MAX = 100
ENV_STARTS_PER_SECOND = "LEAF_EE_STARTS_PER_SECOND"
DEFAULT_STARTS_PER_SECOND = 10.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

STARTED = "STARTED"
ALREADY_STARTED = "ALREADY_STARTED"


@dataclass(frozen=True)
class ExportSpec:
    """Everything one export writes, decided before Earth Engine is touched."""

    job_id: str
    product: str
    name: OutputName
    bucket: str
    crs: str
    crs_transform: tuple[float, float, float, float, float, float]
    """xScale, xShearing, xTranslation, yShearing, yScale, yTranslation (Earth Engine's order)."""
    width: int
    height: int
    file_dimensions: int
    ee_request_id: str
    dtype: str
    nodata: int

    @property
    def prefix(self) -> str:
        return self.name.prefix

    @property
    def description(self) -> str:
        """Task name shown in the Earth Engine console; ends with the requestId's head so it can be found again."""
        return f"leaf_{self.name.stem}"[: DESCRIPTION_MAX - 9] + f"_{self.ee_request_id[:8]}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """xmin, ymin, xmax, ymax of the export in ``crs`` (exactly on pixel edges)."""
        a, _, c, _, e, f = self.crs_transform
        x0, x1 = c, c + a * self.width
        y_top, y_bottom = f, f + e * self.height
        return min(x0, x1), min(y_top, y_bottom), max(x0, x1), max(y_top, y_bottom)


@dataclass(frozen=True)
class StartedExport:
    """An export that was started (or had been already): what the CLI prints and the run record keeps."""

    job_id: str
    product: str
    prefix: str
    request_id: str
    task_id: str | None
    state: str

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "product": self.product, "prefix": self.prefix,
                "request_id": self.request_id, "task_id": self.task_id, "state": self.state}


def ee_request_id(request_id: str, job_id: str, product: str, attempt: int = 1) -> str:
    """Deterministic Earth Engine ``requestId`` (a UUID: letters, digits and '-', 36 characters ≤ 60).

    One per attempt: a retry of a failed export needs a new id (Earth Engine refuses a used one), and a start
    repeated after a crash reuses its attempt's id, so it starts nothing twice. Attempt 1 keeps the id of
    runs started before attempts were counted."""
    tail = "" if attempt == 1 else f"/attempt-{attempt}"
    return str(uuid.uuid5(REQUEST_ID_NAMESPACE, f"{request_id}/{job_id}/{product}{tail}"))


def export_specs(job: Any, file_dimensions: int, attempts: dict[str, int] | None = None) -> list[ExportSpec]:
    """One spec per product file of ``job`` (a :class:`leaf_engine.request.Job`); ``attempts`` (product →
    attempt number, default 1) picks each export's requestId."""
    if not job.bucket:
        raise EarthEngineError(f"job {job.job_id} has no GCS bucket: Earth Engine exports need GCS_bucket")
    gb = job.geobox()
    t = gb.affine
    specs = []
    for name in job.output_names():
        p = products.product(name.product)
        specs.append(ExportSpec(
            job_id=job.job_id, product=name.product, name=name, bucket=job.bucket, crs=job.crs,
            crs_transform=(t.a, t.b, t.c, t.d, t.e, t.f), width=gb.width, height=gb.height,
            file_dimensions=file_dimensions,
            ee_request_id=ee_request_id(job.request_id, job.job_id, name.product,
                                        (attempts or {}).get(name.product, 1)),
            dtype=p.dtype, nodata=p.nodata,
        ))
    return specs


def export_task_config(spec: ExportSpec, image: Any) -> dict[str, Any]:
    """The ExportImageRequest body for ``image`` (one band, already of the product's dtype)."""
    import ee

    region = ee.Geometry.Rectangle(list(spec.bounds), proj=spec.crs, geodesic=False)
    task = ee.batch.Export.image.toCloudStorage(
        image=image, description=spec.description, bucket=spec.bucket, fileNamePrefix=spec.prefix,
        region=region, crs=spec.crs, crsTransform=list(spec.crs_transform), maxPixels=MAX_PIXELS,
        fileDimensions=spec.file_dimensions, fileFormat="GeoTIFF",
        formatOptions={"cloudOptimized": True, "noData": spec.nodata},
    )
    return task.config


# -- pacing and retries -----------------------------------------------------------------------------------------


@dataclass
class StartPacer:
    """At most ``per_second`` starts per second (Earth Engine rate-limits task creation per project)."""

    per_second: float = field(default_factory=lambda: float(
        os.environ.get(ENV_STARTS_PER_SECOND, DEFAULT_STARTS_PER_SECOND)))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _last: float | None = None

    def wait(self) -> None:
        if self.per_second <= 0:
            return
        now = self.clock()
        if self._last is not None:
            gap = 1.0 / self.per_second - (now - self._last)
            if gap > 0:
                self.sleep(gap)
                now = self.clock()
        self._last = now


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter for 429/5xx answers."""

    attempts: int = 6
    base_s: float = 1.0
    max_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an Earth Engine exception (the client chains the HttpError it translated)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        status = getattr(getattr(e, "resp", None), "status", None)
        if status is not None:
            return int(status)
        e = e.__cause__ or e.__context__
    return None


def is_duplicate_start(exc: BaseException) -> bool:
    """Earth Engine refused the start because a task with this ``requestId`` already exists (409, or a 4xx that
    says so). Rate-limit and server errors never count, whatever their message."""
    status = http_status(exc)
    if status == 409:
        return True
    if status in RETRY_STATUSES:
        return False
    msg = str(exc).lower()
    return ("already" in msg or "duplicate" in msg) and ("request" in msg or "exist" in msg)


def start_one(spec: ExportSpec, config: dict[str, Any], backoff: Backoff) -> StartedExport:
    """Start one export; retries 429/5xx, and reports an already used ``requestId`` as already started."""
    import ee

    for attempt in range(backoff.attempts):
        try:
            op = ee.data.exportImage(spec.ee_request_id, config)
        except ee.EEException as e:
            if is_duplicate_start(e):
                return _started(spec, None, ALREADY_STARTED)
            status = http_status(e)
            if status in RETRY_STATUSES and attempt + 1 < backoff.attempts:
                backoff.sleep(backoff.delay(attempt))
                continue
            if status in RETRY_STATUSES:
                raise TransientError(f"Earth Engine kept answering {status} when starting {spec.prefix} "
                                     f"({backoff.attempts} attempts); retry later") from e
            raise EarthEngineError(f"Earth Engine refused the export of {spec.prefix}: {e}") from e
        except OSError as e:  # connection reset, timeout: the same requestId makes a retry safe
            if attempt + 1 < backoff.attempts:
                backoff.sleep(backoff.delay(attempt))
                continue
            raise TransientError(f"cannot reach Earth Engine to start {spec.prefix}: {e}; retry later") from e
        return _started(spec, op["name"].rsplit("/", 1)[-1], STARTED)
    raise AssertionError("unreachable")


def _started(spec: ExportSpec, task_id: str | None, state: str) -> StartedExport:
    return StartedExport(spec.job_id, spec.product, spec.prefix, spec.ee_request_id, task_id, state)


def start_specs(specs: Iterable[tuple[ExportSpec, Any]], pacer: StartPacer | None = None,
                backoff: Backoff | None = None) -> list[StartedExport]:
    """Start (spec, image) pairs in order, paced; returns what was started or found already started."""
    pacer = pacer or StartPacer()
    backoff = backoff or Backoff()
    out = []
    descriptions = {}
    for spec, image in specs:
        config = export_task_config(spec, image)
        pacer.wait()
        out.append(start_one(spec, config, backoff))
        descriptions[spec.ee_request_id] = spec.description
    if any(s.state == ALREADY_STARTED for s in out):
        out = _recover_task_ids(out, descriptions)
    return out


def _recover_task_ids(started: list[StartedExport], descriptions: dict[str, str]) -> list[StartedExport]:
    """Task ids of exports started by an earlier run, found by their task description (one list call)."""
    import ee

    try:
        ops = ee.data.listOperations()
    except ee.EEException:
        return started  # the ids are a convenience: the exports themselves are safely started
    by_description = {op.get("metadata", {}).get("description"): op["name"].rsplit("/", 1)[-1] for op in ops}
    return [replace(s, task_id=by_description.get(descriptions[s.request_id]))
            if s.state == ALREADY_STARTED and s.task_id is None else s for s in started]
