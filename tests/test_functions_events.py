"""Event decoding of functions/main.py: Eventarc CloudEvents and Pub/Sub push envelopes (no emulator needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cloudevents.http import CloudEvent

from functions import main

REPO = Path(__file__).resolve().parents[1]

OBJECT = {"kind": "storage#object", "bucket": "bkt", "name": "f/tile42/2020/tile42_2020_Jul_LAI_20m.tif",
          "generation": "1700000000000001", "size": "1234", "md5Hash": "XUFAKrxLKna5cZ2REBfFkg=="}


def _notification(event_type: str = "OBJECT_FINALIZE", obj: dict | None = None) -> dict:
    return {"message": {"data": base64.b64encode(json.dumps(obj or OBJECT).encode()).decode(),
                        "attributes": {"eventType": event_type, "bucketId": "bkt", "objectId": OBJECT["name"]},
                        "messageId": "42", "publishTime": "2026-01-01T00:00:00Z"},
            "subscription": "projects/p/subscriptions/s"}


def test_eventarc_storage_event() -> None:
    event = CloudEvent({"type": main.STORAGE_FINALIZED, "source": "//storage.googleapis.com/projects/_/buckets/bkt",
                        "id": "ev-1", "subject": f"objects/{OBJECT['name']}"}, OBJECT)
    got = main.object_event(event)
    assert got is not None
    assert (got.key, got.bucket, got.event_id) == (OBJECT["name"], "bkt", "ev-1")
    assert (got.generation, got.size, got.md5_hash) == (1700000000000001, 1234, OBJECT["md5Hash"])


def test_pubsub_notification_event() -> None:
    event = CloudEvent({"type": main.PUBSUB_PUBLISHED, "source": "//pubsub.googleapis.com/projects/p/topics/t",
                        "id": "x"}, _notification())
    got = main.object_event(event)
    assert got is not None and got.event_id == "42" and got.generation == 1700000000000001


def test_notification_without_payload_uses_its_attributes() -> None:
    envelope = _notification()
    envelope["message"]["data"] = ""
    envelope["message"]["attributes"]["objectGeneration"] = "9"
    event = CloudEvent({"type": main.PUBSUB_PUBLISHED, "source": "//pubsub.googleapis.com/projects/p/topics/t",
                        "id": "x"}, envelope)
    got = main.object_event(event)
    assert got is not None and (got.key, got.bucket, got.generation, got.size) == (OBJECT["name"], "bkt", 9, None)


def test_other_notifications_are_not_objects() -> None:
    event = CloudEvent({"type": main.PUBSUB_PUBLISHED, "source": "//pubsub.googleapis.com/projects/p/topics/t",
                        "id": "x"}, _notification("OBJECT_DELETE"))
    assert main.object_event(event) is None
    other = CloudEvent({"type": "google.cloud.audit.log.v1.written", "source": "//x", "id": "y"}, {})
    assert main.object_event(other) is None


@pytest.fixture
def catalogue_client():
    import functions_framework

    app = functions_framework.create_app("catalogue_output", str(REPO / "functions" / "main.py"), "cloudevent")
    return app.test_client()


def test_push_envelope_reaches_the_catalogue_and_is_acknowledged(catalogue_client) -> None:
    """A raw push (no ce- headers) is converted by functions-framework; a foreign object is acknowledged."""
    foreign = {**OBJECT, "name": "somewhere/else.txt"}
    resp = catalogue_client.post("/projects/p/topics/t", json=_notification(obj=foreign))
    assert resp.status_code == 200


def test_unreadable_storage_event_is_acknowledged(catalogue_client) -> None:
    envelope = _notification()
    envelope["message"]["data"] = base64.b64encode(b"not json").decode()
    assert catalogue_client.post("/projects/p/topics/t", json=envelope).status_code == 200


def test_start_production_acknowledges_undecodable_data() -> None:
    import functions_framework

    app = functions_framework.create_app("start_production", str(REPO / "functions" / "main.py"), "cloudevent")
    envelope = {"message": {"data": "%%% not base64 %%%", "messageId": "7"}, "subscription": "s"}
    resp = app.test_client().post("/projects/p/topics/requests", json=envelope)
    assert resp.status_code == 200  # recorded (logged) and acknowledged: no retry storm
