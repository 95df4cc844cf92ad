"""Best-pixel compositing score, shared by the local engine and the Earth Engine backend.

Within a window each pixel takes the clear observation with the highest score (ties: the earliest). Like the
ancestor tool's "best pixel" the score weighs spectral quality, closeness to the window's middle date and the
scene's cloud cover; each term lies in 0..1 so the weights say how much each counts:

    score = W_SPECTRAL·clip(NDVI, 0, 1) + W_DATE·(1 − |doy − mid| / half_width) + W_CLOUD·(1 − cloud_cover/100)

NDVI favours the greenest clear look (residual haze and thin cloud lower it); the date term keeps the composite
representative of the window's centre; the cloud term prefers scenes with less cloud (and so fewer missed edges).
The weights are written into every output's metadata.
"""

from __future__ import annotations

from datetime import date

import numpy as np

MAX_SCENE_CLOUD_COVER = 90.0
"""Scenes whose cloud cover (%) is above this are not read at all; below it the per-pixel masks decide."""
W_SPECTRAL = 0.5
W_DATE = 0.3
W_CLOUD = 0.2
SCORE_DOC = (
    f"score = {W_SPECTRAL}*clip(NDVI,0,1) + {W_DATE}*(1-|doy-mid|/half_width) + {W_CLOUD}*(1-cloud_cover/100); "
    "per pixel the clear observation with the highest score, ties to the earliest"
)


def window_middle(start: date, end: date) -> tuple[float, float]:
    """Middle of an inclusive window as a fractional ordinal day, and the half width in days (≥ 0.5)."""
    mid = (start.toordinal() + end.toordinal()) / 2.0
    return mid, max((end.toordinal() - start.toordinal()) / 2.0, 0.5)


def date_term(obs: date, start: date, end: date) -> float:
    mid, half = window_middle(start, end)
    return float(max(0.0, 1.0 - abs(obs.toordinal() - mid) / half))


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """(nir − red) / (nir + red), and 0 where nir + red = 0 (Earth Engine's divide gives 0 there too)."""
    total = np.asarray(nir + red)
    return np.divide(nir - red, total, out=np.zeros(total.shape, np.result_type(total, np.float32)),
                     where=total != 0)


def scene_term(obs: date, start: date, end: date, cloud_cover: float) -> float:
    """The date and cloud terms of :func:`score`: one value per scene."""
    return W_DATE * date_term(obs, start, end) + W_CLOUD * (1.0 - min(max(cloud_cover, 0.0), 100.0) / 100.0)


def score(red: np.ndarray, nir: np.ndarray, obs: date, start: date, end: date, cloud_cover: float) -> np.ndarray:
    """Per-pixel score of one observation (float32: the Python floats are rounded to float32 and the sums are
    float32's); the spectral term is 0 where NDVI is undefined."""
    spectral = np.clip(ndvi(red, nir), 0.0, 1.0)
    return (W_SPECTRAL * spectral + scene_term(obs, start, end, cloud_cover)).astype(np.float32)
