"""Core-hours of a request on the local engine (threads or a Dask cluster), for ``leaf plan``.

cost = Σ over jobs of grid pixels × (scenes per pixel × READ_S + PIXEL_S), where scenes per pixel is the window
length over the sensor's revisit (no catalogue is searched at plan time). The constants are CPU seconds measured
with ``benchmarks/bench_produce.py`` and ``benchmarks/bench_sl2p.py`` on a 2-core x86-64 VM (README there):
reading and warping the 6 rasters of one Landsat scene onto the grid cost 3.3 Mpx/s on 2 cores for a 3-scene
stack (≈ 0.2 µs per pixel and scene); compositing, SL2P (4 products + QC) and COG writing add ≈ 0.3 µs per pixel.
Over HTTP (STAC API, COGs) reads cost more: ``HTTP_FACTOR``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from ...sensors import members

READ_S = 0.2e-6
"""CPU seconds to read and warp one scene's rasters per output pixel (local files)."""
PIXEL_S = 0.3e-6
"""CPU seconds per output pixel for compositing, SL2P, encoding and COG writing."""
HTTP_FACTOR = 1.5
"""Reads over HTTP (range requests to a public archive) cost this much more CPU than local files."""
REVISIT_DAYS = {"S2_SR": 5.0, "L5_SR": 16.0, "L7_SR": 16.0, "L8_SR": 16.0, "L9_SR": 16.0}
"""Revisit of one satellite (Sentinel-2: both units together)."""


def scenes_per_pixel(sensor: str, start: date, end: date) -> float:
    """Expected acquisitions over one pixel in [start, end] (merged sensors add up)."""
    days = (end - start).days + 1
    return sum(max(1.0, days / REVISIT_DAYS.get(s.id, 16.0)) for s in members(sensor))


def local_core_hours(sensor: str, jobs: Iterable[Mapping[str, Any]], *, http: bool = True) -> float:
    """Core-hours for the plan's jobs (dicts with ``width``, ``height``, ``start``, ``end``)."""
    seconds = 0.0
    read = READ_S * (HTTP_FACTOR if http else 1.0)
    for job in jobs:
        pixels = int(job["width"]) * int(job["height"])
        n = scenes_per_pixel(sensor, date.fromisoformat(str(job["start"])), date.fromisoformat(str(job["end"])))
        seconds += pixels * (n * read + PIXEL_S)
    return seconds / 3600.0
