"""The request side of the service: one production message → one run record → jobs started once.

State machine of a run record (``{out_folder}/_runs/{request_id}.json``)::

    (message) ──create-only──▶ CLAIMED ──jobs started──▶ PROCESSING ──every item complete──▶ SUCCEEDED
                                  │                         (catalogue)
                                  └──backend refused──▶ FAILED ──same request again──▶ CLAIMED (attempt + 1)
    invalid message with a request_id attribute ──▶ INVALID (may be re-sent, fixed, under the same id)

At-least-once delivery is made safe here: the record is created with generation precondition 0, so of two
deliveries of one message only one claims the run; the other sees CLAIMED (and asks for redelivery until the
claim is done or, after :data:`CLAIM_LEASE_S`, abandoned) or PROCESSING/SUCCEEDED (and starts nothing).
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

from . import admission, logs
from .catalogue import expectations_dict, update_json
from .catalogue.expectations import ExpectedItem
from .catalogue.records import COMPLETE, PENDING, SKIPPED, CatalogueResult, ObjectEvent, catalogue_object
from .catalogue.runs import CLAIMED, FAILED, INVALID, PROCESSING, SUCCEEDED, list_runs
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
from .sinks import GcsSink, PreconditionFailed, Sink, SinkError, parse_gs_uri

RUN_SCHEMA = "leaf-run/1"
ERROR_SCHEMA = "leaf-error/1"
CLAIM_LEASE_S = 900.0
"""A CLAIMED run whose handler has not moved it on within this time is taken over by a redelivery."""
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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceConfig:
        e = os.environ if env is None else env
        backend = e.get("LEAF_BACKEND", "gee").strip().lower() or "gee"
        if backend not in BACKENDS:
            raise LeafError(f"LEAF_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
        errors_uri = e.get("LEAF_ERRORS_URI") or None
        if errors_uri:
            parse_gs_uri(errors_uri)
        return cls(e.get("GOOGLE_CLOUD_PROJECT") or None, backend, e.get("LEAF_TILE_READY_TOPIC") or None,
                   errors_uri, e.get("LEAF_EE_URL") or None,
                   allowed_outputs=admission.parse_allowed_outputs(e.get(admission.ALLOWED_OUTPUTS_ENV)),
                   allowed_networks=admission.parse_allowed_networks(e.get(admission.ALLOWED_NETWORKS_ENV)),
                   limits=Limits.from_env(e))


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
                   attempt: int = 1) -> dict[str, Any]:
    now = now_iso()
    return {
        "schema": RUN_SCHEMA, "request_id": req.request_id, "state": CLAIMED, "attempt": attempt,
        "claimed_by": message_id, "claimed_at": time.time(), "created": now, "updated": now,
        "backend": config.backend, "project": config.project, "bucket": req.GCS_bucket,
        "out_folder": req.out_folder, "collection_id": collection_id(req.request_id),
        "rerun": req.rerun, "request": req.to_dict(), "warnings": list(req.warnings), "plan": plan.to_dict(),
        "expected_objects": plan.expected_objects(), **expectations_dict(req, plan),
        "skipped": [], "tasks": None, "errors": [], "history": [{"state": CLAIMED, "at": now}],
    }


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
                 starter: Starter | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.sink_for = sink_for or (lambda bucket: GcsSink(bucket))
        self.starter = starter or backend_starter(config)
        self.clock = clock

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
        def mutate(doc: dict | None) -> tuple[dict | None, None]:
            if doc is not None:
                return None, None  # never replace any run's record (FAILED ones too) with a bad copy of its message
            now = now_iso()
            return {"schema": RUN_SCHEMA, "request_id": request_id, "state": INVALID, "created": now,
                    "updated": now, "out_folder": folder, "errors": record["problems"],
                    "history": [{"state": INVALID, "at": now}]}, None

        update_json(sink, run_record_key(folder, request_id), mutate)

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
        try:
            conflict = admission.conflict_problems(list_runs(self.sink_for(req.GCS_bucket), req.out_folder), req,
                                                   set(make_plan(req).expected_objects()))
            if conflict:
                return self.reject(msg, conflict, "conflicting_request", raw=raw)
            return self.start(req, msg.message_id or _error_id(msg, raw))
        except SinkError as e:  # no such bucket, no permission: retrying will not help
            problem = Problem("GCS_bucket", req.GCS_bucket, f"cannot write the run record: {e}")
            return self.reject(msg, [problem], "unwritable_destination", raw=raw)

    def start(self, req: ProductionRequest, message_id: str) -> StartResult:
        sink = self.sink_for(req.GCS_bucket or "")
        plan = make_plan(req)
        key = run_record_key(req.out_folder, req.request_id)
        ctx = {"request_id": req.request_id}
        record = self._claim(sink, key, req, plan, message_id)
        if record is None:
            logs.info("duplicate request: the run is already started; nothing to do", **ctx)
            return StartResult("duplicate", req.request_id, sink.uri(key))
        try:
            skipped = self._complete_items(sink, req, plan) if req.rerun == "skip_existing" else []
            self._write_collection(sink, req, record, skipped)
        except TransientError:
            self._release_claim(sink, key)  # so that the redelivery may start at once, not after the lease
            raise
        todo = _without_items(plan, set(skipped))
        if not todo.files:
            self._finish(sink, key, record["claim_token"], SUCCEEDED, skipped=skipped, tasks=[])
            logs.info("every item is already complete (rerun=skip_existing); nothing started", **ctx)
            return StartResult("nothing_to_do", req.request_id, sink.uri(key), [])
        try:
            tasks = jsonable(self.starter(req, todo, sink), _task_ref)
        except TransientError:
            self._release_claim(sink, key)  # so that the redelivery may start at once
            raise
        except LeafError as e:
            self._finish(sink, key, record["claim_token"], FAILED, errors=[str(e)], skipped=skipped)
            logs.error(f"the backend refused the request: {e}", **ctx, state=FAILED)
            return StartResult("failed", req.request_id, sink.uri(key), problems=[{"error": str(e)}])
        except Exception as e:
            self._finish(sink, key, record["claim_token"], FAILED, errors=[f"{type(e).__name__}: {e}"], skipped=skipped)
            logs.error(f"starting the jobs failed: {type(e).__name__}: {e}", **ctx, state=FAILED,
                       stack_trace=traceback.format_exc())
            return StartResult("failed", req.request_id, sink.uri(key), problems=[{"error": str(e)}])
        self._record_tasks(sink, key, record["claim_token"], tasks, skipped)
        logs.info(f"production started: {len(todo.files)} file(s), {len(skipped)} item(s) skipped", **ctx,
                  state=PROCESSING)
        return StartResult("started", req.request_id, sink.uri(key), tasks)

    def _claim(self, sink: Sink, key: str, req: ProductionRequest, plan: Plan, message_id: str
               ) -> dict[str, Any] | None:
        """Create the run record, or take over a re-runnable, released or abandoned one. None = already started."""
        record = new_run_record(req, plan, self.config, message_id)
        # Tells our own write from another handler's: a create whose response was lost, retried, reads back 412.
        record["claim_token"] = uuid.uuid4().hex
        try:
            sink.write_json(key, record, if_generation_match=0)
            return record
        except PreconditionFailed:
            pass

        def mutate(doc: dict | None) -> tuple[dict | None, dict | None]:
            if doc is None:
                return record, record
            if doc.get("claim_token") == record["claim_token"]:
                return None, doc  # our own claim already landed
            state = doc.get("state")
            if state in (PROCESSING, SUCCEEDED):
                return None, None
            if state == CLAIMED and self.clock() - float(doc.get("claimed_at", 0)) < CLAIM_LEASE_S:
                # Someone (maybe an earlier delivery of this very message, past its ack deadline) is starting
                # the jobs right now: wait for it rather than start them a second time.
                raise InProgress(f"run {req.request_id} is being started by message {doc.get('claimed_by')}; "
                                 "redeliver later")
            fresh = new_run_record(req, plan, self.config, message_id, int(doc.get("attempt", 1)) + 1)
            fresh["claim_token"] = record["claim_token"]
            fresh["history"] = [*doc.get("history", []), *fresh["history"]]
            return fresh, fresh

        return update_json(sink, key, mutate)

    def _complete_items(self, sink: Sink, req: ProductionRequest, plan: Plan) -> list[str]:
        """Items whose every object already exists (rerun=skip_existing does not produce them again)."""
        present = present_objects(sink, plan.expected_objects())
        by_item: dict[str, list[str]] = {}
        for f in plan.files:
            by_item.setdefault(f.name.item_id, []).extend(s.key() for s in f.shards)
        return sorted(i for i, keys in by_item.items() if all(k in present for k in keys))

    def _write_collection(self, sink: Sink, req: ProductionRequest, record: dict[str, Any], skipped: list[str]
                          ) -> None:
        items = {k: ExpectedItem.from_dict(v) for k, v in record["items"].items()}

        def mutate(doc: dict | None) -> tuple[dict | None, None]:
            coll = doc or new_collection(req.request_id, items, f"LEAF products of request {req.request_id}",
                                         run=record, sink=sink)
            statuses = coll.setdefault("leaf:items", {})
            for item_id in items:
                if item_id in skipped:
                    statuses[item_id] = SKIPPED
                else:
                    statuses.setdefault(item_id, PENDING)
            return coll, None

        update_json(sink, collection_key(req.out_folder, req.request_id), mutate)
        ensure_root_catalog(sink, req.out_folder, req.request_id)

    def _release_claim(self, sink: Sink, key: str) -> None:
        def mutate(doc: dict | None) -> tuple[dict | None, None]:
            if doc is None or doc.get("state") != CLAIMED:
                return None, None
            return {**doc, "claimed_at": 0, "updated": now_iso()}, None

        update_json(sink, key, mutate)

    def _record_tasks(self, sink: Sink, key: str, token: str, tasks: Any, skipped: list[str]) -> None:
        def mutate(doc: dict | None) -> tuple[dict | None, None]:
            if doc is None:
                raise LeafError(f"run record {key} disappeared while starting; re-send the request")
            if doc.get("claim_token") != token:  # a later attempt took the run over: its record wins
                return None, None
            doc = {**doc, "tasks": tasks, "skipped": skipped, "updated": now_iso()}
            if doc["state"] == CLAIMED:  # the catalogue may already have finished it (fast local backend)
                doc["state"] = PROCESSING
                doc["history"] = [*doc.get("history", []), {"state": PROCESSING, "at": doc["updated"]}]
            return doc, None

        update_json(sink, key, mutate)

    def _finish(self, sink: Sink, key: str, token: str, state: str, **fields: Any) -> None:
        def mutate(doc: dict | None) -> tuple[dict | None, None]:
            if doc is not None and doc.get("claim_token") != token:  # a later attempt took the run over
                return None, None
            doc = {**(doc or {}), **fields, "state": state, "updated": now_iso()}
            doc["history"] = [*doc.get("history", []), {"state": state, "at": doc["updated"]}]
            return doc, None

        update_json(sink, key, mutate)


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
    config = ServiceConfig(backend="local")
    key = run_record_key(req.out_folder, req.request_id)
    record = {**new_run_record(req, plan, config, "local"), "state": PROCESSING, "tasks": {"local": "done"}}
    record["history"].append({"state": PROCESSING, "at": record["created"]})
    sink.write_json(key, record)
    sink.write_json(collection_key(req.out_folder, req.request_id), new_collection(
        req.request_id, {k: ExpectedItem.from_dict(v) for k, v in record["items"].items()},
        f"LEAF products of request {req.request_id}", run=record, sink=sink))
    ensure_root_catalog(sink, req.out_folder, req.request_id)
    results = []
    for obj in plan.expected_objects():
        stat = sink.stat(obj)
        if stat is None:
            continue
        results.append(catalogue_object(sink, ObjectEvent(obj, f"local:{obj}:{stat[1]}", size=stat[0],
                                                          md5_hash=stat[1]), publisher=publisher))
    add_local_extras(sink, record, derived_from or {})
    return results




# ------------------------------------------------------------------------------------------------- status


def run_status(sink: Sink, request_id: str, out_folder: str = "") -> dict[str, Any]:
    """Where a run stands: state, expected vs present objects, complete items, problems and errors.

    Raises LeafError when neither a run record nor an error record exists for ``request_id``.
    """
    got = sink.read_json(run_record_key(out_folder, request_id))
    if got is None:
        from .outputs import error_records

        errs = error_records(sink, out_folder, request_id)  # one per invalid message, newest first
        if not errs:
            raise LeafError(f"no run record {sink.uri(run_record_key(out_folder, request_id))} and no error record "
                            f"under {sink.uri(error_records_prefix(out_folder, request_id))}*; "
                            "check the request id, --bucket/--out and --folder (the request's out_folder)")
        return {"request_id": request_id, "state": INVALID, "errors": errs[0][1].get("problems", []),
                "error_record": sink.uri(errs[0][0]), "error_records": [sink.uri(k) for k, _ in errs]}
    record = got[0]
    expected = list(record.get("expected_objects", []))
    present = present_objects(sink, expected)
    coll = sink.read_json(collection_key(out_folder, request_id))
    items = (coll[0].get("leaf:items", {}) if coll else {}) or {k: PENDING for k in record.get("items", {})}
    problems: dict[str, Any] = {}
    for exp in record.get("items", {}).values():
        item = sink.read_json(item_key(out_folder, exp["region"], exp["year"], exp["period"]))
        if item is not None:
            problems.update(item[0]["properties"].get("leaf:problems", {}))
    return {
        "request_id": request_id, "state": record.get("state"), "attempt": record.get("attempt"),
        "backend": record.get("backend"), "tasks": record.get("tasks"), "created": record.get("created"),
        "updated": record.get("updated"), "expected": len(expected),
        "present": sum(1 for k in expected if k in present), "missing": [k for k in expected if k not in present],
        "items": items, "complete_items": sorted(k for k, s in items.items() if s in (COMPLETE, SKIPPED)),
        "problems": problems, "errors": record.get("errors", []), "record": sink.uri(run_record_key(out_folder,
                                                                                                      request_id)),
    }


__all__ = ["CLAIM_LEASE_S", "COMPLETE", "InProgress", "RequestMessage", "RequestService", "ServiceConfig",
           "StartResult", "backend_starter", "catalogue_local_run", "decode_pubsub_data", "new_run_record",
           "run_status"]
