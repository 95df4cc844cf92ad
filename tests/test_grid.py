"""CCRS grid: geometry from the rule, against the ancestor's published polygons and independent arithmetic."""

import json
from pathlib import Path

import pytest
import shapely
from pyproj import Geod, Transformer

from leaf_engine import grid
from leaf_engine.errors import GridError

REF = json.loads((Path(__file__).parent / "data" / "reference" / "ccrs_tile_grid.json").read_text())
GEOD = Geod(ellps="GRS80")


@pytest.mark.parametrize("ref", REF["tiles"], ids=lambda t: t["name"])
def test_corners_match_published_polygons_within_50m(ref):
    ours = grid.tile(ref["name"]).corners_lonlat()
    for (lon, lat), (rlon, rlat) in zip(ours, ref["corners_lonlat_NW_NE_SE_SW"], strict=True):
        assert GEOD.inv(lon, lat, rlon, rlat)[2] < 50


def test_reference_covers_all_production_tiles_and_subtiles():
    names = {t["name"] for t in REF["tiles"]}
    assert set(grid.PRODUCTION_TILES) <= names
    assert len(grid.PRODUCTION_TILES) == 27 and len(grid.LANDMASS_TILES) == 26


@pytest.mark.parametrize("name", grid.PRODUCTION_TILES)
def test_bounds_follow_the_grid_rule(name):
    r, c = int(name[4]), int(name[5])
    assert grid.tile(name).bounds == (
        -2_600_000 + (c - 1) * 900_000,
        3_914_920 - r * 900_000,
        -2_600_000 + c * 900_000,
        3_914_920 - (r - 1) * 900_000,
    )


def test_subtiles_partition_their_tile():
    parent = grid.tile("tile42")
    for k, n in (("4", 2), ("9", 3)):
        subs = [grid.tile(f"tile42_{k}{i}{j}") for i in range(1, n + 1) for j in range(1, n + 1)]
        union = shapely.union_all([s.polygon() for s in subs])
        assert union.equals(parent.polygon())
        assert sum(s.polygon().area for s in subs) == pytest.approx(parent.polygon().area)
    nw = grid.tile("tile42_911")
    assert (nw.bounds[0], nw.bounds[3]) == (parent.bounds[0], parent.bounds[3])
    assert grid.tile("tile42_422").bounds[2] == parent.bounds[2]


@pytest.mark.parametrize("bad", ["tile99", "tile11", "tile42_955", "tile42_431", "tile42_5", "Tile42", "tile42_411x"])
def test_unknown_names_are_rejected(bad):
    with pytest.raises(GridError, match="unknown"):
        grid.tile(bad)


@pytest.mark.parametrize("res", [10, 20, 30, 60, 100, 250, 500, 1000])
def test_geobox_anchored_at_nw_corner(res):
    t = grid.tile("tile43")
    gb = t.geobox(res)
    a = gb.affine
    assert (a.c, a.f, a.a, a.e) == (t.bounds[0], t.bounds[3], res, -res)
    assert gb.shape.x * res == 900_000 and gb.shape.y * res == 900_000


def test_neighbouring_tiles_share_pixel_edges():
    for res in (20, 30, 250):
        west, east = grid.tile("tile42").geobox(res), grid.tile("tile43").geobox(res)
        # the east tile's first column starts exactly where the west tile's last column ends
        assert (west.affine @ (west.shape.x, 0))[0] == east.affine.c
        south = grid.tile("tile52").geobox(res)
        assert (west.affine @ (0, west.shape.y))[1] == south.affine.f
        sub = grid.tile("tile42_922").geobox(res)
        col, row = (sub.affine.c - west.affine.c) / res, (west.affine.f - sub.affine.f) / res
        assert col == round(col) and row == round(row) and sub.affine.a == res


def test_resolution_must_divide_the_tile():
    with pytest.raises(GridError, match="does not divide"):
        grid.tile("tile42").geobox(7)
    with pytest.raises(GridError, match="positive"):
        grid.tile("tile42").geobox(0)


def test_lonlat_polygon_is_densified_and_contains_centre():
    t = grid.tile("tile42")
    poly = t.lonlat_polygon()
    assert len(poly.exterior.coords) > 200
    cx, cy = (t.bounds[0] + t.bounds[2]) / 2, (t.bounds[1] + t.bounds[3]) / 2
    lon, lat = Transformer.from_crs("EPSG:3979", "EPSG:4326", always_xy=True).transform(cx, cy)
    assert poly.contains(shapely.Point(lon, lat))


def test_tiles_for_points_and_polygons():
    assert grid.tiles_for((-75.70, 45.42)) == ["tile55"]  # Ottawa
    assert grid.tiles_for((-123.12, 49.28)) == ["tile41"]  # Vancouver: x ≈ -1.98e6, y ≈ 0.48e6 in EPSG:3979
    assert "tile55_922" in grid.tiles_for((-75.70, 45.42), subtiles=True)
    t = grid.tile("tile42")
    to_lonlat = Transformer.from_crs("EPSG:3979", "EPSG:4326", always_xy=True).transform
    edge = shapely.box(t.bounds[2] - 1000, t.bounds[1] + 1000, t.bounds[2] + 1000, t.bounds[1] + 3000)
    across = shapely.transform(edge, to_lonlat, interleaved=False)
    assert grid.tiles_for(across) == ["tile42", "tile43"]
    assert grid.tiles_for((0.0, 0.0)) == []


def test_custom_region_geobox_in_requested_crs():
    geom = {
        "type": "Polygon",
        "coordinates": [[[1.215, 43.638], [1.243, 43.638], [1.243, 43.661], [1.215, 43.661], [1.215, 43.638]]],
    }
    region = grid.region_from_geojson("bouconne", geom)
    gb = region.geobox(20, "EPSG:32631")
    assert gb.crs.epsg == 32631
    assert gb.affine.c % 20 == 0 and gb.affine.f % 20 == 0
    assert 100 < gb.shape.x < 150 and 100 < gb.shape.y < 160
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32631", always_xy=True).transform
    footprint = shapely.transform(region.geometry, to_utm, interleaved=False)
    assert shapely.box(*gb.extent.boundingbox).contains(footprint)


@pytest.mark.parametrize(
    "geojson, message",
    [
        ({"type": "Point", "coordinates": [0, 0]}, "Polygon or MultiPolygon"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}, "invalid polygon"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [2, 0], [0, 0]]]}, "invalid polygon|no area"),
        ({"type": "Polygon", "coordinates": [[[500000, 0], [500100, 0], [500100, 100], [500000, 0]]]}, "lon/lat"),
        ({"type": "Polygon", "coordinates": "nonsense"}, "malformed"),
        ([1, 2], "Polygon or MultiPolygon"),
    ],
)
def test_bad_region_geometry(geojson, message):
    with pytest.raises(GridError, match=message):
        grid.parse_region_geometry(geojson)
