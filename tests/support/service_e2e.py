"""What the end-to-end tests of the deployed service share (test_functions_e2e, test_reconcile_e2e,
test_catalogue_redelivery_e2e): one bucket and the functions served over HTTP on the emulators
(:func:`serving`), and the steps the tests drive them with — publish, subscribe from now on, wait for a run's
state, find a function server's process and log, make the files a run record expects (Earth Engine's part).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leaf_engine.catalogue import ExpectedObject
from leaf_engine.naming import run_record_key
from leaf_engine.sinks import GcsSink
from tests.support.emulators import (
    REQUESTS_TOPIC,
    Emulators,
    Service,
    ServiceStack,
    create_bucket,
    create_subscription,
    service_stack,
    wait_for,
)
from tests.support.emulators import _gcs_writer as gcs_writer
from tests.support.fake_exports import geotiff_bytes

__all__ = ["E2EService", "e2e_request", "expected_files", "gcs_writer", "serving"]


def e2e_request(bucket: str, folder: str, **extra: Any) -> dict[str, Any]:
    """A small request (one 300 km sub-tile at 1000 m, July and August 2020) into ``gs://bucket/folder``."""
    return {"sensor": "S2_SR", "year": 2020, "months": [7, 8], "tile_names": ["tile42_911"], "resolution": 1000,
            "GCS_bucket": bucket, "out_folder": folder, **extra}


def expected_files(record: dict[str, Any]) -> dict[str, bytes]:
    """Valid GeoTIFFs with exactly the names and grids that ``record`` (expectations spelt out) lists: what
    Earth Engine's exports would write."""
    with tempfile.TemporaryDirectory() as tmp:
        return {k: geotiff_bytes(ExpectedObject.from_dict(o), Path(tmp)) for k, o in record["objects"].items()}


@dataclass
class E2EService:
    """The functions of one :func:`~tests.support.emulators.service_stack`, writing into ``sink``'s bucket."""

    emu: Emulators
    svc: ServiceStack
    sink: GcsSink

    @property
    def requests_topic(self) -> str:
        return self.svc.requests_topic

    @property
    def tile_ready_topic(self) -> str:
        return self.svc.tile_ready_topic

    @property
    def start_url(self) -> str:
        return self.svc.start_url

    @property
    def env(self) -> dict[str, str]:
        """What a function server of this stack (or a CLI command run against it) needs in its environment."""
        return self.svc.env

    def publish(self, data: bytes, topic: str | None = None, **attributes: str) -> None:
        """Publish on ``topic`` (default: the requests topic) and wait until the emulator has it."""
        from google.cloud import pubsub_v1

        pubsub_v1.PublisherClient().publish(topic or self.requests_topic, data, **attributes).result(timeout=30)

    def subscription(self, topic: str, prefix: str = "sub") -> str:
        """A fresh pull subscription: it sees only the messages published on ``topic`` from now on."""
        return create_subscription(self.emu, topic, f"{prefix}-{uuid.uuid4().hex[:8]}")

    def run_doc(self, folder: str, request_id: str) -> dict[str, Any] | None:
        got = self.sink.read_json(run_record_key(folder, request_id))
        return got[0] if got else None

    def wait_run(self, folder: str, request_id: str, *states: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The run record, once it is in one of ``states``."""
        wait_for(lambda: (self.run_doc(folder, request_id) or {}).get("state") in states, timeout_s,
                 f"run {request_id} in {states[0] if len(states) == 1 else states}")
        doc = self.run_doc(folder, request_id)
        assert doc is not None
        return doc

    def server(self, url: str) -> Service:
        """The running function server at ``url`` (a stopped one may have had the same port)."""
        return next(s for s in self.emu.services
                    if s.name.startswith("function-") and s.url == url and s.process.poll() is None)

    def log(self, url: str) -> Path:
        """The log file of the function server at ``url`` (its JSON lines show how often a message was handled)."""
        return self.server(url).log_path


@contextmanager
def serving(emu: Emulators, bucket: str, backend: str = "external", env: dict[str, str] | None = None, *,
            requests_topic: str = REQUESTS_TOPIC, catalogue: bool = True) -> Iterator[E2EService]:
    """``bucket`` created, and :func:`~tests.support.emulators.service_stack` serving into it."""
    create_bucket(emu, bucket)
    with service_stack(emu, backend, env, requests_topic=requests_topic, catalogue=catalogue) as svc:
        yield E2EService(emu, svc, GcsSink(bucket))
