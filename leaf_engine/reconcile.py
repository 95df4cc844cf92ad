"""The run lifecycle after the start: watch Earth Engine tasks, retry, queue, cancel, resume, announce the end.

A run's Earth Engine exports are :class:`~leaf_engine.catalogue.runs.TaskRecord` s in its run record. The start
handler submits what fits (``LEAF_MAX_TASKS_IN_FLIGHT`` per project, and its time budget); the reconciler
(``reconcile_runs`` function every few minutes, or ``leaf reconcile``) does the rest, one pass per active run:

1. take the run's reconcile lease (generation-checked), so concurrent reconcilers never work on one run twice;
2. read the project's operations once (a paged list), record each task's state, error and
   ``batchEecuUsageSeconds``; a SUCCEEDED task is COMPLETE only when its objects exist;
3. a task failed for a transient reason is queued again (new deterministic requestId per attempt, bounded
   attempts, exponential backoff); a permanent failure keeps Earth Engine's message;
4. queued tasks are submitted while slots are free and the pass's time budget lasts;
5. once every task is settled the run ends SUCCEEDED, PARTIAL or FAILED and one run-finished message is
   published (``LEAF_RUN_FINISHED_TOPIC``).

Every write goes through :func:`~leaf_engine.catalogue.runs.update_run` with the change expressed as a patch on
the freshly read record, so a cancel or a catalogue update made meanwhile is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import logs
from .catalogue.expectations import record_request
from .catalogue.runs import (
    ACTIVE,
    CANCELLED,
    CLAIMED,
    ENDED,
    PROCESSING,
    QUEUED,
    T_CANCELLED,
    T_COMPLETE,
    T_FAILED,
    T_PENDING,
    T_QUEUED,
    T_RUNNING,
    T_SUCCEEDED,
    TASK_DONE,
    TASK_IN_FLIGHT,
    RunRecord,
    TaskRecord,
    read_run,
    run_keys,
    update_run,
)
from .catalogue.stac import now_iso
from .catalogue.tile_ready import Publisher, PubSubPublisher
from .errors import LeafError, TransientError
from .naming import run_record_key
from .sinks import Sink

ENV_MAX_IN_FLIGHT = "LEAF_MAX_TASKS_IN_FLIGHT"
ENV_MAX_ATTEMPTS = "LEAF_MAX_TASK_ATTEMPTS"
ENV_RETRY_BACKOFF = "LEAF_RETRY_BACKOFF_S"
ENV_BUDGET = "LEAF_HANDLER_BUDGET_S"
ENV_LEASE = "LEAF_CLAIM_LEASE_S"
ENV_RUN_FINISHED_TOPIC = "LEAF_RUN_FINISHED_TOPIC"
DEFAULT_MAX_IN_FLIGHT = 1000
"""Well below Earth Engine's queue of 3,000 tasks per project, leaving room for other users of the project."""
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_BACKOFF_S = 60.0
DEFAULT_BUDGET_S = 240.0
"""Seconds one handler spends starting exports: well inside the function's 540 s timeout and 600 s ack deadline."""
LEASE_S = 300.0
"""A start claim or reconcile lease older than this is abandoned (its handler died). Longer than the budget, and
shorter than the 600 s ack deadline, so the first redelivery after a crash always finds the claim expired."""
MAX_LEASE_S = 540.0
SAVE_EVERY = 500
"""Started tasks between two saves of the record (a crash in between only repeats starts under the same
requestIds, which Earth Engine refuses as duplicates)."""
ACTIVE_DIR = "_leaf/active"
"""Bucket-level index of runs that still need the reconciler: one small marker per run."""

TRANSIENT_MARKERS = ("internal error", "try again", "temporar", "unavailable", "deadline exceeded", "timed out",
                     "timeout", "quota", "too many", "rate limit", "backend error", "server error",
                     "objects are missing")
"""Earth Engine task errors worth another attempt (an identical computation may well succeed then). Anything
else (``User memory limit exceeded``, invalid arguments, missing assets, permission) fails for good: a new
attempt would spend EECU on the same failure."""


def is_transient(message: str | None) -> bool:
    m = (message or "").lower()
    return any(marker in m for marker in TRANSIENT_MARKERS)


@dataclass(frozen=True)
class LifecycleConfig:
    """Limits of the run lifecycle (environment settings, see README: service configuration)."""

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    budget_s: float = DEFAULT_BUDGET_S
    lease_s: float = LEASE_S

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LifecycleConfig:
        e = os.environ if env is None else env

        def number(name: str, default: float, kind: type, low: float) -> Any:
            raw = e.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise LeafError(f"{name}={raw!r} is not a {kind.__name__}; unset it or give a number ≥ {low}"
                                ) from None
            if value < low:
                raise LeafError(f"{name}={raw!r} must be ≥ {low}; unset it for the default {default}")
            return value

        budget = number(ENV_BUDGET, DEFAULT_BUDGET_S, float, 1.0)
        lease = number(ENV_LEASE, LEASE_S, float, 1.0)
        if budget >= lease:
            raise LeafError(f"{ENV_BUDGET}={budget:g} must be below the claim lease {ENV_LEASE}={lease:g} s (a "
                            "handler still starting exports must never look abandoned)")
        if lease > MAX_LEASE_S:
            raise LeafError(f"{ENV_LEASE}={lease:g} must be at most {MAX_LEASE_S:g} s, below the subscription's "
                            "600 s ack deadline, so the first redelivery after a crash finds the claim expired")
        return cls(number(ENV_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT, int, 1),
                   number(ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS, int, 1),
                   number(ENV_RETRY_BACKOFF, DEFAULT_RETRY_BACKOFF_S, float, 0.0), budget, lease)


class TaskBackend(Protocol):
    """What the lifecycle needs from Earth Engine (:class:`~leaf_engine.backends.gee.operations.EarthEngineTasks`)."""

    def operations(self) -> list[Any]: ...
    def get(self, names: Iterable[str]) -> list[Any]: ...
    def cancel(self, names: Iterable[str]) -> dict[str, str | None]: ...
    def start(self, req: Any, job: Any, attempts: dict[str, int], image: Any = None) -> tuple[Any, list[Any]]: ...
    def description(self, job: Any, product: str, attempt: int) -> str: ...


def earth_engine_tasks(project: str | None = None) -> TaskBackend:
    from .backends.gee.operations import EarthEngineTasks

    return EarthEngineTasks(project)


def run_finished_publisher(env: dict[str, str] | None = None) -> Publisher | None:
    topic = (os.environ if env is None else env).get(ENV_RUN_FINISHED_TOPIC)
    return PubSubPublisher(topic) if topic else None


# ------------------------------------------------------------------------------------------------ markers


def active_marker_key(out_folder: str, request_id: str) -> str:
    folder_hash = hashlib.sha256(out_folder.strip("/").encode()).hexdigest()[:12]
    return f"{ACTIVE_DIR}/{folder_hash}-{request_id}.json"


def mark_active(sink: Sink, out_folder: str, request_id: str) -> None:
    sink.put_bytes(active_marker_key(out_folder, request_id),
                   json.dumps({"out_folder": out_folder, "request_id": request_id}).encode(), "application/json")


def _unmark_active(sink: Sink, out_folder: str, request_id: str) -> None:
    delete = getattr(sink, "delete", None)
    key = active_marker_key(out_folder, request_id)
    if callable(delete):
        delete(key)
    else:  # a sink without delete: an empty marker is skipped by the listing
        sink.put_bytes(key, b"", "application/json")


def active_runs(sink: Sink) -> list[tuple[str, str]]:
    """(out_folder, request_id) of every run marked active in the bucket."""
    out = []
    for key in sink.list(ACTIVE_DIR + "/"):
        raw = sink.get_bytes(key)
        if not raw:
            continue
        try:
            doc = json.loads(raw)
            out.append((str(doc["out_folder"]), str(doc["request_id"])))
        except (ValueError, KeyError, TypeError):
            logs.warning("unreadable active-run marker, skipped", object=key)
    return out


# ------------------------------------------------------------------------------------------------ patching


@dataclass
class Pass:
    """One handler's work on one run: the record as this handler last saw it and the changes it made."""

    record: RunRecord
    token: str
    patches: dict[str, tuple[int, str, TaskRecord]] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict)

    def change(self, task: TaskRecord, **updates: Any) -> TaskRecord:
        """Change one task (as a patch on what this pass read, so a concurrent change is detected)."""
        key = task.key
        base = self.patches[key][:2] if key in self.patches else (task.attempts, task.state)
        new = task.model_copy(update=updates)
        self.patches[key] = (base[0], base[1], new)
        if len(self._index) != len(self.record.tasks):
            self._index = {t.key: i for i, t in enumerate(self.record.tasks)}
        self.record.tasks[self._index[key]] = new
        return new


def _apply(fresh: RunRecord, patches: dict[str, tuple[int, str, TaskRecord]]) -> int:
    """Apply patches whose task is still as the pass read it. Returns how many were refused (changed meanwhile)."""
    index = {t.key: i for i, t in enumerate(fresh.tasks)}
    refused = 0
    for key, (attempts, state, new) in patches.items():
        i = index.get(key)
        if i is None:
            continue
        cur = fresh.tasks[i]
        if cur.attempts == attempts and cur.state == state:
            fresh.tasks[i] = new
        elif cur != new:
            refused += 1
    return refused


def save(sink: Sink, p: Pass, run_change: Callable[[RunRecord], None] | None = None,
         holds: Callable[[RunRecord, str], bool] | None = None) -> RunRecord:
    """Write the pass's patches (and ``run_change``) onto the fresh record; raises LostLease when another handler
    holds the run now."""
    holds = holds or _holds_lease

    def mutate(fresh: RunRecord | None) -> tuple[RunRecord | None, RunRecord]:
        if fresh is None:
            raise LostLease(f"run record {p.record.request_id} disappeared")
        if not holds(fresh, p.token):
            raise LostLease(f"run {p.record.request_id} is now handled by another handler")
        _apply(fresh, p.patches)
        if run_change is not None:
            run_change(fresh)
        fresh.touch()
        return fresh, fresh

    fresh = update_run(sink, p.record.out_folder, p.record.request_id, mutate)
    p.record, p.patches, p._index = fresh, {}, {}
    return fresh


class LostLease(LeafError):
    """Another handler took the run over (this one was too slow, or the run was cancelled and re-claimed)."""


def _holds_lease(record: RunRecord, token: str) -> bool:
    return record.claim_token == token or record.lease_token == token


# ------------------------------------------------------------------------------------------------ tasks


def planned_tasks(plan: Any) -> list[TaskRecord]:
    """One queued task per planned file (its objects: the file or its shards)."""
    return [TaskRecord(job_id=f.job_id, product=f.name.product, prefix=f.name.prefix,
                       objects=[s.key() for s in f.shards]) for f in plan.files]


@dataclass
class Slots:
    """Free Earth Engine task slots of the project, shared by every run of one handler."""

    free: int

    @classmethod
    def from_operations(cls, ops: list[Any], limit: int) -> Slots:
        from .backends.gee.operations import IN_FLIGHT_STATES

        return cls(max(0, limit - sum(1 for op in ops if op.state in IN_FLIGHT_STATES)))


def submit_queued(sink: Sink, p: Pass, backend: TaskBackend, slots: Slots, deadline: float,
                  config: LifecycleConfig, clock: Callable[[], float] = time.time) -> int:
    """Start queued tasks whose backoff is over while slots are free and before ``deadline`` (monotonic).
    Saves the record every :data:`SAVE_EVERY` starts. Returns how many were started."""
    from .errors import EarthEngineError

    req = record_request(p.record.to_doc())
    jobs = {j.job_id: j for j in req.jobs()}
    now = clock()
    queued = [t for t in p.record.tasks if t.state == T_QUEUED and t.not_before <= now]
    by_job: dict[str, list[TaskRecord]] = {}
    for t in queued:
        by_job.setdefault(t.job_id, []).append(t)
    started = unsaved = 0
    for job_id, tasks in by_job.items():
        if slots.free <= 0 or time.monotonic() >= deadline:
            break
        tasks = tasks[: slots.free]
        attempts = {t.product: t.attempts + 1 for t in tasks}
        try:
            _, results = backend.start(req, jobs[job_id], attempts)
        except TransientError as e:  # 429/5xx after retries: leave them queued, the reconciler goes on later
            for t in tasks:
                p.change(t, not_before=clock() + config.retry_backoff_s, error=str(e))
            logs.warning(f"Earth Engine did not take more exports now: {e}", request_id=p.record.request_id)
            break
        except EarthEngineError as e:  # refused for good (invalid export): these tasks fail with the message
            for t in tasks:
                p.change(t, state=T_FAILED, attempts=t.attempts + 1, error=str(e), ended=now_iso())
            continue
        by_product = {r.product: r for r in results}
        for t in tasks:
            r = by_product[t.product]
            p.change(t, state=T_PENDING, attempts=attempts[t.product], request_id=r.request_id,
                     task_id=r.task_id, started=now_iso(), ended=None, attempt_eecu_s=0.0)
            slots.free -= 1
            started += 1
            unsaved += 1
        if unsaved >= SAVE_EVERY:
            save(sink, p)
            unsaved = 0
    return started


def observe(sink: Sink, p: Pass, backend: TaskBackend, ops: list[Any], config: LifecycleConfig,
            clock: Callable[[], float] = time.time) -> None:
    """Record the state of every in-flight task from the project's operations."""
    from .service import present_objects

    by_name = {op.task_id: op for op in ops}
    flying = [t for t in p.record.tasks if t.state in TASK_IN_FLIGHT]
    unlisted = [t.task_id for t in flying if t.task_id and t.task_id not in by_name]
    if unlisted:  # a listing may leave old operations out: read those one by one
        by_name.update({op.task_id: op for op in backend.get(unlisted)})
    by_description = {op.description: op for op in ops}
    req = None
    succeeded: list[tuple[TaskRecord, Any]] = []
    for t in flying:
        op = by_name.get(t.task_id or "")
        if op is None:
            req = req or record_request(p.record.to_doc())
            job = next(j for j in req.jobs() if j.job_id == t.job_id)
            op = by_description.get(backend.description(job, t.product, t.attempts))
        if op is None:  # the start's answer was lost and no task exists: submit the same attempt again
            if t.task_id is None:
                p.change(t, state=T_QUEUED, attempts=t.attempts - 1)
            continue
        eecu = t.eecu_s - t.attempt_eecu_s + op.eecu_s
        common = {"task_id": op.task_id, "eecu_s": eecu, "attempt_eecu_s": op.eecu_s,
                  "started": op.start or t.started}
        if op.state in ("PENDING", "READY"):
            p.change(t, state=T_PENDING, **common)
        elif op.state in ("RUNNING", "CANCELLING"):
            p.change(t, state=T_RUNNING, **common)
        elif op.state == "SUCCEEDED":
            t = p.change(t, state=T_SUCCEEDED, **common, ended=op.end or now_iso())
            succeeded.append((t, op))
        elif op.state == "FAILED":
            _failed(p, t, op.error or "Earth Engine reported FAILED without a message", config, clock, common,
                    op.end)
        elif op.state == "CANCELLED":
            p.change(t, state=T_CANCELLED, error=t.error or "cancelled in Earth Engine", ended=op.end or now_iso(),
                     **common)
    if succeeded:
        present = present_objects(sink, [k for t, _ in succeeded for k in t.objects])
        for t, _op in succeeded:
            missing = [k for k in t.objects if k not in present]
            if missing:
                _failed(p, t, f"Earth Engine reported SUCCEEDED but objects are missing: {', '.join(missing)}",
                        config, clock, {}, None)
            else:
                p.change(t, state=T_COMPLETE, error=None)


def _failed(p: Pass, t: TaskRecord, message: str, config: LifecycleConfig, clock: Callable[[], float],
            common: dict[str, Any], end: str | None) -> None:
    retry = is_transient(message) and t.attempts - t.attempt_base < config.max_attempts
    if retry:
        delay = config.retry_backoff_s * 2 ** max(0, t.attempts - t.attempt_base - 1)
        p.change(t, state=T_QUEUED, error=message, not_before=clock() + delay, ended=end or now_iso(), **common)
        logs.warning(f"task {t.key} failed (attempt {t.attempts}), retried: {message}",
                     request_id=p.record.request_id)
    else:
        p.change(t, state=T_FAILED, error=message, ended=end or now_iso(), **common)
        logs.error(f"task {t.key} failed for good (attempt {t.attempts}): {message}", request_id=p.record.request_id)


def settle_run_state(record: RunRecord) -> None:
    """Move the run along from its tasks: QUEUED/CLAIMED → PROCESSING once one started, an end state once every
    task is settled, CLAIMED → QUEUED when nothing could start yet."""
    end = record.end_state()
    if end is not None and record.state in ACTIVE:
        record.move(end)
        record.claimed_at = 0.0
        return
    started = any(t.state != T_QUEUED or t.attempts > 0 for t in record.tasks)
    if record.state in (CLAIMED, QUEUED) and started:
        record.move(PROCESSING)
        record.claimed_at = 0.0
    elif record.state == CLAIMED:
        record.move(QUEUED)
        record.claimed_at = 0.0


# ------------------------------------------------------------------------------------------------ run-finished


def finished_message(sink: Sink, record: RunRecord) -> tuple[bytes, dict[str, str]]:
    uri = sink.uri(run_record_key(record.out_folder, record.request_id))
    body = {"request_id": record.request_id, "state": record.state, "attempt": record.attempt,
            "counts": record.counts(), "tasks": len(record.tasks), "skipped_items": len(record.skipped),
            "eecu_hours": round(record.eecu_hours(), 6),
            "estimate_eecu_hours": (record.estimate or {}).get("eecu_hours"), "record_uri": uri,
            "errors": sorted({t.error for t in record.tasks if t.state == T_FAILED and t.error})[:20]}
    attributes = {"request_id": record.request_id, "state": record.state,
                  "run_finished_id": f"{record.request_id}/{record.attempt}/{record.state}"}
    return json.dumps(body).encode(), attributes


def announce(sink: Sink, out_folder: str, request_id: str, publisher: Publisher | None,
             clock: Callable[[], float] = time.time) -> str | None:
    """Publish the run-finished message of an ended run once (claim, publish, mark). Returns the message id
    when this call published it."""
    token = uuid.uuid4().hex

    def claim(r: RunRecord | None) -> tuple[RunRecord | None, RunRecord | None]:
        if r is None or r.state not in ENDED:
            return None, None
        f = r.finished or {}
        same_end = f.get("state") == r.state and f.get("attempt") == r.attempt
        if same_end and (f.get("message_id") or clock() - float(f.get("claimed_at", 0)) < MAX_LEASE_S):
            return None, None
        r.finished = {"state": r.state, "attempt": r.attempt, "token": token, "claimed_at": clock(),
                      "message_id": None}
        r.touch()
        return r, r

    record = update_run(sink, out_folder, request_id, claim)
    if record is None:
        return None
    message_id = "(no LEAF_RUN_FINISHED_TOPIC)"
    if publisher is not None:
        data, attributes = finished_message(sink, record)
        message_id = publisher.publish(data, attributes)

    def mark(r: RunRecord | None) -> tuple[RunRecord | None, None]:
        if r is None or (r.finished or {}).get("token") != token:
            return None, None
        r.finished = {**(r.finished or {}), "message_id": message_id, "at": now_iso()}
        return r, None

    update_run(sink, out_folder, request_id, mark)
    _unmark_active(sink, out_folder, request_id)
    logs.info(f"run finished: {record.state}", request_id=request_id, state=record.state, message_id=message_id)
    return message_id


# ------------------------------------------------------------------------------------------------ one pass


@dataclass
class RunOutcome:
    request_id: str
    out_folder: str
    status: str
    """``skipped`` (claimed or leased elsewhere, or nothing to do), ``reconciled``, ``ended``, ``missing``."""
    state: str | None = None
    started: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "out_folder": self.out_folder, "status": self.status,
                "state": self.state, "started": self.started, "counts": self.counts, "note": self.note}


def _take_lease(sink: Sink, out_folder: str, request_id: str, token: str, config: LifecycleConfig,
                clock: Callable[[], float]) -> tuple[RunRecord | None, str]:
    def mutate(r: RunRecord | None) -> tuple[RunRecord | None, tuple[RunRecord | None, str]]:
        if r is None:
            return None, (None, "missing")
        if r.state not in ACTIVE:
            return None, (r, "ended")
        now = clock()
        if r.state == CLAIMED and r.claimed_at and now - r.claimed_at < config.lease_s:
            return None, (r, "the start handler holds a fresh claim")
        if r.lease_token and r.lease_until > now:
            return None, (r, "another reconciler holds the run")
        r.lease_token, r.lease_until = token, now + config.lease_s
        if r.state == CLAIMED:  # an abandoned start: take it over (the stale handler's saves are refused)
            r.claim_token = token
        r.touch()
        return r, (r, "leased")

    return update_run(sink, out_folder, request_id, mutate)


def _release(record: RunRecord) -> None:
    record.lease_token, record.lease_until = None, 0.0


def reconcile_run(sink: Sink, out_folder: str, request_id: str, backend: TaskBackend, ops: list[Any],
                  slots: Slots, config: LifecycleConfig, publisher: Publisher | None, deadline: float,
                  clock: Callable[[], float] = time.time) -> RunOutcome:
    token = uuid.uuid4().hex
    record, why = _take_lease(sink, out_folder, request_id, token, config, clock)
    if record is None:
        return RunOutcome(request_id, out_folder, "missing", note="no run record")
    if why == "ended":
        announce(sink, out_folder, request_id, publisher, clock)
        return RunOutcome(request_id, out_folder, "ended", record.state, counts=record.counts())
    if why != "leased":
        return RunOutcome(request_id, out_folder, "skipped", record.state, note=why)
    p = Pass(record, token)
    try:
        if record.state == CLAIMED:
            from .service import write_collection

            write_collection(sink, record_request(record.to_doc()), record.skipped, record)
        if not record.tasks:  # not an Earth Engine run: the catalogue ends it
            save(sink, p, _release)
            return RunOutcome(request_id, out_folder, "skipped", record.state, note="no Earth Engine tasks")
        observe(sink, p, backend, ops, config, clock)
        save(sink, p)
        started = 0
        if p.record.state != CANCELLED:
            started = submit_queued(sink, p, backend, slots, deadline, config, clock)

        def finish(r: RunRecord) -> None:
            if r.state in ACTIVE:
                settle_run_state(r)
            _release(r)

        record = save(sink, p, finish)
    except BaseException:
        _give_back(sink, out_folder, request_id, token)
        raise
    if record.state in ENDED:
        announce(sink, out_folder, request_id, publisher, clock)
    return RunOutcome(request_id, out_folder, "reconciled", record.state, started, record.counts())


def _give_back(sink: Sink, out_folder: str, request_id: str, token: str) -> None:
    """Release the lease after a failure, so the next pass need not wait for it to expire."""
    def mutate(r: RunRecord | None) -> tuple[RunRecord | None, None]:
        if r is None or r.lease_token != token:
            return None, None
        _release(r)
        if r.state == CLAIMED and r.claim_token == token:
            r.claimed_at = 0.0
        return r, None

    try:
        update_run(sink, out_folder, request_id, mutate)
    except Exception as e:  # the lease then simply expires
        logs.warning(f"could not release the reconcile lease: {type(e).__name__}: {e}", request_id=request_id)


def reconcile(sink: Sink, folder: str | None = None, *, backend: TaskBackend | None = None,
              publisher: Publisher | None = None, config: LifecycleConfig | None = None,
              clock: Callable[[], float] = time.time, prefix: str | None = None) -> list[RunOutcome]:
    """One reconcile pass over the active runs of a bucket (those marked active, under ``prefix`` when given),
    or over every run of one folder."""
    config = config or LifecycleConfig.from_env()
    deadline = time.monotonic() + config.budget_s
    if folder is not None:
        targets = [(folder.strip("/"), k.rsplit("/", 1)[-1].removesuffix(".json"))
                   for k in run_keys(sink, folder.strip("/"))]
    else:
        p = (prefix or "").strip("/")
        targets = [t for t in active_runs(sink) if not p or t[0] == p or t[0].startswith(p + "/")]
    backend = backend or earth_engine_tasks()
    ops: list[Any] | None = None
    slots: Slots | None = None
    out = []
    for out_folder, request_id in targets:
        record = read_run(sink, out_folder, request_id)
        if record is None:
            continue
        if record.state not in ACTIVE and (record.finished or {}).get("message_id") and (
                (record.finished or {}).get("state") == record.state):
            if folder is None:
                _unmark_active(sink, out_folder, request_id)  # e.g. re-marked by a duplicate delivery
            continue
        if ops is None and record.state in ACTIVE and record.tasks:
            ops = backend.operations()  # one listing for every run of the pass
            slots = Slots.from_operations(ops, config.max_in_flight)
        outcome = reconcile_run(sink, out_folder, request_id, backend, ops or [], slots or Slots(0), config,
                                publisher, deadline, clock)
        logs.info(f"reconcile: {outcome.status}", request_id=request_id, state=outcome.state, note=outcome.note,
                  started=outcome.started)
        out.append(outcome)
    return out


# ------------------------------------------------------------------------------------------------ cancel/resume


def cancel_run(sink: Sink, out_folder: str, request_id: str, *, backend: TaskBackend | None = None,
               publisher: Publisher | None = None) -> RunRecord:
    """Cancel a run's Earth Engine operations and end it CANCELLED (no tile-ready is published after)."""
    def mutate(r: RunRecord | None) -> tuple[RunRecord | None, RunRecord]:
        if r is None:
            raise LeafError(f"no run record {sink.uri(run_record_key(out_folder, request_id))}; check the "
                            "request id, --bucket and --folder")
        if r.state not in ACTIVE:
            raise LeafError(f"run {request_id} is {r.state}: only CLAIMED, QUEUED or PROCESSING runs can be "
                            "cancelled")
        r.tasks = [t.model_copy(update={"state": T_CANCELLED, "ended": now_iso()}) if t.state == T_QUEUED else t
                   for t in r.tasks]
        r.move(CANCELLED, "leaf cancel")
        r.claimed_at, r.lease_token, r.lease_until = 0.0, None, 0.0
        return r, r

    record = update_run(sink, out_folder, request_id, mutate)
    flying = [t for t in record.tasks if t.state in TASK_IN_FLIGHT]
    if flying:
        backend = backend or earth_engine_tasks()
        errors = backend.cancel([t.task_id for t in flying if t.task_id])
        cancelled = {t.key for t in flying}

        def mark(r: RunRecord | None) -> tuple[RunRecord | None, RunRecord | None]:
            if r is None:
                return None, None
            # A cancel Earth Engine refused (the task had just finished) leaves the task as it is: a resume's
            # reconcile then records how it ended.
            r.tasks = [t.model_copy(update={"state": T_CANCELLED, "ended": now_iso()})
                       if t.key in cancelled and t.state in TASK_IN_FLIGHT and not errors.get(t.task_id or "")
                       else t for t in r.tasks]
            r.touch()
            return r, r

        record = update_run(sink, out_folder, request_id, mark) or record
    announce(sink, out_folder, request_id, publisher)
    return record


def resume_run(sink: Sink, out_folder: str, request_id: str, *, backend: TaskBackend | None = None,
               publisher: Publisher | None = None, config: LifecycleConfig | None = None,
               clock: Callable[[], float] = time.time) -> RunOutcome:
    """Queue again what is missing or failed (new attempts, new requestIds), skip complete tasks, and start
    what fits now; the reconciler does the rest."""
    from .service import present_objects

    config = config or LifecycleConfig.from_env()
    current = read_run(sink, out_folder, request_id)
    if current is None:
        raise LeafError(f"no run record {sink.uri(run_record_key(out_folder, request_id))}; check the request "
                        "id, --bucket and --folder")
    if not current.tasks:
        raise LeafError(f"run {request_id} has no Earth Engine tasks ({current.backend} backend): re-send its "
                        "request instead (rerun skip_existing skips complete items)")
    present = present_objects(sink, [k for t in current.tasks if t.state == T_COMPLETE for k in t.objects])
    bad = {k for d in current.degraded.values() for k in d.problems}  # replaced since by files failing the check
    lost = {t.key for t in current.tasks if t.state == T_COMPLETE
            and any(k not in present or k in bad for k in t.objects)}
    token = uuid.uuid4().hex

    def mutate(r: RunRecord | None) -> tuple[RunRecord | None, RunRecord]:
        assert r is not None
        if r.state == "SUCCEEDED" and not lost:
            raise LeafError(f"run {request_id} SUCCEEDED and every object is present and passes its check: "
                            "nothing to resume")
        if r.state in ACTIVE and r.lease_token and r.lease_until > clock():
            raise LeafError(f"run {request_id} is being reconciled right now; try again in a few minutes")
        again = (T_FAILED, T_CANCELLED)
        r.tasks = [t.model_copy(update={"state": T_QUEUED, "not_before": 0.0, "attempt_base": t.attempts})
                   if t.state in again or t.key in lost else t for t in r.tasks]
        if r.state not in ACTIVE:
            r.move(CLAIMED, "leaf resume")
            r.attempt += 1
            r.finished = None
        r.claim_token, r.claimed_at = token, clock()
        r.touch()
        return r, r

    record = update_run(sink, out_folder, request_id, mutate)
    mark_active(sink, out_folder, request_id)
    backend = backend or earth_engine_tasks()
    ops = backend.operations()
    p = Pass(record, token)
    try:
        started = submit_queued(sink, p, backend, Slots.from_operations(ops, config.max_in_flight),
                                time.monotonic() + config.budget_s, config, clock)

        def finish(r: RunRecord) -> None:
            settle_run_state(r)

        record = save(sink, p, finish)
    except BaseException:
        _give_back(sink, out_folder, request_id, token)
        raise
    return RunOutcome(request_id, out_folder, "resumed", record.state, started, record.counts())


def summary(record: RunRecord) -> dict[str, Any]:
    """Counts and EECU of a record, for status and the CLI."""
    done = sum(1 for t in record.tasks if t.state in TASK_DONE)
    return {"tasks": len(record.tasks), "done": done, "counts": record.counts(),
            "eecu_hours": round(record.eecu_hours(), 6), "estimate": record.estimate,
            "in_flight": sum(1 for t in record.tasks if t.state in (T_PENDING, T_RUNNING))}
