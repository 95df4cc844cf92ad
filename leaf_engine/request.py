"""The production request: schema, defaults, legacy aliases, validation and expansion into jobs (SPEC §3).

``parse_request`` accepts the ancestor tool's dictionary (legacy spellings reported as deprecation warnings) and
either returns a normalised :class:`ProductionRequest` or raises :class:`RequestError` listing *every* problem —
key, offending value and rule. Nothing invalid is silently replaced by a default.
"""

from __future__ import annotations

import calendar
import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from odc.geo.geobox import GeoBox
from pydantic import BaseModel, ConfigDict
from pyproj import CRS
from pyproj.exceptions import CRSError

from . import grid, naming, products, sensors
from .decoding import clip, decode_json
from .errors import GridError, Problem, RequestError
from .limits import Limits, check_admission

SHIPPED_NETWORKS_DIR = Path(__file__).parent / "data" / "nets"
ALGORITHMS = ("SL2P", "SL2P-CCRS")
OUT_LOCATIONS = ("storage", "local")
RERUN_MODES = ("skip_existing", "overwrite")
EXTRA_PRODUCTS = {"qc": "QC", "date": "Date", "partition": "Partition"}
"""Accepted in ``prod_names`` for compatibility: QC and Date are always written, Partition with SL2P-CCRS."""

LEGACY_KEYS: dict[str, str] = {
    "spatial_scale": "resolution",
    "custom_region": "regions",
    "start_date": "start_dates",
    "stop_date": "end_dates",
    "end_date": "end_dates",
    "bucket": "GCS_bucket",
    "folder": "out_folder",
}
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
FOLDER_PART_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""The safe character set of ``out_folder``: '/'-separated parts of ASCII letters, digits, '_', '.', '-'. Anything
else (controls, NUL, DEL, spaces, bidi and zero-width marks, BOM, non-ASCII look-alikes) could hide or spoof a path."""
MAX_FOLDER_CHARS = 900
"""With region names and file names added, the object keys must still fit GCS_MAX_KEY_BYTES (checked)."""
MAX_REGION_NAME_CHARS = 100
GCS_MAX_KEY_BYTES = 1024
"""Cloud Storage's limit on an object name (UTF-8 bytes)."""
MAX_NETWORKS_CHARS = 1024
MAX_PROBLEMS = 100
"""A refusal lists at most this many problems (a hostile request can break one rule a million times)."""
_ISO_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CRS_CODE_RE = re.compile(r"[A-Za-z]{1,16}:[0-9]{1,10}")


class ProductionRequest(BaseModel):
    """A validated, normalised production request. Build it with :func:`parse_request`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensor: str
    year: int | None = None
    months: list[int] | None = None
    start_dates: list[date] | None = None
    end_dates: list[date] | None = None
    tile_names: list[str] | None = None
    regions: dict[str, dict[str, Any]] | None = None
    prod_names: list[str]
    resolution: int
    projection: str = grid.GRID_CRS
    out_location: Literal["storage", "local"] = "storage"
    GCS_bucket: str | None = None
    out_folder: str = ""
    algorithm: Literal["SL2P", "SL2P-CCRS"] = "SL2P"
    networks: str | None = None
    uncertainty: bool = False
    scenes: str | None = None
    landcover: str | None = None
    rerun: Literal["skip_existing", "overwrite"] = "skip_existing"
    max_eecu_hours: float | None = None
    """Refuse the request when its estimated Earth Engine compute exceeds this (leaf_engine.eecu)."""
    warnings: list[str] = []
    supplied_request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The normalised request as JSON-able data (what ``leaf validate`` prints), with its ``request_id``."""
        d = self.model_dump(mode="json", exclude={"supplied_request_id"})
        d["request_id"] = self.request_id
        return d

    def identity(self) -> dict[str, Any]:
        """What defines the request: the normalised fields without warnings. The rerun policy is part of it, so
        an ``overwrite`` request is a new run (new Earth Engine request ids) while its redeliveries are not."""
        d = self.model_dump(mode="json", exclude={"warnings", "supplied_request_id"})
        if d.get("max_eecu_hours") is None:  # unset: request ids stay those of requests without the key
            d.pop("max_eecu_hours", None)
        return d

    @property
    def request_id(self) -> str:
        if self.supplied_request_id:
            return self.supplied_request_id
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def windows(self) -> list[tuple[date, date]]:
        """Inclusive time windows: explicit dates, or each month (1st..last day), or 15 Jun–15 Sep."""
        if self.start_dates is not None and self.end_dates is not None:
            return list(zip(self.start_dates, self.end_dates, strict=True))
        assert self.year is not None and self.months is not None
        return [month_window(self.year, m) for m in self.months]

    def region_list(self) -> list[grid.Region]:
        return list(self._regions)

    @cached_property
    def _regions(self) -> tuple[grid.Region, ...]:
        if self.regions:
            return tuple(grid.region_from_geojson(n, g) for n, g in self.regions.items())
        return tuple(grid.region_for_tile(t) for t in self.tile_names or [])

    def region_geobox(self, region: grid.Region) -> GeoBox:
        """The pixel grid of one of the request's regions, computed once per request (projecting a long outline
        is the costly part of planning; every job, file and shard of the region shares the grid)."""
        cache = self._geoboxes
        if region.name not in cache:
            cache[region.name] = region.geobox(self.resolution, self.projection)
        return cache[region.name]

    @cached_property
    def _geoboxes(self) -> dict[str, GeoBox]:
        return {}

    def output_products(self) -> tuple[str, ...]:
        """Every product file a job writes, in a fixed order."""
        out = list(self.prod_names)
        if self.uncertainty:
            out += [f"{p}{products.UNCERTAINTY_SUFFIX}" for p in self.prod_names]
        out += ["QC", "Date"]
        if self.algorithm == "SL2P-CCRS":
            out.append("Partition")
        return tuple(out)

    def network_set(self, sensor_id: str) -> str:
        """Network set (id or path) for one member sensor."""
        return network_set_for(sensor_id, self.algorithm, self.networks)

    def jobs(self) -> list[Job]:
        return self._jobs

    @cached_property
    def _jobs(self) -> list[Job]:
        rid = self.request_id
        prods = self.output_products()
        return [
            Job(
                rid,
                self.sensor,
                self.algorithm,
                self.networks,
                region,
                start,
                end,
                self.resolution,
                self.projection,
                prods,
                self.out_folder,
                self.GCS_bucket,
                self,
            )
            for region in self.region_list()
            for start, end in self.windows()
        ]


@dataclass(frozen=True, eq=False)
class Job:
    """One region × time window of a request: yields the requested products + QC + Date."""

    request_id: str
    sensor: str
    algorithm: str
    networks: str | None
    region: grid.Region
    start: date
    end: date
    resolution: int
    crs: str
    products: tuple[str, ...]
    out_folder: str
    bucket: str | None
    owner: ProductionRequest | None = field(default=None, repr=False, compare=False)
    """The request the job belongs to: it holds the region's grid, computed once."""

    @cached_property  # read once per object when a run record is built: keep it a lookup
    def period(self) -> str:
        return naming.period_token(self.start, self.end)

    @property
    def year(self) -> int:
        return self.start.year

    @cached_property
    def job_id(self) -> str:
        """Unique within its request and deterministic: the STAC item id of its outputs."""
        return naming.item_id(self.region.name, self.year, self.period)

    def geobox(self) -> GeoBox:
        if self.owner is not None:
            return self.owner.region_geobox(self.region)
        return self.region.geobox(self.resolution, self.crs)

    def network_set(self, sensor_id: str) -> str:
        """Network set (id or path) for one member sensor."""
        return network_set_for(sensor_id, self.algorithm, self.networks)

    def output_names(self) -> list[naming.OutputName]:
        return [
            naming.OutputName(self.out_folder, self.region.name, self.year, self.period, p, self.resolution)
            for p in self.products
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "region": self.region.name,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "period": self.period,
            "year": self.year,
            "products": list(self.products),
            "resolution": self.resolution,
            "crs": self.crs,
        }


def network_set_for(sensor_id: str, algorithm: str, networks: str | None) -> str:
    """The request's own network file when it names one, else the shipped set of the sensor and algorithm."""
    return networks or sensors.SENSORS[sensor_id].networks[algorithm]


def month_window(year: int, month: int) -> tuple[date, date]:
    """A month is its 1st to its last day; a negative month is the peak season 15 Jun–15 Sep (inclusive)."""
    if month < 0:
        return date(year, *naming.SEASON_START), date(year, *naming.SEASON_END)
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


# ---------------------------------------------------------------------------------------------------------------
# Parsing and validation


def parse_request(
    data: Mapping[str, Any] | str | bytes, *, request_id: str | None = None, today: date | None = None,
    limits: Limits | None = None, service: bool = False, network_prefixes: tuple[str, ...] = (),
) -> ProductionRequest:
    """Validate and normalise a production dictionary (a mapping, or JSON text/bytes), then check it against the
    admission ``limits`` (default: :meth:`Limits.from_env`) before anything is planned.

    ``service=True`` is the cloud service's reading: no key may name a local file (``scenes``/``landcover`` are
    refused, ``networks`` must be a shipped set or a ``gs://`` URI under one of ``network_prefixes``) and the file
    system is never consulted.

    Raises :class:`RequestError` with every problem found.
    """
    limits = limits or Limits.from_env()
    if isinstance(data, (bytes, bytearray, str)):
        data = decode_json(data, max_bytes=limits.request_bytes)
    if not isinstance(data, Mapping):
        raise RequestError([Problem("(message)", clip(data), "must be a JSON object (the production dictionary)")])
    raw = dict(data)
    # A normalised request (to_dict) reads back: its output-only 'warnings' are dropped, its 'request_id' kept.
    raw.pop("warnings", None)
    embedded = raw.pop("request_id", None)
    if embedded is not None and request_id is not None and embedded != request_id:
        raise RequestError([Problem("request_id", embedded, f"differs from the message's request_id {request_id!r}")])
    validator = _Validator(raw, today or date.today(), service, network_prefixes)
    req = validator.run(request_id if request_id is not None else embedded)
    check_admission(req, limits)
    return req


_FIELDS = tuple(ProductionRequest.model_fields)
_PUBLIC_KEYS = tuple(k for k in _FIELDS if k not in ("warnings", "supplied_request_id"))


class _Validator:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, raw: dict[str, Any], today: date, service: bool = False,
                 network_prefixes: tuple[str, ...] = ()):
        self.raw = raw
        self.today = today
        self.service = service
        self.network_prefixes = network_prefixes
        self.problems: list[Problem] = []
        self.suppressed = 0
        self.warnings: list[str] = []
        self.v: dict[str, Any] = {}

    def bad(self, key: str, value: Any, rule: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(key, value, rule))
        else:
            self.suppressed += 1

    def run(self, request_id: str | None) -> ProductionRequest:
        data = self._resolve_keys()
        for key in _PUBLIC_KEYS:
            check: Callable[[Any], None] = getattr(self, f"_check_{key}")
            check(data.get(key, _MISSING))
        self._check_cross()
        if request_id is not None and not (isinstance(request_id, str) and _REQUEST_ID_RE.fullmatch(request_id)):
            self.bad("request_id", request_id, "must be a string of 1-128 ASCII letters, digits, '_', '.', '-' "
                     "starting with a letter or digit")
            request_id = None
        self._check_key_lengths(request_id)
        if self.suppressed:
            self.problems.append(Problem("(request)", f"{self.suppressed} more problem(s)", f"only the first "
                                         f"{MAX_PROBLEMS} problems are listed; fix these and validate again"))
        if self.problems:
            raise RequestError(self.problems)
        return ProductionRequest(**self.v, warnings=self.warnings, supplied_request_id=request_id)

    # -- keys ----------------------------------------------------------------------------------------------------
    def _resolve_keys(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        known_lower = {k.lower(): k for k in _PUBLIC_KEYS}
        for key, value in self.raw.items():
            if not isinstance(key, str):  # a Mapping given by a caller (JSON keys are always strings)
                self.bad(str(key), value, "keys must be strings")
            elif key in LEGACY_KEYS:
                new = LEGACY_KEYS[key]
                if new in self.raw or new in data:
                    self.bad(key, value, f"legacy key '{key}' conflicts with '{new}'; give only '{new}'")
                    continue
                self.warnings.append(f"'{key}' is deprecated: use '{new}'")
                data[new] = _legacy_value(key, value)
            elif key in _PUBLIC_KEYS:
                data[key] = value
            elif key.lower() in known_lower:
                self.bad(
                    key, value, f"unknown key; did you mean '{known_lower[key.lower()]}'? (keys are case-sensitive)"
                )
            else:
                close = difflib.get_close_matches(key, [*_PUBLIC_KEYS, *LEGACY_KEYS], n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(_PUBLIC_KEYS)}"
                self.bad(key, value, f"unknown key{hint}")
        return data

    # -- one checker per key (value is _MISSING when absent) ---------------------------------------------------------
    def _check_sensor(self, value: Any) -> None:
        if value is _MISSING:
            self.bad("sensor", None, f"required: one of {', '.join(sensors.REQUEST_SENSORS)}")
        elif not isinstance(value, str) or value.upper() not in sensors.REQUEST_SENSORS:
            self.bad("sensor", value, f"must be one of {', '.join(sensors.REQUEST_SENSORS)} (case-insensitive)")
        else:
            self.v["sensor"] = value.upper()

    def _check_year(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not _is_int(value):
            self.bad("year", value, "must be an integer year")
            return
        if not 1984 <= value <= self.today.year:
            self.bad("year", value, f"must be between 1984 and {self.today.year}")
            return
        self.v["year"] = int(value)

    def _check_months(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if _is_int(value):
            value = [value]
        if not isinstance(value, list) or not value or not all(_is_int(m) for m in value):
            self.bad(
                "months",
                value,
                "must be a non-empty list of month numbers 1..12, or one negative value (peak season 15 Jun-15 Sep)",
            )
            return
        negatives = [m for m in value if m < 0]
        if negatives and len(value) > 1:
            self.bad("months", value, "a negative value (peak season) must be the only entry")
            return
        for m in value:
            if m == 0 or m > 12:
                self.bad("months", m, "month must be 1..12 (or one negative value for 15 Jun-15 Sep)")
        if len(set(value)) != len(value):
            self.bad("months", value, "months must not repeat")
        if not any(p.key == "months" for p in self.problems):
            self.v["months"] = [-1] if negatives else sorted(value)

    def _check_start_dates(self, value: Any) -> None:
        self._check_dates("start_dates", value)

    def _check_end_dates(self, value: Any) -> None:
        self._check_dates("end_dates", value)

    def _check_dates(self, key: str, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, list) or not value:
            self.bad(key, value, "must be a non-empty list of ISO dates (YYYY-MM-DD), e.g. [\"2020-06-01\"]"
                     + (" (a single date is a list of one)" if isinstance(value, str) else ""))
            return
        out = []
        for d in value:
            try:
                # Strictly YYYY-MM-DD: fromisoformat alone also takes week dates ("2020-W27-3") and "20200701".
                out.append(date.fromisoformat(d) if isinstance(d, str) and _ISO_DATE_RE.fullmatch(d) else _raise())
            except ValueError:
                self.bad(key, d, "must be an ISO date YYYY-MM-DD")
                continue
            if out[-1] > self.today:
                self.bad(key, d, f"is in the future (today is {self.today.isoformat()}): no data exists yet")
        if len(out) == len(value) and not any(p.key == key for p in self.problems):
            self.v[key] = out

    def _check_tile_names(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
            self.bad("tile_names", value, "must be a non-empty list of tile names like ['tile42', 'tile42_411']"
                     + (" (a single tile is a list of one)" if isinstance(value, str) else ""))
            return
        ok = True
        for t in value:
            try:
                grid.tile(t)
            except GridError as e:
                self.bad("tile_names", t, str(e))
                ok = False
        if ok:
            unique = list(dict.fromkeys(value))
            if len(unique) != len(value):
                self.warnings.append("tile_names: repeated tiles listed once")
            self.v["tile_names"] = unique

    def _check_regions(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, dict) or not value:
            self.bad("regions", value, "must be an object {name: GeoJSON Polygon/MultiPolygon in lon/lat}")
            return
        ok = True
        for name, geom in value.items():
            if len(name) > MAX_REGION_NAME_CHARS:
                self.bad(f"regions.{clip(name, 40)}", name, f"region name must be at most {MAX_REGION_NAME_CHARS} "
                         "characters")
                ok = False
                continue
            if not naming.is_valid_region_name(name):
                self.bad(
                    f"regions.{name}",
                    name,
                    f"region name must match {naming.REGION_PATTERN} (it becomes part of file names)",
                )
                ok = False
            elif grid.is_tile_name(name):
                self.bad(f"regions.{name}", name, "region name must not be a tile name; use tile_names for tiles")
                ok = False
            crs_member = _crs_member(geom)
            if crs_member is not None:
                self.bad(f"regions.{name}", crs_member, "the GeoJSON 'crs' member is not supported (RFC 7946 has "
                         "no 'crs'): give WGS84 lon/lat coordinates and remove 'crs'")
                ok = False
                continue
            try:
                shape = grid.parse_region_geometry(geom)
            except GridError as e:
                self.bad(f"regions.{name}", _short(geom), str(e))
                ok = False
                continue
            xmin, _, xmax, _ = shape.bounds
            if xmax - xmin > 180:
                self.bad(f"regions.{name}", _short(geom), f"spans {xmax - xmin:.1f}° of longitude: coordinates are "
                         "read literally (lon -180..180), so a polygon crossing the antimeridian is read the long "
                         "way round; split it at ±180° into a MultiPolygon, or describe a smaller region")
                ok = False
        if ok:
            self.v["regions"] = {n: _geometry_of(g) for n, g in value.items()}

    def _check_prod_names(self, value: Any) -> None:
        if value is _MISSING or value is None:
            self.v["prod_names"] = list(products.BIOPHYSICAL)
            return
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            self.bad("prod_names", value, f"must be a list drawn from {', '.join(products.BIOPHYSICAL)}"
                     + (" (a single product is a list of one)" if isinstance(value, str) else ""))
            return
        canon = {p.lower(): p for p in products.BIOPHYSICAL}
        chosen: set[str] = set()
        for p in value:
            if p.lower() in canon:
                chosen.add(canon[p.lower()])
            elif p.lower() not in EXTRA_PRODUCTS:
                close = difflib.get_close_matches(p, [*products.BIOPHYSICAL, "QC", "date", "partition"], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.bad("prod_names", p, f"unknown product: use {', '.join(products.BIOPHYSICAL)}{hint}")
        if "partition" in [p.lower() for p in value]:
            self.v["_wants_partition"] = True
        if not chosen and not any(p.key == "prod_names" for p in self.problems):
            self.bad("prod_names", value, f"name at least one of {', '.join(products.BIOPHYSICAL)}")
        self.v["prod_names"] = [p for p in products.BIOPHYSICAL if p in chosen]

    def _check_resolution(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return  # default chosen in _check_cross once the sensor is known
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _is_int(value) or value <= 0:
            self.bad("resolution", value, "must be a positive integer number of metres")
        elif value > 100_000:
            self.bad("resolution", value, "must be at most 100000 m")
        else:
            self.v["resolution"] = value

    def _check_projection(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, str) or not _CRS_CODE_RE.fullmatch(value):
            # Only authority codes: WKT, PROJ strings and JSON may name grid files or be megabytes long.
            self.bad("projection", value, "must be an authority code like 'EPSG:3979'")
            return
        try:
            crs = CRS.from_user_input(value)
        except (CRSError, TypeError, ValueError):
            self.bad("projection", value, "unknown CRS: give one pyproj knows, e.g. 'EPSG:3979'")
            return
        if not (crs.is_projected or crs.is_geographic) or crs.is_geocentric or len(crs.axis_info) != 2:
            # A raster grid needs a 2D horizontal CRS: not a vertical, geocentric, 3D or compound one.
            self.bad("projection", value, "must be a 2D projected or geographic CRS (not vertical, geocentric, 3D "
                     "or compound), e.g. 'EPSG:3979' or 'EPSG:32618'")
            return
        auth = crs.to_authority()
        self.v["projection"] = f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()

    def _check_out_location(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        v = value.lower() if isinstance(value, str) else value
        if v == "drive":
            self.bad(
                "out_location",
                value,
                "Google Drive export is not supported: use 'storage' (with GCS_bucket) or 'local'",
            )
        elif v not in OUT_LOCATIONS:
            self.bad("out_location", value, f"must be one of {', '.join(OUT_LOCATIONS)}")
        else:
            self.v["out_location"] = v

    def _check_GCS_bucket(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        rule = gcs_bucket_problem(value)
        if rule:
            self.bad("GCS_bucket", value, rule)
        else:
            self.v["GCS_bucket"] = value

    def _check_out_folder(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, str):
            self.bad("out_folder", value, "must be a string (a folder path inside the bucket or output folder)")
            return
        folder = value.strip("/")
        parts = folder.split("/") if folder else []
        if any(p in (".", "..") for p in parts):
            self.bad("out_folder", value, "must be a relative path without '.' or '..' parts")
        elif len(folder) > MAX_FOLDER_CHARS or not all(FOLDER_PART_RE.fullmatch(p) for p in parts):
            self.bad(
                "out_folder",
                value,
                f"must be at most {MAX_FOLDER_CHARS} characters: '/'-separated non-empty parts of ASCII letters, "
                "digits, '_', '.' and '-' (no spaces, controls, wildcards or invisible/bidi characters)",
            )
        elif parts and parts[0] in (naming.RUNS_DIR, naming.ERRORS_DIR, naming.CATALOG_DIR):
            self.bad("out_folder", value, f"must not start with the reserved folder '{parts[0]}'")
        else:
            self.v["out_folder"] = folder

    def _check_algorithm(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        norm = {a.lower().replace("_", "-"): a for a in ALGORITHMS}  # value may be any JSON type: compare as str
        key = value.lower().replace("_", "-") if isinstance(value, str) else None
        if key not in norm:
            self.bad("algorithm", value, f"must be one of {', '.join(ALGORITHMS)}")
        else:
            self.v["algorithm"] = norm[key]

    def _check_networks(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        shipped = sorted(p.stem for p in SHIPPED_NETWORKS_DIR.glob("*.json"))
        if not isinstance(value, str) or not value or len(value) > MAX_NETWORKS_CHARS or "\x00" in value:
            self.bad("networks", value, "must be a shipped network set id or a path/URI of a sl2p-nets/1 JSON file "
                     f"(at most {MAX_NETWORKS_CHARS} characters)")
        elif self.service:
            # The service never opens a file a message names: shipped ids, or objects under an allowed prefix.
            if value in shipped:
                self.v["networks"] = value
            elif value.startswith("gs://") and any(_under(value, p) for p in self.network_prefixes):
                self.v["networks"] = value
            else:
                where = (f"a gs:// URI under {', '.join(self.network_prefixes)}" if self.network_prefixes
                         else "no gs:// URIs are allowed (LEAF_ALLOWED_NETWORKS is not set)")
                self.bad("networks", value, f"the service accepts a shipped set ({', '.join(shipped)}) or {where}")
        elif not (
            value.startswith(("gs://", "http://", "https://"))
            or (SHIPPED_NETWORKS_DIR / f"{value}.json").exists()
            or _is_file(value)
        ):
            self.bad("networks", value, f"no such file or shipped set; shipped sets: {', '.join(shipped)}")
        else:
            self.v["networks"] = value

    def _check_uncertainty(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, bool):
            self.bad("uncertainty", value, "must be true or false")
        else:
            self.v["uncertainty"] = value

    def _check_max_eecu_hours(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
            self.bad("max_eecu_hours", value, "must be a positive number of EECU-hours (or omit the key)")
        else:
            self.v["max_eecu_hours"] = float(value)

    def _check_scenes(self, value: Any) -> None:
        self._check_location("scenes", value, "a STAC ItemCollection or catalog")

    def _check_landcover(self, value: Any) -> None:
        self._check_location("landcover", value, "a NALCMS land-cover raster (classes 1-19)")

    def _check_location(self, key: str, value: Any, what: str) -> None:
        if value is _MISSING or value is None:
            return
        if self.service:
            self.bad(key, value, f"'{key}' is a key of the local engine ({what}); the cloud service reads its "
                     "inputs from Earth Engine: remove it")
        elif not isinstance(value, str) or not value or len(value) > 4096:
            self.bad(key, value, f"must be a path or URL of {what}")
        else:
            self.v[key] = value

    def _check_rerun(self, value: Any) -> None:
        if value is _MISSING or value is None:
            return
        if not isinstance(value, str) or value not in RERUN_MODES:
            self.bad("rerun", value, f"must be one of {', '.join(RERUN_MODES)}")
        else:
            self.v["rerun"] = value

    def _check_key_lengths(self, request_id: str | None) -> None:
        """The longest object key the request can make must fit Cloud Storage's 1,024-byte limit."""
        folder = self.v.get("out_folder", "")
        names = list(self.v.get("regions") or {}) or list(self.v.get("tile_names") or [])
        if not names:
            return
        region = max(names, key=len)
        product = max(products.all_product_tokens(), key=len)
        longest = naming.OutputName(folder, region, 2000, "20000101-20001231", product, 100_000, (0, 0)).key()
        rid = request_id or "x" * 20
        keys = [longest, naming.item_key(folder, region, 2000, "20000101-20001231"),
                naming.run_record_key(folder, rid), naming.collection_key(folder, rid)]
        worst = max(keys, key=lambda k: len(k.encode()))
        if len(worst.encode()) > GCS_MAX_KEY_BYTES:
            self.bad("out_folder", folder, f"object keys such as {clip(worst, 80)!r} would be {len(worst.encode())} "
                     f"bytes; Cloud Storage allows {GCS_MAX_KEY_BYTES}: use a shorter out_folder or region names")

    # -- rules across keys ---------------------------------------------------------------------------------------
    def _check_cross(self) -> None:
        raw_has = {k for k in _PUBLIC_KEYS if self.raw.get(k) is not None} | {
            LEGACY_KEYS[k] for k in self.raw if k in LEGACY_KEYS and self.raw[k] is not None
        }
        sensor = self.v.get("sensor")
        self._check_time(raw_has, sensor)
        self._check_where(raw_has)
        if sensor and "resolution" not in raw_has:
            self.v["resolution"] = sensors.members(sensor)[0].default_resolution
        self._check_resolution_fits()
        if self.v.get("out_location", "storage") == "storage" and "GCS_bucket" not in raw_has:
            self.bad("GCS_bucket", None, "required when out_location is 'storage' (or set out_location to 'local')")
        algorithm = self.v.get("algorithm", "SL2P")
        if sensor and algorithm == "SL2P-CCRS" and "networks" not in raw_has:
            missing = [m.id for m in sensors.members(sensor) if "SL2P-CCRS" not in m.networks]
            if missing:
                self.bad(
                    "algorithm",
                    algorithm,
                    f"no SL2P-CCRS networks are shipped for {', '.join(missing)}: use SL2P or give 'networks'",
                )
        if sensor and "networks" in self.v and (problem := sensors.network_set_problem(sensor, self.v["networks"])):
            self.bad("networks", self.v["networks"], problem)
        if "landcover" in self.v and algorithm != "SL2P-CCRS":
            self.warnings.append("landcover is only used by algorithm SL2P-CCRS; ignored")
        if self.v.pop("_wants_partition", False) and algorithm != "SL2P-CCRS":
            self.warnings.append("prod_names: 'partition' is only written with algorithm SL2P-CCRS; ignored")

    def _check_time(self, raw_has: set[str], sensor: str | None) -> None:
        has_dates = "start_dates" in raw_has or "end_dates" in raw_has
        starts, ends = self.v.get("start_dates"), self.v.get("end_dates")
        if has_dates:
            if ("start_dates" in raw_has) != ("end_dates" in raw_has):
                missing = "end_dates" if "start_dates" in raw_has else "start_dates"
                self.bad(missing, None, "start_dates and end_dates must be given together")
            elif starts is not None and ends is not None:
                if len(starts) != len(ends):
                    self.bad(
                        "end_dates",
                        [d.isoformat() for d in ends],
                        f"must have as many entries as start_dates ({len(starts)}), got {len(ends)}",
                    )
                seen: set[tuple[date, date]] = set()
                for s, e in zip(starts, ends, strict=False):
                    if e < s:
                        self.bad("end_dates", e.isoformat(), f"ends before its start date {s.isoformat()}")
                    if (s, e) in seen:
                        self.bad("start_dates/end_dates", f"{s.isoformat()}..{e.isoformat()}",
                                 "the same window is listed twice; list each window once")
                    seen.add((s, e))
                if sensor:
                    for d in [*starts, *ends]:
                        self._check_in_life("start_dates/end_dates", d.year, sensor, d.isoformat())
            if "months" in raw_has:
                self.warnings.append("months ignored: start_dates/end_dates override them")
                self.v.pop("months", None)
            if "year" in raw_has:
                self.v.pop("year", None)
                self.warnings.append("year ignored: start_dates/end_dates override it")
        else:
            if "year" not in raw_has:
                self.bad("year", None, "required unless start_dates/end_dates are given")
            if "months" not in raw_has:
                self.bad("months", None, "required unless start_dates/end_dates are given: list of 1..12 or -1")
            if sensor and "year" in self.v:
                self._check_in_life("year", self.v["year"], sensor, self.v["year"])

    def _check_in_life(self, key: str, year: int, sensor: str, shown: Any) -> None:
        first, last = sensors.sensor_years(sensor)
        last_shown = last if last is not None else self.today.year
        if year < first or year > last_shown:
            self.bad(key, shown, f"outside the life of {sensor} ({first}..{last if last else 'today'})")

    def _check_where(self, raw_has: set[str]) -> None:
        if "regions" in raw_has and "tile_names" in raw_has:
            self.warnings.append("tile_names ignored: regions override them")
            self.v.pop("tile_names", None)
        elif "regions" not in raw_has and "tile_names" not in raw_has:
            self.bad("tile_names", None, "give tile_names (CCRS tiles) or regions (GeoJSON polygons)")

    def _check_resolution_fits(self) -> None:
        res = self.v.get("resolution")
        if res is None or self.v.get("projection", grid.GRID_CRS) != grid.GRID_CRS:
            return
        for t in self.v.get("tile_names") or []:
            if grid.tile(t).size % res:
                self.bad(
                    "resolution",
                    res,
                    f"must divide {t}'s side of {grid.tile(t).size:.0f} m "
                    "(e.g. 10, 20, 30, 60, 100, 250, 500, 1000) so tiles align",
                )
                return


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _raise() -> date:
    raise ValueError


def _crs_member(geojson: Any) -> Any:
    """The 'crs' member of a GeoJSON object or of a Feature's geometry, when there is one."""
    if not isinstance(geojson, dict):
        return None
    if "crs" in geojson:
        return geojson["crs"]
    geometry = geojson.get("geometry")
    return geometry.get("crs") if isinstance(geometry, dict) else None


def _under(uri: str, prefix: str) -> bool:
    """Is ``uri`` an object under ``prefix`` (``gs://bucket`` or ``gs://bucket/folder``), without '..' tricks?"""
    base = prefix.rstrip("/") + "/"
    rest = uri[len(base):]
    return uri.startswith(base) and bool(rest) and not any(p in ("", ".", "..") for p in rest.split("/"))


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> Any:
    s = json.dumps(v, default=str)
    return v if len(s) <= 120 else s[:117] + "..."


def _geometry_of(geojson: dict[str, Any]) -> dict[str, Any]:
    return geojson["geometry"] if geojson.get("type") == "Feature" else geojson


def _legacy_value(key: str, value: Any) -> Any:
    """Adapt a legacy value to its new key's shape (single values become lists, one region gets a name)."""
    if key in ("start_date", "stop_date", "end_date") and isinstance(value, str):
        return [value]
    if key == "custom_region" and isinstance(value, dict) and "type" in value:
        return {"custom_region": value}
    return value


def gcs_bucket_problem(name: Any) -> str | None:
    """The Cloud Storage bucket naming rule ``name`` breaks, or None."""
    if not isinstance(name, str):
        return "must be a string"
    rule = (
        "must be 3-63 characters (222 with dots, 63 per dot-separated part) of lowercase letters, digits, "
        "'-', '_' and '.', start and end with a letter or digit, not look like an IP address, not start "
        "with 'goog' nor contain 'google'"
    )
    parts = name.split(".")
    if not (3 <= len(name) <= (222 if "." in name else 63)) or any(not 1 <= len(p) <= 63 for p in parts):
        return rule
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*[a-z0-9]", name) or ".." in name:
        return rule
    try:
        ipaddress.ip_address(name)
        return rule
    except ValueError:
        pass
    if name.startswith("goog") or "google" in name or re.search(r"g[o0]{2}g[l1]e", name):
        return rule
    return None
