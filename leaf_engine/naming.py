"""Output object names — the one place that both writes and parses them (SPEC §6).

``{out_folder}/{region}/{year}/{region}_{year}_{period}_{product}_{res}m[-{row}-{col}].tif``

period: ``Jan``..``Dec``, ``season`` (15 Jun–15 Sep) or ``YYYYMMDD-YYYYMMDD``; the optional suffix is
Earth Engine's shard offset (pixel row and column, 10 digits each) when it splits a large export.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, replace
from datetime import date

from .errors import NamingError
from .products import all_product_tokens

MONTHS: tuple[str, ...] = tuple(calendar.month_abbr[m] for m in range(1, 13))
SEASON = "season"
SEASON_START = (6, 15)
SEASON_END = (9, 15)
SHARD_DIGITS = 10
REGION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_REGION_RE = re.compile(rf"^{REGION_PATTERN}$")
_PERIOD = rf"(?:{'|'.join(MONTHS)}|{SEASON}|\d{{8}}-\d{{8}})"
_FILE_RE = re.compile(
    rf"^(?P<region>{REGION_PATTERN})_(?P<year>\d{{4}})_(?P<period>{_PERIOD})_(?P<product>[A-Za-z]+)"
    rf"_(?P<res>[1-9]\d*)m(?:-(?P<row>\d{{{SHARD_DIGITS}}})-(?P<col>\d{{{SHARD_DIGITS}}}))?\.tif$"
)
RUNS_DIR = "_runs"
ERRORS_DIR = "_errors"
CATALOG_DIR = "_stac"


def is_valid_region_name(name: str) -> bool:
    return isinstance(name, str) and bool(_REGION_RE.fullmatch(name))  # fullmatch: '$' would allow a final '\n'


def period_token(start: date, end: date) -> str:
    """Token of an inclusive window: a whole calendar month → ``Jan``; 15 Jun–15 Sep → ``season``."""
    if start.year == end.year:
        if start.day == 1 and start.month == end.month and end.day == calendar.monthrange(end.year, end.month)[1]:
            return MONTHS[start.month - 1]
        if (start.month, start.day) == SEASON_START and (end.month, end.day) == SEASON_END:
            return SEASON
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass(frozen=True)
class OutputName:
    """A parsed output object name. ``str(name)`` / :meth:`key` make it; :meth:`parse` reads it back."""

    out_folder: str
    region: str
    year: int
    period: str
    product: str
    resolution: int
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not is_valid_region_name(self.region):
            raise NamingError(f"region name {self.region!r} must match {REGION_PATTERN}")
        if self.product not in all_product_tokens():
            raise NamingError(f"unknown product token {self.product!r}; known: {', '.join(all_product_tokens())}")
        if not re.fullmatch(_PERIOD, self.period):
            raise NamingError(f"period {self.period!r} must be Jan..Dec, season or YYYYMMDD-YYYYMMDD")
        if not 1000 <= self.year <= 9999 or self.resolution <= 0:
            raise NamingError(f"year {self.year} / resolution {self.resolution} out of range")

    @property
    def stem(self) -> str:
        """File name without the shard suffix and extension (Earth Engine's ``fileNamePrefix`` tail)."""
        return f"{self.region}_{self.year}_{self.period}_{self.product}_{self.resolution}m"

    @property
    def prefix(self) -> str:
        """Object path without shard suffix and ``.tif``: what Earth Engine takes as ``fileNamePrefix``."""
        return _join(self.out_folder, self.region, str(self.year), self.stem)

    @property
    def item_id(self) -> str:
        """STAC item id: one item per region × period."""
        return item_id(self.region, self.year, self.period)

    def key(self) -> str:
        shard = "" if self.shard is None else f"-{self.shard[0]:0{SHARD_DIGITS}d}-{self.shard[1]:0{SHARD_DIGITS}d}"
        return f"{self.prefix}{shard}.tif"

    __str__ = key

    def quicklook_key(self) -> str:
        """The quicklook PNG of a product file: next to it, same name, ``.png``."""
        return self.key().removesuffix(".tif") + ".png"

    def with_shard(self, row: int, col: int) -> OutputName:
        return replace(self, shard=(row, col))

    def unsharded(self) -> OutputName:
        return replace(self, shard=None)

    @classmethod
    def parse(cls, key: str) -> OutputName:
        """Parse an object name; raises :class:`NamingError` for anything that is not a LEAF output."""
        parts = key.strip("/").split("/")
        if len(parts) < 3:
            raise NamingError(f"{key!r}: expected {{out_folder}}/{{region}}/{{year}}/{{file}}.tif")
        region_dir, year_dir, fname = parts[-3:]
        m = _FILE_RE.match(fname)
        if not m:
            raise NamingError(
                f"{key!r}: file name does not follow {{region}}_{{year}}_{{period}}_{{product}}_{{res}}m.tif"
            )
        if m["region"] != region_dir or m["year"] != year_dir:
            raise NamingError(f"{key!r}: folder {region_dir}/{year_dir} does not match the file name")
        if m["product"] not in all_product_tokens():
            raise NamingError(f"{key!r}: unknown product {m['product']!r}")
        shard = (int(m["row"]), int(m["col"])) if m["row"] is not None else None
        return cls("/".join(parts[:-3]), m["region"], int(m["year"]), m["period"], m["product"], int(m["res"]), shard)


def item_id(region: str, year: int, period: str) -> str:
    return f"{region}_{year}_{period}"


def run_record_key(out_folder: str, request_id: str) -> str:
    return _join(out_folder, RUNS_DIR, f"{request_id}.json")


def error_record_key(out_folder: str, error_id: str, message_id: str | None = None) -> str:
    """``{out_folder}/_errors/{error_id}-{message_id}.json``: one record per message (``message_id`` already made
    safe for an object name); without ``message_id``, the old one-per-request-id name."""
    name = f"{error_id}-{message_id}" if message_id else error_id
    return _join(out_folder, ERRORS_DIR, f"{name}.json")


def error_records_prefix(out_folder: str, error_id: str) -> str:
    """What to list to find the error records of ``error_id`` (a request id, or ``msg-<hash>``)."""
    return _join(out_folder, ERRORS_DIR, f"{error_id}-")


def item_key(out_folder: str, region: str, year: int, period: str) -> str:
    return _join(out_folder, CATALOG_DIR, region, f"{item_id(region, year, period)}.json")


def collection_key(out_folder: str, request_id: str) -> str:
    return _join(out_folder, CATALOG_DIR, f"collection-{request_id}.json")
