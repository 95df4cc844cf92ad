"""The run record (``{out_folder}/_runs/{request_id}.json``): one typed document, one writer.

:class:`RunRecord` owns the run's states and every allowed transition (:data:`TRANSITIONS`), appends the
history, and holds one :class:`TaskRecord` per Earth Engine export. :func:`update_run` is the only code that writes
a record: it reads it, lets a mutation change the model, and writes it back under a generation precondition, so
concurrent writers (start handler, catalogue, reconcilers, ``leaf cancel``) never lose each other's changes.

The record is small and built in linear time: it stores the normalised request and the tasks, and what the run
must write (items, objects, grids) is derived from the request when needed (:mod:`.expectations`), instead of
listing megabytes of expectations.

Run states::

    (message) ──▶ CLAIMED ──▶ QUEUED (no slot free yet) ──▶ PROCESSING ──▶ SUCCEEDED | PARTIAL | FAILED
                     │                                        (reconciler / catalogue)
                     └──▶ FAILED (backend refused) ; any active state ──▶ CANCELLED (leaf cancel)
    FAILED / PARTIAL / CANCELLED / INVALID ──▶ CLAIMED (the same request again, or leaf resume)
    SUCCEEDED ──▶ CLAIMED (only leaf resume, when objects of the run have gone missing or bad since)
    invalid message ──▶ INVALID (only where no record exists or the record is re-runnable)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..errors import LeafError
from ..naming import RUNS_DIR, run_record_key
from ..sinks import Sink
from .concurrency import update_json
from .stac import now_iso

CLAIMED, QUEUED, PROCESSING = "CLAIMED", "QUEUED", "PROCESSING"
SUCCEEDED, PARTIAL, FAILED, CANCELLED, INVALID = "SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED", "INVALID"
RUN_STATES = (CLAIMED, QUEUED, PROCESSING, SUCCEEDED, PARTIAL, FAILED, CANCELLED, INVALID)
RunState = Literal["CLAIMED", "QUEUED", "PROCESSING", "SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED", "INVALID"]
ACTIVE = (CLAIMED, QUEUED, PROCESSING)
"""States in which a run still has work to do (the reconciler's concern)."""
ENDED = (SUCCEEDED, PARTIAL, FAILED, CANCELLED)
"""End states: each publishes one run-finished message."""
RERUNNABLE = (FAILED, INVALID, PARTIAL, CANCELLED)
"""States after which the same request id may start again (a re-sent message or ``leaf resume``)."""

TRANSITIONS: dict[str | None, tuple[str, ...]] = {
    None: (CLAIMED, INVALID),
    CLAIMED: (CLAIMED, QUEUED, PROCESSING, SUCCEEDED, PARTIAL, FAILED, CANCELLED),
    QUEUED: (PROCESSING, SUCCEEDED, PARTIAL, FAILED, CANCELLED),
    PROCESSING: (SUCCEEDED, PARTIAL, FAILED, CANCELLED),
    SUCCEEDED: (CLAIMED,),
    PARTIAL: (CLAIMED,),
    FAILED: (CLAIMED,),
    CANCELLED: (CLAIMED,),
    INVALID: (CLAIMED, INVALID),
}
"""Every allowed move; anything else raises :class:`TransitionError`."""

# Task states: Earth Engine's own (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED) plus QUEUED
# (not submitted: no slot, or waiting for the backoff of a retry) and COMPLETE (its objects were checked present).
T_QUEUED, T_PENDING, T_RUNNING, T_CANCELLING = "QUEUED", "PENDING", "RUNNING", "CANCELLING"
T_SUCCEEDED, T_COMPLETE, T_FAILED, T_CANCELLED = "SUCCEEDED", "COMPLETE", "FAILED", "CANCELLED"
TaskState = Literal["QUEUED", "PENDING", "RUNNING", "CANCELLING", "SUCCEEDED", "COMPLETE", "FAILED", "CANCELLED"]
TASK_IN_FLIGHT = (T_PENDING, T_RUNNING, T_CANCELLING, T_SUCCEEDED)
"""Submitted and not yet settled: these hold one of the project's Earth Engine task slots (or just left it)."""
TASK_DONE = (T_COMPLETE, T_FAILED, T_CANCELLED)

RUN_SCHEMA = "leaf-run/2"


class TransitionError(LeafError):
    """A run was asked to move from a state that does not allow it (a bug, or a record changed meanwhile)."""


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    state: str
    at: str
    note: str | None = None


class TaskRecord(BaseModel):
    """One Earth Engine export (one product file of a job) across its attempts."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    product: str
    prefix: str
    objects: list[str]
    """Object keys the export writes (one, or its shards)."""
    state: TaskState = T_QUEUED
    attempts: int = 0
    """Starts submitted so far; attempt ``n`` uses requestId ``exports.ee_request_id(..., attempt=n)``."""
    request_id: str | None = None
    """Earth Engine requestId of the latest attempt."""
    task_id: str | None = None
    """Earth Engine operation id of the latest attempt."""
    error: str | None = None
    """Earth Engine's error message (latest failure)."""
    eecu_s: float = 0.0
    """``batchEecuUsageSeconds`` summed over attempts (a failed attempt is billed too)."""
    attempt_eecu_s: float = 0.0
    started: str | None = None
    ended: str | None = None
    not_before: float = 0.0
    """Unix time before which a queued retry is not submitted (backoff)."""
    attempt_base: int = 0
    """Attempts made before the last ``leaf resume`` (the retry bound counts the attempts after it)."""

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.product}"


class DegradedItem(BaseModel):
    """An item the catalogue found complete and later incomplete again: one of its files was replaced by a
    generation that fails its check. Mirrors the run's collection (``leaf:degraded``, ``leaf:item_problems``)."""

    model_config = ConfigDict(extra="forbid")

    since: str
    problems: dict[str, list[str]] = {}
    """Object key → the check errors that keep the item incomplete."""


class RunRecord(BaseModel):
    """The typed run record. Change it only through its methods, write it only with :func:`update_run`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(RUN_SCHEMA, alias="schema")
    request_id: str
    state: RunState
    attempt: int = 1
    claim_token: str | None = None
    claimed_by: str | None = None
    claimed_at: float = 0.0
    """Unix time of the claim; 0 once the claim is released (a failed handler lets the redelivery in at once)."""
    lease_token: str | None = None
    lease_until: float = 0.0
    """Reconcile lease: one reconciler at a time works on a run (see leaf_engine.reconcile)."""
    created: str
    updated: str
    backend: str | None = None
    project: str | None = None
    bucket: str | None = None
    out_folder: str = ""
    collection_id: str | None = None
    rerun: str | None = None
    request: dict[str, Any] | None = None
    """The normalised request (``ProductionRequest.to_dict()``): the source of every expectation."""
    warnings: list[str] = []
    totals: dict[str, Any] = {}
    estimate: dict[str, Any] | None = None
    """EECU-hours estimate of the plan (``plan.eecu_estimate``)."""
    skipped: list[str] = []
    tasks: list[TaskRecord] = []
    backend_tasks: Any = None
    """Opaque task references of the local and external backends (Earth Engine tasks are in ``tasks``)."""
    errors: list[Any] = []
    history: list[HistoryEntry] = []
    finished: dict[str, Any] | None = None
    """The run-finished message of the end state, once published (``{state, message_id, at}``)."""
    degraded: dict[str, DegradedItem] = {}
    """Items no longer complete since the catalogue found them complete (item id → why), written only by the
    catalogue. The state is left as it is: a SUCCEEDED run stays SUCCEEDED (its production did succeed; its one
    run-finished message stands) and shows the damage here; the entry goes when a good generation completes the
    item again, and ``leaf resume`` re-exports the failing objects."""
    # Explicit expectations: only in records of tests that simulate Earth Engine shards (see tests/support).
    items: dict[str, Any] | None = None
    objects: dict[str, Any] | None = None

    # -- building -----------------------------------------------------------------------------------------
    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RunRecord:
        return cls.model_validate(doc)

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)

    # -- states -------------------------------------------------------------------------------------------
    def move(self, state: str, note: str | None = None) -> RunRecord:
        """Move to ``state`` (in place; returns self). Raises TransitionError for a move not in TRANSITIONS."""
        if state not in TRANSITIONS.get(self.state, ()):
            raise TransitionError(f"run {self.request_id}: {self.state} → {state} is not an allowed transition "
                                  f"(allowed: {', '.join(TRANSITIONS.get(self.state, ())) or 'none'})")
        self.state = state  # type: ignore[assignment]
        self.touch()
        self.history.append(HistoryEntry(state=state, at=self.updated, note=note))
        return self

    def touch(self) -> None:
        self.updated = now_iso()

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    # -- tasks --------------------------------------------------------------------------------------------
    def task(self, key: str) -> TaskRecord:
        for t in self.tasks:
            if t.key == key:
                return t
        raise KeyError(key)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def in_flight(self) -> int:
        return sum(1 for t in self.tasks if t.state in TASK_IN_FLIGHT)

    def eecu_hours(self) -> float:
        return sum(t.eecu_s for t in self.tasks) / 3600.0

    def end_state(self) -> str | None:
        """The end state the tasks call for, or None while some task is unsettled."""
        if not self.tasks or any(t.state not in TASK_DONE for t in self.tasks):
            return None
        if any(t.state == T_CANCELLED for t in self.tasks) and self.state == CANCELLED:
            return CANCELLED
        failed = sum(1 for t in self.tasks if t.state in (T_FAILED, T_CANCELLED))
        if failed == 0:
            return SUCCEEDED
        return PARTIAL if failed < len(self.tasks) or self.skipped else FAILED


def new_run(request_id: str, *, state: str = CLAIMED, **fields: Any) -> RunRecord:
    now = now_iso()
    record = RunRecord(request_id=request_id, state=state, created=now, updated=now,  # type: ignore[arg-type]
                       claimed_at=time.time() if state == CLAIMED else 0.0, **fields)
    record.history.append(HistoryEntry(state=state, at=now))
    return record


R = TypeVar("R")
RunMutation = Callable[[RunRecord | None], tuple[RunRecord | None, R]]
"""Takes the current record (None when absent); returns (the record to write or None for no change, result)."""


def update_run(sink: Sink, out_folder: str, request_id: str, mutate: RunMutation[R]) -> R:
    """The only writer of run records: read, mutate, write back under the read generation (retried on races)."""
    def on_doc(doc: dict | None) -> tuple[dict | None, R]:
        record = RunRecord.from_doc(doc) if doc is not None else None
        new, result = mutate(record)
        return (new.to_doc() if new is not None else None), result

    return update_json(sink, run_record_key(out_folder, request_id), on_doc)


def create_run(sink: Sink, record: RunRecord) -> bool:
    """Create-only write (generation 0): True when this call created it, False when a record exists already."""
    from ..sinks import PreconditionFailed

    try:
        sink.write_json(run_record_key(record.out_folder, record.request_id), record.to_doc(),
                        if_generation_match=0)
        return True
    except PreconditionFailed:
        return False


def read_run(sink: Sink, out_folder: str, request_id: str) -> RunRecord | None:
    got = sink.read_json(run_record_key(out_folder, request_id))
    return RunRecord.from_doc(got[0]) if got is not None else None


def runs_prefix(out_folder: str) -> str:
    folder = out_folder.strip("/")
    return f"{folder}/{RUNS_DIR}/" if folder else f"{RUNS_DIR}/"


def run_keys(sink: Sink, out_folder: str) -> list[str]:
    prefix = runs_prefix(out_folder)
    return [k for k in sink.list(prefix) if "/" not in k[len(prefix):] and k.endswith(".json")]


_EXPECTATIONS: dict[tuple[str, str | None, str], Any] = {}
"""Derived expectations by (record URI, claim token, created), kept per process: they never change for one claim."""
_CACHE_LOCK = threading.Lock()
_CACHE_LIMIT = 64


def run_expectations(sink: Sink, record: dict[str, Any]) -> Any:
    """The record's :class:`~.expectations.Expectations` (derived from its request; cached per claim)."""
    from .expectations import record_expectations

    cache_key = (sink.uri(run_record_key(record.get("out_folder", ""), record["request_id"])),
                 record.get("claim_token"), str(record.get("created")))
    with _CACHE_LOCK:
        hit = _EXPECTATIONS.get(cache_key)
    if hit is not None:
        return hit
    exp = record_expectations(record)
    with _CACHE_LOCK:
        if len(_EXPECTATIONS) >= _CACHE_LIMIT:
            _EXPECTATIONS.pop(next(iter(_EXPECTATIONS)))
        _EXPECTATIONS[cache_key] = exp
    return exp


RUN_CACHE_S = 15.0
"""How long the catalogue reuses a run record it read to find which run expects an object: a national run's
record is a few MB and every finalize event needs it. Anything that must be current (a cancel) is read fresh."""
_DOCS: dict[str, tuple[float, dict[str, Any]]] = {}


def list_runs(sink: Sink, out_folder: str, max_age_s: float = 0.0) -> list[dict[str, Any]]:
    """Every run record under ``out_folder`` (unreadable ones skipped), read at most ``max_age_s`` ago."""
    out = []
    now = time.monotonic()
    for key in run_keys(sink, out_folder):
        uri = sink.uri(key)
        with _CACHE_LOCK:
            hit = _DOCS.get(uri)
        if hit is not None and now - hit[0] <= max_age_s:
            out.append(hit[1])
            continue
        got = sink.read_json(key)
        if got is not None and isinstance(got[0], dict) and "request_id" in got[0]:
            out.append(got[0])
            with _CACHE_LOCK:
                if len(_DOCS) >= _CACHE_LIMIT:
                    _DOCS.pop(next(iter(_DOCS)))
                _DOCS[uri] = (now, got[0])
    return out


def run_for_object(sink: Sink, out_folder: str, key: str) -> dict[str, Any] | None:
    """The newest run record that expects object ``key`` (a later request may re-produce the same item)."""
    runs = [r for r in list_runs(sink, out_folder, RUN_CACHE_S)
            if r.get("state") != INVALID and (r.get("request") is not None or r.get("objects"))]
    runs = [r for r in runs if key in run_expectations(sink, r).objects]
    return max(runs, key=lambda r: r.get("created", "")) if runs else None


def set_state(sink: Sink, out_folder: str, request_id: str, state: str, *, only_from: tuple[str, ...] = (),
              **fields: Any) -> bool:
    """Move a run to ``state`` (only from the listed states, when given). Returns whether it changed."""
    def mutate(record: RunRecord | None) -> tuple[RunRecord | None, bool]:
        if record is None or record.state == state or (only_from and record.state not in only_from):
            return None, False
        if state not in TRANSITIONS.get(record.state, ()):
            return None, False
        for k, v in fields.items():
            setattr(record, k, v)
        record.move(state)
        return record, True

    return update_run(sink, out_folder, request_id, mutate)
