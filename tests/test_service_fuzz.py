"""A fuzzer over the whole request, through the real RequestService on real (local-folder) buckets.

Per message: it is acknowledged (handle returns; only a TransientError may escape, and none can here), it gets
exactly one answer (a run record, or one error record named after its message id), and it costs bounded time
and memory.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaf_engine.admission import sanitized_message_id
from leaf_engine.service import RequestMessage, RequestService, ServiceConfig
from leaf_engine.sinks import LocalSink
from tests.support import hostile

MAX_SECONDS = 5.0
MAX_PEAK_BYTES = 64 * 1024 * 1024
ANSWERED = {"started", "duplicate", "nothing_to_do", "failed"}


class World:
    """Buckets as folders under one temporary root, shared by every example of a test."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="leaf-fuzz-")
        self.root = Path(self._tmp.name)
        self.sinks: dict[str, LocalSink] = {}
        self.ids = itertools.count()
        self.starts = 0
        config = ServiceConfig(backend="external", errors_uri="gs://leaf-errors/bad")
        self.service = RequestService(config, sink_for=self.sink, starter=self.start)

    def sink(self, bucket: str) -> LocalSink:
        return self.sinks.setdefault(bucket, LocalSink(self.root / bucket))

    def start(self, req: Any, plan: Any, sink: Any) -> list[str]:
        self.starts += 1
        return [f.name.key() for f in plan.files]

    def error_records(self, message_id: str) -> list[Path]:
        token = sanitized_message_id(message_id)
        return [p for p in self.root.rglob(f"*-{token}.json") if p.parent.name == "_errors"]

    def close(self) -> None:
        self._tmp.cleanup()


def deliver(world: World, data: bytes, attributes: dict[str, str]) -> None:
    message_id = f"fz{next(world.ids)}"
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = world.service.handle(RequestMessage(data, attributes, message_id))
    finally:
        elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"{elapsed:.1f}s for {data[:200]!r}"
    assert peak < MAX_PEAK_BYTES, f"{peak / 1e6:.0f} MB for {data[:200]!r}"
    records = world.error_records(message_id)
    if result.status == "invalid":
        assert len(records) == 1, (result, records)
        record = json.loads(records[0].read_text(encoding="utf-8"))
        assert record["message_id"] == message_id and record["problems"]
        for p in record["problems"]:
            assert set(p) >= {"key", "value", "rule"}
            assert len(json.dumps(p["value"])) < 1000  # offending values are truncated
    else:
        assert result.status in ANSWERED, result
        assert not records
        assert result.record_uri and Path(result.record_uri.removeprefix("file://")).is_file()


_world: World | None = None


def _get_world() -> World:
    global _world
    if _world is None:
        _world = World()
    return _world


def teardown_module() -> None:
    if _world is not None:
        _world.close()


FUZZ = settings(max_examples=80, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(body=hostile.bodies(), attributes=hostile.attributes)
def test_every_message_gets_one_answer(body: bytes, attributes: dict[str, str]) -> None:
    deliver(_get_world(), body, attributes)


@FUZZ
@given(req=hostile.requests() | hostile.plausible_requests())
def test_every_request_gets_one_answer(req: dict[str, Any]) -> None:
    deliver(_get_world(), json.dumps(req).encode(), {})


@settings(max_examples=30, deadline=None, database=None, derandomize=True)
@given(text=hostile.nasty_text, where=st.sampled_from(["out_folder", "sensor", "request_id", "regions"]))
def test_unicode_anywhere_is_recorded_as_utf8(text: str, where: str) -> None:
    """Lone surrogates and invisible characters end in an error record that is valid UTF-8 (or in a run)."""
    req = dict(hostile.BASE)
    req[where] = {text: {"type": "Polygon", "coordinates": []}} if where == "regions" else text
    deliver(_get_world(), json.dumps(req).encode(), {})  # deliver reads the record back as strict UTF-8
