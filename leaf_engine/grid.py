"""The CCRS 900 km tile grid (EPSG:3979), its sub-tiles, and custom regions — all computed from the grid rule.

Tiles are 900 km squares: column edges x = X_WEST + (C−1)·TILE_SIZE, row edges y_top = Y_NORTH − (R−1)·TILE_SIZE,
named ``tile<R><C>`` (R = row from the north, C = column from the west). Sub-tiles ``_4ij`` split a tile 2×2 and
``_9ij`` 3×3 (i = sub-row from the north, j = sub-column from the west). A tile's pixel grid is anchored at its NW
corner, so tiles mosaic without resampling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import shapely
from affine import Affine
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import Polygon, box, mapping, shape

from .errors import GridError

GRID_CRS = "EPSG:3979"
LONLAT = "EPSG:4326"
TILE_SIZE = 900_000.0
X_WEST = -2_600_000.0
Y_NORTH = 3_914_920.0
"""Known to ±15 m from the ancestor's published polygons."""
PRODUCTION_TILES: tuple[str, ...] = tuple(
    f"tile{rc}" for rc in "13 14 21 22 23 24 25 31 32 33 34 35 36 41 42 43 44 45 46 47 52 53 54 55 56 57 65".split()
)
LANDMASS_TILES: tuple[str, ...] = tuple(t for t in PRODUCTION_TILES if t != "tile57")
"""The 26 tiles covering the Canadian landmass."""
SUBDIVISIONS = {"4": 2, "9": 3}
_NAME_RE = re.compile(r"^tile(?P<r>\d)(?P<c>\d)(?:_(?P<k>[49])(?P<i>\d)(?P<j>\d))?$")
_EDGE_POINTS = 64  # vertices per tile edge for lon/lat polygons: LCC edges are curves in lon/lat
_METRES_PER_DEGREE = 111_319.49


@dataclass(frozen=True)
class Tile:
    """A tile or sub-tile of the CCRS grid."""

    name: str
    bounds: tuple[float, float, float, float]
    """xmin, ymin, xmax, ymax in EPSG:3979 metres."""

    @property
    def size(self) -> float:
        return self.bounds[2] - self.bounds[0]

    @property
    def parent(self) -> str:
        return self.name.split("_")[0]

    def polygon(self) -> Polygon:
        """The tile as a polygon in EPSG:3979."""
        return box(*self.bounds)

    def lonlat_polygon(self, points_per_edge: int = _EDGE_POINTS) -> Polygon:
        """The tile outline in lon/lat, edges densified (they are curves in lon/lat)."""
        ring = shapely.segmentize(self.polygon(), self.size / points_per_edge)
        xs, ys = _to_lonlat().transform(*ring.exterior.coords.xy)
        return Polygon(zip(xs, ys, strict=True))

    def corners_lonlat(self) -> list[tuple[float, float]]:
        """NW, NE, SE, SW corners in lon/lat."""
        x0, y0, x1, y1 = self.bounds
        xs, ys = _to_lonlat().transform([x0, x1, x1, x0], [y1, y1, y0, y0])
        return list(zip(xs, ys, strict=True))

    def geobox(self, resolution: float, crs: str = GRID_CRS) -> GeoBox:
        """Pixel grid of the tile at ``resolution`` metres.

        In EPSG:3979 it is anchored at the tile's NW corner and the resolution must divide the tile side, so
        neighbouring tiles share pixel edges. In another CRS it covers the tile's footprint on that CRS's own
        resolution-aligned grid (so tiles still align with each other).
        """
        _check_resolution(resolution)
        if CRS(crs) != CRS(GRID_CRS):
            return footprint_geobox(self.lonlat_polygon(), resolution, crs)
        n = self.size / resolution
        if abs(n - round(n)) > 1e-9:
            raise GridError(
                f"resolution {resolution} m does not divide {self.name}'s side of {self.size:.0f} m; "
                f"use a divisor such as 10, 20, 30, 60, 100, 250, 500 or 1000"
            )
        x0, _, _, y1 = self.bounds
        return GeoBox((round(n), round(n)), Affine(resolution, 0, x0, 0, -resolution, y1), GRID_CRS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bounds_epsg3979": list(self.bounds),
            "lonlat_polygon": mapping(self.lonlat_polygon(points_per_edge=8)),
        }


@cache
def _to_lonlat() -> Transformer:
    return Transformer.from_crs(GRID_CRS, LONLAT, always_xy=True)


@cache
def lonlat_to(crs: str) -> Transformer:
    """The lon/lat → ``crs`` transformer, one per CRS for the process (making one takes ≈ 60 ms; pyproj ≥ 3.1
    transformers are thread-safe)."""
    return Transformer.from_crs(LONLAT, crs, always_xy=True)


def _project(geometry_lonlat: shapely.Geometry, crs: str) -> shapely.Geometry:
    return shapely.transform(geometry_lonlat, lonlat_to(crs).transform, interleaved=False)


def _check_resolution(resolution: float) -> None:
    if not (isinstance(resolution, (int, float)) and math.isfinite(resolution) and resolution > 0):
        raise GridError(f"resolution must be a positive number of metres, got {resolution!r}")


def tile(name: str) -> Tile:
    """A production tile (``tile42``) or sub-tile (``tile42_412``, ``tile42_933``) by name."""
    m = _NAME_RE.match(name)
    if not m or f"tile{m['r']}{m['c']}" not in PRODUCTION_TILES:
        raise GridError(
            f"unknown tile {name!r}: use one of {', '.join(PRODUCTION_TILES)}, optionally with a "
            "sub-tile suffix _4ij (i, j in 1..2) or _9ij (i, j in 1..3)"
        )
    r, c = int(m["r"]), int(m["c"])
    x0 = X_WEST + (c - 1) * TILE_SIZE
    y1 = Y_NORTH - (r - 1) * TILE_SIZE
    if m["k"] is None:
        return Tile(name, (x0, y1 - TILE_SIZE, x0 + TILE_SIZE, y1))
    n = SUBDIVISIONS[m["k"]]
    i, j = int(m["i"]), int(m["j"])
    if not (1 <= i <= n and 1 <= j <= n):
        raise GridError(f"unknown sub-tile {name!r}: _{m['k']}ij needs i and j in 1..{n}")
    step = TILE_SIZE / n
    sx0, sy1 = x0 + (j - 1) * step, y1 - (i - 1) * step
    return Tile(name, (sx0, sy1 - step, sx0 + step, sy1))


def is_tile_name(name: str) -> bool:
    try:
        tile(name)
    except GridError:
        return False
    return True


def subtile_names(parent: str) -> list[str]:
    tile(parent)
    return [f"{parent}_{k}{i}{j}" for k, n in SUBDIVISIONS.items() for i in range(1, n + 1) for j in range(1, n + 1)]


def production_tiles(subtiles: bool = False) -> list[Tile]:
    names: list[str] = []
    for t in PRODUCTION_TILES:
        names.append(t)
        if subtiles:
            names.extend(subtile_names(t))
    return [tile(n) for n in names]


def tiles_for(geometry_lonlat: shapely.Geometry | tuple[float, float], subtiles: bool = False) -> list[str]:
    """Names of the production tiles (or also sub-tiles) that a lon/lat point or polygon falls in."""
    if isinstance(geometry_lonlat, tuple):
        geometry_lonlat = shapely.Point(geometry_lonlat)
    geom = _project(geometry_lonlat, GRID_CRS)
    hits = []
    for t in production_tiles(subtiles):
        poly = t.polygon()
        # A point on a shared edge belongs to the tile whose west/north edges contain it (half-open tiles).
        if geom.geom_type == "Point":
            x, y = geom.x, geom.y
            inside = t.bounds[0] <= x < t.bounds[2] and t.bounds[1] < y <= t.bounds[3]
        else:
            inside = poly.intersection(geom).area > 0
        if inside:
            hits.append(t.name)
    return hits


def footprint_geobox(geometry_lonlat: shapely.Geometry, resolution: float, crs: str) -> GeoBox:
    """Pixel grid covering a lon/lat geometry in ``crs``, with pixel edges on multiples of the resolution.

    For a geographic CRS the resolution in metres is converted to degrees at the equator.
    """
    _check_resolution(resolution)
    try:
        target = CRS(crs)
    except (CRSError, ValueError) as e:
        raise GridError(f"unknown CRS {crs!r}: {e}") from e
    res = resolution / _METRES_PER_DEGREE if target.geographic else float(resolution)
    dense = shapely.segmentize(geometry_lonlat, 0.01)
    projected = _project(dense, str(target))
    xmin, ymin, xmax, ymax = projected.bounds
    if not all(map(math.isfinite, (xmin, ymin, xmax, ymax))):
        raise GridError(f"the region cannot be projected to {crs}")
    x0, y1 = math.floor(xmin / res) * res, math.ceil(ymax / res) * res
    nx = max(1, math.ceil((xmax - x0) / res - 1e-9))
    ny = max(1, math.ceil((y1 - ymin) / res - 1e-9))
    return GeoBox((ny, nx), Affine(res, 0, x0, 0, -res, y1), target)


@dataclass(frozen=True)
class Region:
    """Where a job produces: a grid tile or a named custom polygon (lon/lat)."""

    name: str
    geometry: shapely.Geometry
    """Lon/lat (EPSG:4326)."""
    tile: Tile | None = None

    def geobox(self, resolution: float, crs: str = GRID_CRS) -> GeoBox:
        if self.tile is not None:
            return self.tile.geobox(resolution, crs)
        return footprint_geobox(self.geometry, resolution, crs)

    def to_geojson(self) -> dict[str, Any]:
        return mapping(self.geometry)


def region_for_tile(name: str) -> Region:
    t = tile(name)
    return Region(name, t.lonlat_polygon(), t)


def region_from_geojson(name: str, geojson: dict[str, Any]) -> Region:
    """A custom region from a GeoJSON Polygon/MultiPolygon (or a Feature holding one) in lon/lat."""
    return Region(name, parse_region_geometry(geojson))


def parse_region_geometry(geojson: Any) -> shapely.Geometry:
    """Validate a lon/lat GeoJSON Polygon or MultiPolygon; raises GridError saying what is wrong."""
    if isinstance(geojson, dict) and geojson.get("type") == "Feature":
        geojson = geojson.get("geometry")
    if not isinstance(geojson, dict) or geojson.get("type") not in ("Polygon", "MultiPolygon"):
        kind = geojson.get("type") if isinstance(geojson, dict) else type(geojson).__name__
        raise GridError(f"must be a GeoJSON Polygon or MultiPolygon (or a Feature of one), got {kind}")
    try:
        geom = shape(geojson)
    except Exception as e:  # shapely raises several types for malformed coordinates
        raise GridError(f"malformed GeoJSON coordinates: {e}") from e
    if geom.is_empty:
        raise GridError("the polygon is empty")
    if not geom.is_valid:
        raise GridError(f"invalid polygon: {shapely.is_valid_reason(geom)}")
    if geom.area == 0:
        raise GridError("the polygon has no area")
    xmin, ymin, xmax, ymax = geom.bounds
    if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
        raise GridError(f"coordinates must be lon/lat degrees (lon −180..180, lat −90..90), got bounds {geom.bounds}")
    return geom
