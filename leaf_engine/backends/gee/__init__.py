"""Earth Engine backend: builds each job's computation and exports its products straight to Cloud Storage.

Importing this package does not import ``ee``; the client library loads when a function needs it.

- :func:`start_exports` — start one export per product file of every job (idempotent: deterministic requestIds);
- :func:`task_states` — the state of started tasks (or of every task of the project).
"""

from __future__ import annotations

from typing import Any

from .exports import ALREADY_STARTED, STARTED, Backoff, ExportSpec, StartedExport, StartPacer, export_specs
from .session import EarthEngineError, initialize


def start_exports(req: Any, *, project: str | None = None, plan: Any = None, pacer: StartPacer | None = None,
                  backoff: Backoff | None = None) -> list[StartedExport]:
    """Start the exports of a :class:`~leaf_engine.request.ProductionRequest`; returns one entry per file.

    Only files in ``plan`` (default: the request's full plan) are started, so a caller that dropped complete
    items from the plan starts nothing for them. Re-running starts nothing twice: an export whose requestId was
    used already comes back with state ``ALREADY_STARTED``.
    """
    from ...plan import EE_FILE_DIMENSIONS, make_plan
    from . import exports, job_graph

    plan = plan if plan is not None else make_plan(req)
    wanted = {f.name.key(): f for f in plan.files}
    pairs = []
    initialize(project)
    for job in req.jobs():
        specs = [s for s in export_specs(job, EE_FILE_DIMENSIONS) if s.name.key() in wanted]
        if not specs:
            continue
        _check_against_plan(specs, wanted)
        image = job_graph.job_image(job)
        pairs += [(s, _band(image, s)) for s in specs]
    return exports.start_specs(pairs, pacer, backoff)


def _band(image: Any, spec: ExportSpec) -> Any:
    """One product as a single-band image of its own dtype, so the file's type and noData are right."""
    from .sl2p_graph import cast_to

    return cast_to(image.select([spec.product]), spec.dtype)


def _check_against_plan(specs: list[ExportSpec], wanted: dict[str, Any]) -> None:
    for s in specs:
        f = wanted[s.name.key()]
        if (f.width, f.height) != (s.width, s.height):
            raise EarthEngineError(f"{s.name.key()}: plan says {f.width}x{f.height} pixels but the job's grid is "
                                   f"{s.width}x{s.height}; rebuild the plan from this request")


def task_states(ids: list[str] | None, project: str | None = None) -> dict[str, dict[str, Any]]:
    """Task id → {state, description, update_time, error} for ``ids`` (every task of the project when empty)."""
    import ee

    used = initialize(project)
    if ids:
        ops = []
        for task_id in ids:
            name = task_id if task_id.startswith("projects/") else f"projects/{used}/operations/{task_id}"
            try:
                ops.append(ee.data.getOperation(name))
            except ee.EEException as e:
                ops.append({"name": name, "metadata": {"state": "UNKNOWN"}, "error": {"message": str(e)}})
    else:
        ops = ee.data.listOperations(f"projects/{used}")
    return {op["name"].rsplit("/", 1)[-1]: _summary(op) for op in ops}


def _summary(op: dict[str, Any]) -> dict[str, Any]:
    meta = op.get("metadata", {})
    return {"state": meta.get("state", "UNKNOWN"), "description": meta.get("description", ""),
            "update_time": meta.get("updateTime", ""), "error": op.get("error", {}).get("message", "")}


__all__ = ["ALREADY_STARTED", "STARTED", "Backoff", "EarthEngineError", "ExportSpec", "StartPacer",
           "StartedExport", "export_specs", "initialize", "start_exports", "task_states"]
