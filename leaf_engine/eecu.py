"""Earth Engine compute (EECU-hours) of a request, estimated before it starts.

Since 27 April 2026 every noncommercial Earth Engine project has a monthly compute quota: 150 (Community),
1,000 (Contributor) or 100,000 (Partner) EECU-hours (Earth Engine guides, "Noncommercial tiers",
developers.google.com/earth-engine/guides/noncommercial_tiers). A national LEAF request can exceed a whole tier,
so LEAF estimates it first and can refuse it (``max_eecu_hours`` request key, ``LEAF_MAX_EECU_HOURS`` setting).

The model (assumptions, not measurements; compare with the measured ``batchEecuUsageSeconds`` that ``leaf status``
shows and adjust :data:`S2_EECU_H_PER_KM2_MONTH` to your own runs):

- Cost follows the area and the length of the time window, because the best-pixel composite reads every scene of
  the window at its native resolution; the SL2P networks and the number of products add little (not modelled).
- Anchor: about 50,000 EECU-hours for one Canada-wide 30-day Sentinel-2 month at 20 m (the figure of the LEAF
  production planning), over Canada's 9,984,670 km² (Statistics Canada) → :data:`S2_EECU_H_PER_KM2_MONTH`.
- A Landsat member reads fewer scenes and pixels: one satellite's 16-day revisit (~2 scenes per 30 days, vs ~6
  for the two Sentinel-2 satellites) at 30 m (1,111 vs 2,500 px/km²) → :data:`LANDSAT_FACTOR` ≈ 0.15.
- Output coarser than the native resolution reads coarser pyramid levels: cost × (native / resolution)²,
  never below :data:`MIN_RESOLUTION_FACTOR` (per-scene overheads remain).
- The area is the job's output grid (its bounding box for a custom polygon: an upper bound).
"""

from __future__ import annotations

import math
from typing import Any

from . import sensors

CANADA_KM2 = 9_984_670.0
CANADA_S2_MONTH_EECU_H = 50_000.0
S2_EECU_H_PER_KM2_MONTH = CANADA_S2_MONTH_EECU_H / CANADA_KM2
"""≈ 0.005 EECU-hours per km² per 30 days of Sentinel-2 at 20 m."""
LANDSAT_FACTOR = (2 / 6) * ((1 / 30**2) / (1 / 20**2))
NATIVE_RESOLUTION_M = {"S2": 20.0, "L": 30.0}
MIN_RESOLUTION_FACTOR = 0.02


def _member_factor(sensor: Any, resolution: float) -> float:
    native = NATIVE_RESOLUTION_M["L"] if sensor.is_landsat else NATIVE_RESOLUTION_M["S2"]
    scenes = LANDSAT_FACTOR if sensor.is_landsat else 1.0
    return scenes * min(1.0, max(MIN_RESOLUTION_FACTOR, (native / resolution) ** 2))


def job_eecu_hours(sensor: str, width: int, height: int, resolution: float, days: int) -> float:
    area_km2 = width * height * resolution * resolution / 1e6
    factor = sum(_member_factor(s, resolution) for s in sensors.members(sensor))
    return S2_EECU_H_PER_KM2_MONTH * area_km2 * (days / 30.0) * factor


def estimate(req: Any, plan: Any) -> dict[str, Any]:
    """EECU-hours per job and in total for the plan of ``req`` (see the module's model)."""
    from datetime import date

    per_job = {}
    for j in plan.jobs:
        days = (date.fromisoformat(j["end"]) - date.fromisoformat(j["start"])).days + 1
        per_job[j["job_id"]] = round(job_eecu_hours(req.sensor, j["width"], j["height"], j["resolution"], days), 3)
    return {"eecu_hours": round(sum(per_job.values()), 3), "per_job": per_job,
            "model": {"s2_eecu_h_per_km2_month": round(S2_EECU_H_PER_KM2_MONTH, 6),
                      "landsat_factor": round(LANDSAT_FACTOR, 4), "min_resolution_factor": MIN_RESOLUTION_FACTOR,
                      "source": "leaf_engine.eecu (assumptions with their sources)"}}


def split_advice(estimate_h: float, limit_h: float, jobs: int) -> str:
    """How to split an over-budget request so each part fits."""
    parts = max(2, math.ceil(estimate_h / limit_h))
    per = max(1, jobs // parts)
    return (f"split it into at least {parts} requests of at most {per} job(s) each (fewer months or tiles per "
            "request), or raise the budget")
