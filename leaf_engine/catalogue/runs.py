"""Run records as the catalogue sees them: find the run that expects an object, and move its state.

A run record (``{out_folder}/_runs/{request_id}.json``, written by ``leaf_engine.service``) holds the normalised
request, the plan, ``items`` and ``objects`` (see ``expectations``), the backend's task ids and a ``state``.
"""

from __future__ import annotations

import threading
from typing import Any

from ..naming import RUNS_DIR, run_record_key
from ..sinks import Sink
from .concurrency import update_json
from .stac import now_iso

CLAIMED, PROCESSING, SUCCEEDED, FAILED, INVALID = "CLAIMED", "PROCESSING", "SUCCEEDED", "FAILED", "INVALID"
RUN_STATES = (CLAIMED, PROCESSING, SUCCEEDED, FAILED, INVALID)
RERUNNABLE = (FAILED, INVALID)
"""States after which the same request id may start again."""


def runs_prefix(out_folder: str) -> str:
    folder = out_folder.strip("/")
    return f"{folder}/{RUNS_DIR}/" if folder else f"{RUNS_DIR}/"


_EXPECTATIONS: dict[str, dict[str, Any]] = {}
"""Run records by URI, kept per process: a record's expectations (objects, items) never change once written, so
each finalize event lists the runs but downloads only records it has not seen (a large run's record is MBs)."""
_CACHE_LOCK = threading.Lock()
_CACHE_LIMIT = 64


def _read_run(sink: Sink, key: str) -> dict[str, Any] | None:
    uri = sink.uri(key)
    with _CACHE_LOCK:
        cached = _EXPECTATIONS.get(uri)
    if cached is not None:
        return cached
    got = sink.read_json(key)
    if got is None or not isinstance(got[0], dict):
        return None
    record = got[0]
    if record.get("objects") and record.get("state") != INVALID:  # only complete records are immutable enough
        with _CACHE_LOCK:
            if len(_EXPECTATIONS) >= _CACHE_LIMIT:
                _EXPECTATIONS.pop(next(iter(_EXPECTATIONS)))
            _EXPECTATIONS[uri] = record
    return record


def list_runs(sink: Sink, out_folder: str) -> list[dict[str, Any]]:
    """Every run record under ``out_folder`` (unreadable ones skipped). Their ``state`` may be out of date."""
    out = []
    for key in sink.list(runs_prefix(out_folder)):
        rel = key[len(runs_prefix(out_folder)):]
        if "/" in rel or not rel.endswith(".json"):
            continue
        record = _read_run(sink, key)
        if record is not None:
            out.append(record)
    return out


def run_for_object(sink: Sink, out_folder: str, key: str) -> dict[str, Any] | None:
    """The newest run record that expects object ``key`` (a later request may re-produce the same item)."""
    runs = [r for r in list_runs(sink, out_folder) if key in r.get("objects", {}) and r.get("state") != INVALID]
    return max(runs, key=lambda r: r.get("created", "")) if runs else None


def set_state(sink: Sink, out_folder: str, request_id: str, state: str, *, only_from: tuple[str, ...] = (),
              **fields: Any) -> bool:
    """Move a run to ``state`` (only from the listed states, when given). Returns whether it changed."""
    def mutate(doc: dict | None) -> tuple[dict | None, bool]:
        if doc is None or doc.get("state") == state or (only_from and doc.get("state") not in only_from):
            return None, False
        doc = {**doc, "state": state, "updated": now_iso(), **fields}
        doc["history"] = [*doc.get("history", []), {"state": state, "at": doc["updated"]}]
        return doc, True

    return update_json(sink, run_record_key(out_folder, request_id), mutate)
