"""Request handling: run records, idempotence, re-runs, error records (buckets played by local folders)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from leaf_engine.catalogue.expectations import record_expectations
from leaf_engine.errors import LeafError, TransientError
from leaf_engine.naming import collection_key, error_record_key, run_record_key
from leaf_engine.plan import Plan
from leaf_engine.request import ProductionRequest, parse_request
from leaf_engine.service import InProgress, RequestMessage, RequestService, ServiceConfig
from leaf_engine.sinks import LocalSink, Sink
from tests.support.runs import with_expectations, write_outputs

BUCKET = "leaf-out"


def _raw(**extra: Any) -> dict[str, Any]:
    return {"sensor": "S2_SR", "year": 2020, "months": [7, 8], "tile_names": ["tile42_911"], "resolution": 1000,
            "GCS_bucket": BUCKET, "out_folder": "prod", **extra}


def _msg(raw: dict | bytes, message_id: str = "m1", **attributes: str) -> RequestMessage:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return RequestMessage(data, attributes, message_id)


class Backend:
    """Stands in for Earth Engine: counts starts, can fail on demand."""

    def __init__(self) -> None:
        self.starts: list[Plan] = []
        self.fail: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, req: ProductionRequest, plan: Plan, sink: Sink) -> Any:
        if self.fail is not None:
            raise self.fail
        with self._lock:
            self.starts.append(plan)
        return [f"task-{f.name.stem}" for f in plan.files]


class Buckets:
    def __init__(self, root: Path):
        self.root = root
        self.sinks: dict[str, LocalSink] = {}

    def __call__(self, bucket: str) -> LocalSink:
        return self.sinks.setdefault(bucket, LocalSink(self.root / bucket))


@pytest.fixture
def env(tmp_path: Path) -> tuple[RequestService, Backend, Buckets]:
    backend, buckets = Backend(), Buckets(tmp_path)
    config = ServiceConfig(backend="external", errors_uri="gs://leaf-errors/bad")
    return RequestService(config, sink_for=buckets, starter=backend), backend, buckets


def _record(buckets: Buckets, request_id: str, folder: str = "prod") -> dict:
    got = buckets(BUCKET).read_json(run_record_key(folder, request_id))
    assert got is not None
    return got[0]


def test_start_writes_run_record_and_collection(env) -> None:
    service, _backend, buckets = env
    result = service.handle(_msg(_raw()))
    assert result.status == "started"
    rid = parse_request(_raw()).request_id
    assert result.request_id == rid
    record = _record(buckets, rid)
    assert record["state"] == "PROCESSING"
    assert [h["state"] for h in record["history"]] == ["CLAIMED", "PROCESSING"]
    assert record["backend_tasks"] == result.tasks and len(record["backend_tasks"]) == 2 * 6
    assert record["tasks"] == []  # Earth Engine tasks only
    assert len(record_expectations(record).objects) == 12  # derived from the stored request
    assert record["request"]["request_id"] == rid
    coll, _ = buckets(BUCKET).read_json(collection_key("prod", rid))
    assert coll["leaf:items"] == {"tile42_911_2020_Jul": "pending", "tile42_911_2020_Aug": "pending"}


def test_duplicate_deliveries_start_once(env) -> None:
    service, backend, _buckets = env
    assert service.handle(_msg(_raw(), "m1")).status == "started"
    assert service.handle(_msg(_raw(), "m1")).status == "duplicate"  # redelivery
    assert service.handle(_msg(_raw(), "m2")).status == "duplicate"  # published twice
    assert len(backend.starts) == 1


def test_concurrent_duplicates_start_once(env) -> None:
    service, backend, _ = env
    outcomes: list[str] = []

    def deliver(i: int) -> None:
        try:
            outcomes.append(service.handle(_msg(_raw(), f"m{i}")).status)
        except InProgress:
            outcomes.append("in_progress")  # the platform would redeliver it later

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("started") == 1 and len(backend.starts) == 1
    assert set(outcomes) <= {"started", "duplicate", "in_progress"}


def test_transient_backend_failure_is_raised_and_resumed_by_the_redelivery(env) -> None:
    service, backend, buckets = env
    backend.fail = TransientError("Earth Engine 503")
    with pytest.raises(TransientError):
        service.handle(_msg(_raw(), "m1"))
    rid = parse_request(_raw()).request_id
    assert _record(buckets, rid)["state"] == "CLAIMED"  # claim released: the redelivery may go on at once
    backend.fail = None
    assert service.handle(_msg(_raw(), "m1")).status == "started"
    record = _record(buckets, rid)
    assert len(backend.starts) == 1 and record["attempt"] == 2
    assert [h["state"] for h in record["history"]] == ["CLAIMED", "CLAIMED", "PROCESSING"]


def test_a_fresh_claim_makes_other_deliveries_wait(env) -> None:
    """Even a redelivery of the claiming message (past its ack deadline) waits: the jobs start once."""
    service, backend, _ = env
    slow = threading.Event()
    release = threading.Event()

    def slow_backend(req, plan, sink):
        slow.set()
        release.wait(10)
        return backend(req, plan, sink)

    service.starter = slow_backend
    first = threading.Thread(target=service.handle, args=(_msg(_raw(), "m1"),))
    first.start()
    assert slow.wait(10)
    for mid in ("m1", "m2"):
        with pytest.raises(InProgress):
            service.handle(_msg(_raw(), mid))
    release.set()
    first.join()
    assert len(backend.starts) == 1 and service.handle(_msg(_raw(), "m3")).status == "duplicate"


def test_an_abandoned_claim_is_taken_over_after_the_lease(env) -> None:
    import time

    from leaf_engine.plan import make_plan
    from leaf_engine.service import CLAIM_LEASE_S, new_run_record

    service, backend, buckets = env
    req = parse_request(_raw())
    # a handler that died right after claiming left this behind
    buckets(BUCKET).write_json(run_record_key("prod", req.request_id),
                               new_run_record(req, make_plan(req), service.config, "m1").to_doc())
    with pytest.raises(InProgress):
        service.handle(_msg(_raw(), "m2"))
    service.clock = lambda: time.time() + CLAIM_LEASE_S + 1
    assert service.handle(_msg(_raw(), "m2")).status == "started" and len(backend.starts) == 1
    assert _record(buckets, req.request_id)["attempt"] == 2


def test_failed_run_may_be_rerun(env) -> None:
    service, backend, buckets = env
    backend.fail = LeafError("Earth Engine refused: permission denied")
    result = service.handle(_msg(_raw(), "m1"))
    rid = parse_request(_raw()).request_id
    assert result.status == "failed" and _record(buckets, rid)["state"] == "FAILED"
    assert "permission denied" in _record(buckets, rid)["errors"][0]
    backend.fail = None
    assert service.handle(_msg(_raw(), "m2")).status == "started"
    record = _record(buckets, rid)
    assert record["attempt"] == 2 and record["state"] == "PROCESSING"
    assert [h["state"] for h in record["history"]] == ["CLAIMED", "FAILED", "CLAIMED", "PROCESSING"]


def test_skip_existing_and_overwrite(env, tmp_path: Path) -> None:
    service, backend, buckets = env
    service.handle(_msg(_raw()))
    first = with_expectations(_record(buckets, parse_request(_raw()).request_id))
    july = [k for k, o in first["objects"].items() if o["item_id"] == "tile42_911_2020_Jul"]
    write_outputs(buckets(BUCKET), first, tmp_path, july)

    assert service.handle(_msg(_raw(), "m2", request_id="again")).status == "started"
    assert [f.name.item_id for f in backend.starts[-1].files] == ["tile42_911_2020_Aug"] * 6
    again = _record(buckets, "again")
    assert again["skipped"] == ["tile42_911_2020_Jul"]
    coll, _ = buckets(BUCKET).read_json(collection_key("prod", "again"))
    assert coll["leaf:items"]["tile42_911_2020_Jul"] == "skipped"

    # the same request again is a duplicate; with rerun "overwrite" it is a new run that redoes every item,
    # and a redelivery of that overwrite message is again a duplicate
    assert service.handle(_msg(_raw(), "m3")).status == "duplicate"
    assert service.handle(_msg(_raw(rerun="overwrite"), "m4")).status == "started"
    assert {f.name.item_id for f in backend.starts[-1].files} == {"tile42_911_2020_Jul", "tile42_911_2020_Aug"}
    starts = len(backend.starts)
    assert service.handle(_msg(_raw(rerun="overwrite"), "m4")).status == "duplicate"
    assert len(backend.starts) == starts


def test_everything_complete_starts_nothing(env, tmp_path: Path) -> None:
    service, backend, buckets = env
    service.handle(_msg(_raw()))
    first = with_expectations(_record(buckets, parse_request(_raw()).request_id))
    write_outputs(buckets(BUCKET), first, tmp_path)
    result = service.handle(_msg(_raw(), "m2", request_id="third"))
    assert result.status == "nothing_to_do" and len(backend.starts) == 1
    assert _record(buckets, "third")["state"] == "SUCCEEDED"


def test_invalid_request_lists_every_problem_next_to_the_outputs(env) -> None:
    service, backend, buckets = env
    bad = _raw(sensor="S9_SR", resolution=-5, months=[13])
    result = service.handle(_msg(bad, "m1", request_id="bad-1"))
    assert result.status == "invalid" and not backend.starts
    record, _ = buckets(BUCKET).read_json(error_record_key("prod", "bad-1", "m1"))
    assert {"sensor", "resolution", "months"} <= {p["key"] for p in record["problems"]}
    assert record["request_id"] == "bad-1" and record["message_id"] == "m1"
    assert result.record_uri == buckets(BUCKET).uri(error_record_key("prod", "bad-1", "m1"))
    assert _record(buckets, "bad-1")["state"] == "INVALID"
    # the same request id, now valid, may run
    assert service.handle(_msg(_raw(), "m2", request_id="bad-1")).status == "started"
    assert _record(buckets, "bad-1")["state"] == "PROCESSING"


@pytest.mark.parametrize("data", [b"\x00\xff not json", "{\"sensor\": \"caf\u00e9\"}".encode("latin-1"), b"[1, 2]"])
def test_unreadable_message_goes_to_the_errors_prefix(env, data: bytes) -> None:
    service, _backend, buckets = env
    result = service.handle(_msg(data))
    assert result.status == "invalid" and result.request_id.startswith("msg-")  # type: ignore[union-attr]
    got = buckets("leaf-errors").read_json(error_record_key("bad", result.request_id, "m1"))  # type: ignore[arg-type]
    assert got is not None and got[0]["problems"] and got[0]["message_id"] == "m1"
    assert BUCKET not in buckets.sinks


def test_cloud_service_refuses_local_output(env) -> None:
    service, _backend, _ = env
    result = service.handle(_msg(_raw(out_location="local")))
    assert result.status == "invalid" and result.problems[0]["key"] == "out_location"


def test_config_from_env() -> None:
    config = ServiceConfig.from_env({"GOOGLE_CLOUD_PROJECT": "p", "LEAF_TILE_READY_TOPIC": "t",
                                     "LEAF_ERRORS_URI": "gs://b/errs"})
    assert (config.project, config.backend, config.tile_ready_topic, config.errors_uri) == ("p", "gee", "t",
                                                                                            "gs://b/errs")
    with pytest.raises(LeafError, match="LEAF_BACKEND"):
        ServiceConfig.from_env({"LEAF_BACKEND": "spark"})
    with pytest.raises(LeafError, match="gs://"):
        ServiceConfig.from_env({"LEAF_ERRORS_URI": "/tmp/errors"})


class LostCreateResponse(LocalSink):
    """The first create-only write lands but its answer is lost: the client's retry then sees 412."""

    lost = False

    def write_json(self, key: str, data: dict, *, if_generation_match: int | None = None) -> int:
        from leaf_engine.sinks import PreconditionFailed

        generation = super().write_json(key, data, if_generation_match=if_generation_match)
        if if_generation_match == 0 and not self.lost:
            self.lost = True
            raise PreconditionFailed(f"{key}: generation is {generation}, not 0")
        return generation


def test_a_lost_create_response_does_not_stall_the_run(tmp_path: Path) -> None:
    backend = Backend()
    sink = LostCreateResponse(tmp_path / BUCKET)
    service = RequestService(ServiceConfig(backend="external", errors_uri="gs://leaf-errors/bad"),
                             sink_for=lambda _bucket: sink, starter=backend)
    assert service.handle(_msg(_raw())).status == "started"  # not InProgress until the lease runs out
    assert len(backend.starts) == 1
    assert service.handle(_msg(_raw(), "m2")).status == "duplicate"
    assert len(backend.starts) == 1


def test_a_transient_failure_after_the_claim_releases_it(env, monkeypatch: pytest.MonkeyPatch) -> None:
    service, backend, _buckets = env

    def flaky(*_args: Any) -> None:
        raise TransientError("GCS 503")

    import leaf_engine.service as service_module

    monkeypatch.setattr(service_module, "write_collection", flaky)
    with pytest.raises(TransientError):
        service.handle(_msg(_raw()))
    monkeypatch.undo()
    assert service.handle(_msg(_raw())).status == "started"  # the redelivery starts at once
    assert len(backend.starts) == 1


def test_a_message_makes_its_plan_once_and_other_runs_expectations_once_per_claim(
        env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted on the real functions (wrapped, not replaced): the budget check, the conflict check, the claim and
    the collection share one plan per message; another live run's expectations are derived once per claim."""
    import dataclasses
    import importlib

    import leaf_engine.plan as plan_module
    import leaf_engine.service as service_module

    # the module, not the package's function of the same name
    expectations_module = importlib.import_module("leaf_engine.catalogue.expectations")
    service, backend, _buckets = env
    service.config = dataclasses.replace(service.config, max_eecu_hours=1000.0)  # the budget check plans too
    plans: list[str] = []
    derived: list[str] = []
    real_plan, real_expectations = plan_module.make_plan, expectations_module.record_expectations

    def counted_plan(req: ProductionRequest) -> Plan:
        plans.append(req.request_id)
        return real_plan(req)

    def counted_expectations(record: dict) -> Any:
        derived.append(record["request_id"])
        return real_expectations(record)

    monkeypatch.setattr(service_module, "make_plan", counted_plan)
    monkeypatch.setattr(plan_module, "make_plan", counted_plan)
    monkeypatch.setattr(expectations_module, "record_expectations", counted_expectations)
    rid = {m: parse_request(_raw(months=[m])).request_id for m in (6, 7, 8)}
    # (month, message, outcome, the runs whose expectations it derives): a request's own run is not compared
    steps = [(7, "m1", "started", []), (8, "m2", "started", [rid[7]]), (8, "m3", "duplicate", []),
             (6, "m4", "started", [rid[8]]), (6, "m5", "duplicate", [])]
    for month, mid, status, derives in steps:
        plans.clear()
        derived.clear()
        assert service.handle(_msg(_raw(months=[month]), mid)).status == status
        assert derived == derives  # each other live run derived once, then taken from the cache
        assert plans == [rid[month], *derives]  # this message's own plan once; each derivation plans its run
    assert len(backend.starts) == 3


def test_the_conflict_check_sees_a_run_taken_over_by_another_request_under_its_id(env) -> None:
    """The cached expectations are per claim: a run record re-claimed (same URI) for a different production is
    compared by what it expects now, not by what its earlier claim expected."""
    from leaf_engine.catalogue.runs import set_state

    service, _backend, buckets = env
    assert service.handle(_msg(_raw(months=[7]), "m1", request_id="rid-1")).status == "started"
    assert service.handle(_msg(_raw(months=[6]), "m2")).status == "started"  # caches rid-1's July expectations
    assert set_state(buckets(BUCKET), "prod", "rid-1", "FAILED")
    assert service.handle(_msg(_raw(months=[8]), "m3", request_id="rid-1")).status == "started"  # August now
    other = service.handle(_msg(_raw(months=[8], prod_names=["LAI"]), "m4"))  # August LAI: rid-1's files
    assert other.status == "invalid" and "overwrite another request's outputs" in other.problems[0]["rule"]
    assert "rid-1" in other.problems[0]["rule"]
