"""Run records and exported files for catalogue tests, built by the same code the service uses."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

from leaf_engine.catalogue import ExpectedObject
from leaf_engine.catalogue.expectations import record_expectations
from leaf_engine.naming import OutputName, run_record_key
from leaf_engine.plan import make_plan
from leaf_engine.request import ProductionRequest, parse_request
from leaf_engine.service import ServiceConfig, new_run_record
from leaf_engine.sinks import Sink
from tests.support.fake_exports import geotiff_bytes


def small_request(folder: str, request_id: str | None = None, **extra: Any) -> ProductionRequest:
    """One 300 km sub-tile at 1000 m (300 × 300 px files): tiny files, the real naming and grid."""
    raw = {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42_911"], "resolution": 1000,
           "GCS_bucket": "bkt", "out_folder": folder, **extra}
    return parse_request(raw, request_id=request_id)


def with_expectations(record: dict[str, Any]) -> dict[str, Any]:
    """A run record with its derived ``items`` and ``objects`` spelt out (what the tests below index)."""
    exp = record_expectations(record)
    return {**record, "items": {k: v.to_dict() for k, v in exp.items.items()},
            "objects": {k: v.to_dict() for k, v in exp.objects.items()}}


def write_run(sink: Sink, req: ProductionRequest, state: str = "PROCESSING", shards: int = 1) -> dict[str, Any]:
    """Store the run record the service would write (optionally with each file split in shards × shards, which
    writes the expectations explicitly). Returns it with its expectations spelt out."""
    record = new_run_record(req, make_plan(req), ServiceConfig(backend="external"), "test").to_doc()
    record["state"] = state
    record = with_expectations(record)
    if shards > 1:
        record = split_in_shards(record, shards)
        sink.write_json(run_record_key(req.out_folder, req.request_id), record)
    else:
        sink.write_json(run_record_key(req.out_folder, req.request_id),
                        {k: v for k, v in record.items() if k not in ("items", "objects")})
    return record


def split_in_shards(record: dict[str, Any], n: int) -> dict[str, Any]:
    """Replace each object by n × n Earth Engine-style shards (as a large export is split)."""
    record = copy.deepcopy(record)
    objects: dict[str, Any] = {}
    for key, o in record["objects"].items():
        name = OutputName.parse(key)
        h, w = o["height"] // n, o["width"] // n
        a, b, c, d, e, f = o["transform"]
        for i in range(n):
            for j in range(n):
                shard = name.with_shard(i * h, j * w).key()
                objects[shard] = {**o, "key": shard, "shard": [i * h, j * w], "width": w, "height": h,
                                  "transform": [a, b, c + j * w * a, d, e, f + i * h * e]}
    record["objects"] = objects
    for item in record["items"].values():
        item["objects"] = [k for k, o in objects.items() if o["item_id"] == item["item_id"]]
    return record


def write_outputs(sink: Sink, record: dict[str, Any], tmp: Path, keys: list[str] | None = None, **kw: Any) -> None:
    for key in keys or list(record["objects"]):
        sink.put_bytes(key, geotiff_bytes(ExpectedObject.from_dict(record["objects"][key]), tmp, **kw))


class RecordingPublisher:
    """A real in-memory publisher (thread-safe) that keeps what it was asked to publish."""

    def __init__(self, fail_times: int = 0):
        self.messages: list[tuple[bytes, dict[str, str]]] = []
        self.fail_times = fail_times
        self._lock = threading.Lock()

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        from leaf_engine.errors import TransientError

        with self._lock:
            if self.fail_times > 0:
                self.fail_times -= 1
                raise TransientError("publish failed (test)")
            self.messages.append((data, attributes))
            return str(len(self.messages))
