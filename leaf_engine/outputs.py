"""Reading LEAF outputs back: ``open_outputs`` (STAC → xarray in physical units, QC decoded), where a run's
outputs live for ``leaf status`` (a local folder or a bucket), its error records, and the run's tiles as GeoJSON.

Everything here reads the STAC catalogue the run wrote (``{out_folder}/_stac/``), so what a third-party client
sees and what LEAF shows are the same documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import products
from .errors import LeafError
from .naming import ERRORS_DIR, _join

if TYPE_CHECKING:  # pragma: no cover
    import pystac
    import xarray as xr

    from .sinks import Sink

CATALOG_NAME = "catalog.json"
QC_LAYERS = ("domain", "out_of_range", "invalid")
"""Boolean layers decoded from QC (names of ``products.qc_fields``), as ``QC_<name>``; plus ``QC_sensor_code``."""
QC_DOC = {"domain": products.QC_BITS["0"], "out_of_range": products.QC_BITS["1"], "invalid": products.QC_BITS["2"]}


class OutputsError(LeafError):
    """The outputs cannot be found or read (no catalogue there, several catalogues, unknown product)."""


# ------------------------------------------------------------------------------------------------ finding


def find_catalogue(path: str | Path) -> str:
    """The STAC document to open for ``path``: itself when it is a JSON file or URL, else the one
    ``_stac/catalog.json`` under the folder (the output folder of ``leaf produce --out``, or an out_folder)."""
    text = str(path)
    if "://" in text or text.endswith(".json"):
        return text
    folder = Path(path)
    if not folder.is_dir():
        raise OutputsError(f"{folder} is neither a folder nor a STAC JSON file: give the --out folder of "
                           "`leaf produce`, its out_folder, or a catalog/collection/item JSON path")
    found = sorted(folder.glob(f"_stac/{CATALOG_NAME}")) or sorted(folder.glob(f"*/_stac/{CATALOG_NAME}")) \
        or sorted(folder.glob(f"**/_stac/{CATALOG_NAME}"))
    if not found:
        raise OutputsError(f"no STAC catalogue (_stac/{CATALOG_NAME}) under {folder}: run `leaf produce` with "
                           "--manifest (the default) first")
    if len(found) > 1:
        raise OutputsError(f"{len(found)} catalogues under {folder} ({', '.join(str(f) for f in found[:5])}): "
                           "pass one of them")
    return str(found[0])


def load_items(path: str | Path, request_id: str | None = None) -> list[pystac.Item]:
    """Every item under the catalogue/collection at ``path`` (or that one item), optionally of one request."""
    import pystac

    doc = pystac.read_file(find_catalogue(path))
    if isinstance(doc, pystac.Item):
        items = [doc]
    elif isinstance(doc, pystac.Catalog):
        items = list(doc.get_items(recursive=True))
    else:
        raise OutputsError(f"{path} is a STAC {type(doc).__name__}; expected a catalog, collection or item")
    if request_id is not None:
        items = [i for i in items if i.properties.get("leaf:request_id") == request_id]
    if not items:
        raise OutputsError(f"no items in {path}" + (f" for request {request_id}" if request_id else ""))
    return items


# ------------------------------------------------------------------------------------------------ reading


def _decode(name: str, dn: xr.DataArray) -> xr.DataArray:
    p = products.product(name)
    out = dn.where(dn != p.nodata).astype("float32") / np.float32(p.scale)
    out.attrs = {"units": p.units, "long_name": p.description, "nodata": "NaN"}
    return out


def _dates(doy: xr.DataArray, nodata: int) -> xr.DataArray:
    """Date DN (1-based day of year of the window's year) → calendar dates (NaT where no observation)."""
    years = doy["time"].dt.year.astype("int64")
    start = (years - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    days = doy.where(doy != nodata).astype("float64") - 1
    out = start + days.astype("timedelta64[D]")
    out = out.where(doy != nodata)
    out.attrs = {"long_name": "date of the chosen observation"}
    return out


def open_outputs(path: str | Path, products_: Sequence[str] | None = None, *, request_id: str | None = None,
                 chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    """The outputs under ``path`` (a ``leaf produce`` folder, an out_folder, or a STAC catalog/collection/item)
    as one xarray Dataset on the files' grid, one time step per period (its window start):

    * LAI, fCOVER, fAPAR, Albedo (and uncertainties) in physical units (float32, NaN = no data);
    * ``Date`` as calendar dates (``datetime64``, NaT = no observation);
    * QC decoded into boolean layers ``QC_domain``, ``QC_out_of_range``, ``QC_invalid`` and ``QC_sensor_code``
      (from the one QC definition in ``leaf_engine.products``), with ``QC_nodata`` where the region is not.

    ``chunks`` (e.g. ``{"x": 2048, "y": 2048}``) loads lazily with Dask; by default the data are read at once.
    """
    import odc.stac
    import xarray as xr

    items = load_items(path, request_id)
    names = [k for k in items[0].assets if k in products.all_product_tokens()]
    if products_ is not None:
        unknown = [p for p in products_ if p not in names]
        if unknown:
            raise OutputsError(f"products {unknown} are not in the catalogue; it has {names}")
        names = list(products_)
    raw = odc.stac.load(items, bands=names, chunks=dict(chunks) if chunks is not None else None,
                        groupby="time")
    out = xr.Dataset(coords=raw.coords)
    for name in names:
        p = products.product(name)
        if name == "QC":
            # products.qc_fields (the one QC definition) per block, eagerly or under Dask alike.
            for layer in QC_LAYERS:
                out[f"QC_{layer}"] = xr.apply_ufunc(lambda q, f=layer: products.qc_fields(q)[f], raw[name],
                                                    dask="parallelized", output_dtypes=[bool])
                out[f"QC_{layer}"].attrs = {"long_name": QC_DOC[layer]}
            out["QC_sensor_code"] = xr.apply_ufunc(lambda q: products.qc_fields(q)["sensor_code"], raw[name],
                                                   dask="parallelized", output_dtypes=[np.uint8])
            out["QC_nodata"] = raw[name] == p.nodata
        elif name == "Date":
            out[name] = _dates(raw[name], p.nodata)
        elif name == "Partition":
            out[name] = raw[name].where(raw[name] != p.nodata)
        else:
            out[name] = _decode(name, raw[name])
    out.attrs = {"source": find_catalogue(path), "request_ids": sorted({str(i.properties.get("leaf:request_id"))
                                                                        for i in items})}
    return out


def stackstac_items(items: Iterable[pystac.Item | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """LEAF items as stackstac reads them: ``stackstac.stack(stackstac_items(items))`` needs no hints.

    Items loaded by pystac (``pystac.read_file``, pystac-client) reach stackstac without a CRS it can read:
    pystac migrates the projection extension to v2.0.0 on reading, which drops ``proj:epsg``, and stackstac
    (0.5.1, its latest release) reads only ``proj:epsg``, not ``proj:code`` (stackstac issue #262); and it opens
    asset hrefs as given, while a local catalogue's are relative. So each item comes back as a dict with absolute
    asset hrefs (where pystac knows the item's location) and ``proj:epsg`` beside ``proj:code`` under projection
    v1.2.0, as LEAF wrote it. Plain dicts (raw item JSON) pass through with the same ``proj:epsg`` rule."""
    import copy

    import pystac
    from pystac.extensions.projection import ProjectionExtension

    from .catalogue.stac import PROJECTION_V1_2, with_epsg

    out = []
    for item in items:
        if isinstance(item, pystac.Item):
            item = item.clone()
            if item.get_self_href():
                item.make_asset_hrefs_absolute()
            d = item.to_dict(include_self_link=False, transform_hrefs=False)
        else:
            d = copy.deepcopy(dict(item))
        with_epsg(d.get("properties", {}))
        for asset in d.get("assets", {}).values():
            with_epsg(asset)
        v2 = ProjectionExtension.get_schema_uri()
        d["stac_extensions"] = [PROJECTION_V1_2 if u == v2 else u for u in d.get("stac_extensions", [])]
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------- status


def status_sink(bucket: str | None, out: Path | None) -> Sink:
    """Where ``leaf status`` looks: the bucket, or the local folder given to ``leaf produce --out``."""
    from .sinks import GcsSink, LocalSink

    if (bucket is None) == (out is None):
        raise OutputsError("leaf status needs exactly one of --bucket BUCKET (the request's GCS_bucket) or "
                           "--out DIR (the folder given to `leaf produce --out`, default ./out)")
    if out is not None:
        if not Path(out).is_dir():
            raise OutputsError(f"--out {out}: no such folder; give the folder `leaf produce` wrote into")
        return LocalSink(Path(out))
    return GcsSink(str(bucket))


def error_records(sink: Sink, out_folder: str, request_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Error records of ``request_id``: ``{out_folder}/_errors/{request_id}.json`` or
    ``{request_id}-{message id}.json`` (one per invalid message), newest first."""
    prefix = _join(out_folder, ERRORS_DIR, request_id)
    found = []
    for key in sink.list(prefix):
        name = key.rsplit("/", 1)[-1]
        if not name.endswith(".json") or not (name == f"{request_id}.json" or name.startswith(f"{request_id}-")):
            continue
        got = sink.read_json(key)
        if got is None:
            continue
        doc = got[0]
        if doc.get("request_id", doc.get("error_id", request_id)) not in (request_id, None):
            continue
        found.append((key, doc))
    return sorted(found, key=lambda kv: str(kv[1].get("received_at", "")), reverse=True)


# -------------------------------------------------------------------------------------------- local inputs


def derived_from(jobs: Iterable[Any], scenes_source: str | None) -> dict[str, list[str]]:
    """Item id → the hrefs of the input scenes' STAC items that a local run used (for ``derived_from``)."""
    if not scenes_source:
        return {}
    from .backends.local.scenes import load_items as load_scene_items

    hrefs = {}
    for item in load_scene_items(scenes_source):
        self_href = item.get_self_href()
        if self_href:
            hrefs[item.id] = self_href if "://" in self_href else Path(self_href).resolve().as_uri()
    return {j.job_id: [hrefs[s] for s in j.scenes if s in hrefs] for j in jobs if not getattr(j, "skipped", False)}


# ------------------------------------------------------------------------------------------------ GeoJSON


def tiles_geojson(tiles: Iterable[Any]) -> dict[str, Any]:
    """CCRS tiles as a GeoJSON FeatureCollection in lon/lat (RFC 7946: WGS 84, counter-clockwise exterior
    rings), one Polygon feature per tile with its EPSG:3979 bounds as properties. QGIS opens it as a layer."""
    import shapely
    from shapely.geometry import mapping

    features = []
    for t in tiles:
        poly = shapely.geometry.polygon.orient(t.lonlat_polygon(), sign=1.0)
        features.append({"type": "Feature", "id": t.name, "geometry": _jsonable(mapping(poly)),
                         "properties": {"name": t.name, "grid_crs": "EPSG:3979", "xmin": t.bounds[0],
                                        "ymin": t.bounds[1], "xmax": t.bounds[2], "ymax": t.bounds[3]}})
    return {"type": "FeatureCollection", "features": features}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v
