"""STAC documents of a run: one Item per region × period, one Collection per request, one root Catalog per
output folder (``{out_folder}/_stac/catalog.json``) linking the runs' collections.

Assets are keyed by product (``LAI``, ``QC``, ...): one asset per product. Earth Engine shards of a large export
are listed inside their product's asset under ``leaf:shards`` (each with href, offset, size, checksum, shape and
transform); the asset's own ``href`` is the first shard, and ``proj:*`` on the asset describe the whole file.

Hrefs: a local output folder is a *self-contained* catalogue (every href relative, no ``self`` links, as STAC's
best practices ask of a catalogue that can be moved or served as files); in a bucket every href is absolute
(``gs://``, or under the public ``https`` base named by ``LEAF_STAC_HREF_BASE``) and every document has a
``self`` link.

Projection: ``proj:code`` with ``proj:shape``/``proj:transform`` on every asset and on the item, under the
projection extension v1.2.0, which also keeps ``proj:epsg``: stackstac (0.5) reads only ``proj:epsg``, and v1.2.0
is the one version whose schema accepts both fields (pystac migrates it to v2.0.0 on reading, dropping
``proj:epsg``: ``leaf_engine.outputs.stackstac_items`` gives stackstac what it reads from pystac's items).

Mask rule: ``leaf:mask_rule`` says which quality rule masked the inputs (``sensors.mask_rule``, the sensor facts);
a product file's own ``mask_rule`` tag (the local engine's, naming the layers its scenes had) replaces it.
"""

from __future__ import annotations

import base64
import os
import posixpath
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pystac
from pystac.extensions.classification import Bitfield, ClassificationExtension
from pystac.extensions.classification import Classification as StacClass
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.extensions.version import VersionExtension

from .. import __version__, products
from ..errors import LeafError
from ..naming import CATALOG_DIR, OutputName, collection_key
from ..sensors import SENSORS, request_mask_rule
from .expectations import ExpectedItem, ExpectedObject

COG_MEDIA_TYPE = str(pystac.MediaType.COG)
PNG_MEDIA_TYPE = str(pystac.MediaType.PNG)
JSON_TYPE, GEOJSON_TYPE = "application/json", "application/geo+json"
LEAF_PREFIX = "leaf:"
HREF_BASE_ENV = "LEAF_STAC_HREF_BASE"
LICENSE_ENV, LICENSE_URL_ENV = "LEAF_STAC_LICENSE", "LEAF_STAC_LICENSE_URL"

PROJECTION_V1_2 = "https://stac-extensions.github.io/projection/v1.2.0/schema.json"
CLASSIFICATION_V1_1 = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
PROCESSING_V1_2 = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
_PYSTAC_PROJECTION = ProjectionExtension.get_schema_uri()
_PYSTAC_CLASSIFICATION = ClassificationExtension.get_schema_uri()
EXTENSIONS = [PROJECTION_V1_2, RasterExtension.get_schema_uri(), FileExtension.get_schema_uri(),
              CLASSIFICATION_V1_1, PROCESSING_V1_2, VersionExtension.get_schema_uri()]
"""Every extension a LEAF item or collection declares; their JSON schemas are vendored in tests/data/stac-schemas
(the versions pystac writes where they exist there: classification v1.1.0 has the same bit-field objects as
v2.0.0 for the names used here)."""

CATALOG_ID = "leaf"
ROLES = {"QC": ["data", "quality"], "Date": ["data", "date"], "Partition": ["data", "classification"]}
"""Asset roles of the ancillary maps; biophysical maps are ``data``, their uncertainty maps ``data``+``uncertainty``."""

# Input data terms (the outputs are derived from them). The product licence can be set with LEAF_STAC_LICENSE
# (an SPDX id, or "other" with LEAF_STAC_LICENSE_URL).
_COPERNICUS = ("https://sentinels.copernicus.eu/documents/247904/690755/Sentinel_Data_Legal_Notice",
               "Copernicus Sentinel data: free, full and open access (Sentinel Data Legal Notice)")
_USGS = ("https://www.usgs.gov/information-policies-and-instructions/copyrights-and-credits",
         "Landsat data: U.S. Geological Survey, public domain")
EE_STAC = "https://earthengine-stac.storage.googleapis.com/catalog"
"""Earth Engine's public STAC catalogue: ``{EE_STAC}/{first id part}/{id with / → _}.json``."""


class StacConfigError(LeafError):
    """A STAC setting (environment variable) is malformed."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _window(exp: ExpectedItem) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(exp.start).replace(tzinfo=UTC)
    end = datetime.fromisoformat(exp.end).replace(hour=23, minute=59, second=59, tzinfo=UTC)
    return start, end


# ------------------------------------------------------------------------------------------------------ hrefs


def _is_local(sink: Any) -> bool:
    from ..sinks import LocalSink

    return isinstance(sink, LocalSink)


def href_base() -> str | None:
    """``LEAF_STAC_HREF_BASE``: public https prefix under which a bucket's objects are served (or None)."""
    base = os.environ.get(HREF_BASE_ENV, "").strip()
    if not base:
        return None
    if not base.startswith(("https://", "http://")):
        raise StacConfigError(f"{HREF_BASE_ENV}={base!r} must be an http(s) URL under which the bucket's objects "
                              "are served, e.g. https://storage.googleapis.com/BUCKET; unset it to use gs:// hrefs")
    return base.rstrip("/")


def href(sink: Any, key: str, from_key: str) -> str:
    """How the document at ``from_key`` refers to object ``key``: relative in a local folder, else absolute."""
    if _is_local(sink):
        rel = posixpath.relpath(key, posixpath.dirname(from_key) or ".")
        return rel if rel.startswith("../") else f"./{rel}"  # the ./ form STAC tools expect of relative hrefs
    base = href_base()
    return f"{base}/{key}" if base else sink.uri(key)


def self_link(sink: Any, key: str, media_type: str) -> list[dict[str, str]]:
    """A ``self`` link for documents in a bucket; none locally (a self-contained catalogue)."""
    return [] if _is_local(sink) else [{"rel": "self", "href": href(sink, key, key), "type": media_type}]


def catalog_key(out_folder: str) -> str:
    return posixpath.join(out_folder.strip("/"), CATALOG_DIR, "catalog.json").lstrip("/")


def item_links(sink: Any, item_key: str, out_folder: str, request_id: str) -> list[dict[str, str]]:
    """Links of an item: its collection (also its parent), the root catalog, and ``self`` in a bucket."""
    ckey = collection_key(out_folder, request_id)
    coll = href(sink, ckey, item_key)
    return [{"rel": "collection", "href": coll, "type": JSON_TYPE},
            {"rel": "parent", "href": coll, "type": JSON_TYPE},
            {"rel": "root", "href": href(sink, catalog_key(out_folder), item_key), "type": JSON_TYPE},
            *self_link(sink, item_key, GEOJSON_TYPE)]


def collection_links(sink: Any, out_folder: str, request_id: str) -> list[dict[str, str]]:
    ckey, root = collection_key(out_folder, request_id), catalog_key(out_folder)
    return [{"rel": "root", "href": href(sink, root, ckey), "type": JSON_TYPE},
            {"rel": "parent", "href": href(sink, root, ckey), "type": JSON_TYPE},
            *self_link(sink, ckey, JSON_TYPE)]


def ensure_root_catalog(sink: Any, out_folder: str, request_id: str) -> None:
    """Create the root catalog of ``out_folder`` if needed and link the run's collection from it."""
    from .concurrency import update_json

    root = catalog_key(out_folder)
    child = href(sink, collection_key(out_folder, request_id), root)

    def mutate(doc: dict | None) -> tuple[dict | None, None]:
        if doc is None:
            cat = pystac.Catalog(CATALOG_ID, "LEAF vegetation products (LAI, fCOVER, fAPAR, Albedo, QC, Date): "
                                 "one collection per production request", title="LEAF outputs")
            doc = cat.to_dict(include_self_link=False, transform_hrefs=False)
            doc["links"] = [{"rel": "root", "href": href(sink, root, root), "type": JSON_TYPE},
                            *self_link(sink, root, JSON_TYPE)]
        if any(link.get("rel") == "child" and link.get("href") == child for link in doc["links"]):
            return None, None
        doc = {**doc, "links": [*doc["links"], {"rel": "child", "href": child, "type": JSON_TYPE,
                                                "title": f"request {request_id}"}]}
        return doc, None

    update_json(sink, root, mutate)


# --------------------------------------------------------------------------------------------- descriptions


def qc_bitfields() -> list[Bitfield]:
    """The QC byte as classification bit fields, from the masks in products.py (names as ``qc_fields``)."""
    flags = [("domain", products.QC_INPUT_OUT_OF_DOMAIN, products.QC_BITS["0"]),
             ("out_of_range", products.QC_OUTPUT_OUT_OF_RANGE, products.QC_BITS["1"]),
             ("invalid", products.QC_INVALID, products.QC_BITS["2"])]
    fields = [Bitfield.create(offset=mask.bit_length() - 1, length=1, name=name, description=doc, classes=[
        StacClass.create(value=0, name="no", description="flag not set"),
        StacClass.create(value=1, name="yes", description=doc)]) for name, mask, doc in flags]
    fields.append(Bitfield.create(
        offset=products.QC_SENSOR_SHIFT, length=8 - products.QC_SENSOR_SHIFT, name="sensor_code",
        description="sensor of the observation", classes=[
            StacClass.create(value=s.qc_code, name=s.id.removesuffix("_SR"), description=s.title)
            for s in SENSORS.values()]))
    return fields


def _band(p: products.Product) -> RasterBand:
    categorical = p.name in products.ANCILLARY
    return RasterBand.create(nodata=p.nodata, data_type=DataType(p.dtype), unit=p.units,
                             scale=None if categorical else 1.0 / p.scale, offset=None if categorical else 0.0)


def roles(product_name: str) -> list[str]:
    if product_name.endswith(products.UNCERTAINTY_SUFFIX):
        return ["data", "uncertainty"]
    return ROLES.get(product_name, ["data"])


def describe_asset(asset: pystac.Asset, product_name: str) -> None:
    """What an asset of ``product_name`` says about its values: raster band, QC bit fields."""
    p = products.product(product_name)
    RasterExtension.ext(asset, add_if_missing=False).bands = [_band(p)]
    if product_name == "QC":
        ClassificationExtension.ext(asset, add_if_missing=False).bitfields = qc_bitfields()


def _fix_extension_uris(d: dict[str, Any]) -> dict[str, Any]:
    """Declare the extension versions this catalogue uses (see the module doc) instead of pystac's defaults."""
    swap = {_PYSTAC_PROJECTION: PROJECTION_V1_2, _PYSTAC_CLASSIFICATION: CLASSIFICATION_V1_1}
    uris = [swap.get(u, u) for u in d.get("stac_extensions", [])]
    d["stac_extensions"] = list(dict.fromkeys([*uris, *EXTENSIONS]))
    return d


def with_epsg(fields: dict[str, Any]) -> None:
    """``proj:epsg`` beside an ``EPSG:`` ``proj:code`` (what stackstac reads; see the module doc)."""
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        fields["proj:epsg"] = int(code.split(":", 1)[1])


def license_for(sensor: str | None) -> tuple[str, list[dict[str, str]]]:
    """Product licence: ``LEAF_STAC_LICENSE`` (+ ``LEAF_STAC_LICENSE_URL``), else the inputs' terms."""
    lic = os.environ.get(LICENSE_ENV, "").strip()
    url = os.environ.get(LICENSE_URL_ENV, "").strip()
    if lic:
        if lic in ("proprietary", "various"):
            raise StacConfigError(f"{LICENSE_ENV}={lic!r} is deprecated in STAC 1.1: give an SPDX id, or 'other' "
                                  f"with {LICENSE_URL_ENV}=URL of the licence text")
        if lic == "other" and not url:
            raise StacConfigError(f"{LICENSE_ENV}='other' needs {LICENSE_URL_ENV}=URL of the licence text")
        return lic, ([{"rel": "license", "href": url, "type": "text/html"}] if url else [])
    terms = []
    members = [s for s in SENSORS.values() if sensor and (s.id == sensor or (sensor == "LS_SR" and s.is_landsat
                                                                              and s.id in ("L8_SR", "L9_SR")))]
    for s in members or list(SENSORS.values()):
        t = _USGS if s.is_landsat else _COPERNICUS
        if t not in terms:
            terms.append(t)
    return "other", [{"rel": "license", "href": u, "type": "text/html", "title": t} for u, t in terms]


def ee_source_links(sensor: str | None) -> list[dict[str, str]]:
    """``derived_from`` links to the Earth Engine collections a cloud run reads (its public STAC entries)."""
    links = []
    for s in SENSORS.values():
        if sensor and s.id != sensor and not (sensor == "LS_SR" and s.id in ("L8_SR", "L9_SR")):
            continue
        cid = s.ee_collection
        links.append({"rel": "derived_from", "href": f"{EE_STAC}/{cid.split('/')[0]}/{cid.replace('/', '_')}.json",
                      "type": JSON_TYPE, "title": f"Earth Engine collection {cid}"})
    return links


def _processing(run: Mapping[str, Any] | None) -> dict[str, Any]:
    req = (run or {}).get("request") or {}
    backend = (run or {}).get("backend") or "gee"
    facility = "LEAF local engine" if backend == "local" else "Google Earth Engine"
    lineage = (f"{req.get('algorithm', 'SL2P')} neural networks on best-pixel composites of "
               f"{req.get('sensor', 'Landsat/Sentinel-2')} surface reflectance; DN = round(value × scale), "
               "255 = no data; QC bit fields in classification:bitfields")
    return {"processing:software": {"leaf-engine": __version__}, "processing:facility": facility,
            "processing:level": "L3", "processing:lineage": lineage}


# ------------------------------------------------------------------------------------------------- items


def new_item(exp: ExpectedItem, request_id: str, collection_id: str,
             run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An empty item for ``exp``: geometry, window, provenance, and the list of objects it must hold."""
    start, end = _window(exp)
    item = pystac.Item(
        id=exp.item_id, geometry=exp.geometry, bbox=exp.bbox, datetime=start,
        start_datetime=start, end_datetime=end, properties={}, collection=collection_id,
    )
    VersionExtension.ext(item, add_if_missing=True).version = __version__
    d = _fix_extension_uris(item.to_dict(include_self_link=False, transform_hrefs=False))
    req = (run or {}).get("request") or {}
    d["properties"].update(_processing(run))
    d["properties"].update({
        "leaf:request_id": request_id, "leaf:region": exp.region, "leaf:year": exp.year,
        "leaf:period": exp.period, "leaf:expected": list(exp.objects), "leaf:complete": False,
        "leaf:problems": {}, "leaf:tile_ready": None, "created": now_iso(), "updated": now_iso(),
    })
    if req.get("sensor"):
        d["properties"]["leaf:sensor"] = req["sensor"]
        # Which rule masked: known from the sensor facts (all Earth Engine has to say); a product file's own
        # mask_rule tag (local engine: the layers its scenes had, the water test) replaces it (records.py).
        d["properties"]["leaf:mask_rule"] = request_mask_rule(req["sensor"])
    gsd = _resolutions({exp.item_id: exp})
    if len(gsd) == 1:
        d["properties"]["gsd"] = float(gsd[0])
    if (run or {}).get("backend") not in (None, "local"):
        d["links"] = ee_source_links(req.get("sensor"))
    return d


def checksum_multihash(md5_b64: str | None) -> str | None:
    """GCS ``md5Hash`` (base64) → STAC ``file:checksum`` (multihash hex: 0xd5 = md5, 0x10 = 16 bytes)."""
    if not md5_b64:
        return None
    try:
        return "d510" + base64.b64decode(md5_b64).hex()
    except ValueError:
        return None


def shard_entry(href: str, exp: ExpectedObject, size: int | None, md5_b64: str | None, generation: int | None,
                check: dict[str, list[str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "href": href, "leaf:object": exp.key, "leaf:offset": exp.shard or [0, 0],
        "proj:shape": [exp.height, exp.width], "proj:transform": exp.transform,
        "file:size": size, "leaf:generation": generation,
    }
    checksum = checksum_multihash(md5_b64)
    if checksum:
        entry["file:checksum"] = checksum
    if check["errors"] or check["warnings"]:
        entry["leaf:check"] = check
    return entry


def _grid(exp: ExpectedObject, full_shape: list[int], full_transform: list[float]) -> dict[str, Any]:
    """``proj:*`` fields of a whole file (set through pystac's ProjectionExtension)."""
    holder = pystac.Asset(href="x")
    proj = ProjectionExtension.ext(holder, add_if_missing=False)
    if exp.crs.upper().startswith("EPSG:"):
        proj.code = exp.crs
    else:
        proj.wkt2 = exp.crs
    proj.shape, proj.transform = list(full_shape), list(full_transform)
    fields = {k: v for k, v in holder.to_dict().items() if k.startswith("proj:")}
    with_epsg(fields)
    return fields


def product_asset(product_name: str, shards: list[dict[str, Any]], exp: ExpectedObject,
                  full_shape: list[int], full_transform: list[float]) -> dict[str, Any]:
    """One asset per product; its shards (one entry for an unsplit file) sorted by offset."""
    p = products.product(product_name)
    shards = sorted(shards, key=lambda s: tuple(s["leaf:offset"]))
    sizes = [s.get("file:size") for s in shards]
    asset = pystac.Asset(href=shards[0]["href"], media_type=COG_MEDIA_TYPE, title=p.description,
                         roles=roles(product_name))
    describe_asset(asset, product_name)
    d: dict[str, Any] = {**asset.to_dict(), **_grid(exp, full_shape, full_transform), "leaf:shards": shards}
    if len(shards) == 1:
        for k in ("file:size", "file:checksum"):
            if shards[0].get(k) is not None:
                d[k] = shards[0][k]
    elif all(isinstance(s, int) for s in sizes):
        d["file:size"] = sum(sizes)  # type: ignore[arg-type]
    return d


def item_grid_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Item-level ``proj:*``: the grid shared by its product assets (loaders fall back to it)."""
    grids = [{k: v for k, v in a.items() if k.startswith("proj:")} for a in item["assets"].values()
             if "leaf:shards" in a]
    return grids[0] if grids and all(g == grids[0] for g in grids) else {}


def quicklook_asset(png_href: str, product_name: str, thumbnail: bool) -> dict[str, Any]:
    """A product's quicklook PNG (legend in physical units): ``overview``; the item's first one ``thumbnail``."""
    p = products.product(product_name)
    return pystac.Asset(href=png_href, media_type=PNG_MEDIA_TYPE, title=f"quicklook of {p.description}",
                        roles=["thumbnail", "overview"] if thumbnail else ["overview"]).to_dict()


# -------------------------------------------------------------------------------------------- collections


def _products_of(items: dict[str, ExpectedItem]) -> list[str]:
    names: list[str] = []
    for exp in items.values():
        for key in exp.objects:
            try:
                name = OutputName.parse(key).product
            except LeafError:
                continue
            if name not in names:
                names.append(name)
    return names


def _resolutions(items: dict[str, ExpectedItem]) -> list[int]:
    res = set()
    for exp in items.values():
        for key in exp.objects:
            try:
                res.add(OutputName.parse(key).resolution)
            except LeafError:
                continue
    return sorted(res)


def new_collection(request_id: str, items: dict[str, ExpectedItem], description: str, *,
                   run: Mapping[str, Any] | None = None, sink: Any = None,
                   objects: Mapping[str, ExpectedObject] | None = None) -> dict[str, Any]:
    """The run's collection: extent of every expected item, item status under ``leaf:items``, ``item_assets``
    for every product, summaries (``objects``: the run's expected objects, for their CRS), licence and (given
    ``sink``) its root/parent/self links."""
    bboxes = [e.bbox for e in items.values()]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes),
            max(b[3] for b in bboxes)] if bboxes else [-180.0, -90.0, 180.0, 90.0]
    windows = [_window(e) for e in items.values()]
    interval = [min(w[0] for w in windows), max(w[1] for w in windows)] if windows else [None, None]
    req = (run or {}).get("request") or {}
    license_id, license_links = license_for(req.get("sensor"))
    coll = pystac.Collection(
        id=collection_id(request_id), description=description, title=f"LEAF run {request_id}",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        license=license_id, keywords=["LAI", "fCOVER", "fAPAR", "albedo", "SL2P", "vegetation"],
        # The processing extension puts a collection's processing fields on its processor provider.
        providers=[pystac.Provider("LEAF (leaf-engine)", roles=[pystac.ProviderRole.PROCESSOR,
                                                                 pystac.ProviderRole.PRODUCER],
                                   extra_fields=_processing(run))],
    )
    item_assets = {}
    for name in _products_of(items):
        p = products.product(name)
        asset = pystac.Asset(href="x", media_type=COG_MEDIA_TYPE, title=p.description, roles=roles(name))
        describe_asset(asset, name)
        item_assets[name] = pystac.ItemAssetDefinition({k: v for k, v in asset.to_dict().items() if k != "href"})
    coll.item_assets = item_assets
    codes = sorted({c for e in items.values() if (c := _first_crs(objects, e)) and c.upper().startswith("EPSG:")})
    coll.summaries.add("proj:code", codes)
    coll.summaries.add("gsd", _resolutions(items))
    if req.get("sensor"):
        coll.summaries.add("leaf:sensor", [req["sensor"]])
    d = _fix_extension_uris(coll.to_dict(include_self_link=False, transform_hrefs=False))
    d["links"] = [*license_links]
    if sink is not None:
        d["links"] += collection_links(sink, (run or {}).get("out_folder", ""), request_id)
    if (run or {}).get("backend") not in (None, "local"):
        d["links"] += ee_source_links(req.get("sensor"))
    d["leaf:request_id"] = request_id
    d["leaf:items"] = {item_id: "pending" for item_id in items}
    return d


def _first_crs(objects: Mapping[str, ExpectedObject] | None, exp: ExpectedItem) -> str | None:
    for key in exp.objects:
        if objects and key in objects:
            return str(objects[key].crs)
    return None


def collection_id(request_id: str) -> str:
    return f"leaf-{request_id}"


def add_local_extras(sink: Any, run: Mapping[str, Any], derived_from: Mapping[str, list[str]]) -> None:
    """Local runs: quicklook PNGs beside the product files become item assets; the input scenes ``derived_from``
    links (absolute: the inputs do not travel with the outputs)."""
    from ..naming import item_key
    from .concurrency import update_json
    from .expectations import record_expectations

    for exp in record_expectations(dict(run)).items.values():
        ikey = item_key(run["out_folder"], exp.region, exp.year, exp.period)
        pngs = {}
        for key in exp.objects:
            name = OutputName.parse(key)
            if name.shard is None and sink.exists(name.quicklook_key()):
                pngs[name.product] = href(sink, name.quicklook_key(), ikey)
        scenes = list(derived_from.get(exp.item_id, []))

        def mutate(doc: dict | None, pngs: dict[str, str] = pngs, scenes: list[str] = scenes
                   ) -> tuple[dict | None, None]:
            if doc is None:
                return None, None
            new = {**doc, "assets": dict(doc["assets"])}
            first = next((p for p in [*products.BIOPHYSICAL, *pngs] if p in pngs), None)
            for product_name, png in pngs.items():
                new["assets"][f"{product_name}_quicklook"] = quicklook_asset(png, product_name, product_name == first)
            links = [lk for lk in doc["links"] if lk.get("rel") != "derived_from"]
            links += [{"rel": "derived_from", "href": s, "type": GEOJSON_TYPE, "title": "input scene"}
                      for s in scenes]
            new["links"] = links
            return (new if new != doc else None), None

        update_json(sink, ikey, mutate)
