"""``leaf publish`` and ``leaf status`` against the emulators."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from leaf_engine.catalogue import ObjectEvent, catalogue_object
from leaf_engine.cli import main
from leaf_engine.sinks import GcsSink
from tests.support.emulators import Emulators, create_subscription, create_topic, pull
from tests.support.runs import small_request, write_outputs, write_run

pytestmark = pytest.mark.emulators

BUCKET = "leaf-cli"


def test_publish_sends_the_request_with_its_id(emulators: Emulators, tmp_path: Path, capsys) -> None:
    topic = create_topic(emulators, "cli-requests")
    sub = create_subscription(emulators, topic, f"cli-{uuid.uuid4().hex[:6]}")
    raw = {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42_911"], "resolution": 1000,
           "GCS_bucket": "bkt"}
    path = tmp_path / "req.json"
    path.write_text(json.dumps(raw))
    assert main(["publish", str(path), "--topic", topic, "--request-id", "my-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["request_id"] == "my-run" and out["message_id"]
    (msg,) = pull(sub, expect=1, timeout_s=30, settle_s=1)
    assert json.loads(msg.data) == raw and msg.attributes["request_id"] == "my-run"


def test_publish_refuses_an_invalid_request(emulators: Emulators, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"sensor": "S9", "year": 2020}))
    assert main(["publish", str(path), "--topic", emulators.topic("cli-requests")]) == 2


def test_status_counts_objects_and_items(emulators: Emulators, tmp_path: Path, capsys) -> None:
    from google.cloud import storage

    client = storage.Client(project=emulators.project)
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    sink = GcsSink(BUCKET, client=client)
    folder = f"s/{uuid.uuid4().hex[:6]}"
    req = small_request(folder, months=[7, 8])
    record = write_run(sink, req)
    july = [k for k, o in record["objects"].items() if o["item_id"] == "tile42_911_2020_Jul"]
    write_outputs(sink, record, tmp_path, july)
    for i, key in enumerate(july):
        catalogue_object(sink, ObjectEvent(key, f"e{i}"))

    assert main(["status", req.request_id, "--bucket", BUCKET, "--folder", folder, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["state"], report["expected"], report["present"]) == ("PROCESSING", 12, 6)
    assert report["complete_items"] == ["tile42_911_2020_Jul"]
    assert len(report["missing"]) == 6 and all("_Aug_" in k for k in report["missing"])

    assert main(["status", req.request_id, "--bucket", BUCKET, "--folder", folder]) == 0
    text = capsys.readouterr().out
    assert "objects: 6/12 present" in text and "items: 1/2 complete" in text

    assert main(["status", "no-such-run", "--bucket", BUCKET, "--folder", folder]) == 1
