"""Scenes from a STAC API (Earth Search, Planetary Computer, Copernicus Data Space, any STAC API with item search).

A request names the API instead of a catalogue file: ``"scenes": "https://earth-search.aws.element84.com/v1"``
(any ``http(s)`` URL that does not end in ``.json``), or the deployment sets ``LEAF_STAC_API`` for requests
without ``scenes``. The collection searched for each sensor is the public catalogues' common id
(:data:`DEFAULT_COLLECTIONS`), overridden per sensor by the URL fragment ``#collections=S2_SR:my-s2,L8_SR:my-l8``
or by ``LEAF_STAC_COLLECTIONS`` in the same ``SENSOR:collection`` form.

The search asks the API for the job's collections, geometry and window (POST ``/search`` where the API offers
it; pystac-client follows the ``next`` links, page tokens included, ``PAGE_SIZE`` items each; connection errors and
429/502/503/504 answers are retried with backoff), and for the cloud-cover limit as a CQL2 filter where the API
implements the filter extension. Cloud cover, sensor and the exact footprint are then checked on every returned item by
:func:`scenes.select_scenes`, so an API without the filter extension gives the same scenes. Items are parsed by
:mod:`.scenes` (asset keys of Earth Search ``red``/``nir08``/``scl``, of Planetary Computer ``B04``/``SR_B4``/``SCL``
and of Copernicus Data Space ``B04_10m``/``SCL_20m`` alike, STAC 1.0 and 1.1 band fields, offsets, masks, angles).

Assets are read as Cloud-Optimised GeoTIFFs over HTTP with :data:`GDAL_HTTP_OPTIONS`: only the byte ranges of
the tiles a block needs are fetched. Copernicus Data Space's JPEG 2000 files are read from its S3 store
(``AWS_S3_ENDPOINT`` and its keys in the environment: README).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import pystac
import shapely
from shapely.geometry import mapping

from ...composite import MAX_SCENE_CLOUD_COVER
from ...sensors import SENSORS, members
from .scenes import Scene, SceneError, select_scenes

DEFAULT_COLLECTIONS: dict[str, str] = {s.id: s.stac_collections[0] for s in SENSORS.values() if s.stac_collections}
"""Each sensor's first catalogue collection id (a sensor fact): the ids Earth Search and Planetary Computer both
use for Sentinel-2 L2A and Landsat C2 L2."""

PAGE_SIZE = 100
"""Items per page asked of the API (``limit``); pystac-client follows the pages."""
MAX_RETRIES = 5
"""HTTP retries of each API request on connection errors and :data:`RETRY_STATUSES` answers."""
RETRY_BACKOFF = 1.0
"""Seconds before the second retry, doubled for each further one (the first is immediate; urllib3's ``Retry``);
an answer's ``Retry-After`` takes precedence."""
RETRY_STATUSES = (429, 502, 503, 504)
"""HTTP answers that are retried: rate limits and an unavailable server or gateway (not 500, which pgstac answers
for a filter it cannot apply: a retry would get the same)."""
SEARCH_HULL_VERTICES = 200
"""A region whose convex hull has more vertices than this is searched by its bounding box: the search needs only
a superset of the region (footprints are checked exactly on every item), and APIs limit request sizes."""
MAX_ITEMS = 10_000
"""A search returning more items than this is refused: the job's region or window is far larger than meant."""

GDAL_HTTP_OPTIONS: dict[str, str | int] = {
    # opening a COG must not list the remote "directory" or probe for side-car files
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.TIFF,.jp2,.JP2",  # JPEG 2000: Copernicus Data Space
    # adjacent tiles of one block come in one range request; HTTP/2 multiplexes the rest on one connection
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2TLS",  # HTTP/2 where TLS negotiates it; plain http stays 1.1 (no h2c upgrade)
    # a block re-reads the header and overlapping tiles of the same file (bands share the cache)
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": 64 * 1024 * 1024,
    "CPL_VSIL_CURL_CACHE_SIZE": 128 * 1024 * 1024,
    # transient HTTP failures (429, 5xx, resets) are retried by GDAL itself
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 1,
    "GDAL_HTTP_TIMEOUT": 60,
}
"""GDAL settings for reading COGs over HTTP (range requests); applied around every block read."""


def is_stac_api(source: str | None) -> bool:
    """A ``scenes`` value names a STAC API when it is an http(s) URL that is not a ``.json`` document."""
    if not source:
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and not parts.path.lower().endswith(".json")


def default_source() -> str | None:
    """The deployment's STAC API (``LEAF_STAC_API``) for requests that name no ``scenes``."""
    return os.environ.get("LEAF_STAC_API") or None


def _parse_collections(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        sensor, sep, coll = part.partition(":")
        if not sep or sensor.strip() not in SENSORS or not coll.strip():
            raise SceneError(f"{where}: {part!r} must be SENSOR:collection with SENSOR one of "
                             f"{', '.join(SENSORS)} (e.g. S2_SR:sentinel-2-l2a)")
        out[sensor.strip()] = coll.strip()
    return out


def api_and_collections(source: str) -> tuple[str, dict[str, str]]:
    """The API URL (fragment removed) and the collection id per sensor."""
    url, _, fragment = source.partition("#")
    collections = dict(DEFAULT_COLLECTIONS)
    env = os.environ.get("LEAF_STAC_COLLECTIONS")
    if env:
        collections.update(_parse_collections(env, "LEAF_STAC_COLLECTIONS"))
    if fragment:
        key, _, value = fragment.partition("=")
        if key != "collections":
            raise SceneError(f"scenes {source!r}: the URL fragment must be #collections=SENSOR:collection,...")
        collections.update(_parse_collections(value, f"scenes {source!r}"))
    return url, collections


SIGNED_APIS: dict[str, str] = {"planetarycomputer": "planetary-computer"}
"""APIs (a part of their host name) whose assets must be signed, and the signer (``reading.SIGNERS``)."""


def _signer(url: str) -> str:
    host = urlsplit(url).netloc
    return next((signer for part, signer in SIGNED_APIS.items() if part in host), "")


def _modifier(url: str) -> Callable[[Any], None] | None:
    """Planetary Computer hands out blob URLs that must be signed: its package signs the search's items (the
    granule metadata is read from them at discovery); other APIs' assets are public."""
    if _signer(url) != "planetary-computer":
        return None
    import planetary_computer

    return planetary_computer.sign_inplace  # type: ignore[no-any-return]


def _retry() -> Any:
    """Retries of every API request: connection errors and :data:`RETRY_STATUSES`, with exponential backoff (the
    server's ``Retry-After`` first); POST too, since an item search changes nothing."""
    from urllib3 import Retry

    return Retry(total=MAX_RETRIES, backoff_factor=RETRY_BACKOFF, status_forcelist=RETRY_STATUSES,
                 allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)


def api_io() -> Any:
    """The HTTP layer of every STAC request, API searches and item assets alike: :func:`_retry`, 60 s timeout."""
    from pystac_client.stac_api_io import StacApiIO

    return StacApiIO(max_retries=_retry(), timeout=60)


def cloud_filter(max_cloud_cover: float) -> dict[str, Any]:
    """The CQL2 filter of the cloud-cover rule of :func:`scenes.select_scenes`: at most ``max_cloud_cover``, or
    not stated (such items are kept and left to the per-pixel masks)."""
    prop = {"property": "eo:cloud_cover"}
    return {"op": "or", "args": [{"op": "<=", "args": [prop, max_cloud_cover]},
                                 {"op": "isNull", "args": [prop]}]}


def _refusal(url: str, wanted: list[str], e: Exception) -> SceneError:
    status = getattr(e, "status_code", None)
    if status is None:  # no HTTP answer at all, after the retries
        return SceneError(f"cannot search the STAC API {url!r}: no answer after {MAX_RETRIES} retries "
                          f"({str(e)[:200]}). Check the URL (scenes or LEAF_STAC_API) and the network")
    if status in RETRY_STATUSES:
        return SceneError(f"the STAC API {url!r} kept failing the search for collections {wanted} (HTTP {status} "
                          f"after {MAX_RETRIES} retries with backoff): {str(e)[:300]}. The API is overloaded or "
                          "down: retry the job later")
    return SceneError(f"the STAC API {url!r} refused the search for collections {wanted} (HTTP {status}): "
                      f"{str(e)[:300]}. Check the URL, the collection ids (#collections=SENSOR:collection) and that "
                      "the API supports item search")


def _search_geometry(region: shapely.Geometry) -> dict[str, Any]:
    hull = region.convex_hull
    return mapping(hull if shapely.get_num_coordinates(hull) <= SEARCH_HULL_VERTICES else region.envelope)


_CHECKED: set[tuple[str, str]] = set()
"""(API URL, collection id) pairs found to exist: checked once per process, not once per job (a national run
searches the same collections for every tile and period)."""
_CHECKED_LOCK = threading.Lock()


def _check_collections(client: Any, url: str, wanted: list[str], request_sensor: str) -> None:
    """An API answers a search of an unknown collection with no items (pgstac does): name the missing one."""
    missing = []
    for cid in wanted:
        with _CHECKED_LOCK:
            if (url, cid) in _CHECKED:
                continue
        found = client.get_collection(cid)
        if found is None or found.id != cid:  # pystac-client's fallback without /collections may return another
            missing.append(cid)
        else:
            with _CHECKED_LOCK:
                _CHECKED.add((url, cid))
    if missing:
        known = sorted(c.id for c in client.get_collections())
        raise SceneError(f"the STAC API {url!r} has no collection {', '.join(map(repr, missing))} (searched for "
                         f"sensor {request_sensor!r}); its collections are {known[:40]}. Name the right one with "
                         f"#collections={members(request_sensor)[0].id}:COLLECTION on the scenes URL or "
                         "LEAF_STAC_COLLECTIONS")


def search_items(source: str, request_sensor: str, region: shapely.Geometry, start: date, end: date,
                 max_cloud_cover: float | None = None) -> list[pystac.Item]:
    """Items of the sensor's collections that intersect ``region`` (lon/lat) within [start, end] (whole days, UTC).

    With ``max_cloud_cover``, an API that implements the filter extension (CQL2 JSON) leaves out the cloudier
    items itself (:func:`cloud_filter`); one that does not, or refuses the filter (an HTTP error other than
    :data:`RETRY_STATUSES`: pgstac answers 500 for an operator it lacks), is searched without it. Either way the
    caller checks cloud cover on every item."""
    from pystac_client import Client, ConformanceClasses
    from pystac_client.exceptions import APIError

    url, collections = api_and_collections(source)
    wanted = sorted({collections[s.id] for s in members(request_sensor) if s.id in collections})
    if not wanted:
        raise SceneError(f"no STAC collection is known for sensor {request_sensor!r}: add "
                         f"#collections={members(request_sensor)[0].id}:COLLECTION to the scenes URL")
    # a closed interval of whole days: the last microsecond of ``end`` is in, as in select_scenes
    window = f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999999Z"
    try:
        client = Client.open(url, stac_io=api_io(), modifier=_modifier(url))
        _check_collections(client, url, wanted, request_sensor)
        filters: list[dict[str, Any]] = [{}]
        if max_cloud_cover is not None and client.conforms_to(ConformanceClasses.FILTER):
            filters.insert(0, {"filter": cloud_filter(max_cloud_cover), "filter_lang": "cql2-json"})
        for i, extra in enumerate(filters):
            search = client.search(collections=wanted, intersects=_search_geometry(region), datetime=window,
                                   limit=PAGE_SIZE, max_items=MAX_ITEMS + 1, **extra)
            try:
                items = list(search.items())
                break
            except APIError as e:
                status = getattr(e, "status_code", None)
                if i + 1 < len(filters) and status is not None and status not in RETRY_STATUSES:
                    continue  # the API lists the filter extension but cannot apply this filter: search without
                raise
    except SceneError:
        raise
    except APIError as e:
        raise _refusal(url, wanted, e) from e
    except Exception as e:  # connection errors after the retries, non-STAC answers
        raise SceneError(f"cannot search the STAC API {url!r}: {type(e).__name__}: {str(e)[:300]}. Give the URL of "
                         "a STAC API landing page (scenes or LEAF_STAC_API)") from e
    if len(items) > MAX_ITEMS:
        raise SceneError(f"the STAC API {url!r} returned more than {MAX_ITEMS} items for one job: split the "
                         "region or the period")
    return items


def discover(source: str, request_sensor: str, region: shapely.Geometry, start: date, end: date,
             max_cloud_cover: float = MAX_SCENE_CLOUD_COVER,
             inputs: Mapping[str, Sequence[str]] | None = None) -> list[Scene]:
    """Scenes of one job from a STAC API; the same selection rules as a catalogue file."""
    items = search_items(source, request_sensor, region, start, end, max_cloud_cover)
    scenes = select_scenes(items, request_sensor, region, start, end, max_cloud_cover, inputs)
    # the search's tokens expire (Planetary Computer's within the hour): blocks sign each read anew
    signer = _signer(api_and_collections(source)[0])
    return [s.signed_by(signer) for s in scenes] if signer else scenes


def gdal_env(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """GDAL settings of a block read: the HTTP ones plus ``extra``."""
    return {**GDAL_HTTP_OPTIONS, **(extra or {})}
