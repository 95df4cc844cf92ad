"""Cloud entry points (functions-framework, CloudEvent signature). Thin: decode the event, call the library,
map errors to the platform's retry semantics.

* ``start_production``: ``google.cloud.pubsub.topic.v1.messagePublished`` — Eventarc, or a Pub/Sub push
  subscription (functions-framework turns the push envelope ``{"message": ..., "subscription": ...}`` into the
  same CloudEvent).
* ``catalogue_output``: ``google.cloud.storage.object.v1.finalized`` (Eventarc), or the OBJECT_FINALIZE
  notifications GCS publishes to Pub/Sub (delivered as messagePublished, pushed or via Eventarc).
* ``reconcile_runs``: messagePublished on the reconcile topic (Cloud Scheduler every few minutes), pushed or via
  Eventarc like ``start_production``: watches Earth Engine tasks, retries, starts queued tasks, ends runs.

Returning normally acknowledges the event. A :class:`TransientError` propagates, so the platform retries with
backoff; invalid input is recorded and acknowledged (no retry storm).
"""

from __future__ import annotations

import json
import traceback
from functools import cache
from typing import Any

import functions_framework

from leaf_engine import logs
from leaf_engine.catalogue import ObjectEvent, catalogue_object, publisher_from_env
from leaf_engine.catalogue.tile_ready import Publisher
from leaf_engine.decoding import clip, decode_attributes, decode_json
from leaf_engine.errors import LeafError, Problem, RequestError, TransientError
from leaf_engine.service import RequestMessage, RequestService, ServiceConfig, decode_pubsub_data
from leaf_engine.sinks import GcsSink, Sink

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
GCS_NOTIFICATION_FINALIZE = "OBJECT_FINALIZE"

logs.setup_json_logging()


@cache
def _service() -> RequestService:
    from leaf_engine.reconcile import run_finished_publisher

    config = ServiceConfig.from_env()
    if config.allowed_outputs is None:
        logs.warning("LEAF_ALLOWED_OUTPUTS is not set: requests may name any bucket this service account can "
                     "write; set it to the buckets/prefixes this deployment serves")
    return RequestService(config, run_finished=run_finished_publisher())


@cache
def _publisher() -> Publisher | None:
    return publisher_from_env()


@cache
def _sink(bucket: str) -> Sink:
    return GcsSink(bucket)


MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Largest storage event payload read (a GCS object resource is a few KB)."""


def _pubsub_message(event: Any) -> dict[str, Any]:
    data = event.data if isinstance(event.data, dict) else {}
    message = data.get("message", data)
    return message if isinstance(message, dict) else {}


def _event_id(event: Any) -> str:
    try:
        return str(event["id"])
    except Exception:  # an envelope without an id still gets its answer
        return ""


# --------------------------------------------------------------------------------------------- requests


@functions_framework.cloud_event
def start_production(event: Any) -> None:
    """A production request was published: validate it, claim its run, start its jobs (once).

    One answer per message, whatever its bytes: a run, or one error record; raises only TransientError."""
    message = _pubsub_message(event)
    attributes, problems = decode_attributes(message.get("attributes"))
    mid = message.get("messageId") or message.get("message_id") or _event_id(event)
    message_id = mid if isinstance(mid, str) else json.dumps(clip(mid))
    service = _service()
    data = message.get("data")
    raw_data = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else b""
    try:
        body = decode_pubsub_data(data)
    except (ValueError, TypeError) as e:
        problems.append(Problem("(message)", clip(data, 80), f"message data is not base64: {e}"))
        body = raw_data[:4096]  # the record keeps an excerpt; its msg-<hash> tells messages apart
    msg = RequestMessage(body, attributes, message_id)
    try:
        if problems:  # the envelope itself is unusable: no request is read from it
            result = service.reject(msg, problems, "undecodable_message")
        else:
            result = service.handle(msg)
    except TransientError as e:
        logs.warning(f"transient failure, the message will be redelivered: {e}", message_id=clip(message_id))
        raise
    except Exception as e:  # reject/handle answer every message; this is the last guard against a retry loop
        logs.error(f"request not handled: {type(e).__name__}: {clip(str(e))}", message_id=clip(message_id),
                   stack_trace=traceback.format_exc())
        return
    logs.info(f"request {result.status}", request_id=result.request_id, message_id=clip(message_id),
              record=result.record_uri)


# --------------------------------------------------------------------------------------------- outputs


def object_event(event: Any) -> ObjectEvent | None:
    """The finalized object of a storage CloudEvent or a GCS Pub/Sub notification; None for other events."""
    if event["type"] == STORAGE_FINALIZED:
        obj = event.data if isinstance(event.data, dict) else decode_json(event.data, max_bytes=MAX_EVENT_BYTES)
        event_id = str(event["id"])
    elif event["type"] == PUBSUB_PUBLISHED:
        message = _pubsub_message(event)
        attributes = message.get("attributes") or {}
        if attributes.get("eventType") != GCS_NOTIFICATION_FINALIZE:
            return None
        payload = decode_pubsub_data(message.get("data"))
        # Notifications configured with payload format NONE carry the object only in their attributes.
        obj = decode_json(payload, max_bytes=MAX_EVENT_BYTES) if payload else {
            "name": attributes["objectId"], "bucket": attributes["bucketId"],
            "generation": attributes.get("objectGeneration")}
        event_id = str(message.get("messageId") or event["id"])
    else:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(obj.get("bucket"), str):
        raise ValueError("the event names no object (string 'name' and 'bucket')")
    return ObjectEvent(
        key=str(obj["name"]), event_id=event_id, bucket=str(obj["bucket"]),
        generation=int(obj["generation"]) if obj.get("generation") is not None else None,
        size=int(obj["size"]) if obj.get("size") is not None else None,
        md5_hash=obj["md5Hash"] if isinstance(obj.get("md5Hash"), str) else None,
    )


@functions_framework.cloud_event
def catalogue_output(event: Any) -> None:
    """An object was finalized: catalogue it if it is a LEAF output (others are ignored).

    Raises only TransientError (redelivery); anything else is logged and acknowledged (no retry storm)."""
    try:
        obj = object_event(event)
    except (ValueError, KeyError, TypeError, AttributeError, RequestError) as e:
        logs.error(f"unreadable storage event, acknowledged: {type(e).__name__}: {clip(str(e))}",
                   event_id=clip(_event_id(event)))
        return
    if obj is None or obj.bucket is None:
        return
    try:
        result = catalogue_object(_sink(obj.bucket), obj, publisher=_publisher())
    except TransientError as e:
        logs.warning(f"transient failure, the event will be redelivered: {e}", object=clip(obj.key))
        raise
    except (LeafError, KeyError, ValueError) as e:  # permanent (e.g. a malformed run record): no retry storm
        logs.error(f"object not catalogued: {type(e).__name__}: {clip(str(e))}", object=clip(obj.key))
        return
    except Exception as e:  # e.g. NotFound for a bucket that does not exist: retrying cannot help
        logs.error(f"object not catalogued, acknowledged: {type(e).__name__}: {clip(str(e))}", object=clip(obj.key),
                   bucket=clip(obj.bucket), stack_trace=traceback.format_exc())
        return
    if result.status != "ignored":
        logs.info(f"object {result.status}", object=obj.key, request_id=result.request_id, item_id=result.item_id)


# --------------------------------------------------------------------------------------------- reconciler


def reconcile_targets(data: bytes, env: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """(bucket, folder or None) to reconcile: the message's ``{"bucket": B, "folder": F}`` when it names one,
    else every entry of ``LEAF_RECONCILE_TARGETS`` or ``LEAF_ALLOWED_OUTPUTS`` (``bucket`` or ``bucket/prefix``:
    the bucket's active runs, those under the prefix)."""
    import os

    e = os.environ if env is None else env
    if data.strip():
        doc = json.loads(data.decode("utf-8"))
        if isinstance(doc, dict) and isinstance(doc.get("bucket"), str):
            folder = doc.get("folder")
            return [(doc["bucket"], folder if isinstance(folder, str) else None)]
    raw = e.get("LEAF_RECONCILE_TARGETS") or e.get("LEAF_ALLOWED_OUTPUTS") or ""
    out: list[tuple[str, str | None]] = []
    for entry in (x.strip() for x in raw.split(",")):
        if entry:
            bucket, _, prefix = entry.partition("/")
            out.append((bucket, prefix.strip("/") or None))
    return out


@functions_framework.cloud_event
def reconcile_runs(event: Any) -> None:
    """A reconcile tick (Cloud Scheduler → Pub/Sub): move every active run on (see leaf_engine.reconcile)."""
    from leaf_engine import reconcile

    message = _pubsub_message(event)
    try:
        targets = reconcile_targets(decode_pubsub_data(message.get("data")))
    except (ValueError, UnicodeDecodeError) as e:
        logs.error(f"unreadable reconcile message, acknowledged: {type(e).__name__}: {e}", event_id=event["id"])
        return
    if not targets:
        logs.error("reconcile: no bucket to reconcile; set LEAF_RECONCILE_TARGETS or LEAF_ALLOWED_OUTPUTS, or "
                   "publish {\"bucket\": ...}", event_id=event["id"])
        return
    publisher = reconcile.run_finished_publisher()
    for bucket, prefix in targets:
        sink = _sink(bucket)
        try:
            outcomes = reconcile.reconcile(sink, None, publisher=publisher, prefix=prefix)
        except TransientError as e:
            logs.warning(f"transient failure, the tick will be redelivered: {e}", object=f"gs://{bucket}")
            raise
        except LeafError as e:
            logs.error(f"reconcile of gs://{bucket} failed: {e}", object=f"gs://{bucket}")
            continue
        logs.info(f"reconciled {len(outcomes)} run(s) in gs://{bucket}", object=f"gs://{bucket}")
