"""The local engine on STAC items exactly as Earth Search and Planetary Computer publish them.

The items in ``tests/data/published-items`` were written by others (recorded API answers and catalogue test data of
public repositories; origins in that folder's README). Each is loaded unchanged into a STAC API on loopback
(stac-fastapi over a static catalog, and stac-fastapi-pgstac where PostgreSQL is installed), searched with
:mod:`leaf_engine.backends.local.stac_api` and turned into scenes by :mod:`leaf_engine.backends.local.scenes`.
Only the hrefs of the assets the engine reads are moved (the pixels cannot be fetched here): to small COGs of
known DN, under the published file names, on a range-request file server; the S2 granule metadata asset points
at a real ``MTD_TL.xml``. Every other field is as published. ``s3://`` hrefs are kept as published (Copernicus
Data Space's JPEG 2000 files on its own store, Earth Search's Landsat COGs in USGS's requester-pays bucket): the
files lie under those bucket paths on the file server, which GDAL's S3 client is pointed at as the endpoint
(path-style, unsigned, requester-pays agreed to).

What the tests hold each item to comes from the item (its declared scale/offset, bit fields, angles, date, cloud
cover) and from the catalogue's documented rules (the S2 BOA offset, Earth Search's ``boa_offset_applied``), not
from the engine's own tables.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from rasterio.warp import transform_bounds, transform_geom

from leaf_engine.backends.local import stac_api
from leaf_engine.backends.local.masks import quality_clear
from leaf_engine.backends.local.reading import read_scaled, read_warped
from leaf_engine.backends.local.scenes import AssetRef, Scene, SceneError, scene_from_item
from leaf_engine.sensors import SENSORS, sensor_for_platform
from tests.support.stac_api_server import flaky_proxy, serve_files, serve_stac_api

DATA = Path(__file__).parent / "data" / "published-items"
GRANULE_XML = "MTD_TL_S2A_T07HFE_20190212.xml"
# the B8A (bandId 8) mean viewing incidence angles written in that file
GRANULE_VZA, GRANULE_VAA = 10.8667503672554, 290.104191276527
SHAPE = (6, 6)


@dataclass(frozen=True)
class Published:
    """One published item and what a user expects of it (literal values read off the published JSON)."""

    file: str
    catalogue: str
    sensor: str
    scale: float
    offset: float
    """Reflectance = DN·scale + offset for this item's DN."""
    band_files: dict[str, str]
    """Network input → the file name part of the asset that holds that band (ESA / USGS band names)."""


_S2_FILES = {"B3": "B03", "B4": "B04", "B5": "B05", "B6": "B06", "B7": "B07", "B8A": "B8A", "B11": "B11",
             "B12": "B12"}
_OLI_FILES = {f"SR_B{i}": f"SR_B{i}" for i in (3, 4, 5, 6, 7)}
_TM_FILES = {"green(B2)": "SR_B2", "red(B3)": "SR_B3", "nir(B4)": "SR_B4", "swir1(B5)": "SR_B5",
             "swir2(B7)": "SR_B7"}
C2 = (2.75e-5, -0.2)  # declared by every Landsat item in raster:bands
CDSE = "S2B_MSIL2A_20200322T074609_N0500_R135_T36NYH_20230612T214223"

ITEMS = [
    # Earth Search, baseline 05.09, boa_offset_applied true: the COG DN no longer carry the +1000, so the −0.1 its
    # raster:bands still state must not be applied (Element 84: the flag is the truth).
    Published("S2A_13TDE_20231008_0_L2A", "earth-search", "S2_SR", 1e-4, 0.0, _S2_FILES),
    Published("LC08_L2SP_033032_20231008_02_T1", "earth-search", "L8_SR", *C2, _OLI_FILES),
    # Planetary Computer: no raster:bands; baseline 02.12 has no BOA offset, 05.10 has −1000 DN.
    Published("S2A_MSIL2A_20190101T000001_R116_T60VUK_20201007T214652", "planetary-computer", "S2_SR", 1e-4, 0.0,
              _S2_FILES),
    Published("S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458", "planetary-computer", "S2_SR", 1e-4, -0.1,
              _S2_FILES),
    Published("LC09_L2SP_089090_20240417_02_T1", "planetary-computer", "L9_SR", *C2, _OLI_FILES),
    # stactools-landsat examples: the generator of Planetary Computer's landsat-c2-l2 items
    Published("LC08_L2SP_047027_20201204_02_T1", "planetary-computer", "L8_SR", *C2, _OLI_FILES),
    Published("LE07_L2SP_021030_20100109_02_T1", "planetary-computer", "L7_SR", *C2, _TM_FILES),
    Published("LT05_L2SP_010067_19860424_02_T2", "planetary-computer", "L5_SR", *C2, _TM_FILES),
    # Copernicus Data Space (STAC 1.1): JPEG 2000 on its own S3 store, each band at several resolutions, and the
    # BOA offset of baseline 05.00 stated on every asset (raster:offset −0.1)
    Published(CDSE, "copernicus-dataspace", "S2_SR", 1e-4, -0.1, _S2_FILES),
]
CATALOGUES = ("earth-search", "planetary-computer", "copernicus-dataspace")
BY_ID = {p.file: p for p in ITEMS}


def published(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


def _epsg(doc: dict[str, Any]) -> str:
    p = doc["properties"]
    if "proj:code" in p or "proj:epsg" in p:
        return p.get("proj:code") or f"EPSG:{p['proj:epsg']}"
    return next(a["proj:code"] for a in doc["assets"].values() if "proj:code" in a)  # STAC 1.1: on the assets


def _grid(doc: dict[str, Any]) -> GeoBox:
    """A small pixel grid in the item's CRS at its footprint's centre (20 m for S2, 30 m for Landsat)."""
    crs = _epsg(doc)
    res = 20 if doc["collection"].startswith("sentinel") else 30
    centre = shapely.geometry.shape(doc["geometry"]).representative_point()
    x, y = shapely.geometry.shape(transform_geom("EPSG:4326", crs, shapely.geometry.mapping(centre))).coords[0]
    x0, y0 = math.floor(x / 60) * 60, math.floor(y / 60) * 60
    return GeoBox(SHAPE, Affine(res, 0, x0, 0, -res, y0), crs)


def _dn(i: int, sensor: str) -> np.ndarray:
    """Band ``i``'s DN: a ramp, 0 (nodata) in the first pixel."""
    base = 1500 if sensor == "S2_SR" else 9000
    dn = (base + 100 * i + 37 * np.arange(SHAPE[0] * SHAPE[1])).reshape(SHAPE).astype(np.uint16)
    dn[0, 0] = 0
    return dn


def _bitfields(asset: dict[str, Any]) -> dict[str, int]:
    """Single-bit flags of a published QA asset (``classification:bitfields``): name → bit offset."""
    return {f["name"]: f["offset"] for f in asset.get("classification:bitfields", []) if f["length"] == 1}


def _layer(key: str) -> str:
    """An asset key without its resolution suffix (``SCL_20m`` → ``scl``), lower case."""
    return re.sub(r"_\d+m$", "", key).lower()


def _quality_values(key: str, asset: dict[str, Any]) -> np.ndarray:
    """Per pixel one class or one flag: SCL classes 0-11; QA_PIXEL each single-bit flag the item declares, alone;
    QA_RADSAT each band's saturation bit in the last pixels, nothing set elsewhere."""
    flat = np.zeros(SHAPE[0] * SHAPE[1], np.uint16)
    if _layer(key) == "scl":
        flat[:12] = np.arange(12)
        flat[12:] = 4
    elif _layer(key) == "qa_pixel":
        bits = sorted(_bitfields(asset).values())
        flat[:] = 1 << _bitfields(asset)["clear"]
        flat[: len(bits)] = [1 << b for b in bits]
    else:  # in the last pixels, away from the QA_PIXEL flags
        flat[-11:] = [1 << b for b in range(11)]
    return flat.reshape(SHAPE)


def _write(path: Path, data: np.ndarray, gbox: GeoBox, nodata: float | None) -> None:
    """A COG, or a lossless JPEG 2000 file where the published name says ``.jp2``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    jp2 = path.suffix.lower() == ".jp2"
    options = {"QUALITY": 100, "REVERSIBLE": "YES"} if jp2 else {}
    with rasterio.open(path, "w", driver="JP2OpenJPEG" if jp2 else "COG", width=data.shape[1],
                       height=data.shape[0], count=1, dtype=data.dtype, crs=gbox.crs.wkt, transform=gbox.transform,
                       nodata=nodata, **options) as ds:
        ds.write(data, 1)


def _file_name(href: str) -> str:
    return href.split("?")[0].rsplit("/", 1)[-1]


def _serve(item: pystac.Item, key: str, files: Path, url: str, data: np.ndarray, gbox: GeoBox,
           nodata: float | None) -> None:
    """Asset ``key``'s file with ``data``: an ``s3://`` href stays as published, its file under the bucket path
    (the file server is the S3 endpoint); any other href moves to ``url``."""
    href = item.assets[key].href
    if href.startswith("s3://"):
        _write(files / href.removeprefix("s3://"), data, gbox, nodata)
        return
    name = _file_name(href)
    _write(files / item.id / name, data, gbox, nodata)
    item.assets[key].href = f"{url}/{item.id}/{name}"


def _served_item(doc: dict[str, Any], files: Path, url: str) -> pystac.Item:
    """The published item with the hrefs of the assets the engine reads moved to files of known DN on ``url``."""
    doc = json.loads(json.dumps(doc))
    # the hierarchy links name the publisher's API (or its folder): the loopback API writes its own
    doc["links"] = [link for link in doc["links"] if link["rel"] not in ("self", "root", "parent", "collection")
                    and "://" in link["href"]]
    item = pystac.Item.from_dict(doc)
    spec = BY_ID[item.id]
    sensor = SENSORS[spec.sensor]
    gbox = _grid(doc)
    band_keys = {k for k, a in doc["assets"].items()
                 if any(_file_name(a["href"]).split(".")[0].endswith(f) or f"_{f}_" in _file_name(a["href"])
                        for f in spec.band_files.values()) and "jp2" not in k}
    for i, key in enumerate(sorted(band_keys)):
        _serve(item, key, files, url, _dn(i, spec.sensor), gbox, 0)
    for layer in sensor.quality:
        for key in doc["assets"]:
            if _layer(key) in {k.lower() for k in layer.stac_keys}:
                _serve(item, key, files, url, _quality_values(key, doc["assets"][key]), gbox, None)
    for key in ("granule_metadata", "granule-metadata"):
        if key in item.assets and not item.assets[key].href.startswith("s3://"):
            item.assets[key].href = f"{url}/{GRANULE_XML}"
    return item


def _catalog(folder: Path, items: list[pystac.Item]) -> Path:
    root = pystac.Catalog(id="published", description="published items, asset hrefs on loopback")
    for cid in sorted({i.collection_id or "" for i in items}):
        coll = pystac.Collection(id=cid, description=cid, extent=pystac.Extent(
            pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])))
        root.add_child(coll)
        for item in items:
            if item.collection_id == cid:
                coll.add_item(item.clone())
        coll.update_extent_from_items()
    root.normalize_hrefs(str(folder))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Any]:
    """The COG folder, each catalogue's items as served, and a static STAC API per catalogue."""
    tmp = tmp_path_factory.mktemp("published")
    files = tmp / "files"
    files.mkdir()
    (files / GRANULE_XML).write_bytes((DATA / GRANULE_XML).read_bytes())
    with serve_files(files, GRANULE_XML) as url, contextlib.ExitStack() as stack, _s3_endpoint(url):
        items = {p.file: _served_item(published(p.file), files, url) for p in ITEMS}
        apis = {c: stack.enter_context(serve_stac_api(_catalog(tmp / c, [items[p.file] for p in ITEMS
                                                                         if p.catalogue == c])))
                for c in CATALOGUES}
        yield {"files": files, "url": url, "items": items, "apis": apis}


S3_ENDPOINT_ENV = ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING", "AWS_NO_SIGN_REQUEST", "AWS_REQUEST_PAYER")


@contextlib.contextmanager
def _s3_endpoint(url: str) -> Iterator[None]:
    """GDAL's S3 client pointed at the file server (as a Copernicus Data Space user points it at
    eodata.dataspace.copernicus.eu), path-style; unsigned, since the loopback store has no keys; requester-pays
    reads agreed to."""
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: the function fixture's cannot be used
        for k, v in zip(S3_ENDPOINT_ENV, (urlsplit(url).netloc, "NO", "FALSE", "YES", "requester"), strict=True):
            mp.setenv(k, v)
        yield


def _region(doc: dict[str, Any]) -> shapely.Geometry:
    return shapely.box(*transform_bounds(_epsg(doc), "EPSG:4326", *_grid(doc).extent.boundingbox))


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _day(doc: dict[str, Any]) -> date:
    return datetime.fromisoformat(doc["properties"]["datetime"].replace("Z", "+00:00")).date()


def _scene(served: dict[str, Any], name: str) -> Scene:
    """The item found by a search of its catalogue's API and made a scene by the engine."""
    spec, doc = BY_ID[name], published(name)
    scenes = stac_api.discover(served["apis"][spec.catalogue], spec.sensor, _region(doc), _day(doc), _day(doc),
                               max_cloud_cover=100)
    assert [s.id for s in scenes] == [name]
    return scenes[0]


def test_the_published_items_are_the_files_stored(served):
    """The API answers each item with its published properties (a search does not rewrite them)."""
    for spec in ITEMS:
        doc = published(spec.file)
        items = stac_api.search_items(served["apis"][spec.catalogue], spec.sensor, _region(doc), _day(doc),
                                      _day(doc))
        assert [i.id for i in items] == [spec.file]
        got = items[0].properties
        # pystac (under the API) migrates projection and storage to their v2 fields: proj:code, storage:schemes
        assert set(got) - set(doc["properties"]) <= {"proj:code", "storage:schemes"}, set(got) - set(doc["properties"])
        for key, value in doc["properties"].items():  # the API may write timestamps in another RFC 3339 form
            if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)", value):
                assert _instant(got[key]) == _instant(value), key
            elif key == "proj:epsg" and key not in got:  # pystac's migration to projection v2 (proj:code)
                assert got["proj:code"] == f"EPSG:{value}"
            else:
                assert got[key] == value, key
        assert sensor_for_platform(doc["properties"]["platform"], doc["collection"]) is SENSORS[spec.sensor]


@pytest.mark.parametrize("name", [p.file for p in ITEMS])
def test_each_band_comes_from_the_asset_of_that_band(served, name):
    spec, scene = BY_ID[name], _scene(served, name)
    assert list(scene.bands) == list(SENSORS[spec.sensor].band_names())  # sensors.py's order: the networks'
    for net_input, ref in scene.bands.items():
        file = _file_name(ref.href).split(".")[0]
        assert file.endswith(spec.band_files[net_input]) or f"_{spec.band_files[net_input]}_" in file, \
            (net_input, ref.href)


@pytest.mark.parametrize("name", [p.file for p in ITEMS if p.sensor == "S2_SR"])
def test_the_10m_set_reads_blue_and_broad_nir(served, name):
    """The S2 10 m sets' B2 and B8: Earth Search ``blue``/``nir``, Planetary Computer ``B02``/``B08``; then the
    compositing score's red and nir08 (B8A)."""
    from leaf_engine.sl2p.networks import load_network_set

    scene = scene_from_item(served["items"][name], SENSORS["S2_SR"], load_network_set("leaf_sl2p_s2_10m").inputs)
    files = {n: _file_name(r.href).split(".")[0] for n, r in scene.bands.items()}
    assert list(files) == ["B2", "B3", "B4", "B8", "B8A"]
    for n, band in (("B2", "B02"), ("B3", "B03"), ("B4", "B04"), ("B8", "B08"), ("B8A", "B8A")):
        assert files[n].endswith(band) or f"_{band}_" in files[n], (n, files[n])


@pytest.mark.parametrize("name", [p.file for p in ITEMS])
def test_reflectance_is_dn_times_the_items_scale_plus_its_offset(served, name):
    spec, doc, scene = BY_ID[name], published(name), _scene(served, name)
    gbox = _grid(doc)
    for net_input, ref in scene.bands.items():
        assert (ref.scale, ref.offset) == pytest.approx((spec.scale, spec.offset), abs=1e-12), net_input
        values, has = read_scaled(ref, gbox)
        with rasterio.open(ref.href) as src:
            dn = src.read(1)
        assert not has[0, 0] and np.isnan(values[0, 0])  # DN 0: the declared nodata
        want = (dn.astype(np.float64) * spec.scale + spec.offset).astype(np.float32)
        np.testing.assert_array_equal(values[has], want[dn != 0])


def test_earth_search_offset_applies_where_the_catalogue_has_not_removed_it(served):
    """The same Earth Search item saying ``boa_offset_applied: false``: its DN carry the offset, −0.1 applies (a
    copy: no published item of that kind was found, see the data README)."""
    item = served["items"]["S2A_13TDE_20231008_0_L2A"].clone()
    item.properties["earthsearch:boa_offset_applied"] = False
    scene = scene_from_item(item, SENSORS["S2_SR"])
    assert {(r.scale, r.offset) for r in scene.bands.values()} == {(1e-4, -0.1)}
    # Collection 1 keeps ESA's DN: the flag is Collection 0's, the stated offset applies
    item.properties["earthsearch:boa_offset_applied"] = True
    item.collection_id = "sentinel-2-c1-l2a"
    scene = scene_from_item(item, SENSORS["S2_SR"])
    assert {(r.scale, r.offset) for r in scene.bands.values()} == {(1e-4, -0.1)}


@pytest.mark.parametrize("name", [p.file for p in ITEMS])
def test_quality_layers_and_their_rules(served, name):
    spec, doc, scene = BY_ID[name], published(name), _scene(served, name)
    gbox = _grid(doc)
    layers = [q.band for q, _ in scene.quality]
    assert not scene.water_test  # SCL and C2 QA_PIXEL both flag water
    reads = [read_warped(ref, gbox, categorical=True) for _, ref in scene.quality]
    clear = np.asarray(quality_clear(scene, reads)).reshape(-1)
    if spec.sensor == "S2_SR":
        assert layers == ["SCL"] and scene.mask_kind == "scl"
        # SCL 4 vegetation and 5 not vegetated are the only clear classes (LEAF-Toolbox S2MaskLand)
        assert [c for c in range(12) if clear[c]] == [4, 5] and clear[12:].all()
        return
    assert layers == ["QA_PIXEL", "QA_RADSAT"] and scene.mask_kind == "qa_pixel"
    # one pixel per single-bit flag the item declares: the invalid ones by name (USGS C2 QA_PIXEL), clear else
    bits = _bitfields(doc["assets"]["qa_pixel"])
    invalid = {"fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow", "water"}
    assert invalid - {"cirrus"} <= set(bits) and "clear" in bits
    radsat = np.asarray(reads[1][0]).reshape(-1)
    assert not radsat[: len(bits)].any() and np.count_nonzero(radsat) == 11
    for i, (flag, _) in enumerate(sorted(bits.items(), key=lambda kv: kv[1])):
        assert bool(clear[i]) == (flag not in invalid and radsat[i] == 0), (flag, radsat[i])
    assert clear[len(bits):][radsat[len(bits):] == 0].all() and not clear[radsat != 0].any()


@pytest.mark.parametrize("name", [p.file for p in ITEMS])
def test_sun_and_view_angles_date_and_cloud_cover_as_published(served, name):
    spec, doc, scene = BY_ID[name], published(name), _scene(served, name)
    p = doc["properties"]
    if "view:sun_elevation" in p:
        want_sun = (90.0 - p["view:sun_elevation"], p["view:sun_azimuth"])
    else:  # Planetary Computer S2
        want_sun = (p["s2:mean_solar_zenith"], p["s2:mean_solar_azimuth"])
    assert (scene.sun_zenith, scene.sun_azimuth) == pytest.approx(want_sun, abs=1e-9)
    if spec.catalogue == "copernicus-dataspace":
        # each band's asset states that band's mean incidence angles: B8A's are the Earth Engine path's
        # (MEAN_INCIDENCE_*_ANGLE_B8A), not the item's view:incidence_angle / view:azimuth (another mean)
        b8a = doc["assets"]["B8A_20m"]
        assert (scene.view_zenith, scene.view_azimuth) == (b8a["view:incidence_angle"], b8a["view:azimuth"])
        assert scene.view_zenith != p["view:incidence_angle"] and scene.view_azimuth != p["view:azimuth"]
    elif spec.sensor == "S2_SR":  # neither other catalogue has S2 view angles in the properties: the granule metadata
        assert not any(k.startswith(("view:incidence", "view:azimuth", "s2:mean_incidence")) for k in p)
        assert (scene.view_zenith, scene.view_azimuth) == (GRANULE_VZA, GRANULE_VAA)
    else:  # Landsat: view:off_nadir 0 and no view azimuth: nadir
        assert p["view:off_nadir"] == 0 and (scene.view_zenith, scene.view_azimuth) == (0.0, 0.0)
    assert scene.datetime == datetime.fromisoformat(p["datetime"].replace("Z", "+00:00"))
    assert scene.cloud_cover == p["eo:cloud_cover"]
    assert scene.footprint.equals(shapely.geometry.shape(doc["geometry"]))


def test_items_lacking_what_the_engine_needs_raise_errors_naming_it(served):
    es = served["items"]["S2A_13TDE_20231008_0_L2A"]
    s2 = SENSORS["S2_SR"]
    no_nir = es.clone()
    del no_nir.assets["nir08"]  # its JPEG 2000 twin "nir08-jp2" (same eo:bands) must not stand in for it
    with pytest.raises(SceneError, match=r"'S2A_13TDE_20231008_0_L2A' lacks assets for B8A \(nir08/B8A\)"):
        scene_from_item(no_nir, s2)
    no_sun = es.clone()
    del no_sun.properties["view:sun_elevation"]
    with pytest.raises(SceneError, match=r"'S2A_13TDE_20231008_0_L2A' has no sun angles.*view:sun_elevation"):
        scene_from_item(no_sun, s2)
    gone = es.clone()
    gone.assets["granule_metadata"].href = f"{served['url']}/no-such/granule_metadata.xml"
    with pytest.raises(SceneError, match=r"'S2A_13TDE_20231008_0_L2A'.*asset 'granule_metadata'.*bandId=8 \(B8A\)"):
        scene_from_item(gone, s2)
    not_xml = es.clone()  # a file that is there but is no granule metadata
    not_xml.assets["granule_metadata"].href = not_xml.assets["nir08"].href
    with pytest.raises(SceneError, match=r"asset 'granule_metadata'"):
        scene_from_item(not_xml, s2)
    cdse = served["items"][CDSE].clone()
    del cdse.assets["B8A_20m"]  # its 60 m copy stands in, angles included
    scene = scene_from_item(cdse, s2)
    assert scene.bands["B8A"].href.endswith("_B8A_60m.jp2") and scene.view_zenith == 3.3333612772501
    del cdse.assets["B8A_60m"]
    with pytest.raises(SceneError, match=rf"'{CDSE}' lacks assets for B8A \(nir08/B8A\)"):
        scene_from_item(cdse, s2)
    pc = served["items"]["S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458"].clone()
    del pc.assets["B8A"]
    with pytest.raises(SceneError, match=r"'S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458' lacks assets "
                                         r"for B8A"):
        scene_from_item(pc, s2)


def test_copernicus_dataspace_bands_are_its_original_jpeg2000_files_read_from_its_s3_store(served):
    """Each band at several resolutions (``B04_10m``, ``B04_20m``, ``B04_60m``): the one of its original sampling
    (as Earth Search and Planetary Computer publish only that one), SCL at 20 m; read as JPEG 2000 through GDAL's
    S3 client, the hrefs as published."""
    doc = published(CDSE)
    scene = _scene(served, CDSE)
    keys = {ref.href: k for k, a in doc["assets"].items() for ref in (*scene.bands.values(),
                                                                       *(r for _, r in scene.quality))
            if a["href"] == ref.href}
    assert len(keys) == len(scene.bands) + 1
    for href, key in keys.items():
        assert href.startswith("s3://eodata/") and "sampling:original" in doc["assets"][key]["roles"], key
    assert keys[scene.quality[0][1].href] == "SCL_20m"
    assert [keys[r.href] for r in scene.bands.values()] == [
        "B03_10m", "B04_10m", "B05_20m", "B06_20m", "B07_20m", "B8A_20m", "B11_20m", "B12_20m"]
    with rasterio.open(scene.bands["B8A"].href) as src:
        assert src.driver == "JP2OpenJPEG" and src.files[0].startswith("/vsis3/eodata/")


def test_an_s3_store_other_than_aws_must_be_named(served, monkeypatch):
    """Without an S3 endpoint GDAL would ask AWS for Copernicus Data Space's bucket: the scene says what to set."""
    monkeypatch.delenv("AWS_S3_ENDPOINT")
    with pytest.raises(SceneError, match=rf"item '{CDSE}': asset 'B03_10m' is in the S3 bucket 'eodata' on "
                                         r"eodata\.dataspace\.copernicus\.eu .*AWS_S3_ENDPOINT=eodata\.dataspace"
                                         r"\.copernicus\.eu and AWS_VIRTUAL_HOSTING=FALSE"):
        scene_from_item(served["items"][CDSE], SENSORS["S2_SR"])


def test_a_requester_pays_bucket_must_be_agreed_to(served, monkeypatch):
    """Earth Search's Landsat assets are in USGS's requester-pays bucket (``storage:requester_pays``): without
    consent every read would be refused (HTTP 403), so the scene says what to set before any block runs."""
    item = served["items"]["LC08_L2SP_033032_20231008_02_T1"]
    assert item.assets["red"].href.startswith("s3://usgs-landsat/")  # as published
    monkeypatch.delenv("AWS_REQUEST_PAYER")
    with pytest.raises(SceneError, match=r"item 'LC08_L2SP_033032_20231008_02_T1': asset 'green' is in the "
                                         r"requester-pays S3 bucket 'usgs-landsat' \(us-west-2\).*"
                                         r"AWS_REQUEST_PAYER=requester"):
        scene_from_item(item, SENSORS["L8_SR"])
    monkeypatch.setenv("AWS_REQUEST_PAYER", "requester")
    assert scene_from_item(item, SENSORS["L8_SR"]).bands["SR_B4"].href == item.assets["red"].href


PC_S2 = "S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458"


def _on_blob_storage(item: pystac.Item, url: str) -> pystac.Item:
    """The served item with its rasters where Planetary Computer keeps them, on Azure Blob Storage (account
    ``pcstore``): the same paths as on the file server ``url``."""
    out = item.clone()
    for asset in out.assets.values():
        if asset.href.startswith(f"{url}/{item.id}/"):
            asset.href = "http://pcstore.blob.core.windows.net" + asset.href.removeprefix(url)
    return out


def test_planetary_computer_assets_are_signed_anew_before_each_read(served, tmp_path, monkeypatch):
    """Planetary Computer's SAS tokens expire (within the hour), so a job longer than that would read with its
    search's token and be refused. Every read signs the href anew; the package renews the token before it
    expires. Here tokens live 2 s: the blob store refuses the search's after that, the reads still succeed."""
    import planetary_computer

    from leaf_engine.backends.local.reading import read_many
    from tests.support.stac_api_server import sas_blob_store

    doc, gbox = published(PC_S2), _grid(published(PC_S2))
    item = _on_blob_storage(served["items"][PC_S2], served["url"])
    with sas_blob_store(served["url"], token_life=2.0) as (proxy, sas_url, blob_log), \
            serve_stac_api(_catalog(tmp_path / "pc", [item])) as api:
        monkeypatch.setattr(planetary_computer.settings.Settings.get(), "sas_url", sas_url)
        monkeypatch.setattr(planetary_computer.sas, "TOKEN_CACHE", {})
        monkeypatch.setitem(stac_api.SIGNED_APIS, "127.0.0.1", "planetary-computer")  # the API on loopback
        monkeypatch.setenv("GDAL_HTTP_PROXY", proxy)  # GDAL reaches the blob store through it
        (scene,) = stac_api.discover(api, "S2_SR", _region(doc), _day(doc), _day(doc), max_cloud_cover=100)
        refs = list(scene.bands.values())
        assert all(r.signer == "planetary-computer" and "pcstore.blob.core.windows.net" in r.href
                   and "sig=t" in r.href for r in refs)  # signed by the search
        first, has = read_scaled(refs[0], gbox)
        assert has.sum() == has.size - 1
        time.sleep(2.8)  # the search's token has expired (the store allows 0.5 s more)
        again, _ = read_scaled(refs[0], gbox)
        np.testing.assert_array_equal(again, first)
        stacked = read_many(refs, gbox, [False] * len(refs))  # the blocks' read: one warp of a VRT of the bands
        log = blob_log()
        assert len(stacked) == len(refs) and not log.refused
        assert len(log.issued) >= 2 and len(log.served) >= 2  # a renewed token read the later blocks
        # the search's own href, read as it is (a new URL, so not from GDAL's cache): refused
        with pytest.raises(rasterio.errors.RasterioIOError):
            read_scaled(AssetRef(refs[0].href + "&stale=1", refs[0].scale, refs[0].offset, refs[0].nodata), gbox)
        refused = blob_log().refused  # GDAL also tries the href as a folder (a "/" after it)
        assert refused and all(q.startswith(refs[0].href.split("?", 1)[1] + "&stale=1") for q in refused)


def test_the_granule_metadata_read_is_retried(served, monkeypatch):
    """503 and 429 twice before the file: the view angles still come from it."""
    monkeypatch.setattr(stac_api, "RETRY_BACKOFF", 0.01)
    item = served["items"]["S2A_MSIL2A_20190101T000001_R116_T60VUK_20201007T214652"].clone()
    with flaky_proxy(served["url"], failures=2) as (url, log):
        item.assets["granule-metadata"].href = f"{url}/{GRANULE_XML}?retried"  # not in the reader's cache
        scene = scene_from_item(item, SENSORS["S2_SR"])
    assert (scene.view_zenith, scene.view_azimuth) == (GRANULE_VZA, GRANULE_VAA)
    assert log.errors == {503: 1, 429: 1}


def test_the_granule_metadata_is_read_once_whatever_its_signature(served):
    """Planetary Computer signs each search's hrefs anew (a SAS token in the query): one file, one read."""
    item = served["items"]["S2A_MSIL2A_20190101T000001_R116_T60VUK_20201007T214652"].clone()
    with flaky_proxy(served["url"]) as (url, log):
        for token in ("st=2024-01-01&sig=a", "st=2024-01-02&sig=b", "st=2024-01-02&sig=b#x"):
            item.assets["granule-metadata"].href = f"{url}/{GRANULE_XML}?{token}"
            scene = scene_from_item(item, SENSORS["S2_SR"])
            assert (scene.view_zenith, scene.view_azimuth) == (GRANULE_VZA, GRANULE_VAA)
    assert [path for _, path, _ in log.requests] == [f"/{GRANULE_XML}?st=2024-01-01&sig=a"]


@pytest.mark.parametrize("name,code", [("S2A_13TDE_20231008_0_L2A", 21), ("LC08_L2SP_033032_20231008_02_T1", 8),
                                       (CDSE, 21)])
def test_produce_through_the_api_on_published_items(served, tmp_path, name, code):
    """A request over the published item's footprint, searched in its catalogue's API: the outputs carry the
    item, its sensor code and its quality rule, and the pixels its quality layer rejects are flagged invalid."""
    from leaf_engine import products
    from leaf_engine.backends.local.engine import produce
    from leaf_engine.request import parse_request

    spec, doc = BY_ID[name], published(name)
    when = _day(doc)
    inner = _region(doc).buffer(-1e-4)  # off the COG's edge pixels
    req = parse_request({
        "sensor": spec.sensor, "year": when.year, "months": [when.month],
        "regions": {"site": shapely.geometry.mapping(inner)}, "prod_names": ["LAI"], "projection": _epsg(doc),
        "resolution": 20 if spec.sensor == "S2_SR" else 30, "out_location": "local", "out_folder": "published"})
    result = produce(req, out_dir=tmp_path, scenes=served["apis"][spec.catalogue], progress=False,
                     quicklooks=False, block_size=64)
    (job,) = result.jobs
    assert job.scenes == [name] and job.pixels_with_obs > 0
    (qc_file,) = tmp_path.rglob("*_QC_*.tif")
    with rasterio.open(qc_file) as src:
        qc, tags = src.read(1), src.tags()
    assert tags["scenes_used"] == "1" and SENSORS[spec.sensor].quality[0].band in tags["mask_rule"]
    inside = qc != products.product("QC").nodata
    fields = products.qc_fields(qc[inside])
    assert (fields["sensor_code"] == code).all()
    assert 0 < fields["invalid"].mean() < 1  # the quality layer's rejected classes / flags, not the rest


@pytest.mark.slow
def test_the_same_scenes_through_pgstac(served, tmp_path):
    """Planetary Computer runs stac-fastapi-pgstac: the items loaded into pgstac give the same scenes."""
    from tests.support.pgstac_server import serve_pgstac, unavailable

    reason = unavailable()
    if reason:
        if os.environ.get("LEAF_REQUIRE_PGSTAC") == "1":
            pytest.fail(f"LEAF_REQUIRE_PGSTAC=1 but {reason}")
        pytest.skip(reason)
    databases = {}
    for catalogue in CATALOGUES:
        items = [served["items"][p.file] for p in ITEMS if p.catalogue == catalogue]
        collections = [pystac.Collection(id=cid, description=cid, extent=pystac.Extent(
            pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])))
            for cid in sorted({i.collection_id or "" for i in items})]
        databases[catalogue] = (collections, items)
    with serve_pgstac(databases) as urls:
        for spec in ITEMS:
            doc = published(spec.file)
            got = stac_api.discover(urls[spec.catalogue], spec.sensor, _region(doc), _day(doc), _day(doc),
                                    max_cloud_cover=100)
            want = _scene(served, spec.file)
            assert [s.id for s in got] == [spec.file]
            assert (got[0].bands, got[0].quality, got[0].datetime, got[0].cloud_cover) == \
                (want.bands, want.quality, want.datetime, want.cloud_cover)
            assert (got[0].sun_zenith, got[0].sun_azimuth, got[0].view_zenith, got[0].view_azimuth) == \
                (want.sun_zenith, want.sun_azimuth, want.view_zenith, want.view_azimuth)
