"""The request side of the service: one production message → one run record → jobs started once.

The run record (``{out_folder}/_runs/{request_id}.json``) is the typed :class:`~leaf_engine.catalogue.runs.RunRecord`;
its states and transitions are defined there, and every write goes through ``update_run``.

At-least-once delivery is made safe here: the record is created with generation precondition 0, so of two
deliveries of one message only one claims the run; the other sees CLAIMED (and asks for redelivery until the
claim is done or, after :data:`CLAIM_LEASE_S`, abandoned) or a started run (and starts nothing). The claim lease is
shorter than the ack deadline, and a handler that fails after claiming releases the claim, so a redelivery after a
crash takes the run over; the reconciler (:mod:`leaf_engine.reconcile`) also takes over an abandoned claim.

On the Earth Engine backend the claim lists every export as a QUEUED task; the handler starts what fits in the
project's free task slots (``LEAF_MAX_TASKS_IN_FLIGHT``) and in its time budget (``LEAF_HANDLER_BUDGET_S``) and
leaves the rest to the reconciler.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import admission, eecu, logs, reconcile
from .catalogue import update_json
from .catalogue.expectations import expectations, record_expectations
from .catalogue.records import COMPLETE, PENDING, SKIPPED, CatalogueResult, ObjectEvent, catalogue_object
from .catalogue.runs import (
    CLAIMED,
    ENDED,
    FAILED,
    INVALID,
    PROCESSING,
    RERUNNABLE,
    SUCCEEDED,
    TRANSITIONS,
    RunRecord,
    create_run,
    list_runs,
    new_run,
    read_run,
    update_run,
)
from .catalogue.stac import collection_id, ensure_root_catalog, new_collection, now_iso
from .catalogue.tile_ready import Publisher
from .decoding import clip, decode_json, excerpt
from .errors import LeafError, Problem, RequestError, TransientError, jsonable
from .limits import Limits
from .naming import (
    CATALOG_DIR,
    ERRORS_DIR,
    RUNS_DIR,
    collection_key,
    error_record_key,
    error_records_prefix,
    item_key,
    run_record_key,
)
from .plan import Plan, make_plan
from .request import FOLDER_PART_RE, MAX_FOLDER_CHARS, ProductionRequest, gcs_bucket_problem, parse_request
from .sinks import GcsSink, Sink, SinkError, parse_gs_uri

ERROR_SCHEMA = "leaf-error/1"
CLAIM_LEASE_S = reconcile.LEASE_S
"""A CLAIMED run whose handler has not moved it on within this time is taken over (by a redelivery or the
reconciler). Shorter than the subscription's ack deadline, longer than the handler's start budget (default; the
deployment may set LEAF_CLAIM_LEASE_S)."""
BACKENDS = ("gee", "local", "external")
"""``external``: start nothing; the run record lists the expected objects and another producer writes them."""


class InProgress(TransientError):
    """Another delivery of this request holds a fresh claim; redeliver later."""


@dataclass(frozen=True)
class ServiceConfig:
    """Configuration from the environment (see README: service configuration)."""

    project: str | None = None
    backend: str = "gee"
    tile_ready_topic: str | None = None
    errors_uri: str | None = None
    ee_url: str | None = None
    allowed_outputs: tuple[tuple[str, str], ...] | None = None
    """LEAF_ALLOWED_OUTPUTS as (bucket, prefix) pairs; None: not restricted (see leaf_engine.admission)."""
    allowed_networks: tuple[str, ...] = ()
    """LEAF_ALLOWED_NETWORKS: gs:// prefixes a request's ``networks`` file may be under."""
    limits: Limits = field(default_factory=Limits)
    """Admission limits (LEAF_LIMIT_<NAME>)."""
    lifecycle: reconcile.LifecycleConfig = field(default_factory=reconcile.LifecycleConfig)
    max_eecu_hours: float | None = None
    """LEAF_MAX_EECU_HOURS: refuse requests estimated above this (leaf_engine.eecu)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceConfig:
        e = os.environ if env is None else env
        backend = e.get("LEAF_BACKEND", "gee").strip().lower() or "gee"
        if backend not in BACKENDS:
            raise LeafError(f"LEAF_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
        errors_uri = e.get("LEAF_ERRORS_URI") or None
        if errors_uri:
            parse_gs_uri(errors_uri)
        budget = e.get("LEAF_MAX_EECU_HOURS", "").strip()
        try:
            max_eecu = float(budget) if budget else None
        except ValueError:
            max_eecu = -1.0
        if max_eecu is not None and not max_eecu > 0:
            raise LeafError(f"LEAF_MAX_EECU_HOURS={budget!r} must be a positive number of EECU-hours; unset it for "
                            "no budget")
        return cls(e.get("GOOGLE_CLOUD_PROJECT") or None, backend, e.get("LEAF_TILE_READY_TOPIC") or None,
                   errors_uri, e.get("LEAF_EE_URL") or None,
                   allowed_outputs=admission.parse_allowed_outputs(e.get(admission.ALLOWED_OUTPUTS_ENV)),
                   allowed_networks=admission.parse_allowed_networks(e.get(admission.ALLOWED_NETWORKS_ENV)),
                   limits=Limits.from_env(e), lifecycle=reconcile.LifecycleConfig.from_env(e),
                   max_eecu_hours=max_eecu)


@dataclass(frozen=True)
class RequestMessage:
    """A production message as the function received it (data already base64-decoded)."""

    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    message_id: str = ""


@dataclass(frozen=True)
class StartResult:
    status: str
    """``started``, ``duplicate``, ``nothing_to_do`` (every item already complete), ``invalid`` or ``failed``."""
    request_id: str | None = None
    record_uri: str | None = None
    tasks: Any = None
    problems: list[dict[str, Any]] = field(default_factory=list)


Starter = Callable[[ProductionRequest, Plan, Sink], Any]
"""Starts the production of ``plan`` (a subset of the request's plan) and returns JSON-able task ids."""


# ------------------------------------------------------------------------------------------------- records


def new_run_record(req: ProductionRequest, plan: Plan, config: ServiceConfig, message_id: str,
                   attempt: int = 1, skipped: list[str] | None = None) -> RunRecord:
    """A fresh CLAIMED record: the normalised request and, on Earth Engine, one QUEUED task per file to make."""
    skipped = skipped or []
    todo = _without_items(plan, set(skipped))
    return new_run(
        req.request_id, attempt=attempt, claimed_by=message_id, backend=config.backend, project=config.project,
        bucket=req.GCS_bucket, out_folder=req.out_folder, collection_id=collection_id(req.request_id),
        rerun=req.rerun, request=req.to_dict(), warnings=list(req.warnings), totals=plan.totals,
        estimate={"eecu_hours": eecu.estimate(req, plan)["eecu_hours"]},
        skipped=skipped, tasks=reconcile.planned_tasks(todo) if config.backend == "gee" else [])


MAX_RECORDED_PROBLEMS = 50
"""An error record lists at most this many problems (and says how many there were)."""


def _known_request_id(msg: RequestMessage, raw: Any) -> Any:
    """The request id a message claims (attribute first, then the body's), whatever its type; None if none."""
    rid = msg.attributes.get("request_id")
    if rid is None and isinstance(raw, dict):
        rid = raw.get("request_id")
    return rid


def _error_id(msg: RequestMessage, raw: Any = None) -> str:
    # Deterministic: a redelivered bad message overwrites its own record instead of adding one.
    return admission.error_id(_known_request_id(msg, raw), msg.data)


def _message_token(msg: RequestMessage) -> str:
    """The message's part of its error record's name: unique per message id."""
    if msg.message_id:
        return admission.sanitized_message_id(msg.message_id)
    return "nomsgid-" + hashlib.sha256(msg.data).hexdigest()[:16]


def error_record(msg: RequestMessage, error_id: str, problems: list[dict[str, Any]], kind: str,
                 request_id: Any = None) -> dict[str, Any]:
    return {
        "schema": ERROR_SCHEMA, "error_id": error_id, "request_id": clip(request_id), "error": kind,
        "received_at": now_iso(), "message_id": clip(msg.message_id),
        "attributes": {clip(k, 100): clip(v) for k, v in list(msg.attributes.items())[:100]},
        "problems": [jsonable(p) for p in problems[:MAX_RECORDED_PROBLEMS]], "problems_total": len(problems),
        "data_bytes": len(msg.data), "data_excerpt": excerpt(msg.data),
    }


def _raw_destination(raw: Any, allowed: tuple[tuple[str, str], ...] | None) -> tuple[str | None, str]:
    """Bucket and folder named by a message that failed validation (legacy spellings too), when they are valid
    names under the allowed outputs; else (None, "") and the record goes to LEAF_ERRORS_URI."""
    if not isinstance(raw, dict):
        return None, ""
    bucket = raw.get("GCS_bucket", raw.get("bucket"))
    folder = raw.get("out_folder", raw.get("folder", ""))
    if not isinstance(bucket, str) or gcs_bucket_problem(bucket) or not isinstance(folder, str):
        return None, ""
    folder = folder.strip("/")
    parts = folder.split("/") if folder else []
    if len(folder) > MAX_FOLDER_CHARS or not all(FOLDER_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts):
        return None, ""
    if parts and parts[0] in (RUNS_DIR, ERRORS_DIR, CATALOG_DIR):
        return None, ""
    if not admission.output_allowed(allowed, bucket, folder):
        return None, ""
    return bucket, folder


# ------------------------------------------------------------------------------------------------ handling


class RequestService:
    """Handles production messages. ``sink_for(bucket)`` and ``starter`` are injectable for tests and tools."""

    def __init__(self, config: ServiceConfig, *, sink_for: Callable[[str], Sink] | None = None,
                 starter: Starter | None = None, clock: Callable[[], float] = time.time,
                 tasks: reconcile.TaskBackend | None = None, run_finished: Publisher | None = None):
        self.config = config
        self.sink_for = sink_for or (lambda bucket: GcsSink(bucket))
        self.starter = starter or backend_starter(config)
        self.clock = clock
        self.tasks = tasks
        """Earth Engine tasks (default: the real client, created when the first request needs it)."""
        self.run_finished = run_finished

    # -- invalid messages ---------------------------------------------------------------------------------
    def reject(self, msg: RequestMessage, problems: list[Any], kind: str = "invalid_request", *,
               raw: Any = None) -> StartResult:
        """Write one error record (next to the outputs when they are allowed, else under LEAF_ERRORS_URI), log
        it, and acknowledge. ``raw``: the decoded body, when it decoded. Raises only TransientError."""
        problems = [p.to_dict() if isinstance(p, Problem) else p for p in problems]
        request_id = _known_request_id(msg, raw)
        error_id = _error_id(msg, raw)
        record = error_record(msg, error_id, problems, kind, request_id)
        where = self._write_error(msg, raw, error_id, record)
        logs.error(f"invalid production message ({len(problems)} problem(s)); error record: {where or 'none'}",
                   request_id=error_id, problems=record["problems"], message_id=clip(msg.message_id))
        return StartResult("invalid", error_id, where, problems=record["problems"])

    def _write_error(self, msg: RequestMessage, raw: Any, error_id: str, record: dict[str, Any]) -> str | None:
        bucket, folder = _raw_destination(raw, self.config.allowed_outputs)
        targets = [(bucket, folder)] if bucket else []
        if self.config.errors_uri:
            targets.append(parse_gs_uri(self.config.errors_uri))
        transient: TransientError | None = None
        for b, prefix in targets:
            sink = self.sink_for(b)
            key = error_record_key(prefix, error_id, _message_token(msg))
            try:
                sink.write_json(key, record)
                if b == bucket and error_id == record["request_id"]:
                    self._mark_invalid(sink, folder, error_id, record)
                return sink.uri(key)
            except TransientError as e:
                transient = e
                logs.warning(f"could not write the error record to {sink.uri(key)}: {e}", request_id=error_id)
            except (SinkError, LeafError) as e:
                logs.warning(f"could not write the error record to {sink.uri(key)}: {e}", request_id=error_id)
            except Exception as e:  # a missing bucket surfaces as the SDK's NotFound: try the next target
                logs.warning(f"could not write the error record to {sink.uri(key)}: {type(e).__name__}: {e}",
                             request_id=error_id)
        if transient is not None:  # nothing written, and retrying may help: have the message redelivered
            raise transient
        return None

    def _mark_invalid(self, sink: Sink, folder: str, request_id: str, record: dict[str, Any]) -> None:
        def mutate(doc: RunRecord | None) -> tuple[RunRecord | None, None]:
            if INVALID not in TRANSITIONS[doc.state if doc is not None else None]:
                return None, None  # never overwrite a real run with a bad copy of its message
            fresh = new_run(request_id, state=INVALID, out_folder=folder, errors=record["problems"])
            if doc is not None:
                fresh.history = [*doc.history, *fresh.history]
            return fresh, None

        update_run(sink, folder, request_id, mutate)

    # -- valid messages -----------------------------------------------------------------------------------
    def handle(self, msg: RequestMessage) -> StartResult:
        """One answer per message: a run started (or found), or one error record. Raises only TransientError."""
        try:
            return self._handle(msg)
        except TransientError:
            raise
        except Exception as e:  # a bug must not turn a message into a redelivery loop: record it, acknowledge
            logs.error(f"the service failed on a message: {type(e).__name__}: {clip(str(e))}",
                       message_id=clip(msg.message_id), stack_trace=traceback.format_exc())
            problem = Problem("(service)", type(e).__name__, f"the service could not handle this message "
                              f"({clip(str(e))}); it was recorded and acknowledged: report it to the operators")
            return self.reject(msg, [problem], "internal_error")

    def _handle(self, msg: RequestMessage) -> StartResult:
        try:
            raw = decode_json(msg.data, max_bytes=self.config.limits.request_bytes)
        except RequestError as e:
            return self.reject(msg, e.problems)
        try:
            req = parse_request(raw, request_id=msg.attributes.get("request_id"), limits=self.config.limits,
                                service=True, network_prefixes=self.config.allowed_networks)
        except RequestError as e:
            return self.reject(msg, e.problems, raw=raw)
        if req.out_location != "storage" or not req.GCS_bucket:
            problem = Problem("out_location", req.out_location,
                              "the cloud service writes to GCS: use out_location 'storage' with a GCS_bucket")
            return self.reject(msg, [problem], raw=raw)
        refused = admission.output_problems(self.config.allowed_outputs, req)
        if refused:
            return self.reject(msg, refused, "forbidden_destination", raw=raw)
        plan = make_plan(req)  # once per message: the budget, the conflict check and the start all read it
        over = self._over_budget(req, plan)
        if over is not None:
            return self.reject(msg, [over], "over_budget", raw=raw)
        try:
            sink = self.sink_for(req.GCS_bucket)
            conflict = admission.conflict_problems(list_runs(sink, req.out_folder), req,
                                                   set(plan.expected_objects()), sink=sink)
            if conflict:
                return self.reject(msg, conflict, "conflicting_request", raw=raw)
            return self.start(req, msg.message_id or _error_id(msg, raw), plan)
        except SinkError as e:  # no such bucket, no permission: retrying will not help
            problem = Problem("GCS_bucket", req.GCS_bucket, f"cannot write the run record: {e}")
            return self.reject(msg, [problem], "unwritable_destination", raw=raw)

    def _over_budget(self, req: ProductionRequest, plan: Plan) -> Problem | None:
        """The request's EECU estimate (of ``plan``, the request's plan) against its ``max_eecu_hours`` and
        LEAF_MAX_EECU_HOURS (the lower)."""
        limits = [(v, k) for v, k in ((req.max_eecu_hours, "max_eecu_hours"),
                                       (self.config.max_eecu_hours, "LEAF_MAX_EECU_HOURS")) if v is not None]
        if not limits:
            return None
        limit, key = min(limits)
        est = eecu.estimate(req, plan)["eecu_hours"]
        if est <= limit:
            return None
        return Problem(key, limit, f"the request is estimated at {est:,.1f} EECU-hours (leaf_engine.eecu model), "
                                   f"over the budget of {limit:,.1f}; {eecu.split_advice(est, limit, len(plan.jobs))}")

    def start(self, req: ProductionRequest, message_id: str, plan: Plan | None = None) -> StartResult:
        """Claim the run and start its jobs. ``plan``: the request's plan when the caller already made it."""
        sink = self.sink_for(req.GCS_bucket or "")
        plan = plan if plan is not None else make_plan(req)
        key = run_record_key(req.out_folder, req.request_id)
        ctx = {"request_id": req.request_id}
        # First write: a missing or unwritable bucket fails here, as an unwritable destination.
        reconcile.mark_active(sink, req.out_folder, req.request_id)
        # Read-only, so done before the claim: the claim then holds everything the reconciler needs.
        skipped = self._complete_items(sink, req, plan) if req.rerun == "skip_existing" else []
        record = self._claim(sink, req, plan, message_id, skipped)
        if record is None:
            logs.info("duplicate request: the run is already started; nothing to do", **ctx)
            return StartResult("duplicate", req.request_id, sink.uri(key))
        token = record.claim_token or ""
        try:
            return self._start_claimed(sink, req, plan, record, skipped)
        except TransientError:
            self._release_claim(sink, req, token)  # so that the redelivery may start at once, not after the lease
            raise
        except reconcile.LostLease as e:
            logs.warning(f"the run was taken over while starting: {e}", **ctx)
            return StartResult("duplicate", req.request_id, sink.uri(key))
        except LeafError as e:
            self._finish(sink, req, token, FAILED, errors=[str(e)])
            logs.error(f"the backend refused the request: {e}", **ctx, state=FAILED)
            return StartResult("failed", req.request_id, sink.uri(key), problems=[{"error": str(e)}])
        except Exception as e:
            self._finish(sink, req, token, FAILED, errors=[f"{type(e).__name__}: {e}"])
            logs.error(f"starting the jobs failed: {type(e).__name__}: {e}", **ctx, state=FAILED,
                       stack_trace=traceback.format_exc())
            return StartResult("failed", req.request_id, sink.uri(key), problems=[{"error": str(e)}])
        except BaseException:
            self._release_claim(sink, req, token)
            raise

    def _start_claimed(self, sink: Sink, req: ProductionRequest, plan: Plan, record: RunRecord,
                       skipped: list[str]) -> StartResult:
        key = run_record_key(req.out_folder, req.request_id)
        ctx = {"request_id": req.request_id}
        token = record.claim_token or ""
        write_collection(sink, req, skipped, record, plan)
        todo = _without_items(plan, set(skipped))
        if not todo.files:
            self._finish(sink, req, token, SUCCEEDED)
            logs.info("every item is already complete (rerun=skip_existing); nothing started", **ctx)
            return StartResult("nothing_to_do", req.request_id, sink.uri(key), [])
        if self.config.backend == "gee":
            return self._start_tasks(sink, req, record)
        tasks = jsonable(self.starter(req, todo, sink), _task_ref)

        def started(doc: RunRecord) -> None:
            doc.backend_tasks = tasks
            if doc.state == CLAIMED:  # the catalogue may already have finished it (fast local backend)
                doc.move(PROCESSING)
                doc.claimed_at = 0.0

        reconcile.save(sink, reconcile.Pass(record, token), started, holds=_holds_claim)
        logs.info(f"production started: {len(todo.files)} file(s), {len(skipped)} item(s) skipped", **ctx,
                  state=PROCESSING)
        return StartResult("started", req.request_id, sink.uri(key), tasks)

    def _start_tasks(self, sink: Sink, req: ProductionRequest, record: RunRecord) -> StartResult:
        """Start the queued Earth Engine tasks that fit now; the reconciler starts the others."""
        cfg = self.config.lifecycle
        deadline = time.monotonic() + cfg.budget_s
        backend = self.tasks or reconcile.earth_engine_tasks(self.config.project)
        ops = backend.operations()
        p = reconcile.Pass(record, record.claim_token or "")
        started = reconcile.submit_queued(sink, p, backend, reconcile.Slots.from_operations(ops, cfg.max_in_flight),
                                          deadline, cfg, self.clock)
        record = reconcile.save(sink, p, reconcile.settle_run_state, holds=_holds_claim)
        queued = sum(1 for t in record.tasks if t.state == "QUEUED")
        logs.info(f"production started: {started} export(s) started, {queued} queued, {len(record.skipped)} "
                  "item(s) skipped", request_id=req.request_id, state=record.state)
        if record.state in ENDED:
            reconcile.announce(sink, req.out_folder, req.request_id, self.run_finished)
        return StartResult("started", req.request_id, sink.uri(run_record_key(req.out_folder, req.request_id)),
                           [t.model_dump(mode="json") for t in record.tasks])

    def _claim(self, sink: Sink, req: ProductionRequest, plan: Plan, message_id: str, skipped: list[str]
               ) -> RunRecord | None:
        """Create the run record, or take over a re-runnable, released or abandoned one. None = already started."""
        record = new_run_record(req, plan, self.config, message_id, skipped=skipped)
        # Tells our own write from another handler's: a create whose response was lost, retried, reads back 412.
        record.claim_token = uuid.uuid4().hex
        record.claimed_at = self.clock()
        if create_run(sink, record):
            return record

        def mutate(doc: RunRecord | None) -> tuple[RunRecord | None, RunRecord | None]:
            if doc is None:
                return record, record
            if doc.claim_token == record.claim_token:
                return None, doc  # our own claim already landed
            if doc.state == CLAIMED and self.clock() - doc.claimed_at < self.config.lifecycle.lease_s:
                # Someone (maybe an earlier delivery of this very message, past its ack deadline) is starting
                # the jobs right now: wait for it rather than start them a second time.
                raise InProgress(f"run {req.request_id} is being started by message {doc.claimed_by}; "
                                 "redeliver later")
            if doc.state != CLAIMED and doc.state not in RERUNNABLE:
                return None, None  # started already (QUEUED, PROCESSING, SUCCEEDED): nothing to do
            fresh = record.model_copy(deep=True)
            fresh.attempt = doc.attempt + 1
            before = {t.key: t.attempts for t in doc.tasks}
            for t in fresh.tasks:  # later attempts get new Earth Engine requestIds
                t.attempts = t.attempt_base = before.get(t.key, 0)
            fresh.history = [*doc.history, *fresh.history]
            return fresh, fresh

        return update_run(sink, req.out_folder, req.request_id, mutate)

    def _complete_items(self, sink: Sink, req: ProductionRequest, plan: Plan) -> list[str]:
        """Items whose every object already exists (rerun=skip_existing does not produce them again)."""
        present = present_objects(sink, plan.expected_objects())
        by_item: dict[str, list[str]] = {}
        for f in plan.files:
            by_item.setdefault(f.name.item_id, []).extend(s.key() for s in f.shards)
        return sorted(i for i, keys in by_item.items() if all(k in present for k in keys))

    def _release_claim(self, sink: Sink, req: ProductionRequest, token: str) -> None:
        def mutate(doc: RunRecord | None) -> tuple[RunRecord | None, None]:
            if doc is None or doc.state != CLAIMED or doc.claim_token != token:
                return None, None
            doc.claimed_at = 0.0
            doc.touch()
            return doc, None

        try:
            update_run(sink, req.out_folder, req.request_id, mutate)
        except Exception as e:  # the claim then expires after its lease
            logs.warning(f"could not release the claim: {type(e).__name__}: {e}", request_id=req.request_id)

    def _finish(self, sink: Sink, req: ProductionRequest, token: str, state: str, **fields: Any) -> None:
        def mutate(doc: RunRecord | None) -> tuple[RunRecord | None, None]:
            if doc is None or doc.claim_token != token or state not in TRANSITIONS[doc.state]:
                return None, None  # a later attempt took the run over, or it moved on meanwhile
            for k, v in fields.items():
                setattr(doc, k, v)
            doc.move(state)
            doc.claimed_at = 0.0
            return doc, None

        update_run(sink, req.out_folder, req.request_id, mutate)
        reconcile.announce(sink, req.out_folder, req.request_id, self.run_finished)


def _holds_claim(record: RunRecord, token: str) -> bool:
    return record.claim_token == token


def write_collection(sink: Sink, req: ProductionRequest, skipped: list[str], record: RunRecord | None = None,
                     plan: Plan | None = None) -> None:
    """The run's STAC collection with every item pending (or skipped), and the root catalog; idempotent.
    ``plan``: the request's whole plan (made here when not given)."""
    items, objects = expectations(req, plan if plan is not None else make_plan(req))
    run = record.to_doc() if record is not None else None

    def mutate(doc: dict | None) -> tuple[dict | None, None]:
        coll = doc or new_collection(req.request_id, items, f"LEAF products of request {req.request_id}",
                                     run=run, sink=sink, objects=objects)
        statuses = coll.setdefault("leaf:items", {})
        before = dict(statuses)
        for item_id in items:
            if item_id in skipped:
                statuses[item_id] = SKIPPED
            else:
                statuses.setdefault(item_id, PENDING)
        return (coll if doc is None or statuses != before else None), None

    update_json(sink, collection_key(req.out_folder, req.request_id), mutate)
    ensure_root_catalog(sink, req.out_folder, req.request_id)


def _without_items(plan: Plan, skipped: set[str]) -> Plan:
    if not skipped:
        return plan
    return Plan(plan.request_id, [j for j in plan.jobs if j["job_id"] not in skipped],
                [f for f in plan.files if f.name.item_id not in skipped])


def present_objects(sink: Sink, keys: list[str]) -> set[str]:
    """Which of ``keys`` exist, with one listing per folder instead of one request per object."""
    present: set[str] = set()
    for prefix in sorted({k.rsplit("/", 1)[0] + "/" for k in keys}):
        present.update(sink.list(prefix))
    return present & set(keys)


def _task_ref(value: Any) -> Any:
    """A backend's task handle as JSON: its id or name when it has one."""
    for attr in ("id", "task_id", "name"):
        if isinstance(getattr(value, attr, None), str):
            return getattr(value, attr)
    return repr(value)


# ------------------------------------------------------------------------------------------------ backends


def backend_starter(config: ServiceConfig) -> Starter:
    """The configured backend, imported only when a request needs it."""
    if config.backend == "external":
        return lambda req, plan, sink: {"external": [f.name.key() for f in plan.files]}
    if config.backend == "local":
        def start_local(req: ProductionRequest, plan: Plan, sink: Sink) -> Any:
            local = importlib.import_module("leaf_engine.backends.local")
            return local.produce(req, sink=sink)

        return start_local

    def start_gee(req: ProductionRequest, plan: Plan, sink: Sink) -> Any:
        gee = importlib.import_module("leaf_engine.backends.gee")
        return gee.start_exports(req, project=config.project, plan=plan)

    return start_gee


# ------------------------------------------------------------------------------------------- message decoding


def decode_pubsub_data(data: Any) -> bytes:
    """Pub/Sub ``message.data`` (base64 text) → bytes. Raises ValueError when it is not base64."""
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii")
    return base64.b64decode(str(data), validate=True)


# ----------------------------------------------------------------------------------------------- local path


def catalogue_local_run(req: ProductionRequest, sink: Sink, *, publisher: Publisher | None = None,
                        derived_from: dict[str, list[str]] | None = None) -> list[CatalogueResult]:
    """Manifests for a run the local backend has just written: run record, items, collection, root catalog.

    Uses the same catalogue code as the cloud: every expected object that exists is catalogued as if its
    finalize event had arrived. Then each item gains its quicklooks (as overview/thumbnail assets) and
    ``derived_from`` links to ``derived_from[item_id]`` (the input scenes' STAC items).
    """
    from .catalogue.stac import add_local_extras

    plan = make_plan(req)
    record = new_run_record(req, plan, ServiceConfig(backend="local"), "local")
    record.backend_tasks = {"local": "done"}
    record.move(PROCESSING)
    record.claimed_at = 0.0
    sink.write_json(run_record_key(req.out_folder, req.request_id), record.to_doc())
    items, objects = expectations(req, plan)
    sink.write_json(collection_key(req.out_folder, req.request_id), new_collection(
        req.request_id, items, f"LEAF products of request {req.request_id}", run=record.to_doc(), sink=sink,
        objects=objects))
    ensure_root_catalog(sink, req.out_folder, req.request_id)
    results = []
    for obj in plan.expected_objects():
        stat = sink.stat(obj)
        if stat is None:
            continue
        results.append(catalogue_object(sink, ObjectEvent(obj, f"local:{obj}:{stat[1]}", size=stat[0],
                                                          md5_hash=stat[1]), publisher=publisher))
    add_local_extras(sink, record.to_doc(), derived_from or {})
    return results


# ------------------------------------------------------------------------------------------------- status


def run_status(sink: Sink, request_id: str, out_folder: str = "") -> dict[str, Any]:
    """Where a run stands: state, tasks, EECU (estimate vs measured), expected vs present objects, complete
    items, problems and errors.

    Raises LeafError when neither a run record nor an error record exists for ``request_id``.
    """
    record = read_run(sink, out_folder, request_id)
    if record is None:
        from .outputs import error_records

        errs = error_records(sink, out_folder, request_id)  # one per invalid message, newest first
        if not errs:
            raise LeafError(f"no run record {sink.uri(run_record_key(out_folder, request_id))} and no error record "
                            f"under {sink.uri(error_records_prefix(out_folder, request_id))}*; "
                            "check the request id, --bucket/--out and --folder (the request's out_folder)")
        return {"request_id": request_id, "state": INVALID, "errors": errs[0][1].get("problems", []),
                "error_record": sink.uri(errs[0][0]), "error_records": [sink.uri(k) for k, _ in errs]}
    doc = record.to_doc()
    if record.request is None and not record.objects:  # an INVALID record: no request to derive from
        return {"request_id": request_id, "state": record.state, "errors": record.errors, "expected": 0,
                "present": 0, "missing": [], "items": {}, "complete_items": [], "problems": {},
                "record": sink.uri(run_record_key(out_folder, request_id))}
    exp = record_expectations(doc)
    expected = list(exp.objects)
    present = present_objects(sink, expected)
    coll = sink.read_json(collection_key(out_folder, request_id))
    items = (coll[0].get("leaf:items", {}) if coll else {}) or {k: PENDING for k in exp.items}
    problems: dict[str, Any] = {}
    for it in exp.items.values():
        item = sink.read_json(item_key(out_folder, it.region, it.year, it.period))
        if item is not None:
            problems.update(item[0]["properties"].get("leaf:problems", {}))
    return {
        "request_id": request_id, "state": record.state, "attempt": record.attempt,
        "backend": record.backend, "tasks": [t.model_dump(mode="json") for t in record.tasks] or record.backend_tasks,
        "task_summary": reconcile.summary(record), "created": record.created, "updated": record.updated,
        "expected": len(expected), "present": sum(1 for k in expected if k in present),
        "missing": [k for k in expected if k not in present],
        "items": items, "complete_items": sorted(k for k, s in items.items() if s in (COMPLETE, SKIPPED)),
        "problems": problems, "errors": record.errors, "finished": record.finished,
        "degraded": {k: v.model_dump(mode="json") for k, v in record.degraded.items()},
        "record": sink.uri(run_record_key(out_folder, request_id)),
    }


__all__ = ["CLAIM_LEASE_S", "COMPLETE", "InProgress", "RequestMessage", "RequestService", "ServiceConfig",
           "StartResult", "backend_starter", "catalogue_local_run", "decode_pubsub_data", "new_run_record",
           "run_status", "write_collection"]
