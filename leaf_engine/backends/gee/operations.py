"""Earth Engine tasks as the run lifecycle sees them: start one attempt, read every operation, cancel.

:class:`EarthEngineTasks` is the Earth Engine side of :mod:`leaf_engine.reconcile`: it reads the project's
operations with one paged ``listOperations`` call (not one call per task), starts an attempt of one product file
under that attempt's deterministic requestId, and cancels operations. ``ee`` loads only when a method runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...errors import EarthEngineError, TransientError

IN_FLIGHT_STATES = frozenset({"PENDING", "READY", "RUNNING", "CANCELLING"})
"""Operation states that hold one of the project's task slots."""


@dataclass(frozen=True)
class Operation:
    """The facts of one Earth Engine operation that a run record keeps."""

    name: str
    state: str
    description: str
    error: str | None
    eecu_s: float
    start: str | None
    end: str | None

    @property
    def task_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @classmethod
    def from_api(cls, op: dict[str, Any]) -> Operation:
        meta = op.get("metadata") or {}
        state = str(meta.get("state", "UNKNOWN"))
        error = (op.get("error") or {}).get("message")
        return cls(str(op["name"]), state, str(meta.get("description", "")), error,
                   float(meta.get("batchEecuUsageSeconds") or 0.0), meta.get("startTime"),
                   meta.get("endTime") or (meta.get("updateTime") if op.get("done") else None))


class EarthEngineTasks:
    """Starts, reads and cancels the exports of runs in one Earth Engine project."""

    def __init__(self, project: str | None = None, pacer: Any = None, backoff: Any = None):
        self._project_arg = project
        self._project: str | None = None
        self.pacer, self.backoff = pacer, backoff

    @property
    def project(self) -> str:
        if self._project is None:
            from .session import initialize

            self._project = initialize(self._project_arg)
        return self._project

    def operations(self) -> list[Operation]:
        """Every operation of the project (paged by the client library)."""
        import ee

        project = self.project
        try:
            return [Operation.from_api(op) for op in ee.data.listOperations(f"projects/{project}")]
        except ee.EEException as e:
            from .exports import RETRY_STATUSES, http_status

            if http_status(e) in RETRY_STATUSES:
                raise TransientError(f"Earth Engine: listing the operations of {project} failed: {e}") from e
            raise EarthEngineError(f"Earth Engine refused to list the operations of {project}: {e}") from e
        except OSError as e:
            raise TransientError(f"cannot reach Earth Engine to list operations: {e}; retry later") from e

    def get(self, names: Iterable[str]) -> list[Operation]:
        """The named operations, one call each (for the few a listing did not show); unknown ones are left out."""
        import ee

        from .exports import RETRY_STATUSES, http_status

        project = self.project
        out = []
        for name in names:
            full = name if name.startswith("projects/") else f"projects/{project}/operations/{name}"
            try:
                out.append(Operation.from_api(ee.data.getOperation(full)))
            except ee.EEException as e:
                if http_status(e) in RETRY_STATUSES:
                    raise TransientError(f"Earth Engine: reading {full} failed: {e}") from e
            except OSError as e:
                raise TransientError(f"cannot reach Earth Engine to read {full}: {e}; retry later") from e
        return out

    def cancel(self, names: Iterable[str]) -> dict[str, str | None]:
        """Cancel operations; returns name → None when cancelled, else the error (already done, not found)."""
        import ee

        project = self.project
        out: dict[str, str | None] = {}
        for name in names:
            full = name if name.startswith("projects/") else f"projects/{project}/operations/{name}"
            try:
                ee.data.cancelOperation(full)
                out[name] = None
            except ee.EEException as e:
                out[name] = str(e)
        return out

    def start(self, req: Any, job: Any, attempts: dict[str, int], image: Any = None) -> tuple[Any, list[Any]]:
        """Start the given products of ``job`` (product → attempt number). Returns (job image, StartedExport
        per product), so the caller can reuse the image for the job's other products."""
        from ...plan import EE_FILE_DIMENSIONS
        from . import _band, exports

        _ = self.project  # initialise before building the graph
        specs = [s for s in exports.export_specs(job, EE_FILE_DIMENSIONS, attempts) if s.product in attempts]
        if image is None:
            image = self.job_image(job)
        pacer = self.pacer or exports.StartPacer()
        backoff = self.backoff or exports.Backoff()
        started = []
        for spec in specs:
            config = exports.export_task_config(spec, _band(image, spec))
            pacer.wait()
            started.append(exports.start_one(spec, config, backoff))
        return image, started

    def job_image(self, job: Any) -> Any:
        """The job's whole computation (one band per product)."""
        from . import job_graph

        return job_graph.job_image(job)

    def description(self, job: Any, product: str, attempt: int) -> str:
        """The task description of one attempt (how a start whose answer was lost is found again)."""
        from ...plan import EE_FILE_DIMENSIONS
        from . import exports

        return next(s.description for s in exports.export_specs(job, EE_FILE_DIMENSIONS, {product: attempt})
                    if s.product == product)
