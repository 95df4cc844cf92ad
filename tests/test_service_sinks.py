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


def test_put_file_with_move_stores_the_file_either_way(sink: Sink, tmp_path: Path) -> None:
    src = tmp_path / "scratch.tif"
    src.write_bytes(b"cog bytes")
    sink.put_file("m/one.tif", src, move=True)
    assert sink.get_bytes("m/one.tif") == b"cog bytes"
    assert sink.stat("m/one.tif")[0] == 9  # type: ignore[index]


def test_local_move_renames_within_a_filesystem_and_files_get_the_umask_mode(tmp_path: Path) -> None:
    import os
    import stat

    from leaf_engine import sinks

    umask = os.umask(0)
    os.umask(umask)
    assert sinks.FILE_MODE == 0o666 & ~umask
    sink = LocalSink(tmp_path / "out")
    src = tmp_path / "scratch.tif"
    src.write_bytes(b"cog bytes")
    inode = src.stat().st_ino
    sink.put_file("a/one.tif", src, move=True)
    target = tmp_path / "out" / "a" / "one.tif"
    assert not src.exists() and target.read_bytes() == b"cog bytes"
    assert target.stat().st_ino == inode  # renamed, not copied
    sink.put_bytes("a/one.qml", b"<qgis/>")
    sink.put_file("a/two.tif", target)  # a copy: the source stays
    assert target.exists()
    for name in ("one.tif", "one.qml", "two.tif"):  # not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / "out" / "a" / name).stat().st_mode) == sinks.FILE_MODE, name
    before = sink._generation(target)
    sink.put_file("a/one.tif", tmp_path / "out" / "a" / "two.tif", move=True)  # replacing: the generation moves on
    assert sink._generation(target) == before + 1 and not (tmp_path / "out" / "a" / "two.tif").exists()


def test_local_move_across_filesystems_copies(tmp_path: Path) -> None:
    import os

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("needs a writable second filesystem (/dev/shm)")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        src = Path(other) / "scratch.tif"
        src.write_bytes(b"cog bytes")
        LocalSink(tmp_path).put_file("x/one.tif", src, move=True)
        assert (tmp_path / "x" / "one.tif").read_bytes() == b"cog bytes"


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
