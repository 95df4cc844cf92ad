"""The service and the catalogue behind a fault-injecting proxy in front of fake-gcs-server: 503s, 429s,
connection resets, delays and lost answers (the write happened, the client saw a reset).

However the faults fall, each request is started once (no duplicate export), every output is catalogued (no
lost asset) and each complete item is announced once.
"""

from __future__ import annotations

import json
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from leaf_engine.catalogue import ExpectedObject, ObjectEvent, catalogue_object
from leaf_engine.errors import TransientError
from leaf_engine.naming import collection_key, run_record_key
from leaf_engine.service import RequestMessage, RequestService, ServiceConfig
from leaf_engine.sinks import GcsSink
from tests.support.emulators import ERRORS_BUCKET, Emulators, create_bucket
from tests.support.fake_exports import geotiff_bytes
from tests.support.fault_proxy import FAULTS, LOST_ANSWER, PASS, FaultProxy, RandomFaults
from tests.support.runs import RecordingPublisher, with_expectations

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

BUCKET = "leaf-faults"
MAX_DELIVERIES = 25


@pytest.fixture(scope="module")
def emu(emulators: Emulators) -> Emulators:
    for b in (BUCKET, ERRORS_BUCKET):
        create_bucket(emulators, b)
    return emulators


def _client(url: str) -> Any:
    from google.cloud import storage

    return storage.Client(project="leaf-test", client_options={"api_endpoint": url})


def _deliver(call: Any, *args: Any) -> Any:
    """Call until it does not raise TransientError, as Pub/Sub redelivers an unacknowledged message."""
    for _ in range(MAX_DELIVERIES):
        try:
            return call(*args)
        except TransientError:
            continue
    raise AssertionError(f"still transient after {MAX_DELIVERIES} deliveries")


class CountingStarter:
    def __init__(self) -> None:
        self.starts = 0

    def __call__(self, req: Any, plan: Any, sink: Any) -> list[str]:
        self.starts += 1
        return [f"task-{f.name.stem}" for f in plan.files]


def _request(folder: str, months: tuple[int, ...] = (7, 8)) -> dict[str, Any]:
    return {"sensor": "S2_SR", "year": 2020, "months": list(months), "tile_names": ["tile42_911"], "resolution": 1000,
            "GCS_bucket": BUCKET, "out_folder": folder}


def test_the_proxy_injects_what_it_says(emu: Emulators) -> None:
    from google.api_core import exceptions as gex

    script = iter(["503", "429", PASS])
    with FaultProxy(emu.storage_url, lambda m, p, n: next(script, PASS)) as proxy:
        bucket = _client(proxy.url).bucket(BUCKET)
        with pytest.raises((gex.ServiceUnavailable, gex.TooManyRequests)):
            bucket.blob("probe").upload_from_string(b"x", retry=None)
        assert proxy.counts["503"] == 1
    with FaultProxy(emu.storage_url, lambda m, p, n: LOST_ANSWER if m == "POST" else PASS) as proxy:
        import requests

        with pytest.raises(requests.exceptions.ConnectionError):
            _client(proxy.url).bucket(BUCKET).blob("lost").upload_from_string(b"y", retry=None)
    assert _client(emu.storage_url).bucket(BUCKET).get_blob("lost") is not None  # the write happened


@pytest.mark.parametrize("seed", range(4))
def test_a_request_starts_once_whatever_the_faults(emu: Emulators, seed: int) -> None:
    folder = f"faults/{seed}-{uuid.uuid4().hex[:6]}"
    starter = CountingStarter()
    faults = RandomFaults(seed, rate=0.35, kinds=FAULTS)
    with FaultProxy(emu.storage_url, faults, delay_s=0.3) as proxy:
        client = _client(proxy.url)
        config = ServiceConfig(backend="external", errors_uri=f"gs://{ERRORS_BUCKET}/faults")
        service = RequestService(config, sink_for=lambda b: GcsSink(b, client=client), starter=starter)
        data = json.dumps(_request(folder)).encode()
        first = _deliver(service.handle, RequestMessage(data, {}, f"m-{seed}"))
        again = _deliver(service.handle, RequestMessage(data, {}, f"m-{seed}-dup"))  # published twice
    assert first.status == "started", first
    assert again.status == "duplicate", again
    assert starter.starts == 1
    got = GcsSink(BUCKET, client=_client(emu.storage_url)).read_json(run_record_key(folder, first.request_id))
    assert got is not None and got[0]["state"] == "PROCESSING" and got[0]["tasks"] == first.tasks
    assert sum(proxy.counts[k] for k in FAULTS) > 0, proxy.counts  # faults did happen


@pytest.mark.parametrize("seed", [3])  # one seed: each fault costs the client a back-off of seconds
def test_every_output_is_catalogued_and_announced_once(emu: Emulators, seed: int) -> None:
    folder = f"faults/cat-{seed}-{uuid.uuid4().hex[:6]}"
    direct = GcsSink(BUCKET, client=_client(emu.storage_url))
    config = ServiceConfig(backend="external", errors_uri=f"gs://{ERRORS_BUCKET}/faults")
    started = RequestService(config, sink_for=lambda b: direct, starter=CountingStarter()).handle(
        RequestMessage(json.dumps(_request(folder, (7,))).encode(), {}, f"c-{seed}"))
    # the typed record derives its expectations from the request: spelt out here to play Earth Engine
    record = with_expectations(direct.read_json(run_record_key(folder, started.request_id))[0])  # type: ignore
    with tempfile.TemporaryDirectory() as tmp:  # play Earth Engine: write every expected object
        for key, obj in record["objects"].items():
            direct.put_bytes(key, geotiff_bytes(ExpectedObject.from_dict(obj), Path(tmp)), "image/tiff")
    blobs = {k: direct.bucket.get_blob(k) for k in record["objects"]}
    events = [ObjectEvent(k, f"ev-{k}-{i}", BUCKET, int(b.generation), int(b.size), b.md5_hash)
              for k, b in blobs.items() for i in range(2)]  # every event delivered twice
    random.Random(seed).shuffle(events)
    publisher = RecordingPublisher()
    with FaultProxy(emu.storage_url, RandomFaults(seed, rate=0.25, kinds=FAULTS), delay_s=0.2) as proxy:
        sink = GcsSink(BUCKET, client=_client(proxy.url))
        for ev in events:
            _deliver(lambda e=ev: catalogue_object(sink, e, publisher=publisher))
    announced = [a["item_id"] for _, a in publisher.messages]
    assert sorted(announced) == sorted(record["items"])  # one tile-ready per item, none twice
    coll = direct.read_json(collection_key(folder, started.request_id))[0]  # type: ignore[index]
    assert set(coll["leaf:items"].values()) == {"complete"}
    final = direct.read_json(run_record_key(folder, started.request_id))[0]  # type: ignore[index]
    assert final["state"] == "SUCCEEDED"
    assert sum(proxy.counts[k] for k in FAULTS) > 0, proxy.counts


def test_an_error_record_write_that_loses_its_answer_is_retried_not_misfiled(emu: Emulators) -> None:
    """An unconditional write (an error record) whose answer is lost is retried (by the client, else the sink):
    the message is answered, with one record."""
    from leaf_engine.naming import error_records_prefix

    first_post = iter([LOST_ANSWER])
    with FaultProxy(emu.storage_url, lambda m, p, n: next(first_post, PASS) if m == "POST" else PASS) as proxy:
        client = _client(proxy.url)
        service = RequestService(ServiceConfig(backend="external", errors_uri=f"gs://{ERRORS_BUCKET}/lost"),
                                 sink_for=lambda b: GcsSink(b, client=client), starter=CountingStarter())
        result = _deliver(service.handle, RequestMessage(b"not json", {}, "lost-1"))
    assert result.status == "invalid" and proxy.counts[LOST_ANSWER] == 1
    names = [b.name for b in _client(emu.storage_url).list_blobs(ERRORS_BUCKET, prefix="lost/_errors/")]
    assert len(names) == 1 and names[0].startswith(error_records_prefix("lost", result.request_id))


@pytest.mark.parametrize("seed", range(2))
def test_earth_engine_exports_start_once_behind_faults(emu: Emulators, seed: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The Earth Engine stand-in behind the proxy: every planned file is exported exactly once (a lost answer is
    retried with the same requestId, which the stand-in refuses as a duplicate and never runs twice)."""
    from leaf_engine.plan import make_plan
    from leaf_engine.request import parse_request
    from tests.support.ee_standin import EEStandIn

    folder = f"faults/ee-{seed}-{uuid.uuid4().hex[:6]}"
    data = json.dumps(_request(folder)).encode()
    faults = RandomFaults(seed, rate=0.3, kinds=FAULTS, only=("image:export",))
    with EEStandIn() as ee, FaultProxy(ee.url, faults, delay_s=0.2) as proxy:
        monkeypatch.setenv("LEAF_EE_URL", proxy.url)
        monkeypatch.setenv("LEAF_EE_PROJECT", "leaf-test")
        sink = GcsSink(BUCKET, client=_client(emu.storage_url))
        service = RequestService(ServiceConfig(project="leaf-test", backend="gee", ee_url=proxy.url,
                                               errors_uri=f"gs://{ERRORS_BUCKET}/faults"), sink_for=lambda b: sink)
        result = _deliver(service.handle, RequestMessage(data, {}, f"ee-{seed}"))
        again = _deliver(service.handle, RequestMessage(data, {}, f"ee-{seed}-dup"))
    planned = make_plan(parse_request(data)).files
    assert result.status == "started", result
    assert again.status == "duplicate"
    assert sorted(e["fileExportOptions"]["cloudStorageDestination"]["filenamePrefix"] for e in ee.exports) == \
        sorted(f.name.prefix for f in planned)
    assert sum(proxy.counts[k] for k in FAULTS) > 0, proxy.counts
