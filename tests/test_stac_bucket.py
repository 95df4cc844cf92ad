"""STAC in a bucket: absolute hrefs (gs://, or under LEAF_STAC_HREF_BASE), self links on every document, the
Earth Engine collections as ``derived_from``, the licence of the inputs (or the configured one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from leaf_engine.catalogue import ObjectEvent, catalogue_object
from leaf_engine.catalogue.stac import StacConfigError, catalog_key, ensure_root_catalog, license_for
from leaf_engine.naming import collection_key, item_key
from leaf_engine.sinks import LocalSink
from tests.support.runs import small_request, write_outputs, write_run


class BucketSink:
    """A bucket played by a folder: every call goes to the folder, URIs are ``gs://bkt/...``."""

    def __init__(self, root: Path):
        self._local = LocalSink(root)

    def uri(self, key: str) -> str:
        return f"gs://bkt/{key}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)


def _catalogue(sink: BucketSink, tmp_path: Path, backend: str = "gee") -> tuple[dict, dict, dict]:
    req = small_request("f", sensor="L8_SR")
    record = write_run(sink, req)
    record["backend"] = backend
    sink.write_json(f"f/_runs/{req.request_id}.json", record)
    write_outputs(sink, record, tmp_path)
    ensure_root_catalog(sink, "f", req.request_id)
    for i, key in enumerate(record["objects"]):
        size, md5 = sink.stat(key)
        catalogue_object(sink, ObjectEvent(key, f"e{i}", size=size, md5_hash=md5))
    item = sink.read_json(item_key("f", "tile42_911", 2020, "Jul"))[0]
    coll = sink.read_json(collection_key("f", req.request_id))[0]
    root = sink.read_json(catalog_key("f"))[0]
    return item, coll, root


def test_bucket_documents_are_absolute_with_self_links(tmp_path, monkeypatch):
    monkeypatch.delenv("LEAF_STAC_HREF_BASE", raising=False)
    sink = BucketSink(tmp_path)
    item, coll, root = _catalogue(sink, tmp_path)
    ikey = item_key("f", "tile42_911", 2020, "Jul")
    links = {link["rel"]: link["href"] for link in item["links"] if link["rel"] != "derived_from"}
    assert links["self"] == f"gs://bkt/{ikey}"
    assert links["root"] == "gs://bkt/f/_stac/catalog.json" and links["parent"] == links["collection"]
    assert all(a["href"].startswith("gs://bkt/f/tile42_911/2020/") for a in item["assets"].values())
    sources = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert [s["title"] for s in sources] == ["Earth Engine collection LANDSAT/LC08/C02/T1_L2"]
    assert sources[0]["href"].endswith("/LANDSAT/LANDSAT_LC08_C02_T1_L2.json")
    assert {link["rel"] for link in coll["links"]} >= {"root", "parent", "self", "license", "item"}
    assert coll["license"] == "other"
    assert [link["href"] for link in coll["links"] if link["rel"] == "license"] == [
        "https://www.usgs.gov/information-policies-and-instructions/copyrights-and-credits"]
    assert [link["rel"] for link in root["links"]] == ["root", "self", "child"]


def test_public_https_base(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAF_STAC_HREF_BASE", "https://storage.googleapis.com/bkt/")
    item, _, _ = _catalogue(BucketSink(tmp_path), tmp_path)
    assert item["assets"]["LAI"]["href"].startswith("https://storage.googleapis.com/bkt/f/tile42_911/2020/")
    monkeypatch.setenv("LEAF_STAC_HREF_BASE", "storage.googleapis.com/bkt")
    with pytest.raises(StacConfigError, match=r"LEAF_STAC_HREF_BASE='storage\.googleapis\.com/bkt' must be an http"):
        _catalogue(BucketSink(tmp_path / "again"), tmp_path)


def test_licence_settings(monkeypatch):
    monkeypatch.delenv("LEAF_STAC_LICENSE", raising=False)
    lic, links = license_for("S2_SR")
    assert lic == "other" and "Sentinel_Data_Legal_Notice" in links[0]["href"]
    monkeypatch.setenv("LEAF_STAC_LICENSE", "CC-BY-4.0")
    assert license_for("S2_SR") == ("CC-BY-4.0", [])
    monkeypatch.setenv("LEAF_STAC_LICENSE", "other")
    with pytest.raises(StacConfigError, match="needs LEAF_STAC_LICENSE_URL"):
        license_for("S2_SR")
    monkeypatch.setenv("LEAF_STAC_LICENSE", "proprietary")
    with pytest.raises(StacConfigError, match="deprecated"):
        license_for("S2_SR")
