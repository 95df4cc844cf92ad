"""Every Earth Engine graph LEAF exports, checked call by call against the algorithm list that ships inside
earthengine-api (the one the stand-in serves): each invoked algorithm exists, takes every argument it is given,
and gets every argument it requires.

The graphs are the export bodies the client actually sent to the stand-in, for each request sensor ×
SL2P / SL2P-CCRS × with / without uncertainty × a region inside NALCMS (a CCRS tile) and one outside it (France).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import pytest

from leaf_engine import sensors
from leaf_engine.backends import gee
from leaf_engine.request import parse_request
from tests.support.ee_standin import EEStandIn

FRANCE = {"type": "Polygon", "coordinates": [[[1.215, 43.638], [1.243, 43.638], [1.243, 43.661], [1.215, 43.661],
                                               [1.215, 43.638]]]}
REGIONS = {"inside NALCMS": {"tile_names": ["tile42"]},
           "outside NALCMS": {"regions": {"bouconne": FRANCE}, "projection": "EPSG:32631"}}


@cache
def algorithms() -> dict[str, dict[str, Any]]:
    doc = json.loads(resources.files("ee").joinpath("tests", "algorithms.json").read_text())
    return {a["name"].removeprefix("algorithms/"): a for a in doc["algorithms"]}


def invocations(expression: dict) -> list[tuple[str, set[str]]]:
    """(function name, argument names) of every invocation anywhere in a serialised graph, including the bodies
    of mapped functions (which are values of the graph too)."""
    found: list[tuple[str, set[str]]] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            f = v.get("functionInvocationValue")
            if isinstance(f, dict) and "functionName" in f:
                found.append((f["functionName"], set(f.get("arguments", {}))))
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(expression["values"])
    return found


def problems(expression: dict) -> list[str]:
    out = []
    for name, args in invocations(expression):
        alg = algorithms().get(name)
        if alg is None:
            out.append(f"{name}: no such algorithm")
            continue
        declared = {a["argumentName"] for a in alg.get("arguments", [])}
        required = {a["argumentName"] for a in alg.get("arguments", []) if not a.get("optional", False)}
        if args - declared:
            out.append(f"{name}: undeclared arguments {sorted(args - declared)}")
        if required - args:
            out.append(f"{name}: missing required arguments {sorted(required - args)}")
    return sorted(set(out))


def _cases() -> list[tuple[str, str, bool, str, str | None]]:
    cases = []
    for sensor in sensors.REQUEST_SENSORS:
        ms = sensors.members(sensor)
        for algorithm in ("SL2P", "SL2P-CCRS"):
            if not all(algorithm in m.networks for m in ms):
                continue
            for unc in (False, True):
                for region in REGIONS:
                    cases.append((sensor, algorithm, unc, region, None))
    # Every other shipped set a sensor supplies the inputs of (the S2 10 m sets).
    for sensor in sensors.REQUEST_SENSORS:
        ms = sensors.members(sensor)
        if len(ms) != 1:
            continue
        for set_id, algorithm in sensors.extra_network_sets(ms[0]):
            for region in REGIONS:
                cases.append((sensor, algorithm, True, region, set_id))
    return cases


CASES = _cases()


def test_the_cases_cover_every_sensor_algorithm_and_region() -> None:
    got = {(s, a, u, r) for s, a, u, r, _ in CASES}
    assert len({c[0] for c in got}) == len(sensors.REQUEST_SENSORS)
    assert {c[1] for c in got} == {"SL2P", "SL2P-CCRS"} and {c[3] for c in got} == set(REGIONS)


def test_the_checker_catches_a_wrong_call() -> None:
    bad = {"result": "0", "values": {"0": {"functionInvocationValue": {"functionName": "Image.unmask", "arguments": {
        "value": {"constantValue": 0}, "sameFootprint": {"constantValue": False}, "footprint": {}}}}}}
    assert problems(bad) == ["Image.unmask: missing required arguments ['input']",
                             "Image.unmask: undeclared arguments ['footprint']"]
    assert problems({"result": "0", "values": {"0": {"functionInvocationValue": {"functionName": "Image.nope"}}}}) \
        == ["Image.nope: no such algorithm"]


@pytest.mark.parametrize(("sensor", "algorithm", "uncertainty", "region", "networks"), CASES,
                         ids=["-".join(str(x) for x in c if x is not None) for c in CASES])
def test_every_exported_graph_uses_only_listed_algorithms(ee_standin: EEStandIn, sensor: str, algorithm: str,
                                                          uncertainty: bool, region: str,
                                                          networks: str | None) -> None:
    year = 2011 if sensor in ("L5_SR", "L7_SR") else 2022
    raw = {"sensor": sensor, "year": year, "months": [7], "GCS_bucket": "leaf-out", "out_folder": "runs/a",
           "prod_names": ["LAI", "fCOVER", "fAPAR", "Albedo", "partition"], "algorithm": algorithm,
           "uncertainty": uncertainty, **REGIONS[region]}
    if networks:
        raw["networks"] = networks
        raw["resolution"] = 10
    req = parse_request(raw)
    gee.start_exports(req, project="leaf-test", pacer=gee.StartPacer(per_second=0),
                      backoff=gee.Backoff(attempts=2, base_s=0.0))
    assert ee_standin.exports, "no export was started"
    for body in ee_standin.exports:
        assert problems(body["expression"]) == [], body.get("description")
    names = {n for body in ee_standin.exports for n, _ in invocations(body["expression"])}
    if algorithm == "SL2P-CCRS":
        assert "Image.unmask" in names
