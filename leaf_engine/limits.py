"""Admission limits: how big a request may be, checked before anything is planned, claimed or started.

Each limit is a deployment setting with a documented default (README: admission limits), overridable by the
environment variable ``LEAF_LIMIT_<NAME>`` (e.g. ``LEAF_LIMIT_PIXELS_PER_JOB=2e10``) and, for ``leaf validate``
and ``leaf plan``, by ``--limit NAME=VALUE``. Counts are computed arithmetically from the regions' pixel grids,
never by building the plan: a request that would need 10¹⁴ shards is refused in milliseconds.

A refusal is a :class:`~leaf_engine.errors.RequestError` whose problems name the limit, the value and how to
split the request.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import LeafError, Problem

ENV_PREFIX = "LEAF_LIMIT_"


class Limits(BaseModel):
    """The admission limits of a deployment (defaults fit a national run: 26 tiles × 12 months at 20 m)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_bytes: int = Field(1_048_576, gt=0, description="size of one request message (bytes)")
    regions: int = Field(500, gt=0, description="custom regions plus tiles in one request")
    region_vertices: int = Field(100_000, gt=0, description="polygon vertices over all regions of a request")
    region_area_km2: float = Field(12_000_000.0, gt=0, description="area of one region (km², geodesic)")
    region_outline_deg: float = Field(10_000.0, gt=0, description="outline length over all regions (degrees)")
    windows: int = Field(120, gt=0, description="time windows (months or date pairs) of one request")
    jobs: int = Field(500, gt=0, description="jobs (regions × windows) of one request")
    pixels_per_job: float = Field(1.0e10, gt=0, description="pixels of one job's grid (a tile at 10 m is 8.1e9)")
    pixels_per_request: float = Field(2.0e13, gt=0, description="pixels over all output files of a request")
    shards_per_file: int = Field(100, gt=0, description="Earth Engine shards (objects) of one output file")
    objects: int = Field(60_000, gt=0, description="output objects (shards) of one request")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Limits:
        """Defaults, then ``LEAF_LIMIT_<NAME>`` variables, then ``overrides``. Raises LeafError for a bad value."""
        e = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = e.get(f"{ENV_PREFIX}{name.upper()}")
            if raw is not None and raw.strip():
                values[name] = _number(f"{ENV_PREFIX}{name.upper()}", raw)
        unknown = [k for k in e if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in cls.model_fields]
        if unknown:
            raise LeafError(f"unknown admission limit(s) {', '.join(sorted(unknown))}; known: "
                            + ", ".join(f"{ENV_PREFIX}{n.upper()}" for n in cls.model_fields))
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as err:
            raise LeafError(f"invalid admission limit: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}"
                            ) from None

    @classmethod
    def parse_option(cls, text: str) -> tuple[str, float]:
        """``NAME=VALUE`` of a ``--limit`` option."""
        name, sep, value = text.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not sep or name not in cls.model_fields:
            raise LeafError(f"--limit {text!r}: expected NAME=VALUE with NAME one of {', '.join(cls.model_fields)}")
        return name, _number(f"--limit {name}", value)


def _number(where: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise LeafError(f"{where}={raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise LeafError(f"{where}={raw!r} must be a positive number")
    return int(value) if value.is_integer() else value


def env_name(limit: str) -> str:
    return f"{ENV_PREFIX}{limit.upper()}"


def exceeded(limit: str, value: float, limits: Limits, key: str, shown: Any, split: str) -> Problem | None:
    """A problem when ``value`` is over the limit named ``limit``; None when it fits."""
    bound = getattr(limits, limit)
    if value <= bound:
        return None
    return Problem(key, shown, f"{_fmt(value)} exceeds the admission limit {limit} = {_fmt(bound)} "
                               f"({env_name(limit)}): {split}")


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v < 1e15 else f"{v:.3g}"





def check_admission(req: Any, limits: Limits) -> None:
    """Refuse ``req`` (a ProductionRequest) when it is over any limit. Raises RequestError listing each.

    Counts come from each region's pixel grid (one projection of its outline), multiplied out: nothing here
    grows with the number of jobs, files or shards.
    """
    from pyproj import Geod

    from .errors import GridError, RequestError
    from .plan import EE_FILE_DIMENSIONS

    problems: list[Problem] = []

    def over(limit: str, value: float, key: str, shown: Any, split: str) -> bool:
        p = exceeded(limit, value, limits, key, shown, split)
        if p is not None:
            problems.append(p)
        return p is not None

    n_windows = len(req.windows())
    over("windows", n_windows, "start_dates/end_dates" if req.start_dates else "months", n_windows,
         "send several requests, each with fewer time windows")
    regions = req.region_list()
    over("regions", len(regions), "regions" if req.regions else "tile_names", len(regions),
         "send several requests, each with fewer regions or tiles")
    if req.regions:
        import shapely

        vertices = sum(int(shapely.get_num_coordinates(r.geometry)) for r in regions)
        over("region_vertices", vertices, "regions", vertices,
             "simplify the polygons (e.g. shapely simplify) or send the regions in several requests")
        # Gridding a region densifies its outline (every 0.01°): the cost grows with the outline's length.
        outline = sum(float(r.geometry.length) for r in regions)
        over("region_outline_deg", outline, "regions", f"{outline:,.0f}°",
             "simplify the outlines, or send the regions in several requests")
    over("jobs", len(regions) * n_windows, "regions/tile_names × windows", len(regions) * n_windows,
         "send several requests (fewer regions or fewer windows each)")
    if problems:  # counts already out of bounds: do not go on to project every region
        raise RequestError(problems)

    geod = Geod(ellps="WGS84")
    n_files = len(req.output_products())
    total_pixels = 0.0
    total_objects = 0
    for region in regions:
        key = f"regions.{region.name}" if region.tile is None else "tile_names"
        if region.tile is None:
            area_km2 = abs(geod.geometry_area_perimeter(region.geometry)[0]) / 1e6
            if over("region_area_km2", area_km2, key, region.name,
                    "split the region into smaller polygons, each its own region"):
                continue
        try:
            shape = req.region_geobox(region).shape
        except GridError as e:
            problems.append(Problem(key, region.name, f"cannot be gridded at {req.resolution} m in "
                                                      f"{req.projection}: {e}"))
            continue
        pixels = float(shape.x) * float(shape.y)
        if over("pixels_per_job", pixels, key, f"{region.name}: {shape.x}×{shape.y} px at {req.resolution} m",
                "split the region (or use tiles/sub-tiles), or use a coarser resolution"):
            continue
        shards = math.ceil(shape.x / EE_FILE_DIMENSIONS) * math.ceil(shape.y / EE_FILE_DIMENSIONS)
        if over("shards_per_file", shards, key, f"{region.name}: {shards} shards of {EE_FILE_DIMENSIONS} px",
                "split the region into smaller polygons, or use a coarser resolution"):
            continue
        total_pixels += pixels * n_windows * n_files
        total_objects += shards * n_windows * n_files
    if not problems:
        over("pixels_per_request", total_pixels, "(request)", f"{total_pixels:.3g} px",
             "send several requests (fewer regions, windows or products each), or use a coarser resolution")
        over("objects", total_objects, "(request)", total_objects,
             "send several requests (fewer regions, windows or products each)")
    if problems:
        raise RequestError(problems)
__all__ = ["ENV_PREFIX", "Limits", "check_admission", "env_name", "exceeded"]
