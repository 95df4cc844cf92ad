"""50 concurrent finalize events on one item, against fake-gcs-server's real generation preconditions."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from leaf_engine.catalogue import ObjectEvent, catalogue_object
from leaf_engine.naming import collection_key, item_key, run_record_key
from leaf_engine.sinks import GcsSink
from tests.support.emulators import Emulators
from tests.support.runs import RecordingPublisher, small_request, write_outputs, write_run

pytestmark = pytest.mark.emulators

BUCKET = "leaf-concurrency"
EVENTS = 50


@pytest.fixture
def gcs(emulators: Emulators) -> GcsSink:
    from google.cloud import storage

    client = storage.Client(project=emulators.project)
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    return GcsSink(BUCKET, client=client)


def test_fifty_concurrent_events_on_one_item_lose_nothing(gcs: GcsSink, tmp_path: Path) -> None:
    folder = f"c/{uuid.uuid4().hex[:8]}"
    req = small_request(folder, uncertainty=True, algorithm="SL2P-CCRS")
    record = write_run(gcs, req, shards=2)  # 11 products × 4 shards = 44 objects in one item
    keys = list(record["objects"])
    assert len(keys) == 44
    write_outputs(gcs, record, tmp_path)
    blobs = {k: gcs.bucket.get_blob(k) for k in keys}
    events = [keys[i % len(keys)] for i in range(EVENTS)]  # 6 objects get a second (duplicate) event
    pub = RecordingPublisher()
    barrier = threading.Barrier(EVENTS)
    errors: list[BaseException] = []

    def deliver(i: int, key: str) -> None:
        b = blobs[key]
        barrier.wait()  # all 50 start together
        try:
            catalogue_object(gcs, ObjectEvent(key, f"ev-{i}", BUCKET, int(b.generation), int(b.size), b.md5_hash),
                             publisher=pub)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=deliver, args=(i, k)) for i, k in enumerate(events)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    item, _ = gcs.read_json(item_key(folder, "tile42_911", 2020, "Jul"))  # type: ignore[misc]
    assert len(item["assets"]) == 11
    shards = {s["leaf:object"]: s for a in item["assets"].values() for s in a["leaf:shards"]}
    assert sorted(shards) == sorted(keys)
    assert all(shards[k]["leaf:generation"] == int(blobs[k].generation) for k in keys)
    assert all(shards[k]["file:size"] == int(blobs[k].size) for k in keys)
    assert item["properties"]["leaf:complete"] is True
    assert len(pub.messages) == 1
    assert item["properties"]["leaf:tile_ready"]["state"] == "published"
    coll, _ = gcs.read_json(collection_key(folder, req.request_id))  # type: ignore[misc]
    assert coll["leaf:items"] == {"tile42_911_2020_Jul": "complete"}
    run, _ = gcs.read_json(run_record_key(folder, req.request_id))  # type: ignore[misc]
    assert run["state"] == "SUCCEEDED"


def test_file_checks_read_objects_in_place_on_gcs(gcs: GcsSink, tmp_path: Path) -> None:
    """The checks run by range reads on the bucket: a short file, garbage and a missing object are reported."""
    folder = f"c/{uuid.uuid4().hex[:8]}"
    record = write_run(gcs, small_request(folder))
    good, short, garbage, missing = list(record["objects"])[:4]
    write_outputs(gcs, record, tmp_path, [good])
    write_outputs(gcs, record, tmp_path, [short], width=280)
    gcs.put_bytes(garbage, b"II*\x00 not really a tiff")
    for i, key in enumerate((good, short, garbage, missing)):
        catalogue_object(gcs, ObjectEvent(key, f"e{i}", BUCKET))
    item, _ = gcs.read_json(item_key(folder, "tile42_911", 2020, "Jul"))  # type: ignore[misc]
    problems = item["properties"]["leaf:problems"]
    assert good not in problems
    assert "280x300" in problems[short]["errors"][0]
    assert "not a readable GeoTIFF" in problems[garbage]["errors"][0]
    assert problems[missing]["errors"] == ["object not found when the catalogue read it"]
    assert item["properties"]["leaf:complete"] is False
