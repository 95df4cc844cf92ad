"""The compiled composite fold equals the numpy formulation of its rules bit for bit: masks.reflectance_invalid,
masks.water_invalid and composite.score, then 'replace where clear and the score is higher' (ties: earlier)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np
import pytest
import shapely

from leaf_engine import composite
from leaf_engine.backends.local import fold as fold_mod
from leaf_engine.backends.local.fold import FoldRule
from leaf_engine.backends.local.masks import reflectance_invalid, water_invalid
from leaf_engine.backends.local.pipeline import Composite, fold_rule
from leaf_engine.backends.local.scenes import AssetRef, Scene
from leaf_engine.sensors import SENSORS, VALID_REFLECTANCE, WATER_TEST

L8 = SENSORS["L8_SR"]
START, END = date(2020, 7, 1), date(2020, 7, 31)
SHAPE = (67, 71)  # more pixels than one chunk of the fold, and not a multiple of it
assert SHAPE[0] * SHAPE[1] > fold_mod.CHUNK


def _scene(day: int, cloud: float, water_test: bool) -> Scene:
    bands = {b.net_input: AssetRef(f"{b.net_input}.tif") for b in L8.bands}
    return Scene(f"s{day}", L8, datetime(2020, 7, day, tzinfo=UTC), cloud, shapely.box(0, 0, 1, 1), bands, None,
                 None, None, 30.0, 140.0, 2.0, 100.0, water_test=water_test)


def _edge_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Reflectances that sit on every boundary the rules have: the valid range's ends and their float32
    neighbours, NaN, infinities, zeros (NDVI and NDWI of 0/0), plus ordinary values."""
    lo, hi = np.float32(VALID_REFLECTANCE[0]), np.float32(VALID_REFLECTANCE[1])
    special = np.array([lo, hi, np.nextafter(lo, np.float32(-1)), np.nextafter(lo, np.float32(1)),
                        np.nextafter(hi, np.float32(2)), np.nextafter(hi, np.float32(0)), -0.005, 1.05, 0.0, -0.0,
                        np.nan, np.inf, -np.inf], np.float32)
    v = rng.uniform(-0.02, 1.1, n).astype(np.float32)
    pick = rng.random(n) < 0.3
    v[pick] = rng.choice(special, int(pick.sum()))
    return v


def _observation(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    bands = np.stack([_edge_values(rng, SHAPE[0] * SHAPE[1]).reshape(SHAPE) for _ in scene.bands])
    common = [scene.sensor.band(n).common_name for n in scene.bands]
    g, n, r = common.index(WATER_TEST.green), common.index(WATER_TEST.nir), common.index("red")
    tie = rng.random(SHAPE) < 0.1  # NDWI on its threshold's float32 neighbourhood: green = nir·(1+t)/(1−t)
    t = np.float32(WATER_TEST.threshold)
    bands[g][tie] = (bands[n][tie] * (1 + t) / (1 - t)).astype(np.float32)
    equal = rng.random(SHAPE) < 0.05  # NDVI 0, and 0/0 where both are 0
    bands[r][equal] = bands[n][equal]
    return bands


def _numpy_fold(comp: Composite, scene: Scene, bands: np.ndarray, clear: np.ndarray,
                angles: tuple[np.ndarray | float, ...]) -> None:
    """The rules as numpy arrays (the formulation the pipeline used before the compiled fold)."""
    with np.errstate(invalid="ignore", over="ignore"):
        clear = clear & ~water_invalid(scene, bands) & ~reflectance_invalid(bands)
        common = [scene.sensor.band(n).common_name for n in scene.bands]
        score = composite.score(bands[common.index("red")], bands[common.index("nir08")], scene.date, START, END,
                                scene.cloud_cover)
    better = clear & (score > comp.score)
    np.copyto(comp.score, score, where=better)
    np.copyto(comp.bands, bands, where=better[None])
    for k, value in enumerate(angles):
        np.copyto(comp.angles[k], value, where=better, casting="same_kind")
    np.copyto(comp.doy, scene.day_of_year, where=better, casting="unsafe")
    np.copyto(comp.sensor_code, scene.sensor.qc_code, where=better, casting="unsafe")


@pytest.mark.parametrize("water_test", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_compiled_fold_equals_the_numpy_rules(seed: int, water_test: bool) -> None:
    rng = np.random.default_rng(seed)
    # the 2nd and 3rd scenes tie on their scene terms (same distance to the window's middle, same cloud)
    scenes = [_scene(3, 40.0, water_test), _scene(10, 5.0, water_test), _scene(22, 5.0, water_test)]
    spec = type("Spec", (), {"start": START, "end": END})()
    fast = Composite.empty(len(L8.bands), SHAPE)
    ref = Composite.empty(len(L8.bands), SHAPE)
    prev: np.ndarray | None = None
    for i, scene in enumerate(scenes):
        bands = _observation(rng, scene)
        if prev is not None and i == 2:  # the 2nd scene's spectra where they tie: the earlier one must stay
            bands[:, :20] = prev[:, :20]
        prev = bands
        clear = rng.random(SHAPE) < 0.8
        per_pixel = rng.uniform(-1, 1, SHAPE).astype(np.float32)
        angles = (np.float32(0.99), per_pixel, np.float32(-0.3)) if i == 1 else \
            (np.float32(0.98), np.float32(0.7), np.float32(0.1))
        fold_mod.fold(fast, bands, clear, fold_rule(scene, spec), angles, scene.day_of_year, scene.sensor.qc_code)
        _numpy_fold(ref, scene, bands, clear, angles)
    for name in ("score", "bands", "angles", "doy", "sensor_code"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(ref, name), err_msg=name)
    assert len(np.unique(fast.doy)) == 4  # every scene won somewhere, and some pixels have none
    tied = fast.doy[:, :20][fast.doy[:, :20] > 0]
    assert (tied != scenes[2].day_of_year).any()


def test_water_test_positions_follow_the_scene() -> None:
    spec = type("Spec", (), {"start": START, "end": END})()
    dry = fold_rule(_scene(5, 1.0, False), spec)
    wet = fold_rule(_scene(5, 1.0, True), spec)
    assert (dry.water_green, dry.water_nir) == (-1, -1)
    assert wet.water_green >= 0 and wet.water_nir >= 0 and replace(wet, water_green=-1, water_nir=-1) == dry
    assert dry.scene_term == composite.scene_term(date(2020, 7, 5), START, END, 1.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
@pytest.mark.parametrize("water_test", [False, True])
def test_dn_through_the_tables_equal_the_reflectance_path(dtype, water_test: bool) -> None:
    """DN looked up in the fold (the blocks' path) and the same DN turned into reflectance first
    (``reading.physical``, then the fold on floats) give the same composite, bit for bit."""
    from leaf_engine.backends.local.reading import dn_tables, physical

    rng = np.random.default_rng(7)
    spec = type("Spec", (), {"start": START, "end": END})()
    top = np.iinfo(dtype).max
    # C2 L2 scaling for 16-bit DN; a coarse one for 8-bit, so that both range ends fall inside the type
    scale, offset = (2.75e-5, -0.2) if dtype == np.uint16 else (0.005, -0.01)
    lo_dn = (VALID_REFLECTANCE[0] - offset) / scale
    hi_dn = (VALID_REFLECTANCE[1] - offset) / scale
    edges = np.clip(np.round([lo_dn - 1, lo_dn, lo_dn + 1, hi_dn - 1, hi_dn, hi_dn + 1, 0, top]), 0, top)
    via_dn, via_float = Composite.empty(len(L8.bands), SHAPE), Composite.empty(len(L8.bands), SHAPE)
    for day in (3, 10, 22):
        scene = _scene(day, 5.0, water_test)
        refs = [replace(ref, scale=scale, offset=offset) for ref in scene.bands.values()]
        dn = rng.integers(0, top + 1, (len(refs), *SHAPE)).astype(dtype)
        pick = rng.random(dn.shape) < 0.2
        dn[pick] = rng.choice(edges, int(pick.sum())).astype(dtype)
        clear = rng.random(SHAPE) < 0.8
        angles = (np.float32(0.98), rng.uniform(-1, 1, SHAPE).astype(np.float32), np.float32(0.1))
        rule = fold_rule(scene, spec)
        fold_mod.fold(via_dn, dn, clear, rule, angles, day, 3, luts=dn_tables(refs, dn.dtype))
        floats = np.stack([physical(ref, band, np.empty(SHAPE, np.float32)) for ref, band in zip(refs, dn,
                                                                                                   strict=True)])
        fold_mod.fold(via_float, floats, clear, rule, angles, day, 3)
    for name in ("score", "bands", "angles", "doy", "sensor_code"):
        np.testing.assert_array_equal(getattr(via_dn, name), getattr(via_float, name), err_msg=name)
    assert len(np.unique(via_dn.doy)) == 4


def test_dn_need_one_full_table_per_band() -> None:
    comp = Composite.empty(2, (2, 2))
    rule = FoldRule(0, 1, -1, -1, 0.5)
    with pytest.raises(ValueError, match="one full table per band"):
        fold_mod.fold(comp, np.zeros((2, 2, 2), np.uint16), np.ones((2, 2), bool), rule, (1.0, 1.0, 1.0), 1, 1,
                      luts=np.zeros((2, 256), np.float32))
