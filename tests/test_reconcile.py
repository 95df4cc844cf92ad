"""The run lifecycle against the Earth Engine stand-in (the real earthengine-api over HTTP): tasks watched,
retried, queued, cancelled and resumed; the run ends SUCCEEDED, PARTIAL or FAILED with one run-finished message.

Buckets are local folders here; tests/test_reconcile_e2e.py runs the same loop on the emulators.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from leaf_engine import reconcile
from leaf_engine.backends.gee.exports import StartPacer, ee_request_id
from leaf_engine.backends.gee.operations import EarthEngineTasks
from leaf_engine.catalogue.runs import RunRecord, read_run
from leaf_engine.errors import LeafError
from leaf_engine.request import parse_request
from leaf_engine.service import CLAIM_LEASE_S, InProgress, RequestMessage, RequestService, ServiceConfig
from leaf_engine.sinks import LocalSink
from tests.support.ee_standin import EEStandIn, export_summary
from tests.support.runs import RecordingPublisher

BUCKET = "leaf-out"
FOLDER = "prod"
FAST = reconcile.LifecycleConfig(max_in_flight=1000, max_attempts=3, retry_backoff_s=0.0, budget_s=60.0)


def _raw(**extra: Any) -> dict[str, Any]:
    return {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42_911"], "resolution": 1000,
            "GCS_bucket": BUCKET, "out_folder": FOLDER, "prod_names": ["LAI"], **extra}


class Tasks(EarthEngineTasks):
    """The real Earth Engine client against the stand-in, unpaced."""

    def __init__(self) -> None:
        super().__init__("leaf-test", pacer=StartPacer(per_second=0))


class CheapTasks(Tasks):
    """As :class:`Tasks`, with a one-constant computation per job: for thousands of starts, where serialising
    the real SL2P graph (~80 ms per export) would dominate the test and is not what is tested."""

    def job_image(self, job: Any) -> Any:
        import ee

        return ee.Image.constant([1] * len(job.products)).rename(list(job.products))


class World:
    def __init__(self, tmp: Path, standin: EEStandIn, config: reconcile.LifecycleConfig = FAST,
                 tasks: EarthEngineTasks | None = None):
        self.sink = LocalSink(tmp / BUCKET)
        self.ee = standin
        standin.writer = lambda bucket, key, data: self.sink.put_bytes(key, data, "image/tiff")
        self.finished = RecordingPublisher()
        self.tasks = tasks or Tasks()
        self.config = config
        self.service = RequestService(ServiceConfig(backend="gee", project="leaf-test", lifecycle=config),
                                      sink_for=lambda _b: self.sink, tasks=self.tasks, run_finished=self.finished)

    def publish(self, raw: dict, message_id: str = "m1") -> Any:
        return self.service.handle(RequestMessage(json.dumps(raw).encode(), {}, message_id))

    def reconcile(self, **kw: Any) -> list[reconcile.RunOutcome]:
        return reconcile.reconcile(self.sink, FOLDER, backend=self.tasks, publisher=self.finished,
                                   config=self.config, **kw)

    def record(self, raw: dict | None = None) -> RunRecord:
        got = read_run(self.sink, FOLDER, parse_request(raw or _raw()).request_id)
        assert got is not None
        return got

    def finished_bodies(self) -> list[dict]:
        return [json.loads(data) for data, _ in self.finished.messages]


@pytest.fixture
def world(tmp_path: Path, ee_standin: EEStandIn) -> World:
    return World(tmp_path, ee_standin)


def test_every_task_succeeds_then_the_run_ends_once(world: World) -> None:
    assert world.publish(_raw()).status == "started"
    rec = world.record()
    assert rec.state == "PROCESSING" and len(rec.tasks) == 3 == len(world.ee.exports)
    assert {t.state for t in rec.tasks} == {"PENDING"} and all(t.task_id for t in rec.tasks)
    first = world.ee.task_ids()[0]
    world.ee.run(first, eecu_s=3.0)
    world.reconcile()
    rec = world.record()
    assert rec.state == "PROCESSING" and rec.task(rec.tasks[0].key).state == "RUNNING"
    assert world.ee.succeed_all(eecu_s=100.0) == 3
    world.reconcile()
    rec = world.record()
    assert rec.state == "SUCCEEDED" and {t.state for t in rec.tasks} == {"COMPLETE"}
    assert rec.eecu_hours() == pytest.approx(300 / 3600)
    assert all(t.started and t.ended for t in rec.tasks)
    world.reconcile()  # a second pass announces nothing more
    assert len(world.finished.messages) == 1
    body = world.finished_bodies()[0]
    assert (body["state"], body["counts"], body["eecu_hours"]) == ("SUCCEEDED", {"COMPLETE": 3}, 0.083333)
    assert body["record_uri"].endswith(f"{FOLDER}/_runs/{rec.request_id}.json")
    assert rec.finished and rec.finished["message_id"] == "1"


def test_a_permanent_failure_ends_partial_with_earth_engines_message(world: World) -> None:
    raw = _raw(months=[7, 8])
    world.publish(raw)
    lai_jul = world.ee.task_for("_Jul_LAI_")
    world.ee.fail(lai_jul, "User memory limit exceeded.")
    for tid in world.ee.task_ids("PENDING"):
        world.ee.succeed(tid)
    world.reconcile()
    rec = world.record(raw)
    assert rec.state == "PARTIAL"
    failed = [t for t in rec.tasks if t.state == "FAILED"]
    assert [(t.product, t.error, t.attempts) for t in failed] == [("LAI", "User memory limit exceeded.", 1)]
    assert len(world.ee.exports) == 6  # a permanent failure is not retried
    world.reconcile()
    assert [(b["state"], b["counts"]) for b in world.finished_bodies()] == [
        ("PARTIAL", {"COMPLETE": 5, "FAILED": 1})]
    assert world.finished_bodies()[0]["errors"] == ["User memory limit exceeded."]


def test_a_transient_failure_is_retried_under_a_new_request_id(world: World) -> None:
    world.publish(_raw())
    lai = world.ee.task_for("_LAI_")
    world.ee.fail(lai, "Computation timed out.", eecu_s=5.0)
    world.reconcile()  # sees the failure and resubmits at once (no backoff in this config)
    rec = world.record()
    task = next(t for t in rec.tasks if t.product == "LAI")
    assert (task.state, task.attempts, task.error) == ("PENDING", 2, "Computation timed out.")
    ids = [b["requestId"] for b in world.ee.exports if "_LAI_" in export_summary(b)["prefix"]]
    assert ids == [ee_request_id(rec.request_id, task.job_id, "LAI", 1),
                   ee_request_id(rec.request_id, task.job_id, "LAI", 2)] and ids[0] != ids[1]
    world.ee.succeed_all(eecu_s=10.0)
    world.reconcile()
    rec = world.record()
    assert rec.state == "SUCCEEDED"
    assert next(t for t in rec.tasks if t.product == "LAI").eecu_s == 15.0  # the failed attempt is billed too


def test_success_without_its_file_is_retried_then_fails_with_the_reason(world: World) -> None:
    world.publish(_raw())
    for _attempt in range(FAST.max_attempts):
        world.ee.succeed(world.ee.task_for("_QC_", "PENDING"), write=False)
        for tid in world.ee.task_ids("PENDING"):
            world.ee.succeed(tid)
        world.reconcile()
    rec = world.record()
    qc = next(t for t in rec.tasks if t.product == "QC")
    assert rec.state == "PARTIAL" and qc.state == "FAILED" and qc.attempts == FAST.max_attempts
    assert "reported SUCCEEDED but objects are missing" in (qc.error or "") and qc.objects[0] in qc.error


def test_429_on_start_leaves_tasks_queued_for_the_reconciler(tmp_path: Path, ee_standin: EEStandIn) -> None:
    from leaf_engine.backends.gee.exports import Backoff

    tasks = Tasks()
    tasks.backoff = Backoff(attempts=2, base_s=0.0)
    w = World(tmp_path, ee_standin, tasks=tasks)
    ee_standin.fail_next(429, times=2)  # both attempts of the first start
    assert w.publish(_raw()).status == "started"
    rec = w.record()
    assert rec.state == "QUEUED" and {t.state for t in rec.tasks} == {"QUEUED"} and not ee_standin.exports
    w.reconcile()
    assert w.record().state == "PROCESSING" and len(ee_standin.exports) == 3


def test_queue_aware_starts_keep_in_flight_under_the_limit(tmp_path: Path, ee_standin: EEStandIn) -> None:
    config = reconcile.LifecycleConfig(max_in_flight=4, max_attempts=3, retry_backoff_s=0.0, budget_s=60.0)
    w = World(tmp_path, ee_standin, config)
    raw = _raw(months=[6, 7, 8])  # 9 exports
    w.publish(raw)
    assert len(ee_standin.exports) == 4 and w.record(raw).counts() == {"PENDING": 4, "QUEUED": 5}
    w.reconcile()  # nothing finished: nothing more starts
    assert len(ee_standin.exports) == 4
    rounds = 0
    while w.record(raw).state == "PROCESSING":
        assert len(ee_standin.task_ids("PENDING", "RUNNING")) <= 4
        ee_standin.succeed_all()
        w.reconcile()
        rounds += 1
    assert w.record(raw).state == "SUCCEEDED" and rounds == 3 and len(ee_standin.exports) == 9


def test_a_handler_stops_starting_at_its_time_budget(tmp_path: Path, ee_standin: EEStandIn) -> None:
    config = reconcile.LifecycleConfig(max_in_flight=1000, budget_s=0.001, retry_backoff_s=0.0)
    w = World(tmp_path, ee_standin, config)
    raw = _raw(tile_names=["tile42_911", "tile42_912"])
    w.publish(raw)
    rec = w.record(raw)
    # the budget was spent before the first job (it is checked between jobs): the reconciler starts them
    assert rec.counts() == {"QUEUED": 6} and rec.state == "QUEUED" and not ee_standin.exports
    w.config = FAST
    w.reconcile()
    assert w.record(raw).counts() == {"PENDING": 6} and w.record(raw).state == "PROCESSING"


@pytest.mark.slow
def test_thousands_of_tasks_over_the_limit_complete(tmp_path: Path, ee_standin: EEStandIn) -> None:
    """3,600 exports with at most 3,000 in flight: the start takes what fits, the reconciler the rest."""
    config = reconcile.LifecycleConfig(max_in_flight=3000, retry_backoff_s=0.0, budget_s=500.0)
    w = World(tmp_path, ee_standin, config, tasks=CheapTasks())
    regions = {f"r{i:03d}": {"type": "Polygon", "coordinates": [[
        [-75.0 + i * 0.05, 45.0], [-74.98 + i * 0.05, 45.0], [-74.98 + i * 0.05, 45.02],
        [-75.0 + i * 0.05, 45.02], [-75.0 + i * 0.05, 45.0]]]} for i in range(30)}
    raw = {"sensor": "S2_SR", "year": 2020, "months": list(range(1, 13)), "regions": regions, "resolution": 1000,
           "GCS_bucket": BUCKET, "out_folder": FOLDER, "prod_names": ["LAI", "fAPAR", "fCOVER", "Albedo"],
           "uncertainty": True}
    t0 = time.monotonic()
    w.publish(raw)
    rec = w.record(raw)
    assert len(rec.tasks) == 3600 and rec.counts() == {"PENDING": 3000, "QUEUED": 600}
    record_bytes = (w.sink.root / FOLDER / "_runs" / f"{rec.request_id}.json").stat().st_size
    assert record_bytes < 3600 * 600  # a few hundred bytes per task, not megabytes per request
    ee_standin.succeed_all(eecu_s=1.0)
    w.reconcile()
    assert w.record(raw).counts() == {"COMPLETE": 3000, "PENDING": 600}
    ee_standin.succeed_all(eecu_s=1.0)
    w.reconcile()
    rec = w.record(raw)
    assert rec.state == "SUCCEEDED" and len(ee_standin.exports) == 3600
    assert [b["state"] for b in w.finished_bodies()] == ["SUCCEEDED"]
    assert time.monotonic() - t0 < 600


def test_cancel_mid_run(world: World) -> None:
    raw = _raw(months=[7, 8])
    world.publish(raw)
    world.ee.succeed(world.ee.task_for("_Jul_LAI_"))
    world.ee.run(world.ee.task_for("_Aug_LAI_"))
    world.reconcile()
    rec = reconcile.cancel_run(world.sink, FOLDER, world.record(raw).request_id, backend=world.tasks,
                               publisher=world.finished)
    assert rec.state == "CANCELLED"
    assert {t.state for t in rec.tasks if t.product != "LAI" or "_Aug_" in t.prefix} == {"CANCELLED"}
    assert len(world.ee.cancels) == 5  # every unfinished operation, none of the finished one
    assert {world.ee.operations[n]["metadata"]["state"] for n in world.ee.cancels} == {"CANCELLED"}
    world.reconcile()
    assert [b["state"] for b in world.finished_bodies()] == ["CANCELLED"]
    with pytest.raises(LeafError, match="CANCELLED"):
        reconcile.cancel_run(world.sink, FOLDER, rec.request_id, backend=world.tasks)


def test_cancelled_run_publishes_no_tile_ready(world: World) -> None:
    from leaf_engine.catalogue import ObjectEvent, catalogue_object

    world.publish(_raw())
    rid = world.record().request_id
    reconcile.cancel_run(world.sink, FOLDER, rid, backend=world.tasks)
    ready = RecordingPublisher()
    for body in world.ee.exports:  # the files land anyway (Earth Engine had already written them)
        from tests.support.ee_standin import export_files

        for key, data in export_files(body):
            world.sink.put_bytes(key, data)
            catalogue_object(world.sink, ObjectEvent(key, f"e-{key}"), publisher=ready)
    assert not ready.messages


def test_resume_resubmits_failed_and_skips_complete(world: World) -> None:
    raw = _raw(months=[7, 8])
    world.publish(raw)
    world.ee.fail(world.ee.task_for("_Aug_QC_"), "User memory limit exceeded.")
    world.ee.succeed_all()
    world.reconcile()
    rid = world.record(raw).request_id
    assert world.record(raw).state == "PARTIAL"
    outcome = reconcile.resume_run(world.sink, FOLDER, rid, backend=world.tasks, publisher=world.finished,
                                   config=FAST)
    assert outcome.started == 1 and len(world.ee.exports) == 7  # only the failed export again
    rec = world.record(raw)
    assert rec.state == "PROCESSING" and rec.attempt == 2 and rec.finished is None
    world.ee.succeed_all()
    world.reconcile()
    assert world.record(raw).state == "SUCCEEDED"
    assert [b["state"] for b in world.finished_bodies()] == ["PARTIAL", "SUCCEEDED"]


def test_a_handler_killed_after_its_claim_is_finished_by_the_redelivery(world: World) -> None:
    from leaf_engine.plan import make_plan

    req = parse_request(_raw())
    # the handler died right after its claim: the record is CLAIMED, nothing was started
    world.service._claim(world.sink, req, make_plan(req), "m1", [])
    with pytest.raises(InProgress):
        world.publish(_raw(), "m1")  # a redelivery within the lease waits
    world.service.clock = lambda: time.time() + CLAIM_LEASE_S + 1
    assert world.publish(_raw(), "m1").status == "started"
    assert len(world.ee.exports) == 3 and world.record().state == "PROCESSING"


def test_a_handler_killed_mid_start_is_finished_by_the_reconciler(tmp_path: Path, ee_standin: EEStandIn) -> None:
    """Killed after starting some exports but before saving them: the reconciler takes the abandoned claim over;
    the repeated starts reuse their requestIds, so nothing is started twice."""
    w = World(tmp_path, ee_standin)

    class Killed(BaseException):
        pass

    calls = {"n": 0}
    real_start = w.tasks.start

    def start_then_die(req: Any, job: Any, attempts: dict[str, int], image: Any = None) -> Any:
        calls["n"] += 1
        out = real_start(req, job, attempts, image)
        if calls["n"] == 1:
            raise Killed  # the process dies: no except clause of ours runs in a real kill, nor here
        return out

    w.tasks.start = start_then_die  # type: ignore[method-assign]
    raw = _raw(tile_names=["tile42_911", "tile42_912"])
    with pytest.raises(Killed):
        w.publish(raw)
    assert w.record(raw).state == "CLAIMED" and len(ee_standin.exports) == 3
    w.tasks.start = real_start  # type: ignore[method-assign]
    w.reconcile(clock=lambda: time.time() + CLAIM_LEASE_S + 1)
    rec = w.record(raw)
    assert rec.state == "PROCESSING" and len(ee_standin.exports) == 6 and len(ee_standin.duplicates) == 3
    w.reconcile()  # the duplicates' task ids are found again by their descriptions
    assert all(t.task_id for t in w.record(raw).tasks)
    ee_standin.succeed_all()
    w.reconcile()
    assert w.record(raw).state == "SUCCEEDED"


def test_concurrent_reconcilers_do_no_double_work(tmp_path: Path, ee_standin: EEStandIn) -> None:
    config = reconcile.LifecycleConfig(max_in_flight=2, retry_backoff_s=0.0, budget_s=60.0)
    w = World(tmp_path, ee_standin, config)
    raw = _raw(months=[6, 7, 8])
    w.publish(raw)
    assert len(ee_standin.exports) == 2
    ee_standin.succeed_all()
    outcomes: list = []
    threads = [threading.Thread(target=lambda: outcomes.extend(w.reconcile())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ee_standin.exports) == 4 and not ee_standin.duplicates  # two more, started once
    assert sum(o.status == "reconciled" for o in outcomes) >= 1


def test_invalid_message_never_overwrites_a_run(world: World) -> None:
    world.publish(_raw())
    rid = world.record().request_id
    bad = RequestMessage(json.dumps({**_raw(), "sensor": "S9"}).encode(), {"request_id": rid}, "m9")
    assert world.service.handle(bad).status == "invalid"
    assert world.record().state == "PROCESSING"


def test_lifecycle_settings_are_checked() -> None:
    assert reconcile.LifecycleConfig.from_env({}).max_in_flight == 1000
    assert reconcile.LifecycleConfig.from_env({"LEAF_MAX_TASKS_IN_FLIGHT": "3000"}).max_in_flight == 3000
    with pytest.raises(LeafError, match="LEAF_MAX_TASKS_IN_FLIGHT='many'"):
        reconcile.LifecycleConfig.from_env({"LEAF_MAX_TASKS_IN_FLIGHT": "many"})
    with pytest.raises(LeafError, match="LEAF_HANDLER_BUDGET_S"):
        reconcile.LifecycleConfig.from_env({"LEAF_HANDLER_BUDGET_S": "900"})


def test_eecu_estimate_follows_area_window_and_sensor() -> None:
    from leaf_engine import eecu
    from leaf_engine.plan import make_plan

    # a full 900 km tile, 30 days of Sentinel-2 at 20 m: 810,000 km² × 50,000 / 9,984,670 EECU-h per km²
    req = parse_request(_raw(tile_names=["tile42"], resolution=20, months=[6]))
    est = eecu.estimate(req, make_plan(req))
    assert est["eecu_hours"] == pytest.approx(810_000 * 50_000 / 9_984_670, rel=1e-3)
    landsat = parse_request(_raw(tile_names=["tile42"], resolution=30, months=[6], sensor="L8_SR"))
    assert eecu.estimate(landsat, make_plan(landsat))["eecu_hours"] == pytest.approx(
        est["eecu_hours"] * eecu.LANDSAT_FACTOR, rel=1e-3)
    two_months = parse_request(_raw(tile_names=["tile42"], resolution=20, months=[6, 7]))
    assert eecu.estimate(two_months, make_plan(two_months))["eecu_hours"] == pytest.approx(
        est["eecu_hours"] * (1 + 31 / 30), rel=1e-3)
    # the key is optional and does not change the request id of requests without it
    assert "max_eecu_hours" not in req.identity()


def test_a_request_over_its_eecu_budget_is_refused_with_the_estimate(world: World) -> None:
    raw = _raw(tile_names=["tile42"], resolution=20, months=[6, 7], max_eecu_hours=500)
    result = world.service.handle(RequestMessage(json.dumps(raw).encode(), {"request_id": "big"}, "m1"))
    assert result.status == "invalid" and not world.ee.exports
    (problem,) = result.problems
    assert problem["key"] == "max_eecu_hours" and problem["value"] == 500
    expected = 810_000 * 50_000 / 9_984_670 * (30 + 31) / 30  # June + July of one 900 km tile
    assert f"estimated at {expected:,.1f} EECU-hours" in problem["rule"]
    assert "split it into at least 17 requests" in problem["rule"]
    assert read_run(world.sink, FOLDER, "big").state == "INVALID"  # type: ignore[union-attr]
    with pytest.raises(Exception, match="max_eecu_hours"):
        parse_request(_raw(max_eecu_hours=-1))


def test_the_deployment_budget_applies_to_every_request(tmp_path: Path, ee_standin: EEStandIn) -> None:
    w = World(tmp_path, ee_standin)
    w.service.config = ServiceConfig.from_env({"LEAF_BACKEND": "gee", "LEAF_MAX_EECU_HOURS": "1"})
    result = w.publish(_raw())
    assert result.status == "invalid" and result.problems[0]["key"] == "LEAF_MAX_EECU_HOURS"
    with pytest.raises(LeafError, match="LEAF_MAX_EECU_HOURS"):
        ServiceConfig.from_env({"LEAF_MAX_EECU_HOURS": "lots"})


def test_status_shows_tasks_progress_and_eecu(world: World) -> None:
    from leaf_engine.cli.service_cmds import _bar
    from leaf_engine.service import run_status

    world.publish(_raw())
    world.ee.succeed(world.ee.task_for("_LAI_"), eecu_s=36.0)
    world.ee.fail(world.ee.task_for("_QC_"), "User memory limit exceeded.")
    world.reconcile()
    report = run_status(world.sink, world.record().request_id, FOLDER)
    summary = report["task_summary"]
    assert (summary["tasks"], summary["done"], summary["counts"]) == (3, 2, {"COMPLETE": 1, "FAILED": 1,
                                                                             "PENDING": 1})
    assert summary["eecu_hours"] == pytest.approx((36 + 2) / 3600, abs=1e-6)
    assert summary["estimate"]["eecu_hours"] > 0
    qc = next(t for t in report["tasks"] if t["product"] == "QC")
    assert (qc["state"], qc["error"]) == ("FAILED", "User memory limit exceeded.")
    assert report["present"] == 1 and report["expected"] == 3
    assert _bar(2, 3, 9) == "[######...]"


def test_operations_missing_from_the_listing_are_read_one_by_one(world: World) -> None:
    world.publish(_raw())
    hidden = world.ee.task_for("_LAI_")
    world.ee.unlisted.add(hidden)
    world.ee.succeed_all()
    world.reconcile()
    assert world.record().state == "SUCCEEDED"
    gets = [r for r in world.ee.requests if r.method == "GET" and r.path.endswith(f"/operations/{hidden}")]
    assert len(gets) == 1


def test_resume_re_exports_a_file_replaced_by_a_bad_one(world: World) -> None:
    """A SUCCEEDED run whose file was later replaced by one failing its check is degraded, not ended again;
    ``leaf resume`` re-exports only that file, and its good generation clears the degradation."""
    from leaf_engine.catalogue import ObjectEvent, catalogue_object
    from leaf_engine.naming import collection_key

    def catalogue(key: str, event_id: str) -> None:
        catalogue_object(world.sink, ObjectEvent(key, event_id, generation=world.sink.generation(key)))

    world.publish(_raw())
    world.ee.succeed_all()
    world.reconcile()
    rec = world.record()
    assert rec.state == "SUCCEEDED"
    objects = [k for t in rec.tasks for k in t.objects]
    for i, key in enumerate(objects):
        catalogue(key, f"e{i}")
    with pytest.raises(LeafError, match="nothing to resume"):
        reconcile.resume_run(world.sink, FOLDER, rec.request_id, backend=world.tasks, config=FAST)
    bad = objects[0]
    world.sink.put_bytes(bad, b"truncated", "image/tiff")
    catalogue(bad, "bad")
    rec = world.record()
    assert rec.state == "SUCCEEDED" and list(rec.degraded) and bad in next(iter(rec.degraded.values())).problems

    exports = len(world.ee.exports)
    outcome = reconcile.resume_run(world.sink, FOLDER, rec.request_id, backend=world.tasks,
                                   publisher=world.finished, config=FAST)
    assert outcome.started == 1 and len(world.ee.exports) == exports + 1
    world.ee.succeed_all()
    catalogue(bad, "fix")
    world.reconcile()
    rec = world.record()
    assert rec.state == "SUCCEEDED" and rec.attempt == 2 and rec.degraded == {}
    coll = world.sink.read_json(collection_key(FOLDER, rec.request_id))
    assert coll is not None and set(coll[0]["leaf:items"].values()) == {"complete"}
