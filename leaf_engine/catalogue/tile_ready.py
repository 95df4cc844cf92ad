"""Tile-ready messages: one per complete item, for downstream jobs (``LEAF_TILE_READY_TOPIC``).

Exactly once per item is kept by a claim written into the item under a generation precondition, with a fencing
token unique to each handling (never the event id, which a redelivery shares): only the handler that wins the
claim may publish, and just before publishing it moves its claim to ``publishing`` under a generation
precondition, which fails if a later handler took an abandoned claim over meanwhile (so a handler slower than the
lease never publishes a second message). A redelivered event that finds another handler's unpublished claim asks
to be redelivered later, so a claim left by a handler that died is taken over after :data:`CLAIM_LEASE_S`. The one
remaining gap (a crash between the publish and the ``published`` mark) can only repeat, never lose, the message;
its ``tile_ready_id`` attribute lets consumers drop the repeat.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from ..errors import LeafError, TransientError

CLAIM_LEASE_S = 300.0
TOPIC_ENV = "LEAF_TILE_READY_TOPIC"


class Publisher(Protocol):
    def publish(self, data: bytes, attributes: dict[str, str]) -> str: ...


class ConfigError(LeafError):
    """The service configuration (environment variables) is incomplete or malformed."""


def topic_path(topic: str, project: str | None = None) -> str:
    """``projects/P/topics/T`` as given, or a bare topic name in ``GOOGLE_CLOUD_PROJECT``."""
    if topic.startswith("projects/"):
        parts = topic.split("/")
        if len(parts) != 4 or parts[2] != "topics" or not parts[1] or not parts[3]:
            raise ConfigError(f"topic {topic!r} must look like projects/PROJECT/topics/TOPIC")
        return topic
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise ConfigError(f"topic {topic!r} has no project: give projects/P/topics/T or set GOOGLE_CLOUD_PROJECT")
    return f"projects/{project}/topics/{topic}"


class PubSubPublisher:
    """Publishes to one topic (the emulator when ``PUBSUB_EMULATOR_HOST`` is set); the SDK loads lazily."""

    def __init__(self, topic: str, client: Any = None):
        self.topic = topic_path(topic)
        self._client = client

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        from google.api_core import exceptions as gex

        if self._client is None:
            from google.cloud import pubsub_v1

            self._client = pubsub_v1.PublisherClient()
        try:
            return str(self._client.publish(self.topic, data, **attributes).result(timeout=60))
        except (gex.GoogleAPICallError, TimeoutError) as e:
            raise TransientError(f"publishing to {self.topic} failed: {e}") from e


def publisher_from_env() -> Publisher | None:
    """The tile-ready publisher named by ``LEAF_TILE_READY_TOPIC``; None when it is not set."""
    topic = os.environ.get(TOPIC_ENV)
    return PubSubPublisher(topic) if topic else None


def message(item: dict[str, Any], item_url: str) -> tuple[bytes, dict[str, str]]:
    """The message body (JSON) and attributes of a complete item."""
    p = item["properties"]
    body = {
        "item_url": item_url, "item_id": item["id"], "request_id": p["leaf:request_id"],
        "region": p["leaf:region"], "year": p["leaf:year"], "period": p["leaf:period"],
        "products": sorted(item["assets"]), "objects": p["leaf:expected"],
    }
    attributes = {
        "request_id": p["leaf:request_id"], "item_id": item["id"], "region": p["leaf:region"],
        "period": p["leaf:period"], "tile_ready_id": f"{p['leaf:request_id']}/{item['id']}",
    }
    return json.dumps(body).encode("utf-8"), attributes
