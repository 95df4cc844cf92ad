"""Catalogue: STAC items per region × period, file checks, completeness, tile-ready exactly once (local sink)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _collection(sink: LocalSink, request_id: str) -> dict:
    got = sink.read_json(collection_key("f", request_id))
    assert got is not None
    return got[0]


def _run(sink: LocalSink, request_id: str) -> dict:
    got = sink.read_json(run_record_key("f", request_id))
    assert got is not None
    return got[0]


def _catalogue_all(sink: LocalSink, keys: list[str], pub: RecordingPublisher | None, tag: str) -> None:
    for i, k in enumerate(keys):
        catalogue_object(sink, _event(sink, k, f"{tag}{i}", generation=sink.generation(k)), publisher=pub)


def _complete_run(sink: LocalSink, tmp_path: Path, **run: Any
                  ) -> tuple[Any, dict, list[str], RecordingPublisher]:
    """A run of ``small_request("f")`` whose good files are all written and catalogued: (request, its run record,
    the object keys, the publisher that got the tile-ready)."""
    req = small_request("f")
    record = write_run(sink, req, **run)
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher()
    _catalogue_all(sink, keys, pub, "e")
    return req, record, keys, pub


def test_a_bad_overwrite_of_a_complete_item_shows_in_item_collection_and_run(sink: LocalSink, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """good → complete (SUCCEEDED, one tile-ready) → one file replaced by a bad one: the item is incomplete with
    the problem, the collection says partial with the reason and degraded, the run stays SUCCEEDED and records
    the item under ``degraded`` (leaf status shows it, exit 1) → good again: all clear, still one tile-ready."""
    from leaf_engine.cli import main
    from leaf_engine.service import run_status

    req, record, keys, pub = _complete_run(sink, tmp_path)
    item_id = "tile42_911_2020_Jul"
    assert _item(sink, "f")["properties"]["leaf:complete"] and len(pub.messages) == 1
    assert _collection(sink, req.request_id)["leaf:items"] == {item_id: "complete"}
    assert _run(sink, req.request_id)["state"] == "SUCCEEDED"

    bad = keys[1]
    write_outputs(sink, record, tmp_path, [bad], width=299)  # a new generation, one column short
    result = catalogue_object(sink, _event(sink, bad, "bad", generation=sink.generation(bad)), publisher=pub)
    assert result.status == "recorded" and not result.complete and not result.published
    props = _item(sink, "f")["properties"]
    assert not props["leaf:complete"]
    assert "size is 299x300 px" in props["leaf:problems"][bad]["errors"][0]
    coll = _collection(sink, req.request_id)
    assert coll["leaf:items"] == {item_id: "partial"}
    assert list(coll["leaf:item_problems"][item_id]) == [bad]
    assert "299x300" in coll["leaf:item_problems"][item_id][bad][0]
    assert item_id in coll["leaf:degraded"]
    pystac.Collection.from_dict(coll)  # still a valid collection
    run = _run(sink, req.request_id)
    assert run["state"] == "SUCCEEDED" and len(run["history"]) == len(record["history"]) + 1  # no new state
    assert run["degraded"][item_id]["since"] == coll["leaf:degraded"][item_id]
    assert run["degraded"][item_id]["problems"] == coll["leaf:item_problems"][item_id]
    report = run_status(sink, req.request_id, "f")
    assert report["state"] == "SUCCEEDED" and report["complete_items"] == [] and item_id in report["degraded"]
    capsys.readouterr()
    assert main(["status", req.request_id, "--out", str(tmp_path / "out"), "--folder", "f"]) == 1
    out = capsys.readouterr()
    assert "SUCCEEDED, DEGRADED: 1 item(s) no longer complete" in out.out and "299x300" in out.out
    assert "degraded" in out.err
    # a redelivery of the bad event changes nothing and announces nothing
    catalogue_object(sink, _event(sink, bad, "bad", generation=sink.generation(bad)), publisher=pub)
    assert len(pub.messages) == 1 and _run(sink, req.request_id)["degraded"][item_id] == run["degraded"][item_id]

    write_outputs(sink, record, tmp_path, [bad])  # a good generation completes it again
    result = catalogue_object(sink, _event(sink, bad, "fix", generation=sink.generation(bad)), publisher=pub)
    assert result.complete and not result.published and len(pub.messages) == 1  # announced once per item
    props = _item(sink, "f")["properties"]
    assert props["leaf:complete"] and bad not in props["leaf:problems"]
    assert props["leaf:tile_ready"]["state"] == "published"
    coll = _collection(sink, req.request_id)
    assert coll["leaf:items"] == {item_id: "complete"} and coll["leaf:item_problems"] == {}
    assert coll["leaf:degraded"] == {}
    run = _run(sink, req.request_id)
    assert run["state"] == "SUCCEEDED" and run["degraded"] == {}
    assert main(["status", req.request_id, "--out", str(tmp_path / "out"), "--folder", "f"]) == 0


def test_a_bad_shard_degrades_the_item_and_its_late_older_event_undoes_nothing(sink: LocalSink,
                                                                              tmp_path: Path) -> None:
    """One shard of a sharded file goes bad, then is fixed; the late event of the bad generation is stale."""
    req, record, keys, pub = _complete_run(sink, tmp_path, shards=2)
    item_id = "tile42_911_2020_Jul"
    assert _collection(sink, req.request_id)["leaf:items"] == {item_id: "complete"} and len(pub.messages) == 1

    shard = next(k for k in keys if record["objects"][k]["shard"] == [150, 150])
    sink.put_bytes(shard, b"not a geotiff")
    bad_gen = sink.generation(shard)
    catalogue_object(sink, _event(sink, shard, "bad", generation=bad_gen), publisher=pub)
    assert _collection(sink, req.request_id)["leaf:items"] == {item_id: "partial"}
    assert "not a readable GeoTIFF" in _run(sink, req.request_id)["degraded"][item_id]["problems"][shard][0]

    write_outputs(sink, record, tmp_path, [shard])
    catalogue_object(sink, _event(sink, shard, "fix", generation=sink.generation(shard)), publisher=pub)
    late = catalogue_object(sink, ObjectEvent(shard, "bad-late", generation=bad_gen), publisher=pub)
    assert late.status == "stale"
    assert _item(sink, "f")["properties"]["leaf:complete"]
    coll = _collection(sink, req.request_id)
    assert coll["leaf:items"] == {item_id: "complete"} and coll["leaf:degraded"] == {}
    assert _run(sink, req.request_id)["degraded"] == {} and len(pub.messages) == 1


def test_a_bad_file_whose_event_comes_after_the_fix_is_stale(sink: LocalSink, tmp_path: Path) -> None:
    """Bad generation written, good one written over it, then both events in reverse order: nothing degrades."""
    req, record, keys, pub = _complete_run(sink, tmp_path)
    write_outputs(sink, record, tmp_path, [keys[0]], width=299)
    bad_gen = sink.generation(keys[0])
    write_outputs(sink, record, tmp_path, [keys[0]])
    assert catalogue_object(sink, _event(sink, keys[0], "good", generation=sink.generation(keys[0])),
                            publisher=pub).complete
    assert catalogue_object(sink, ObjectEvent(keys[0], "bad", generation=bad_gen), publisher=pub).status == "stale"
    assert _collection(sink, req.request_id)["leaf:items"] == {"tile42_911_2020_Jul": "complete"}
    assert _run(sink, req.request_id)["degraded"] == {} and len(pub.messages) == 1


def test_collection_follows_the_item_whatever_order_handlers_finish_in(sink: LocalSink, tmp_path: Path) -> None:
    """A handler whose view of the item is out of date (it read before a later handler wrote) does not write
    that view into the collection: it writes the item as it is now, in both directions."""
    from leaf_engine.catalogue import records

    req = small_request("f")
    record = write_run(sink, req)
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    _catalogue_all(sink, keys, RecordingPublisher(), "e")
    run = _run(sink, req.request_id)
    exp = expectations(req, make_plan(req))
    item_id = "tile42_911_2020_Jul"
    ikey = item_key("f", "tile42_911", 2020, "Jul")
    coll_href = records.href(sink, ikey, collection_key("f", req.request_id))

    late_partial = records._update_collection(sink, run, item_id, ("partial", {}), ikey, coll_href, *exp)
    assert late_partial.status == "complete" and not late_partial.mirror
    assert _collection(sink, req.request_id)["leaf:items"] == {item_id: "complete"}

    write_outputs(sink, record, tmp_path, [keys[0]], width=299)
    catalogue_object(sink, _event(sink, keys[0], "bad", generation=sink.generation(keys[0])))
    late_complete = records._update_collection(sink, run, item_id, ("complete", {}), ikey, coll_href, *exp)
    assert late_complete.status == "partial" and late_complete.degraded and not late_complete.mirror
    assert _collection(sink, req.request_id)["leaf:items"] == {item_id: "partial"}
    assert item_id in _run(sink, req.request_id)["degraded"]


def test_a_pending_tile_ready_claim_is_withdrawn_when_the_item_becomes_incomplete(sink: LocalSink,
                                                                                  tmp_path: Path) -> None:
    """A handler claimed the announcement of a complete item, then a bad file made it incomplete before the
    publish: its claim is withdrawn (so its fence fails); the good file that completes it again announces it."""
    import time

    record = write_run(sink, small_request("f"))
    keys = list(record["objects"])
    write_outputs(sink, record, tmp_path)
    pub = RecordingPublisher()
    _catalogue_all(sink, keys, None, "e")  # complete, but without a publisher: nothing announced
    pub_keys = keys[:1]
    ikey = item_key("f", "tile42_911", 2020, "Jul")
    item, gen = sink.read_json(ikey)  # type: ignore[misc]
    item["properties"]["leaf:tile_ready"] = {"state": "claimed", "by": "slow-handler", "claimed_at": time.time()}
    sink.write_json(ikey, item, if_generation_match=gen)
    write_outputs(sink, record, tmp_path, pub_keys, width=299)
    catalogue_object(sink, _event(sink, keys[0], "bad", generation=sink.generation(keys[0])), publisher=pub)
    assert _item(sink, "f")["properties"]["leaf:tile_ready"] is None
    assert records_fence(sink, ikey, "slow-handler") is None  # the slow handler may not publish
    write_outputs(sink, record, tmp_path, pub_keys)
    fixed = catalogue_object(sink, _event(sink, keys[0], "fix", generation=sink.generation(keys[0])), publisher=pub)
    assert fixed.published and len(pub.messages) == 1


def records_fence(sink: LocalSink, ikey: str, token: str) -> dict | None:
    import time

    from leaf_engine.catalogue import records

    return records._fence_publish(sink, ikey, token, time.time)
