"""Scene discovery: STAC items (ItemCollection, catalog, collection or single item) → :class:`Scene` records.

A scene knows, per SL2P input band, which asset to read and how to turn its DN into reflectance, which quality
layer masks it, and its sun/view geometry. Asset keys follow the public catalogues (Earth Search / Planetary
Computer: ``green``/``red``/``nir08``…, ``B03``…``B12``, ``scl``, ``qa_pixel``; Copernicus Data Space: ``B04_10m``,
``SCL_20m``), taken from ``sensors.Band``, else the bands' common names (STAC 1.0 ``eo:bands``, 1.1 ``bands``).
Items without a quality asset are accepted: every pixel counts as clear unless it is nodata (e.g. THEIA L3A).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import pystac
import rasterio.env
import shapely
from shapely.geometry import shape

from ...composite import MAX_SCENE_CLOUD_COVER
from ...errors import LeafError
from ...sensors import (
    B8A_VIEW_PROPERTIES,
    EARTH_RADIUS_KM,
    S2_BASELINE_ID_PROPERTIES,
    S2_BASELINE_PROPERTIES,
    S2_BOA_OFFSET_DN,
    S2_BOA_REMOVED_COLLECTIONS,
    S2_BOA_REMOVED_PROPERTIES,
    S2_GRANULE_METADATA_ASSETS,
    S2_GRANULE_VIEW_BAND_ID,
    S2_OFFSET_BASELINE,
    S2_OFFSET_SINCE,
    S2_VIEW_BAND,
    STAC_VIEW_AZIMUTH,
    VIEW_AZIMUTH_PROPERTIES,
    VIEW_ZENITH_PROPERTIES,
    QualityLayer,
    Sensor,
    mask_rule,
    members,
    sensor_for_platform,
)

ANGLE_ASSET_KEYS: dict[str, tuple[str, ...]] = {
    "sza": ("sza", "solar_zenith", "sun_zenith"),
    "saa": ("saa", "solar_azimuth", "sun_azimuth"),
    "vza": ("vza", "view_zenith", "sensor_zenith"),
    "vaa": ("vaa", "view_azimuth", "sensor_azimuth"),
}
ANGLE_DEFAULT_SCALE = 0.01
"""Per-pixel angle rasters without ``raster:bands`` scale are read as hundredths of a degree (Landsat C2)."""


class SceneError(LeafError):
    """A scene catalogue or item cannot be used (unreadable, missing bands or angles)."""


@dataclass(frozen=True)
class AssetRef:
    """One raster asset and the linear map from its DN to physical values."""

    href: str
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    signer: str = ""
    """How a reader signs ``href`` anew before each read (a key of ``reading.SIGNERS``: ``planetary-computer``),
    so that a token handed out at discovery never expires under a long job; empty: read as it is."""


@dataclass(frozen=True)
class Scene:
    id: str
    sensor: Sensor
    datetime: datetime
    cloud_cover: float
    footprint: shapely.Geometry
    """Lon/lat."""
    bands: dict[str, AssetRef]
    """Network input name → asset, in the sensor's band order."""
    mask: AssetRef | None
    mask_kind: str | None
    """``scl``, ``qa_pixel`` or None (no quality layer: nodata is the only mask)."""
    saturation: AssetRef | None
    sun_zenith: float
    sun_azimuth: float
    view_zenith: float
    view_azimuth: float
    angle_assets: dict[str, AssetRef] = field(default_factory=dict)
    """Per-pixel angles (``sza``/``saa``/``vza``/``vaa``, degrees after scaling) where the item provides them."""
    quality: tuple[tuple[QualityLayer, AssetRef], ...] = ()
    """The sensor's quality layers the item has, each with its asset (see ``sensors.QualityLayer``)."""
    water_test: bool = False
    """True when no quality layer of the item can flag inland water: the spectral water test applies."""

    def signed_by(self, signer: str) -> Scene:
        """The scene with every asset read through ``signer`` (see :attr:`AssetRef.signer`)."""
        def sign(ref: AssetRef) -> AssetRef:
            return replace(ref, signer=signer)

        return replace(
            self, bands={k: sign(r) for k, r in self.bands.items()},
            mask=sign(self.mask) if self.mask else None,
            saturation=sign(self.saturation) if self.saturation else None,
            angle_assets={k: sign(r) for k, r in self.angle_assets.items()},
            quality=tuple((q, sign(r)) for q, r in self.quality))

    @property
    def mask_rule(self) -> str:
        """Which rule masked this scene, for the outputs' metadata."""
        return mask_rule(self.sensor, [q.band for q, _ in self.quality], self.water_test)

    @property
    def date(self) -> date:
        return self.datetime.date()

    @property
    def day_of_year(self) -> int:
        return self.date.timetuple().tm_yday


# ----------------------------------------------------------------------------------------------------- loading


def load_items(source: str) -> list[pystac.Item]:
    """Every item of a STAC ItemCollection, catalog/collection (walked recursively) or single item file/URL."""
    try:
        doc = pystac.StacIO.default().read_json(source)
        obj = pystac.ItemCollection.from_file(source) if doc.get("type") == "FeatureCollection" \
            else pystac.read_file(source)
    except Exception as e:  # pystac raises many types (IO, JSON, STAC validation)
        raise SceneError(f"cannot read the scene catalogue {source!r}: {e}. Give the path or URL of a STAC "
                         "ItemCollection or catalog (request key 'scenes' or --scenes)") from e
    if isinstance(obj, pystac.Item):
        return [obj]
    if isinstance(obj, pystac.ItemCollection):
        for item in obj.items:  # relative asset hrefs are relative to the collection file
            if item.get_self_href() is None:
                item.set_self_href(source)
        return list(obj.items)
    if isinstance(obj, pystac.Catalog):
        return list(obj.get_items(recursive=True))
    raise SceneError(f"{source!r} is a STAC {type(obj).__name__}; expected an ItemCollection, catalog or item")


def sensor_of_item(item: pystac.Item) -> Sensor | None:
    """The LEAF sensor of an item from its ``platform`` or collection id (sensor facts: ``Sensor.platforms``)."""
    return sensor_for_platform(str(item.properties.get("platform") or ""), item.collection_id)


_RESOLUTION_SUFFIX = re.compile(r"(?P<key>.+)_(?P<metres>\d+)m", re.IGNORECASE)
"""Asset keys that name the band and its resolution (Copernicus Data Space: ``B04_10m``, ``B04_20m``, ``SCL_20m``)."""


def _common_names(asset: pystac.Asset) -> list[str]:
    """The asset's band common names: eo v1 ``eo:bands[].common_name``, or STAC 1.1 ``bands[].eo:common_name``."""
    fields = asset.extra_fields
    if fields.get("eo:bands"):
        return [str(b.get("common_name") or "") for b in fields["eo:bands"]]
    return [str(b.get("eo:common_name") or "") for b in fields.get("bands") or []]


def _is_jpeg2000(asset: pystac.Asset) -> bool:
    return "jp2" in (asset.media_type or "").lower() or \
        urlsplit(asset.href).path.lower().endswith((".jp2", ".j2k"))


def _preference(item: pystac.Item, key: str) -> tuple[bool, bool, float, str]:
    """Among assets of one band: the original sampling first (not ESA's resampled copies), then the finest."""
    asset = item.assets[key]
    m = _RESOLUTION_SUFFIX.fullmatch(key)
    metres = float(asset.extra_fields.get("gsd") or (m["metres"] if m else 0))
    return _is_jpeg2000(asset), "sampling:original" not in (asset.roles or []), metres, key


def _asset_key(item: pystac.Item, keys: Iterable[str], common_names: Sequence[str] = ()) -> str | None:
    """The item's asset for one band or layer: one of ``keys`` (case-insensitive, in their order), else a key of
    them with a resolution suffix, else the single-band asset labelled with one of ``common_names``."""
    keys = list(keys)
    by_lower = {k.lower(): k for k in item.assets}
    for k in keys:
        if k.lower() in by_lower:
            return by_lower[k.lower()]
    wanted = {k.lower() for k in keys}
    found = [k for k in item.assets if (m := _RESOLUTION_SUFFIX.fullmatch(k)) and m["key"].lower() in wanted]
    if not found and common_names:  # catalogues with other key conventions still label bands with common names
        found = [k for k, a in item.assets.items()
                 if len(names := _common_names(a)) == 1 and names[0] in common_names]
    # JPEG 2000 only where it is the product's format (Copernicus Data Space), never standing in for a missing
    # GeoTIFF: Earth Search's ``*-jp2`` twins are ESA's files in a requester-pays bucket, whose DN keep the BOA
    # offset the COGs had removed
    if any(_common_names(a) and not _is_jpeg2000(a) for a in item.assets.values()):
        found = [k for k in found if not _is_jpeg2000(item.assets[k])]
    return min(found, key=lambda k: _preference(item, k), default=None)


def _raster_band(asset: pystac.Asset) -> dict[str, Any]:
    """The asset's declared ``scale``, ``offset`` and ``nodata``: raster v1 ``raster:bands[0]``, or STAC 1.1
    (raster v2) ``raster:scale`` / ``raster:offset`` / ``nodata`` on the asset, its single band's taking
    precedence."""
    bands = asset.extra_fields.get("raster:bands") or []
    if bands:
        return dict(bands[0])
    out: dict[str, Any] = {}
    for fields in (asset.extra_fields, *(asset.extra_fields.get("bands") or [])[:1]):
        for key, name in (("raster:scale", "scale"), ("raster:offset", "offset"), ("nodata", "nodata")):
            if fields.get(key) is not None:
                out[name] = fields[key]
    return out


_BASELINE_IN_NAME = re.compile(r"_N(\d{2})\.?(\d{2})(?:_|$)")


def _parse_baseline(raw: Any) -> float | None:
    """``"05.09"`` / ``5.09`` / ``"N05.09"`` → 5.09; None for what is not a baseline (``"L3A (no BOA offset)"``)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    m = re.fullmatch(r"\s*N?(\d{1,2})\.(\d{2})\s*", str(raw))
    return float(f"{m.group(1)}.{m.group(2)}") if m else None


def s2_baseline(item: pystac.Item) -> tuple[float | None, str]:
    """The item's S2 processing baseline and where it was read (a property spelling, a name, or nothing)."""
    p = item.properties
    for key in S2_BASELINE_PROPERTIES:
        if p.get(key) is not None and (b := _parse_baseline(p[key])) is not None:
            return b, key
    for key in S2_BASELINE_ID_PROPERTIES:
        value = item.id if key == "id" else p.get(key)
        if value and (m := _BASELINE_IN_NAME.search(str(value))):
            return float(f"{m.group(1)}.{m.group(2)}"), key
    return None, ""


def boa_offset_removed(item: pystac.Item) -> bool:
    """The catalogue says it already subtracted the BOA offset from the DN (:data:`S2_BOA_REMOVED_PROPERTIES`, in
    :data:`S2_BOA_REMOVED_COLLECTIONS`)."""
    if item.collection_id is not None and item.collection_id not in S2_BOA_REMOVED_COLLECTIONS:
        return False
    return any(item.properties.get(k) is True for k in S2_BOA_REMOVED_PROPERTIES)


def has_boa_offset(item: pystac.Item, sensor: Sensor) -> bool:
    """Whether the item's DN carry the −1000 BOA offset: its stated baseline ≥ 04.00, else (no baseline in any
    known spelling) an acquisition on or after :data:`S2_OFFSET_SINCE`; never where the catalogue says it removed
    the offset from the DN (:func:`boa_offset_removed`)."""
    if not sensor.boa_offset_from_baseline or boa_offset_removed(item):
        return False
    baseline, _ = s2_baseline(item)
    if baseline is not None:
        return baseline >= S2_OFFSET_BASELINE
    when = item.datetime or (item.common_metadata.start_datetime if item.common_metadata else None)
    return when is not None and when.date() >= S2_OFFSET_SINCE


def _cloud_cover(item: pystac.Item) -> float:
    """``eo:cloud_cover`` in percent; 0 when the item does not say (the per-pixel masks still apply)."""
    return float(item.properties.get("eo:cloud_cover") or 0.0)


def reflectance_ref(item: pystac.Item, key: str, sensor: Sensor) -> AssetRef:
    """Asset → reflectance map: the item's ``raster:bands`` scale/offset, else the collection's known scaling."""
    asset = item.assets[key]
    rb = _raster_band(asset)
    if "scale" in rb or "offset" in rb:
        scale = float(rb.get("scale", 1.0))
        if "offset" in rb:
            offset = float(rb["offset"])
        else:  # a catalogue that states the scale only: the sensor's own offset goes with the sensor's own scale
            offset = sensor.dn_offset if math.isclose(scale, sensor.dn_scale, rel_tol=1e-9) else 0.0
    else:
        scale, offset = sensor.dn_scale, sensor.dn_offset
    boa = S2_BOA_OFFSET_DN * scale
    # The S2 BOA offset applies unless the item states an offset itself (Earth Search states −0.1) ...
    if "offset" not in rb and has_boa_offset(item, sensor):
        offset += boa
    # ... or the DN no longer carry it: Earth Search's stated −0.1 would then remove it a second time.
    elif "offset" in rb and sensor.boa_offset_from_baseline and boa_offset_removed(item) and \
            math.isclose(offset, boa, rel_tol=1e-9):
        offset = 0.0
    nodata = rb.get("nodata")
    return AssetRef(asset.get_absolute_href() or asset.href, scale, offset,
                    None if nodata is None else float(nodata))


def _plain_ref(item: pystac.Item, key: str, default_scale: float = 1.0) -> AssetRef:
    asset = item.assets[key]
    rb = _raster_band(asset)
    nodata = rb.get("nodata")
    return AssetRef(asset.get_absolute_href() or asset.href, float(rb.get("scale", default_scale)),
                    float(rb.get("offset", 0.0)), None if nodata is None else float(nodata))


def _angle(props: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        if props.get(k) is not None:
            return float(props[k])
    return None


def _granule_view_angles(item: pystac.Item) -> tuple[float, float] | None:
    """B8A mean viewing incidence zenith and azimuth from the item's S2 granule metadata asset (None: no such
    asset); :class:`SceneError` when it cannot be read or lacks them."""
    key = _asset_key(item, S2_GRANULE_METADATA_ASSETS)
    if key is None:
        return None
    href = item.assets[key].get_absolute_href() or item.assets[key].href
    try:
        return _granule_view_angles_cached(href)
    except Exception as e:  # network, XML and missing-element errors alike
        raise SceneError(f"item {item.id!r}: cannot take the view angles from asset {key!r} ({href}): {e}. The "
                         f"item has no mean incidence angles in its properties, so its granule metadata must give "
                         f"Mean_Viewing_Incidence_Angle bandId={S2_GRANULE_VIEW_BAND_ID} (B8A); check the asset or add "
                         "s2:mean_incidence_zenith_angle_b8a / _azimuth_angle_b8a to the item") from e


_GRANULE_ANGLES: dict[str, tuple[float, float]] = {}
"""B8A view angles per granule metadata file, keyed by its href without query or fragment: Planetary Computer
signs every search's hrefs anew (a SAS token in the query), and the token is not the file."""
_GRANULE_ANGLES_MAX = 4096


def _granule_view_angles_cached(href: str) -> tuple[float, float]:
    key = urlsplit(href)._replace(query="", fragment="").geturl()
    if key not in _GRANULE_ANGLES:
        if len(_GRANULE_ANGLES) >= _GRANULE_ANGLES_MAX:  # bounded: a national run sees tens of thousands
            _GRANULE_ANGLES.clear()
        _GRANULE_ANGLES[key] = _read_granule_view_angles(href)
    return _GRANULE_ANGLES[key]


def _read_granule_view_angles(href: str) -> tuple[float, float]:
    if href.startswith(("http://", "https://")):  # with the STAC API's retries (429, 5xx, connection errors)
        from .stac_api import api_io  # here: stac_api imports this module

        text = api_io().read_text(href)
    else:
        text = pystac.StacIO.default().read_text(href)
    root = ET.fromstring(text)
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Mean_Viewing_Incidence_Angle" and \
                el.get("bandId") == S2_GRANULE_VIEW_BAND_ID:
            values = {c.tag.rsplit("}", 1)[-1]: c.text for c in el}
            return float(values["ZENITH_ANGLE"] or ""), float(values["AZIMUTH_ANGLE"] or "")
    raise ValueError(f"no Mean_Viewing_Incidence_Angle with bandId={S2_GRANULE_VIEW_BAND_ID}")


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _view_band_angles(item: pystac.Item, sensor: Sensor) -> tuple[float | None, float | None]:
    """``view:incidence_angle`` / ``view:azimuth`` of the view band's own asset (Copernicus Data Space states each
    band's mean incidence angles on its asset)."""
    band = sensor.band(S2_VIEW_BAND)
    key = _asset_key(item, band.stac_keys, band.common_names)
    fields = item.assets[key].extra_fields if key else {}
    return _angle(fields, "view:incidence_angle"), _angle(fields, STAC_VIEW_AZIMUTH)


def scene_angles(item: pystac.Item, sensor: Sensor | None = None) -> tuple[float, float, float, float]:
    """Scene-mean sun zenith, sun azimuth, view zenith, view azimuth (degrees) from the item's properties, in the
    Earth Engine path's convention (see ``sensors.VIEW_ZENITH_PROPERTIES``).

    Sun: ``view:sun_elevation``/``view:sun_azimuth`` or ``s2:mean_solar_zenith``/``_azimuth`` (required).
    View zenith: the S2 B8A mean incidence zenith (a property, else the B8A asset's ``view:incidence_angle``),
    else the S2 mean incidence zenith, else ``view:incidence_angle``, else (S2) the B8A mean incidence zenith of
    the granule metadata asset, else ``view:off_nadir`` turned into the zenith at the ground (spherical Earth,
    the sensor's orbit altitude); nadir (0) when absent.
    View azimuth: the S2 B8A mean incidence azimuth (a property, else the B8A asset's ``view:azimuth``), else the
    S2 mean incidence azimuth, else ``view:azimuth`` (+ 180° except for S2: see ``sensors.STAC_VIEW_AZIMUTH``),
    else (S2) the granule metadata's B8A mean incidence azimuth; 0 when absent.
    """
    p = item.properties
    elev = _angle(p, "view:sun_elevation")
    sza = 90.0 - elev if elev is not None else _angle(p, "s2:mean_solar_zenith", "landsat:sun_zenith")
    saa = _angle(p, "view:sun_azimuth", "s2:mean_solar_azimuth")
    if sza is None or saa is None:
        raise SceneError(f"item {item.id!r} has no sun angles: add view:sun_elevation and view:sun_azimuth "
                         "(or s2:mean_solar_zenith/azimuth) to its properties")
    s2_metadata = sensor is not None and sensor.angle_source == "scene_metadata"
    band_vza, band_vaa = _view_band_angles(item, sensor) if s2_metadata and sensor else (None, None)
    vza = _first(_angle(p, B8A_VIEW_PROPERTIES[0]), band_vza, _angle(p, *VIEW_ZENITH_PROPERTIES))
    vaa = _first(_angle(p, B8A_VIEW_PROPERTIES[1]), band_vaa, _angle(p, *VIEW_AZIMUTH_PROPERTIES))
    if vaa is None and (stac_azimuth := _angle(p, STAC_VIEW_AZIMUTH)) is not None:
        vaa = stac_azimuth if s2_metadata else (stac_azimuth + 180.0) % 360.0
    if s2_metadata and (vza is None or vaa is None) and (granule := _granule_view_angles(item)) is not None:
        vza = granule[0] if vza is None else vza
        vaa = granule[1] if vaa is None else vaa
    off_nadir = _angle(p, "view:off_nadir")
    if vza is None and off_nadir is not None:
        ratio = 1.0 + (sensor.orbit_altitude_km if sensor else 0.0) / EARTH_RADIUS_KM
        vza = math.degrees(math.asin(min(1.0, ratio * math.sin(math.radians(off_nadir)))))
    return sza, saa, vza or 0.0, vaa or 0.0


def scene_from_item(item: pystac.Item, sensor: Sensor, inputs: Sequence[str] | None = None) -> Scene:
    """Build a :class:`Scene` with the bands a network set with ``inputs`` needs (None: the sensor's default
    sets'; see :meth:`Sensor.bands_for`); raises :class:`SceneError` naming what the item lacks."""
    bands: dict[str, AssetRef] = {}
    read: list[str] = []  # the keys of the assets the engine reads
    missing = []
    for band in sensor.bands_for(inputs):
        key = _asset_key(item, band.stac_keys, band.common_names)
        if key is None:
            missing.append(f"{band.net_input} ({'/'.join(band.stac_keys)})")
        else:
            bands[band.net_input] = reflectance_ref(item, key, sensor)
            read.append(key)
    if missing:
        raise SceneError(f"item {item.id!r} lacks assets for {', '.join(missing)}")
    mask_key = _asset_key(item, [sensor.mask_asset]) if sensor.mask_asset else None
    sat_key = _asset_key(item, [sensor.saturation_asset]) if sensor.saturation_asset else None
    angle_assets = {name: _plain_ref(item, k, ANGLE_DEFAULT_SCALE)
                    for name, keys in ANGLE_ASSET_KEYS.items() if (k := _asset_key(item, keys)) is not None}
    quality_keys = [(q, k) for q in sensor.quality if (k := _asset_key(item, q.stac_keys)) is not None]
    quality = tuple((q, _plain_ref(item, k)) for q, k in quality_keys)
    read += [k for k in (mask_key, sat_key, *(k for _, k in quality_keys)) if k is not None]
    _check_object_store(item, read)
    sza, saa, vza, vaa = scene_angles(item, sensor)
    if item.datetime is None:
        raise SceneError(f"item {item.id!r} has no datetime")
    return Scene(
        id=item.id, sensor=sensor, datetime=item.datetime, cloud_cover=_cloud_cover(item),
        footprint=shape(item.geometry) if item.geometry else shapely.box(*item.bbox),
        bands=bands, mask=_plain_ref(item, mask_key) if mask_key else None,
        mask_kind=sensor.mask_asset if mask_key else None,
        saturation=_plain_ref(item, sat_key) if sat_key else None,
        sun_zenith=sza, sun_azimuth=saa, view_zenith=vza, view_azimuth=vaa, angle_assets=angle_assets,
        quality=quality, water_test=not any(_flags_water(item, q) for q, _ in quality),
    )


def _storage_scheme(item: pystac.Item, key: str) -> dict[str, Any]:
    """Where the item stores asset ``key`` (storage extension): its first ``storage:refs`` scheme of the item's
    ``storage:schemes`` (v2, into which pystac migrates v1), else the asset's v1 fields; {} when it does not say."""
    fields = item.assets[key].extra_fields
    schemes = item.properties.get("storage:schemes") or {}
    for ref in fields.get("storage:refs") or []:
        if isinstance(schemes.get(ref), dict):
            return dict(schemes[ref])
    return {k.removeprefix("storage:"): v for k, v in fields.items()
            if k in ("storage:platform", "storage:region", "storage:requester_pays")}


def _check_object_store(item: pystac.Item, keys: Iterable[str]) -> None:
    """What GDAL must be told before it can read the item's ``s3://`` assets, said before any block fails on it:
    the endpoint of an object store other than AWS (Copernicus Data Space: ``eodata`` on
    eodata.dataspace.copernicus.eu), and consent to pay for reads of a requester-pays bucket (Earth Search's
    Landsat assets: USGS's ``usgs-landsat``)."""
    for key in keys:
        href = item.assets[key].href
        if not href.startswith("s3://"):
            continue
        scheme, bucket = _storage_scheme(item, key), urlsplit(href).netloc
        host = urlsplit(str(scheme.get("platform") or "")).netloc
        if host and not host.endswith("amazonaws.com") and not rasterio.env.get_gdal_config("AWS_S3_ENDPOINT"):
            raise SceneError(
                f"item {item.id!r}: asset {key!r} is in the S3 bucket {bucket!r} on {host} (its storage:schemes), "
                f"not on AWS. Set AWS_S3_ENDPOINT={host} and AWS_VIRTUAL_HOSTING=FALSE, with that store's keys in "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, in the environment of the engine and of every Dask "
                "worker")
        payer = str(rasterio.env.get_gdal_config("AWS_REQUEST_PAYER") or "")
        if scheme.get("requester_pays") is True and payer.lower() != "requester":
            region = f" ({scheme['region']})" if scheme.get("region") else ""
            raise SceneError(
                f"item {item.id!r}: asset {key!r} is in the requester-pays S3 bucket {bucket!r}{region}: every read "
                "is billed to the reader's AWS account. To agree, set AWS_REQUEST_PAYER=requester with AWS "
                "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) in the environment of "
                "the engine and of every Dask worker; or search a catalogue that serves the scenes free of charge "
                "(Planetary Computer's landsat-c2-l2, with the planetary-computer package installed)")


def _flags_water(item: pystac.Item, layer: QualityLayer) -> bool:
    """Whether this item's copy of ``layer`` marks inland water (the product defines the flag)."""
    if not layer.flags_water:
        return False
    if not layer.water_flag_if:
        return True
    props = {**item.properties, "collection": item.collection_id or ""}
    return any(re.fullmatch(rx, str(props.get(k, ""))) for k, rx in layer.water_flag_if)


# ---------------------------------------------------------------------------------------------------- discovery


def select_scenes(items: Sequence[pystac.Item], request_sensor: str, region: shapely.Geometry, start: date,
                  end: date, max_cloud_cover: float = MAX_SCENE_CLOUD_COVER,
                  inputs: Mapping[str, Sequence[str]] | None = None) -> list[Scene]:
    """Scenes of the request's sensor(s) that touch the region (lon/lat) within the inclusive window, by time.

    ``inputs``: each member sensor's network set inputs by sensor id (default: its default sets')."""
    wanted = {s.id for s in members(request_sensor)}
    inputs = inputs or {}
    out = []
    for item in items:
        sensor = sensor_of_item(item)
        if sensor is None or sensor.id not in wanted or item.datetime is None:
            continue
        if not start <= item.datetime.date() <= end:
            continue
        if _cloud_cover(item) > max_cloud_cover:
            continue
        foot = shape(item.geometry) if item.geometry else shapely.box(*item.bbox)
        if not foot.intersects(region):
            continue
        out.append(scene_from_item(item, sensor, inputs.get(sensor.id)))
    return sorted(out, key=lambda s: (s.datetime, s.id))


def discover(source: str, request_sensor: str, region: shapely.Geometry, start: date, end: date,
             max_cloud_cover: float = MAX_SCENE_CLOUD_COVER,
             inputs: Mapping[str, Sequence[str]] | None = None) -> list[Scene]:
    return select_scenes(load_items(source), request_sensor, region, start, end, max_cloud_cover, inputs)
