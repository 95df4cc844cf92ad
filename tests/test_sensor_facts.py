"""Sensors as data: each sensor is one entry of facts that every module reads (bands, scaling, quality rules,
angle source, cloud property, catalogue platform names and collections, default networks)."""

from __future__ import annotations

import dataclasses

import pytest

from leaf_engine import sensors
from leaf_engine.backends.gee import collections
from leaf_engine.request import SHIPPED_NETWORKS_DIR
from leaf_engine.sl2p import load_network_set


@pytest.mark.parametrize("sensor", list(sensors.SENSORS.values()), ids=list(sensors.SENSORS))
def test_every_fact_is_filled_and_consistent(sensor: sensors.Sensor) -> None:
    assert sensor.cloud_property and sensor.angle_source in collections.ANGLE_SOURCES
    assert sensor.platforms and sensor.stac_collections and sensor.quality and sensor.orbit_altitude_km > 0
    assert all(b.ee_band and b.stac_keys for b in sensor.supplied_bands)
    for common in sensors.SCORE_BANDS:
        assert any(b.common_name == common for b in sensor.supplied_bands)
    for algorithm, set_id in sensor.networks.items():
        nets = load_network_set(set_id)
        assert set(nets.band_inputs) == set(sensor.band_names()), (set_id, "default sets' inputs are `bands`")
        assert sensors.network_inputs_problem(sensor.id, set_id, nets.inputs) is None, algorithm
    for set_id, _ in sensors.extra_network_sets(sensor):
        assert (SHIPPED_NETWORKS_DIR / f"{set_id}.json").exists()
        assert sensors.network_inputs_problem(sensor.id, set_id, load_network_set(set_id).inputs) is None
    for p in sensor.platforms:
        assert sensors.sensor_for_platform(p) is sensor


@pytest.mark.parametrize(("platform", "collection", "want"), [
    ("sentinel-2a", "sentinel-2-l2a", "S2_SR"), ("Sentinel-2B", None, "S2_SR"), ("sentinel-2c", None, "S2_SR"),
    ("landsat-8", "landsat-c2-l2", "L8_SR"), ("LANDSAT_9", None, "L9_SR"), (None, "sentinel-2-l2a", "S2_SR"),
    (None, "landsat-c2-l2", None), ("worldview-3", None, None),
])
def test_platform_names_of_the_public_catalogues(platform, collection, want) -> None:
    got = sensors.sensor_for_platform(platform, collection)
    assert (got.id if got else None) == want


def test_a_new_sensor_is_an_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HLS-like Sentinel-2 entry (another id, platform and collection) is found and read by the facts alone."""
    hls = dataclasses.replace(sensors.SENSORS["S2_SR"], id="HLS_S30", title="HLS S30", qc_code=22,
                              platforms=("hlss30",), stac_collections=("hls2-s30",))
    monkeypatch.setitem(sensors.SENSORS, "HLS_S30", hls)
    assert sensors.sensor_for_platform(None, "hls2-s30") is hls
    assert sensors.members("HLS_S30") == (hls,)
    assert [b.net_input for b in hls.bands_for(load_network_set("leaf_sl2p_s2_10m").inputs)][:4] == \
        ["B2", "B3", "B4", "B8"]
