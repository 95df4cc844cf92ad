"""Catalogue: STAC items per region × period, file checks, completeness, tile-ready exactly once (local sink)."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest

from leaf_engine.catalogue import ObjectEvent, catalogue_object, expectations
from leaf_engine.catalogue.tile_ready import CLAIM_LEASE_S
from leaf_engine.errors import TransientError
from leaf_engine.naming import collection_key, item_key, run_record_key
from leaf_engine.plan import EE_FILE_DIMENSIONS, make_plan
from leaf_engine.request import parse_request
from leaf_engine.sinks import LocalSink
from tests.support.runs import RecordingPublisher, small_request, write_outputs, write_run


def _event(sink: LocalSink, key: str, event_id: str, generation: int | None = None) -> ObjectEvent:
    size, md5 = sink.stat(key)  # type: ignore[misc]
    return ObjectEvent(key, event_id, size=size, md5_hash=md5, generation=generation)


def _item(sink: LocalSink, folder: str, period: str = "Jul") -> dict:
    got = sink.read_json(item_key(folder, "tile42_911", 2020, period))
    assert got is not None
    return got[0]


@pytest.fixture
def sink(tmp_path: Path) -> LocalSink:
    return LocalSink(tmp_path / "out")


def test_complete_item_is_valid_stac_and_announced_once(sink: LocalSink, tmp_path: Path) -> None:
    req = small_request("f")
    record = write_run(sink, req)
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher()
    keys = list(record["objects"])
    results = [catalogue_object(sink, _event(sink, k, f"e{i}"), publisher=pub) for i, k in enumerate(keys)]
    results += [catalogue_object(sink, _event(sink, k, f"again{i}"), publisher=pub) for i, k in enumerate(keys)]
    assert [r.complete for r in results[: len(keys)]] == [False] * (len(keys) - 1) + [True]
    assert len(pub.messages) == 1
    body, attrs = json.loads(pub.messages[0][0]), pub.messages[0][1]
    assert body["request_id"] == attrs["request_id"] == req.request_id
    assert (body["region"], body["period"], body["year"]) == ("tile42_911", "Jul", 2020)
    assert body["item_url"] == sink.uri(item_key("f", "tile42_911", 2020, "Jul"))
    assert body["products"] == sorted(req.output_products())

    item = _item(sink, "f")
    stac = pystac.Item.from_dict(item)
    assert stac.id == "tile42_911_2020_Jul"
    assert sorted(stac.assets) == sorted(req.output_products())
    assert item["properties"]["start_datetime"].startswith("2020-07-01")
    assert item["properties"]["end_datetime"].startswith("2020-07-31T23:59:59")
    lai = item["assets"]["LAI"]
    job = req.jobs()[0]
    gbox = job.geobox()
    assert lai["proj:shape"] == [gbox.shape.y, gbox.shape.x]
    assert lai["proj:transform"][:6] == list(gbox.transform)[:6]
    assert lai["raster:bands"][0]["nodata"] == 255 and lai["raster:bands"][0]["scale"] == pytest.approx(0.05)
    assert lai["file:size"] == sink.stat(lai["leaf:shards"][0]["leaf:object"])[0]  # type: ignore[index]
    assert lai["file:checksum"].startswith("d510")
    # geometry is the sub-tile's lon/lat polygon
    assert stac.bbox == pytest.approx(list(job.region.geometry.bounds))

    coll_doc, _ = sink.read_json(collection_key("f", req.request_id))  # type: ignore[misc]
    coll = pystac.Collection.from_dict(coll_doc)
    assert coll.id == f"leaf-{req.request_id}"
    assert coll_doc["leaf:items"] == {"tile42_911_2020_Jul": "complete"}
    run, _ = sink.read_json(run_record_key("f", req.request_id))  # type: ignore[misc]
    assert run["state"] == "SUCCEEDED"


def test_defective_file_blocks_completeness_until_replaced(sink: LocalSink, tmp_path: Path) -> None:
    record = write_run(sink, small_request("f"))
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    bad = keys[0]
    write_outputs(sink, record, tmp_path, [bad], width=299)  # one column short: wrong size and grid
    pub = RecordingPublisher()
    for i, k in enumerate(keys):
        catalogue_object(sink, _event(sink, k, f"e{i}", generation=sink.generation(k)), publisher=pub)
    item = _item(sink, "f")
    assert not item["properties"]["leaf:complete"] and not pub.messages
    assert "299x300" in item["properties"]["leaf:problems"][bad]["errors"][0]

    write_outputs(sink, record, tmp_path, [bad])  # a new generation fixes it
    result = catalogue_object(sink, _event(sink, bad, "fix", generation=sink.generation(bad)), publisher=pub)
    assert result.complete and result.published and len(pub.messages) == 1
    assert bad not in _item(sink, "f")["properties"]["leaf:problems"]


def test_unreadable_and_empty_files(sink: LocalSink, tmp_path: Path) -> None:
    record = write_run(sink, small_request("f"))
    keys = list(record["objects"])
    sink.put_bytes(keys[0], b"not a geotiff")
    write_outputs(sink, record, tmp_path, [keys[1]], fill=255 if record["objects"][keys[1]]["nodata"] == 255 else 0)
    catalogue_object(sink, _event(sink, keys[0], "a"))
    catalogue_object(sink, _event(sink, keys[1], "b"))
    problems = _item(sink, "f")["properties"]["leaf:problems"]
    assert "not a readable GeoTIFF" in problems[keys[0]]["errors"][0]
    assert problems[keys[1]] == {"errors": [], "warnings": [problems[keys[1]]["warnings"][0]]}
    assert "every pixel is nodata" in problems[keys[1]]["warnings"][0]


def test_older_generation_does_not_replace_newer(sink: LocalSink, tmp_path: Path) -> None:
    record = write_run(sink, small_request("f"))
    key = next(iter(record["objects"]))
    write_outputs(sink, record, tmp_path, [key])
    first = sink.generation(key)
    write_outputs(sink, record, tmp_path, [key])  # rewritten: a newer generation
    current = sink.generation(key)
    assert first is not None and current is not None and current > first
    assert catalogue_object(sink, _event(sink, key, "new", generation=current)).status == "recorded"
    assert catalogue_object(sink, _event(sink, key, "old", generation=first)).status == "stale"  # late event
    shard = _item(sink, "f")["assets"][record["objects"][key]["product"]]["leaf:shards"][0]
    assert shard["leaf:generation"] == current


def test_a_forged_generation_is_not_trusted(sink: LocalSink, tmp_path: Path) -> None:
    """An event claiming generation 9999999999999999999 is catalogued as the object's real generation, so the
    next real event is not taken for stale."""
    record = write_run(sink, small_request("f"))
    key = next(iter(record["objects"]))
    write_outputs(sink, record, tmp_path, [key])
    assert catalogue_object(sink, _event(sink, key, "forged", generation=9999999999999999999)).status == "recorded"
    shard = _item(sink, "f")["assets"][record["objects"][key]["product"]]["leaf:shards"][0]
    assert shard["leaf:generation"] == sink.generation(key)
    write_outputs(sink, record, tmp_path, [key])  # the real producer writes it again
    assert catalogue_object(sink, _event(sink, key, "real", generation=sink.generation(key))).status == "recorded"
    shard = _item(sink, "f")["assets"][record["objects"][key]["product"]]["leaf:shards"][0]
    assert shard["leaf:generation"] == sink.generation(key)


def test_foreign_and_unplanned_objects(sink: LocalSink) -> None:
    write_run(sink, small_request("f"))
    sink.put_bytes("f/notes.txt", b"x")
    assert catalogue_object(sink, ObjectEvent("f/notes.txt", "a")).status == "ignored"
    stray = "f/tile42_911/2020/tile42_911_2020_Jan_LAI_1000m.tif"
    sink.put_bytes(stray, b"x")
    assert catalogue_object(sink, ObjectEvent(stray, "b")).status == "no_run"


def test_failed_publish_releases_the_claim_for_the_redelivery(sink: LocalSink, tmp_path: Path) -> None:
    record = write_run(sink, small_request("f"))
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher(fail_times=1)
    for i, k in enumerate(keys[:-1]):
        catalogue_object(sink, _event(sink, k, f"e{i}"), publisher=pub)
    with pytest.raises(TransientError):
        catalogue_object(sink, _event(sink, keys[-1], "last"), publisher=pub)
    assert _item(sink, "f")["properties"]["leaf:tile_ready"] is None  # released: nothing was published
    # the redelivery of the event publishes, once
    assert catalogue_object(sink, _event(sink, keys[-1], "last"), publisher=pub).published
    assert not catalogue_object(sink, _event(sink, keys[0], "other"), publisher=pub).published
    assert len(pub.messages) == 1
    assert _item(sink, "f")["properties"]["leaf:tile_ready"]["state"] == "published"


def test_abandoned_claim_is_taken_over_after_the_lease(sink: LocalSink, tmp_path: Path) -> None:
    """A handler died right after claiming: events meanwhile ask for redelivery; after the lease one publishes."""
    import time

    record = write_run(sink, small_request("f"))
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher()
    for i, k in enumerate(keys[:-1]):
        catalogue_object(sink, _event(sink, k, f"e{i}"), publisher=pub)
    ikey = item_key("f", "tile42_911", 2020, "Jul")
    item, gen = sink.read_json(ikey)
    item["properties"]["leaf:tile_ready"] = {"state": "claimed", "by": "dead-handler", "claimed_at": time.time()}
    sink.write_json(ikey, item, if_generation_match=gen)
    with pytest.raises(TransientError, match="redeliver"):  # complete, but another handler's claim is pending
        catalogue_object(sink, _event(sink, keys[-1], "last"), publisher=pub)
    assert not pub.messages
    later = time.time() + CLAIM_LEASE_S + 1
    result = catalogue_object(sink, _event(sink, keys[-1], "last"), publisher=pub, clock=lambda: later)
    assert result.published and len(pub.messages) == 1


def test_a_handler_slower_than_the_lease_does_not_publish_twice(sink: LocalSink, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Handler A claims, then stalls past the lease; the redelivery of the same event (B) takes over and
    publishes; A's fence then fails, so A publishes nothing: one tile-ready."""
    import threading
    import time

    from leaf_engine.catalogue import records

    record = write_run(sink, small_request("f"))
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher()
    for i, k in enumerate(keys[:-1]):
        catalogue_object(sink, _event(sink, k, f"e{i}"), publisher=pub)
    original = records._fence_publish
    stalled, resume = threading.Event(), threading.Event()

    def slow_fence(*args, **kwargs):
        if threading.current_thread().name == "handler-a":
            stalled.set()
            resume.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(records, "_fence_publish", slow_fence)
    results: list = []
    a = threading.Thread(target=lambda: results.append(
        catalogue_object(sink, _event(sink, keys[-1], "last"), publisher=pub)), name="handler-a")
    a.start()
    assert stalled.wait(30)
    later = time.time() + CLAIM_LEASE_S + 1
    b = catalogue_object(sink, _event(sink, keys[-1], "last"), publisher=pub, clock=lambda: later)
    resume.set()
    a.join(30)
    assert b.published and not results[0].published
    assert len(pub.messages) == 1
    assert _item(sink, "f")["properties"]["leaf:tile_ready"]["state"] == "published"


def test_sharded_files_are_one_asset_with_their_shards(sink: LocalSink, tmp_path: Path) -> None:
    req = small_request("f")
    record = write_run(sink, req, shards=2)
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher()
    for i, k in enumerate(record["objects"]):
        catalogue_object(sink, _event(sink, k, f"e{i}"), publisher=pub)
    item = _item(sink, "f")
    assert sorted(item["assets"]) == sorted(req.output_products())
    lai = item["assets"]["LAI"]
    assert [s["leaf:offset"] for s in lai["leaf:shards"]] == [[0, 0], [0, 150], [150, 0], [150, 150]]
    assert lai["proj:shape"] == [300, 300]
    assert lai["file:size"] == sum(s["file:size"] for s in lai["leaf:shards"])
    assert len(pub.messages) == 1


def test_expectations_follow_earth_engine_shards() -> None:
    """A 900 km tile at 20 m is 45000 px a side: 2 × 2 shards whose grids continue the tile's grid."""
    req = parse_request({"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42"],
                         "resolution": 20, "GCS_bucket": "bkt", "prod_names": ["LAI"]})
    items, objects = expectations(req, make_plan(req))
    lai = sorted((o for o in objects.values() if o.product == "LAI"), key=lambda o: o.shard or [0, 0])
    assert [o.shard for o in lai] == [[0, 0], [0, EE_FILE_DIMENSIONS], [EE_FILE_DIMENSIONS, 0],
                                      [EE_FILE_DIMENSIONS, EE_FILE_DIMENSIONS]]
    assert [(o.width, o.height) for o in lai] == [(32768, 32768), (45000 - 32768, 32768), (32768, 45000 - 32768),
                                                  (45000 - 32768, 45000 - 32768)]
    origin = req.jobs()[0].geobox().transform
    assert lai[3].transform[2] == origin.c + EE_FILE_DIMENSIONS * 20
    assert lai[3].transform[5] == origin.f - EE_FILE_DIMENSIONS * 20
    assert sorted(items["tile42_2020_Jul"].objects) == sorted(objects)


def test_a_later_run_of_the_same_item_takes_it_over(sink: LocalSink, tmp_path: Path) -> None:
    """A re-production under a new request id (rerun=overwrite) rebuilds the item and announces it again."""
    import time

    first = write_run(sink, small_request("f"))
    write_outputs(sink, first, tmp_path)
    pub = RecordingPublisher()
    for i, k in enumerate(first["objects"]):
        catalogue_object(sink, _event(sink, k, f"a{i}"), publisher=pub)
    time.sleep(0.01)  # run records are ordered by creation time (milliseconds)
    second = write_run(sink, small_request("f", request_id="second", rerun="overwrite"))
    for i, k in enumerate(second["objects"]):
        catalogue_object(sink, _event(sink, k, f"b{i}"), publisher=pub)
    assert [json.loads(m[0])["request_id"] for m in pub.messages] == [first["request_id"], "second"]
    assert _item(sink, "f")["properties"]["leaf:request_id"] == "second"
