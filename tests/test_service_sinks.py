"""The Sink contract, on a local folder and on fake-gcs-server (real generation preconditions)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from leaf_engine.sinks import GcsSink, LocalSink, PreconditionFailed, Sink, SinkError, open_sink, parse_gs_uri

SINK_BUCKET = "leaf-sinks"


@pytest.fixture(params=["local", "gcs"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Sink:
    if request.param == "local":
        return LocalSink(tmp_path)
    emu = request.getfixturevalue("emulators")
    from google.cloud import storage

    client = storage.Client(project=emu.project)
    if client.lookup_bucket(SINK_BUCKET) is None:
        client.create_bucket(SINK_BUCKET)
    return _Prefixed(GcsSink(SINK_BUCKET), f"t{uuid.uuid4().hex[:8]}")


class _Prefixed:
    """Each test gets its own folder in the shared bucket."""

    def __init__(self, inner: GcsSink, prefix: str):
        self.inner, self.prefix = inner, prefix

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        def call(key: str, *args, **kwargs):
            result = method(f"{self.prefix}/{key}", *args, **kwargs)
            if name == "list":
                return [k[len(self.prefix) + 1:] for k in result]
            return result
        return call


def test_json_generations_and_preconditions(sink: Sink) -> None:
    assert sink.read_json("a/doc.json") is None
    g1 = sink.write_json("a/doc.json", {"n": 1}, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        sink.write_json("a/doc.json", {"n": 2}, if_generation_match=0)  # create-only
    with pytest.raises(PreconditionFailed):
        sink.write_json("a/doc.json", {"n": 2}, if_generation_match=g1 + 1)
    g2 = sink.write_json("a/doc.json", {"n": 3}, if_generation_match=g1)
    assert g2 != g1
    assert sink.read_json("a/doc.json") == ({"n": 3}, g2)
    g3 = sink.write_json("a/doc.json", {"n": 4})  # unconditional
    assert sink.read_json("a/doc.json") == ({"n": 4}, g3)


def test_bytes_stat_list_exists(sink: Sink, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    sink.put_file("x/y/one.bin", src)
    sink.put_bytes("x/two.bin", b"hello", "text/plain")
    assert sink.exists("x/two.bin") and not sink.exists("x/none.bin")
    assert sink.stat("x/none.bin") is None
    size, checksum = sink.stat("x/two.bin")  # type: ignore[misc]
    assert size == 5 and checksum == "XUFAKrxLKna5cZ2REBfFkg=="  # base64 MD5, as GCS reports it
    assert sink.get_bytes("x/y/one.bin") == b"abc"
    assert sink.get_bytes("x/none.bin") is None
    assert sink.list("x/") == ["x/two.bin", "x/y/one.bin"]
    assert sink.list("x/y") == ["x/y/one.bin"]
    target = tmp_path / "down.bin"
    assert sink.download("x/two.bin", target) and target.read_bytes() == b"hello"
    assert not sink.download("x/none.bin", tmp_path / "none.bin")


def test_concurrent_conditional_writes_lose_nothing(sink: Sink) -> None:
    """16 writers each add their name with read-modify-write under preconditions: all 16 names survive."""
    from leaf_engine.catalogue import update_json

    sink.write_json("c/doc.json", {"names": []}, if_generation_match=0)

    def add(name: str) -> None:
        update_json(sink, "c/doc.json", lambda d: ({"names": [*d["names"], name]}, None))

    threads = [threading.Thread(target=add, args=(f"w{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc, _ = sink.read_json("c/doc.json")  # type: ignore[misc]
    assert sorted(doc["names"]) == sorted(f"w{i}" for i in range(16))


def test_local_sink_rejects_escaping_keys(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=r"'\.\.'"):
        LocalSink(tmp_path).put_bytes("../outside.txt", b"x")


def test_parse_gs_uri() -> None:
    assert parse_gs_uri("gs://bkt/a/b/") == ("bkt", "a/b")
    assert parse_gs_uri("gs://bkt") == ("bkt", "")
    with pytest.raises(SinkError):
        parse_gs_uri("s3://bkt/a")


def test_open_sink_follows_the_request(tmp_path: Path) -> None:
    from leaf_engine.request import parse_request

    base = {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42_911"], "resolution": 1000}
    local = open_sink(parse_request({**base, "out_location": "local"}), tmp_path)
    assert isinstance(local, LocalSink) and local.root == tmp_path
    gcs = open_sink(parse_request({**base, "GCS_bucket": "my-bucket"}))
    assert isinstance(gcs, GcsSink) and gcs.uri("k/x.tif") == "gs://my-bucket/k/x.tif"
