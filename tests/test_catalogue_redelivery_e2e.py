"""End to end on the emulators: the catalogue handler that completes an item is delayed, between its tile-ready
claim and its publish, past the push subscription's ack deadline, so Pub/Sub redelivers the finalize event to a
second handler while the first still runs. Exactly one tile-ready message comes out, and the item, the collection
and the run end complete.

The delay is injected outside the product: the catalogue's function server talks to fake-gcs-server through a
loopback fault proxy (``STORAGE_EMULATOR_HOST`` of that server only), which holds one request — the first read of
the item made while the item carries an unpublished claim, i.e. the claim holder's read just before its publish
fence. Everything else (start_production, the uploads, the test's own reads) goes to fake-gcs-server directly.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid

import pytest

from leaf_engine.naming import collection_key, item_key, run_record_key
from leaf_engine.sinks import GcsSink
from tests.support.emulators import Emulators, create_subscription, function_server, pull, wait_for
from tests.support.fault_proxy import DELAY, PASS, FaultProxy
from tests.support.runs import with_expectations
from tests.support.service_e2e import e2e_request, expected_files, serving

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

BUCKET = "leaf-redelivery"
ACK_DEADLINE_S = 10
"""The catalogue push subscription's ack deadline (Pub/Sub's minimum): a push unanswered this long is redelivered."""
DELAY_S = 16.0
"""How long the completing handler is held: well past the ack deadline, so the redelivery overlaps it."""


class HoldClaimHolder:
    """Fault-proxy decision: delay (once) the first metadata read of ``item`` seen while the item, as stored in
    fake-gcs-server, holds a tile-ready claim that is not published yet; every other request passes.

    Only the claim holder reads the item then (its fence); a redelivered handler can only come after the ack
    deadline, while the holder is held here."""

    def __init__(self, sink: GcsSink, item: str):
        self.sink, self.item = sink, item
        self.path = f"/storage/v1/b/{sink.bucket_name}/o/{urllib.parse.quote(item, safe='')}"
        self.armed = False
        self.held = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, n: int) -> str:
        if not self.armed or method != "GET" or urllib.parse.urlsplit(path).path != self.path:
            return PASS
        got = self.sink.read_json(self.item)  # straight from fake-gcs-server, not through the proxy
        state = (got[0]["properties"].get("leaf:tile_ready") if got else None) or {}
        with self._lock:
            if self.held.is_set() or state.get("state") != "claimed":
                return PASS
            self.held.set()
            return DELAY


def test_catalogue_handler_delayed_past_the_redelivery_publishes_once(emulators: Emulators) -> None:
    from leaf_engine.request import parse_request

    sink = GcsSink(BUCKET)
    folder = f"redelivery/{uuid.uuid4().hex[:8]}"
    raw = e2e_request(BUCKET, folder, months=[7])
    req = parse_request(raw)
    item_id, ikey = "tile42_911_2020_Jul", item_key(folder, "tile42_911", 2020, "Jul")
    hold = HoldClaimHolder(sink, ikey)

    with FaultProxy(emulators.storage_url, hold, delay_s=DELAY_S) as proxy, \
            serving(emulators, BUCKET, "external", requests_topic="leaf-requests-redelivery",
                    catalogue=False) as svc, \
            function_server(emulators, "catalogue_output",
                            {**svc.env, "STORAGE_EMULATOR_HOST": proxy.url}) as cat_url:
        create_subscription(emulators, svc.svc.gcs_events_topic, f"push-catalogue-slow-{uuid.uuid4().hex[:6]}",
                            push_endpoint=f"{cat_url}/{svc.svc.gcs_events_topic}", ack_deadline_s=ACK_DEADLINE_S)
        cat_log = svc.log(cat_url)
        ready = svc.subscription(svc.tile_ready_topic, "ready")

        svc.publish(json.dumps(raw).encode())
        rkey = run_record_key(folder, req.request_id)
        record = with_expectations(svc.wait_run(folder, req.request_id, "PROCESSING"))
        blobs = expected_files(record)
        *first, last = sorted(blobs)
        assert len(first) == 5

        for key in first:  # every file but one: the item is partial, nobody claims
            sink.put_bytes(key, blobs[key], "image/tiff")

        def recorded() -> set[str]:
            got = sink.read_json(ikey)
            return {s["leaf:object"] for a in got[0]["assets"].values() for s in a["leaf:shards"]} if got else set()

        wait_for(lambda: recorded() == set(first), 30, "the first five files in the item")
        hold.armed = True
        sink.put_bytes(last, blobs[last], "image/tiff")  # its handler completes the item, claims, and is held

        wait_for(hold.held.is_set, 20, "the completing handler to be held after its claim")

        def handled(*needles: str) -> int:
            text = cat_log.read_text(errors="replace")
            return sum(1 for line in text.splitlines() if last in line and all(n in line for n in needles))

        # The held handler goes on and publishes; a redelivery of the event, handled meanwhile or after, finds
        # the claim and is acknowledged once it is published.
        wait_for(lambda: handled('"message": "object recorded"') >= 2, DELAY_S + 40,
                 "both the held handler and a redelivery to finish")
        pulled = pull(ready, expect=1, timeout_s=30, settle_s=3)

    messages = [m for m in pulled if m.attributes["request_id"] == req.request_id]

    assert proxy.counts[DELAY] == 1
    assert len(messages) == 1, [m.data for m in pulled]
    body = json.loads(messages[0].data)
    assert (body["request_id"], body["item_id"]) == (req.request_id, item_id)
    assert messages[0].attributes["tile_ready_id"] == f"{req.request_id}/{item_id}"
    published = [ln for ln in cat_log.read_text(errors="replace").splitlines() if '"tile ready published"' in ln]
    assert len(published) == 1 and last in published[0]
    # The redelivery really overlapped the held handler: it found the unpublished claim and asked to be redelivered
    # again, instead of taking the claim over or publishing.
    assert handled("another handler is publishing its tile-ready") >= 1

    item, _ = sink.read_json(ikey)  # type: ignore[misc]
    assert item["properties"]["leaf:complete"] is True
    assert item["properties"]["leaf:tile_ready"]["state"] == "published"
    assert item["properties"]["leaf:tile_ready"]["message_id"] == messages[0].message_id
    assert sorted(s["leaf:object"] for a in item["assets"].values() for s in a["leaf:shards"]) == sorted(blobs)
    coll, _ = sink.read_json(collection_key(folder, req.request_id))  # type: ignore[misc]
    assert coll["leaf:items"] == {item_id: "complete"}
    assert coll["leaf:degraded"] == {}
    assert sink.read_json(rkey)[0]["state"] == "SUCCEEDED"  # type: ignore[index]
