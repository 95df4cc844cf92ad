"""Earth Engine masks and footprints as the server applies them (Earth Engine's algorithm list): the SL2P-CCRS
land cover outside NALCMS, products where no scene lies, and the composite's order and ties.

The interpreter (tests/support/ee_interpreter.py) gives every leaf image a footprint, as an asset has; outside it
a pixel is masked, and ``unmask`` fills only inside the input's footprint unless ``sameFootprint`` is false.
"""

from __future__ import annotations

import numpy as np
import pytest

from leaf_engine import products
from leaf_engine.backends.gee import composite, landcover, session, sl2p_graph
from leaf_engine.sl2p import estimate, load_network_set
from tests.support.ee_interpreter import Img, evaluate
from tests.support.ee_standin import EEStandIn

SHAPE = (20, 30)


@pytest.fixture
def ee_client(ee_standin: EEStandIn):
    session.initialize("leaf-test")
    import ee

    return ee


def _landcover_images(rng: np.random.Generator) -> tuple[dict[str, Img], np.ndarray, np.ndarray, np.ndarray]:
    """NALCMS defined on the left third only (North America), with some 0 (no data) inside; Copernicus global."""
    inside = np.zeros(SHAPE, bool)
    inside[:, :10] = True
    nalcms = rng.integers(0, 20, SHAPE)
    cgls_codes = np.array(list(landcover.COPERNICUS_TO_NALCMS))
    cgls = rng.choice(cgls_codes, SHAPE)
    images = {
        landcover.NALCMS_IMAGE: Img.from_arrays({landcover.NALCMS_BAND: nalcms}, footprint=inside),
        landcover.COPERNICUS_IMAGE: Img.from_arrays({landcover.COPERNICUS_BAND: cgls}),
    }
    return images, inside, nalcms, cgls


def _expected_landcover(inside: np.ndarray, nalcms: np.ndarray, cgls: np.ndarray) -> np.ndarray:
    mapped = np.vectorize(landcover.COPERNICUS_TO_NALCMS.__getitem__)(cgls)
    return np.where(inside & (nalcms > 0), nalcms, mapped)


def test_landcover_is_filled_by_copernicus_outside_nalcms(ee_client) -> None:
    images, inside, nalcms, cgls = _landcover_images(np.random.default_rng(1))
    got = evaluate(landcover.landcover_image(), images)
    assert got.names() == ["landcover"]
    assert got.bands[0].mask.all(), "every pixel has a class: NALCMS inside North America, Copernicus elsewhere"
    np.testing.assert_array_equal(got.array("landcover"), _expected_landcover(inside, nalcms, cgls))


def test_the_interpreter_models_unmask_footprints(ee_client) -> None:
    """With the default sameFootprint, a fill stops at the input's footprint (the old land-cover graph)."""
    ee = ee_client
    images, inside, _, _ = _landcover_images(np.random.default_rng(2))
    nalcms = ee.Image(landcover.NALCMS_IMAGE).select(landcover.NALCMS_BAND).selfMask()
    cgls = ee.Image(landcover.COPERNICUS_IMAGE).select(landcover.COPERNICUS_BAND)
    kept = evaluate(nalcms.unmask(cgls), images)
    assert not kept.bands[0].mask[~inside].any()
    extended = evaluate(nalcms.unmask(cgls, False), images)
    assert extended.bands[0].mask.all()


def test_ccrs_products_outside_nalcms_use_the_copernicus_partition(ee_client) -> None:
    """SL2P-CCRS outside North America: each pixel's class network, Partition written (not the generic network)."""
    ee = ee_client
    rng = np.random.default_rng(3)
    nets = load_network_set("leaf_sl2pccrs_s2_20m")
    images, inside, nalcms, cgls = _landcover_images(rng)
    n = SHAPE[0] * SHAPE[1]
    x = {"cosVZA": np.cos(np.radians(rng.uniform(0, 10, n))), "cosSZA": np.cos(np.radians(rng.uniform(25, 60, n))),
         "cosRAA": np.cos(np.radians(rng.uniform(-180, 180, n)))}
    for i, b in enumerate(nets.band_inputs):
        x[b] = 0.03 + 0.03 * i + rng.gamma(2.0, 0.03, n)
    x = {k: v.reshape(SHAPE) for k, v in x.items()}
    images["leaf/inputs"] = Img.from_arrays(x)
    images["leaf/valid"] = Img.from_arrays({"valid": np.ones(SHAPE)})
    images["leaf/code"] = Img.from_arrays({"sensor_code": np.full(SHAPE, 21)})
    graph = sl2p_graph.products_image(ee.Image("leaf/inputs"), {21: nets}, ("LAI", "Partition"),
                                      valid=ee.Image("leaf/valid"), sensor_code=ee.Image("leaf/code"),
                                      landcover=landcover.landcover_image())
    got = evaluate(graph, images)
    lc = _expected_landcover(inside, nalcms, cgls)
    np.testing.assert_array_equal(got.array("Partition"), lc)
    want = estimate(nets, x, ("LAI",), partition=lc, precision="float64")
    np.testing.assert_array_equal(got.array("LAI"), products.encode("LAI", want.values["LAI"], np.ones(SHAPE, bool)))
    generic = estimate(nets, x, ("LAI",), partition=np.zeros(SHAPE, int), precision="float64")
    assert (products.encode("LAI", generic.values["LAI"], np.ones(SHAPE, bool))[:, 10:]
            != got.array("LAI")[:, 10:]).any(), "outside NALCMS the class networks differ from the generic one"


def test_products_where_no_scene_lies_are_nodata_with_invalid_qc(ee_client) -> None:
    """Past the composite's footprint QC says 'invalid' with the sensor code and products are nodata, as locally."""
    ee = ee_client
    rng = np.random.default_rng(4)
    nets = load_network_set("leaf_sl2p_s2_20m")
    covered = np.zeros(SHAPE, bool)
    covered[5:, :] = True
    x = {b: np.full(SHAPE, 0.1) for b in nets.band_inputs}
    x.update({"cosVZA": np.ones(SHAPE), "cosSZA": np.full(SHAPE, 0.8), "cosRAA": np.full(SHAPE, 0.5)})
    x["sensor_code"] = np.full(SHAPE, 21.0)
    comp = ee.Image("leaf/comp")
    images = {"leaf/comp": Img.from_arrays(x, mask=rng.random(SHAPE) > 0.3, footprint=covered)}
    code = comp.select("sensor_code")
    graph = sl2p_graph.products_image(comp, {21: nets}, ("LAI", "QC"), valid=code.mask().gt(0),
                                      sensor_code=code.unmask(21, False))
    got = evaluate(graph, images)
    assert got.bands[0].mask.all() and got.bands[1].mask.all(), "defined over the whole export, not the footprint"
    qc = got.array("QC")
    assert (qc[~covered] == products.QC_INVALID + 21 * 2**products.QC_SENSOR_SHIFT).all()
    assert (got.array("LAI")[~covered] == products.product("LAI").nodata).all()


def _observation(ee, key: str, day: int) -> object:
    return ee.Image(key).set("system:time_start", day)


def test_best_of_takes_the_highest_score_and_the_earliest_of_equal_scores(ee_client) -> None:
    ee = ee_client
    rng = np.random.default_rng(5)
    n_obs = 4
    scores = rng.choice([0.2, 0.5, 0.9], (n_obs, *SHAPE))  # many ties
    clear = rng.random((n_obs, *SHAPE)) > 0.25
    images = {f"obs{k}": Img.from_arrays({composite.SCORE: scores[k], "LAIin": np.full(SHAPE, float(k))},
                                         mask=clear[k]) for k in range(n_obs)}
    days = [30, 10, 20, 40]  # collection order is not time order
    col = ee.ImageCollection.fromImages([_observation(ee, f"obs{k}", days[k]) for k in range(n_obs)])
    got = evaluate(composite.best_of(col), images)
    # The local rule: scenes in time order, a later scene replaces only with a strictly higher score.
    best = np.full(SHAPE, -np.inf)
    pick = np.full(SHAPE, -1)
    for k in sorted(range(n_obs), key=lambda k: days[k]):
        better = clear[k] & (scores[k] > best)
        best[better], pick[better] = scores[k][better], k
    has = pick >= 0
    np.testing.assert_array_equal(got.bands[0].mask, has)
    np.testing.assert_array_equal(got.array("LAIin")[has], pick[has])
    np.testing.assert_array_equal(got.array(composite.SCORE)[has], best[has])
    # The undocumented qualityMosaic tie rule is what the interpreter refuses to guess.
    with pytest.raises(ValueError, match="tie"):
        evaluate(col.qualityMosaic(composite.SCORE), images)
