"""The run lifecycle end to end on real components: Pub/Sub emulator → start_production (Earth Engine backend,
earthengine-api against the stand-in) → tasks driven by the test → the stand-in writes the exports' GeoTIFFs into
fake-gcs-server → finalize events → catalogue_output → reconcile_runs (a tick on its topic) → run-finished.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from leaf_engine.catalogue.runs import RunRecord, read_run
from leaf_engine.request import parse_request
from tests.support.ee_standin import EEStandIn
from tests.support.emulators import Emulators, create_subscription, create_topic, function_server, pull, wait_for
from tests.support.service_e2e import E2EService, e2e_request, gcs_writer, serving

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

BUCKET = "leaf-lifecycle"
LEASE_S = 8


@dataclass
class Lifecycle(E2EService):
    ee: EEStandIn
    reconcile_topic: str
    finished_topic: str
    reconcile_url: str
    servers: ExitStack
    """Keeps servers restarted by a test running until the module ends."""

    def record(self, folder: str, request_id: str) -> RunRecord | None:
        return read_run(self.sink, folder, request_id)

    def wait_state(self, folder: str, request_id: str, *states: str, timeout_s: float = 90) -> RunRecord:
        return RunRecord.from_doc(self.wait_run(folder, request_id, *states, timeout_s=timeout_s))

    def tick(self, folder: str) -> None:
        self.publish(json.dumps({"bucket": BUCKET, "folder": folder}).encode(), self.reconcile_topic)


@pytest.fixture(scope="module")
def life(emulators: Emulators) -> Iterator[Lifecycle]:
    finished = create_topic(emulators, "leaf-run-finished")
    reconcile_topic = create_topic(emulators, "leaf-reconcile")
    with EEStandIn(writer=gcs_writer) as ee_server, ExitStack() as stack:
        env = {"LEAF_EE_URL": ee_server.url, "LEAF_EE_PROJECT": "leaf-test", "LEAF_RUN_FINISHED_TOPIC": finished,
               "LEAF_RETRY_BACKOFF_S": "0", "LEAF_CLAIM_LEASE_S": str(LEASE_S), "LEAF_HANDLER_BUDGET_S": "5",
               "LEAF_EE_STARTS_PER_SECOND": "0"}
        svc = stack.enter_context(serving(emulators, BUCKET, "gee", env, requests_topic="leaf-requests-life"))
        rec_url = stack.enter_context(function_server(emulators, "reconcile_runs", svc.env))
        create_subscription(emulators, reconcile_topic, f"push-reconcile-{uuid.uuid4().hex[:6]}",
                            push_endpoint=f"{rec_url}/{reconcile_topic}")
        yield Lifecycle(svc.emu, svc.svc, svc.sink, ee_server, reconcile_topic, finished, rec_url, stack)


def _request(folder: str, **extra: object) -> dict:
    return e2e_request(BUCKET, folder, **{"prod_names": ["LAI"], **extra})


def test_a_permanent_failure_ends_partial_with_one_run_finished_message(life: Lifecycle) -> None:
    folder = f"life/{uuid.uuid4().hex[:8]}"
    raw = _request(folder)
    rid = parse_request(raw).request_id
    finished, ready = life.subscription(life.finished_topic), life.subscription(life.tile_ready_topic)
    life.publish(json.dumps(raw).encode())
    rec = life.wait_state(folder, rid, "PROCESSING")
    assert len(rec.tasks) == 6
    life.ee.fail(life.ee.task_for(f"{folder}/tile42_911/2020/tile42_911_2020_Aug_LAI"), "User memory limit exceeded.")
    for task in rec.tasks:
        if not task.prefix.endswith("_Aug_LAI_1000m"):
            life.ee.run(task.task_id or "")
            life.ee.succeed(task.task_id or "", eecu_s=60.0)  # real GeoTIFFs into fake-gcs: finalize events
    life.tick(folder)
    rec = life.wait_state(folder, rid, "PARTIAL")
    failed = [t for t in rec.tasks if t.state == "FAILED"]
    assert [(t.product, t.error) for t in failed] == [("LAI", "User memory limit exceeded.")]
    assert rec.eecu_hours() == pytest.approx(5 * 60 / 3600 + 2 / 3600)
    life.tick(folder)  # a second tick announces nothing more
    messages = pull(finished, expect=1, timeout_s=60, settle_s=4)
    assert len(messages) == 1
    body = json.loads(messages[0].data)
    assert (body["request_id"], body["state"], body["counts"]) == (rid, "PARTIAL", {"COMPLETE": 5, "FAILED": 1})
    assert body["record_uri"] == f"gs://{BUCKET}/{folder}/_runs/{rid}.json"
    assert messages[0].attributes["state"] == "PARTIAL"
    # July is complete (its tile-ready was published by the catalogue), August is not
    tiles = pull(ready, expect=1, timeout_s=60, settle_s=4)
    assert [json.loads(m.data)["period"] for m in tiles] == ["Jul"]


def test_a_transient_failure_is_retried_and_the_run_succeeds(life: Lifecycle) -> None:
    folder = f"life/{uuid.uuid4().hex[:8]}"
    raw = _request(folder, months=[7])
    rid = parse_request(raw).request_id
    finished = life.subscription(life.finished_topic)
    life.publish(json.dumps(raw).encode())
    rec = life.wait_state(folder, rid, "PROCESSING")
    lai = next(t for t in rec.tasks if t.product == "LAI")
    life.ee.fail(lai.task_id or "", "Computation timed out.")
    life.tick(folder)
    wait_for(lambda: (r := life.record(folder, rid)) is not None and any(
        t.product == "LAI" and t.attempts == 2 for t in r.tasks), 60, "the retry of the LAI export")
    life.ee.succeed_all()
    life.tick(folder)
    rec = life.wait_state(folder, rid, "SUCCEEDED")
    assert {t.state for t in rec.tasks} == {"COMPLETE"}
    assert [json.loads(m.data)["state"] for m in pull(finished, expect=1, timeout_s=60, settle_s=4)] == [
        "SUCCEEDED"]


def _push(url: str, topic: str, data: bytes) -> int:
    """POST one Pub/Sub push envelope to a function, as the push subscription does; returns the HTTP status."""
    envelope = {"message": {"data": base64.b64encode(data).decode(), "attributes": {},
                            "messageId": uuid.uuid4().hex[:12]},
                "subscription": "projects/leaf-test/subscriptions/direct"}
    req = urllib.request.Request(f"{url}/{topic}", json.dumps(envelope).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_transient_error_is_raised_to_the_platform_not_acknowledged(life: Lifecycle) -> None:
    """Earth Engine answers 503 while the handler reads the operations: the function must answer an error (the
    platform redelivers), not 2xx (an acknowledged message would leave the run stranded)."""
    folder = f"life/{uuid.uuid4().hex[:8]}"
    raw = _request(folder, months=[6])
    rid = parse_request(raw).request_id
    life.ee.fail_next(503, times=10_000, path_contains="/operations")
    try:
        status = _push(life.start_url, life.requests_topic, json.dumps(raw).encode())
        assert status >= 500
        rec = life.record(folder, rid)
        assert rec is not None and rec.state == "CLAIMED" and rec.claimed_at == 0  # released for the redelivery
        assert _push(life.reconcile_url, life.reconcile_topic,
                     json.dumps({"bucket": BUCKET, "folder": folder}).encode()) >= 500
    finally:
        life.ee.clear_failures()
    assert 200 <= _push(life.start_url, life.requests_topic, json.dumps(raw).encode()) < 300
    assert life.wait_state(folder, rid, "PROCESSING").state == "PROCESSING"


def test_a_handler_killed_after_its_claim_then_redelivery_finishes_the_start(life: Lifecycle) -> None:
    folder = f"life/{uuid.uuid4().hex[:8]}"
    raw = _request(folder, months=[9])
    rid = parse_request(raw).request_id
    release = life.ee.hold("image:export")
    starts_before = len(life.ee.exports)
    server = life.server(life.start_url)
    try:
        life.publish(json.dumps(raw).encode())
        wait_for(lambda: any(r.path.endswith("image:export") and r.status == 0 for r in life.ee.requests), 60,
                 "the handler to be inside its first export start")
        assert (rec := life.record(folder, rid)) is not None and rec.state == "CLAIMED"
        server.process.kill()  # SIGKILL: no cleanup of any kind
        server.process.wait(10)
    finally:
        release.set()
    life.ee.clear_holds()
    port = int(life.start_url.rsplit(":", 1)[1])
    life.servers.enter_context(function_server(life.emu, "start_production", life.env, port=port))
    # the emulator redelivers to the restarted server; after the lease the claim is taken over
    rec = life.wait_state(folder, rid, "PROCESSING", timeout_s=120)
    assert len(rec.tasks) == 3 and all(t.attempts == 1 for t in rec.tasks)
    assert len(life.ee.exports) - starts_before == 3  # the killed handler's start was not repeated


def test_cancel_mid_run_then_resume_through_the_cli(life: Lifecycle, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`leaf cancel` mid-run: operations cancelled, run CANCELLED, one run-finished, no tile-ready after;
    `leaf resume` resubmits only what did not complete; `leaf reconcile` ends the run SUCCEEDED."""
    from leaf_engine.cli import main

    for k, v in life.env.items():
        monkeypatch.setenv(k, v)
    folder = f"life/{uuid.uuid4().hex[:8]}"
    raw = _request(folder)
    rid = parse_request(raw).request_id
    finished, ready = life.subscription(life.finished_topic), life.subscription(life.tile_ready_topic)
    life.publish(json.dumps(raw).encode())
    rec = life.wait_state(folder, rid, "PROCESSING")
    july = [t for t in rec.tasks if "_Jul_" in t.prefix]
    life.ee.succeed(next(t.task_id for t in july if t.product == "LAI") or "")
    life.ee.run(next(t.task_id for t in rec.tasks if "_Aug_" in t.prefix) or "")

    assert main(["cancel", rid, "--bucket", BUCKET, "--folder", folder]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"
    rec = life.record(folder, rid)
    assert rec is not None and rec.state == "CANCELLED"
    # six cancels asked; July LAI had just succeeded (Earth Engine refuses its cancel), the other five are cancelled
    assert sorted(life.ee.operations[n]["metadata"]["state"] for n in life.ee.cancels) == ["CANCELLED"] * 5 + [
        "SUCCEEDED"]
    # Earth Engine had already written the rest of July: the item completes, but no tile-ready is published
    for t in july:
        if t.product != "LAI":
            from tests.support.ee_standin import export_files

            for key, data in export_files(life.ee.bodies[life.ee._find(t.task_id or "")["name"]]):
                gcs_writer(BUCKET, key, data)
    wait_for(lambda: (item := life.sink.read_json(f"{folder}/_stac/tile42_911/tile42_911_2020_Jul.json"))
             is not None and item[0]["properties"]["leaf:complete"], 60, "the July item to be complete")
    assert [json.loads(m.data)["state"] for m in pull(finished, expect=1, timeout_s=30, settle_s=3)] == [
        "CANCELLED"]
    assert pull(ready, expect=0, timeout_s=8, settle_s=4) == []

    starts = len(life.ee.exports)
    assert main(["resume", rid, "--bucket", BUCKET, "--folder", folder]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "PROCESSING"
    assert len(life.ee.exports) - starts == 5  # everything but the completed July LAI
    life.ee.succeed_all()
    assert main(["reconcile", "--bucket", BUCKET, "--folder", folder]) == 0
    capsys.readouterr()
    assert life.wait_state(folder, rid, "SUCCEEDED").attempt == 2
    assert main(["status", rid, "--bucket", BUCKET, "--folder", folder]) == 0
    out = capsys.readouterr().out
    assert "tasks: [" in out and "6/6 settled" in out and "EECU-hours:" in out
