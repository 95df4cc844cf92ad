"""End to end on real components: Pub/Sub emulator → start_production (functions-framework over HTTP, push
subscription) → run record in fake-gcs-server → files of the planned names uploaded → OBJECT_FINALIZE
notifications → catalogue_output (push) → STAC items complete → tile-ready messages pulled from the emulator.

The Earth Engine side is played by the test (``LEAF_BACKEND=external``): it uploads small valid GeoTIFFs with
exactly the names and grids the run record expects, which is what Earth Engine's exports would produce.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from leaf_engine.catalogue import ExpectedObject
from leaf_engine.naming import collection_key, error_records_prefix, item_key
from tests.support.emulators import ERRORS_BUCKET, Emulators, pull, wait_for
from tests.support.fake_exports import geotiff_bytes
from tests.support.runs import with_expectations
from tests.support.service_e2e import E2EService, e2e_request, expected_files, serving

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

BUCKET = "leaf-e2e"


def _request(folder: str, **extra: object) -> dict:
    return e2e_request(BUCKET, folder, **extra)


class Stack(E2EService):
    @property
    def start_log(self) -> Path:
        return self.log(self.svc.start_url)

    @property
    def catalogue_log(self) -> Path:
        return self.log(self.svc.catalogue_url or self.svc.start_url)

    def ready_subscription(self) -> str:
        """A fresh pull subscription: it sees only tile-ready messages published from now on."""
        return self.subscription(self.tile_ready_topic, "ready")

    def wait_record(self, folder: str, request_id: str, state: str) -> dict:
        return with_expectations(self.wait_run(folder, request_id, state))

    def upload_outputs(self, record: dict, repeats: int = 1) -> None:
        """Play Earth Engine: write every expected object (``repeats`` generations each, concurrently)."""
        blobs = expected_files(record)
        jobs = [k for k in blobs for _ in range(repeats)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: self.sink.put_bytes(k, blobs[k], "image/tiff"), jobs))


@pytest.fixture(scope="module")
def stack(emulators: Emulators):
    with serving(emulators, BUCKET, "external") as svc:
        yield Stack(svc.emu, svc.svc, svc.sink)


@pytest.fixture(scope="module")
def gee_stack(stack: Stack):
    """start_production on the Earth Engine backend, talking to the local Earth Engine stand-in."""
    from tests.support.ee_standin import EEStandIn

    with EEStandIn() as ee_server, serving(stack.emu, BUCKET, "gee", {"LEAF_EE_URL": ee_server.url},
                                           requests_topic="leaf-requests-gee", catalogue=False) as svc:
        yield Stack(svc.emu, svc.svc, svc.sink), ee_server


def test_earth_engine_backend_end_to_end(gee_stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports started on the Earth Engine stand-in exactly once per planned file, even for a duplicate request."""
    from leaf_engine.plan import make_plan
    from leaf_engine.request import parse_request

    gee, ee_server = gee_stack
    folder = f"e2e/{uuid.uuid4().hex[:8]}"
    data = json.dumps(_request(folder)).encode()
    req = parse_request(data)
    ready = gee.ready_subscription()
    gee.publish(data)
    record = gee.wait_record(folder, req.request_id, "PROCESSING")
    planned = make_plan(req).files
    assert len(ee_server.exports) == len(planned) == 12
    assert sorted(t["prefix"] for t in record["tasks"]) == sorted(f.name.prefix for f in planned)
    assert all(t["task_id"] for t in record["tasks"])

    gee.publish(data)  # a duplicate: starts nothing
    wait_for(lambda: _log_count(gee, f'"request_id": "{req.request_id}"', "request duplicate") == 1, 30,
             "the duplicate delivery to be handled")
    gee.upload_outputs(record)
    for task_id in ee_server.task_ids():
        ee_server.set_state(task_id, "SUCCEEDED", eecu_s=1.0)
    from leaf_engine import reconcile
    from leaf_engine.backends.gee.operations import EarthEngineTasks

    monkeypatch.setenv("LEAF_EE_URL", ee_server.url)
    reconcile.reconcile(gee.sink, folder, backend=EarthEngineTasks("leaf-test"))  # the Earth Engine run's end
    gee.wait_record(folder, req.request_id, "SUCCEEDED")
    assert len(_pull(ready, expect=2)) == 2
    assert len(ee_server.exports) == 12 and not ee_server.duplicates


def test_request_to_tile_ready(stack: Stack) -> None:
    from leaf_engine.request import parse_request

    folder = f"e2e/{uuid.uuid4().hex[:8]}"
    req = parse_request(_request(folder))
    ready = stack.ready_subscription()
    stack.publish(json.dumps(_request(folder)).encode())
    record = stack.wait_record(folder, req.request_id, "PROCESSING")
    assert len(record["objects"]) == 12
    assert record["backend_tasks"]["external"]  # the backend was called and its task ids recorded

    stack.upload_outputs(record)
    record = stack.wait_record(folder, req.request_id, "SUCCEEDED")

    messages = _pull(ready, expect=2)
    bodies = sorted((json.loads(m.data) for m in messages), key=lambda b: b["period"])
    assert [b["period"] for b in bodies] == ["Aug", "Jul"]
    for body in bodies:
        assert body["request_id"] == req.request_id
        assert body["region"] == "tile42_911"
        assert body["item_url"] == stack.sink.uri(item_key(folder, "tile42_911", 2020, body["period"]))
        item, _ = stack.sink.read_json(item_key(folder, "tile42_911", 2020, body["period"]))
        assert sorted(item["assets"]) == sorted(req.output_products())
        assert item["properties"]["leaf:complete"] is True
        assert item["properties"]["leaf:tile_ready"]["state"] == "published"
    coll, _ = stack.sink.read_json(collection_key(folder, req.request_id))
    assert set(coll["leaf:items"].values()) == {"complete"}


def _pull(subscription: str, expect: int) -> list:
    return pull(subscription, expect=expect, timeout_s=90, settle_s=4)


def test_repeated_finalize_events_publish_once_and_lose_nothing(stack: Stack) -> None:
    """Every object uploaded 5 times at once (55 finalize events on one item): one tile-ready, all assets."""
    from leaf_engine.request import parse_request

    folder = f"e2e/{uuid.uuid4().hex[:8]}"
    raw = {**_request(folder), "months": [6], "uncertainty": True, "algorithm": "SL2P-CCRS"}
    req = parse_request(raw)
    ready = stack.ready_subscription()
    stack.publish(json.dumps(raw).encode())
    record = stack.wait_record(folder, req.request_id, "PROCESSING")
    assert len(record["objects"]) == 11

    stack.upload_outputs(record, repeats=5)
    stack.wait_record(folder, req.request_id, "SUCCEEDED")
    messages = _pull(ready, expect=1)
    assert len(messages) == 1
    item, _ = stack.sink.read_json(item_key(folder, "tile42_911", 2020, "Jun"))
    assert len(item["assets"]) == 11
    # Nothing lost: each object's entry ends on the object's latest generation.
    gcs = stack.sink.bucket

    def latest_recorded() -> bool:
        item, _ = stack.sink.read_json(item_key(folder, "tile42_911", 2020, "Jun"))
        entries = {s["leaf:object"]: s["leaf:generation"] for a in item["assets"].values() for s in a["leaf:shards"]}
        return all(entries[k] == gcs.get_blob(k).generation for k in record["objects"])

    wait_for(latest_recorded, 60, "every object's latest generation in the item")
    handled = [line for line in _cat_log(stack).splitlines() if folder in line and '"message": "object ' in line]
    assert len(handled) >= 55  # the 55 finalize events really reached the catalogue


def test_a_bad_overwrite_degrades_a_complete_item_until_a_good_file_fixes_it(stack: Stack) -> None:
    """Through the functions: complete (SUCCEEDED, one tile-ready) → one file overwritten by a bad one → the item,
    the collection and the run record show it → a good file again → complete, cleared, still one tile-ready."""
    from leaf_engine.request import parse_request

    folder = f"e2e/{uuid.uuid4().hex[:8]}"
    raw = {**_request(folder), "months": [7]}
    req = parse_request(raw)
    ready = stack.ready_subscription()
    stack.publish(json.dumps(raw).encode())
    record = stack.wait_record(folder, req.request_id, "PROCESSING")
    stack.upload_outputs(record)
    stack.wait_record(folder, req.request_id, "SUCCEEDED")
    assert len(_pull(ready, expect=1)) == 1
    item_id, ikey = "tile42_911_2020_Jul", item_key(folder, "tile42_911", 2020, "Jul")
    ckey = collection_key(folder, req.request_id)

    def collection() -> dict:
        return stack.sink.read_json(ckey)[0]  # type: ignore[index]

    bad = next(iter(record["objects"]))
    stack.sink.put_bytes(bad, b"not a geotiff", "image/tiff")
    wait_for(lambda: collection()["leaf:items"][item_id] == "partial", 60, "the collection to say partial")
    item, _ = stack.sink.read_json(ikey)  # type: ignore[misc]
    assert not item["properties"]["leaf:complete"]
    assert "not a readable GeoTIFF" in item["properties"]["leaf:problems"][bad]["errors"][0]
    assert bad in collection()["leaf:item_problems"][item_id] and item_id in collection()["leaf:degraded"]
    wait_for(lambda: item_id in (stack.run_doc(folder, req.request_id) or {}).get("degraded", {}), 30,
             "the run record to list the degraded item")
    assert stack.run_doc(folder, req.request_id)["state"] == "SUCCEEDED"  # type: ignore[index]

    with tempfile.TemporaryDirectory() as tmp:
        stack.sink.put_bytes(bad, geotiff_bytes(ExpectedObject.from_dict(record["objects"][bad]), Path(tmp)),
                             "image/tiff")
    wait_for(lambda: collection()["leaf:items"][item_id] == "complete", 60, "the collection to say complete")
    wait_for(lambda: (stack.run_doc(folder, req.request_id) or {}).get("degraded") == {}, 30,
             "the run record to clear the degraded item")
    assert collection()["leaf:degraded"] == {} and collection()["leaf:item_problems"] == {}
    assert _pull(ready, expect=0) == []  # complete again, announced once already


def test_duplicate_request_starts_nothing(stack: Stack) -> None:
    from leaf_engine.request import parse_request

    folder = f"e2e/{uuid.uuid4().hex[:8]}"
    data = json.dumps(_request(folder)).encode()
    req = parse_request(data)
    stack.publish(data)
    stack.publish(data)
    stack.wait_record(folder, req.request_id, "PROCESSING")
    wait_for(lambda: _log_count(stack, f'"request_id": "{req.request_id}"', "request duplicate") >= 1, 30,
             "the duplicate delivery to be handled")
    record = stack.run_doc(folder, req.request_id)
    assert record is not None
    assert [h["state"] for h in record["history"]] == ["CLAIMED", "PROCESSING"]
    assert record["attempt"] == 1
    assert _log_count(stack, f'"request_id": "{req.request_id}"', "request started") == 1


def _log_count(stack: Stack, *needles: str) -> int:
    text = stack.start_log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if all(n in line for n in needles))


@pytest.mark.parametrize("payload, where", [
    (b"this is { not json", "errors"),
    ("{\"sensor\": \"S2_SR\", \"note\": \"caf\u00e9\"}".encode("latin-1"), "errors"),
    (json.dumps({"sensor": "S9", "year": 1900, "GCS_bucket": BUCKET, "out_folder": "e2e/bad"}).encode(), "bucket"),
    (json.dumps(_request("e2e/nobucket", GCS_bucket="no-such-bucket")).encode(), "errors"),  # valid, unwritable
])
def test_malformed_message_writes_error_record_once(stack: Stack, payload: bytes, where: str) -> None:
    import hashlib

    from google.cloud import storage

    error_id = "msg-" + hashlib.sha256(payload).hexdigest()[:20]
    if where == "bucket":
        bucket, prefix = BUCKET, error_records_prefix("e2e/bad", error_id)
    else:
        bucket, prefix = ERRORS_BUCKET, error_records_prefix("bad-messages", error_id)
    stack.publish(payload)
    found = lambda: [b.name for b in storage.Client().list_blobs(bucket, prefix=prefix)]  # noqa: E731
    wait_for(lambda: bool(found()), 30, f"error record gs://{bucket}/{prefix}*")
    assert len(found()) == 1  # one record per message
    record = json.loads(storage.Client().bucket(bucket).get_blob(found()[0]).download_as_bytes())
    assert record["problems"], record
    if where == "bucket":
        keys = {p["key"] for p in record["problems"]}
        assert {"sensor", "year"} <= keys
    import time

    time.sleep(3)  # a retry loop would show up as repeated handling of the same message
    assert _log_count(stack, f'"request_id": "{error_id}"', "invalid production message") == 1


def test_foreign_objects_are_ignored(stack: Stack) -> None:
    stack.sink.put_bytes("e2e/not-leaf/readme.txt", b"hello", "text/plain")
    stack.sink.put_bytes("e2e/x/tile42/2020/tile42_2020_Jul_LAI_20m.tif", b"not a tiff", "image/tiff")
    wait_for(lambda: re.search(r"no run record expects this object", _cat_log(stack)) is not None, 30,
             "the unexpected LEAF-named object to be seen")
    assert not stack.sink.list("e2e/x/_stac")


def _cat_log(stack: Stack) -> str:
    return stack.catalogue_log.read_text(errors="replace")
