"""The local path builds the same manifests as the cloud: run record, items, collection next to the outputs."""

from __future__ import annotations

from pathlib import Path

import pystac

from leaf_engine.naming import collection_key, item_key, run_record_key
from leaf_engine.plan import make_plan
from leaf_engine.service import ServiceConfig, catalogue_local_run, new_run_record
from leaf_engine.sinks import LocalSink
from tests.support.runs import RecordingPublisher, small_request, with_expectations, write_outputs


def test_local_run_manifests(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "out")
    req = small_request("local", months=[7, 8], out_location="local")
    record = with_expectations(new_run_record(req, make_plan(req), ServiceConfig(backend="local"), "x").to_doc())
    july = [k for k, o in record["objects"].items() if o["item_id"] == "tile42_911_2020_Jul"]
    write_outputs(sink, record, tmp_path, july)  # August produced nothing (yet)

    results = catalogue_local_run(req, sink)
    assert [r.status for r in results] == ["recorded"] * len(july)
    item = pystac.Item.from_file(str(tmp_path / "out" / item_key("local", "tile42_911", 2020, "Jul")))
    assert sorted(item.assets) == sorted(req.output_products())
    # A self-contained catalogue: relative hrefs that resolve to the files.
    assert not item.assets["LAI"].href.startswith(("/", "file:"))
    assert item.assets["LAI"].get_absolute_href() == str((tmp_path / "out" / july[0]).resolve())
    assert item.properties["leaf:complete"] is True and item.properties["leaf:tile_ready"] is None
    assert sink.read_json(item_key("local", "tile42_911", 2020, "Aug")) is None
    coll, _ = sink.read_json(collection_key("local", req.request_id))
    assert coll["leaf:items"] == {"tile42_911_2020_Jul": "complete", "tile42_911_2020_Aug": "pending"}
    assert sink.read_json(run_record_key("local", req.request_id))[0]["state"] == "PROCESSING"

    rest = [k for k in record["objects"] if k not in july]
    write_outputs(sink, record, tmp_path, rest)
    pub = RecordingPublisher()
    catalogue_local_run(req, sink, publisher=pub)
    assert sink.read_json(run_record_key("local", req.request_id))[0]["state"] == "SUCCEEDED"
    assert len(pub.messages) == 2  # items re-catalogued for a new run record announce themselves once each
