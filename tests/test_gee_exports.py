"""Earth Engine exports, against the local stand-in: what is exported, where, on which grid, and idempotence."""


from __future__ import annotations

import json
import subprocess
import sys

import pytest

from leaf_engine import grid, products
from leaf_engine.backends import gee
from leaf_engine.backends.gee import exports, session
from leaf_engine.errors import TransientError
from leaf_engine.plan import EE_FILE_DIMENSIONS, make_plan
from leaf_engine.request import parse_request
from tests.support.ee_standin import DROP, EEStandIn, export_summary, find_calls

TILES = ["tile42", "tile43"]
REQUEST = {"sensor": "S2_SR", "year": 2020, "months": [6, 7, 8], "tile_names": TILES, "GCS_bucket": "leaf-out",
           "out_folder": "runs/a", "prod_names": ["LAI", "fAPAR"]}
NO_WAIT = gee.StartPacer(per_second=0)
FAST = gee.Backoff(attempts=4, base_s=0.0)


def _start(req, **kw):
    return gee.start_exports(req, project="leaf-test", pacer=NO_WAIT, backoff=FAST, **kw)


@pytest.fixture
def req():
    return parse_request(REQUEST)


def test_two_tiles_three_months_start_one_export_per_planned_file(ee_standin: EEStandIn, req) -> None:
    plan = make_plan(req)
    started = _start(req)

    expected = sorted(f.name.prefix for f in plan.files)
    assert len(expected) == len(TILES) * 3 * len(req.output_products())
    assert sorted(export_summary(b)["prefix"] for b in ee_standin.exports) == expected
    assert sorted(s.prefix for s in started) == expected
    assert {s.state for s in started} == {gee.STARTED}
    assert {s.task_id for s in started} == {op.rsplit("/", 1)[-1] for op in ee_standin.operations}


def test_exports_write_cogs_on_the_tile_grid(ee_standin: EEStandIn, req) -> None:
    _start(req)
    res = req.resolution
    for body in ee_standin.exports:
        s = export_summary(body)
        token = s["prefix"].rsplit("_", 2)[-2]
        tile = grid.tile(s["prefix"].split("/")[2])
        x0, y0, x1, y1 = tile.bounds
        assert s["bucket"] == "leaf-out"
        assert s["crs"] == "EPSG:3979"
        # Anchored on the tile's NW corner at the requested resolution: neighbours share pixel edges.
        assert s["crs_transform"] == [res, 0, x0, 0, -res, y1]
        assert s["region"]["coordinates"] == [x0, y0, x1, y1]
        assert s["region"]["crs"]["arguments"]["crs"] == "EPSG:3979"
        assert s["region"]["geodesic"] is False
        clips = {c["geometry"]["function"] for c in find_calls(body["expression"], "Image.clip")}
        assert clips == {"GeometryConstructors.Rectangle"}  # a tile is its rectangle: no polygon clip
        assert s["file_format"] == "GEO_TIFF" and s["cloud_optimized"] is True
        assert s["no_data"] == products.product(token).nodata
        assert s["file_dimensions"] == {"width": EE_FILE_DIMENSIONS, "height": EE_FILE_DIMENSIONS}
        assert s["max_pixels"] >= (900_000 // 10) ** 2


def test_neighbouring_tiles_align_pixel_for_pixel(ee_standin: EEStandIn, req) -> None:
    _start(req)
    transforms = {export_summary(b)["prefix"].split("/")[2]: export_summary(b)["crs_transform"]
                  for b in ee_standin.exports}
    a, b = transforms["tile42"], transforms["tile43"]
    assert a[0] == b[0] and a[4] == b[4]
    assert (b[2] - a[2]) % a[0] == 0 and (b[5] - a[5]) % a[0] == 0
    # tile43 starts where tile42's last column ends.
    width = make_plan(req).files[0].width
    assert a[2] + width * a[0] == b[2]


def test_rerun_starts_nothing_new_and_reuses_request_ids(ee_standin: EEStandIn, req) -> None:
    first = _start(req)
    ids = sorted(b["requestId"] for b in ee_standin.exports)
    assert len(set(ids)) == len(ids)

    second = _start(parse_request(REQUEST))

    assert len(ee_standin.exports) == len(first)
    assert sorted(b["requestId"] for b in ee_standin.duplicates) == ids
    assert {s.state for s in second} == {gee.ALREADY_STARTED}
    # The earlier tasks are found again by their description.
    assert {s.prefix: s.task_id for s in second} == {s.prefix: s.task_id for s in first}


def test_rerun_against_a_server_that_returns_the_first_operation(ee_standin: EEStandIn, req) -> None:
    ee_standin.duplicate = "same"
    first = _start(req)
    second = _start(req)
    assert len(ee_standin.exports) == len(first)
    assert [s.task_id for s in second] == [s.task_id for s in first]


def test_request_ids_depend_on_request_job_and_product() -> None:
    a = exports.ee_request_id("r1", "tile42_2020_Jun", "LAI")
    assert a == exports.ee_request_id("r1", "tile42_2020_Jun", "LAI")
    others = {exports.ee_request_id("r2", "tile42_2020_Jun", "LAI"),
              exports.ee_request_id("r1", "tile42_2020_Jul", "LAI"),
              exports.ee_request_id("r1", "tile42_2020_Jun", "QC")}
    assert a not in others and len(others) == 3
    assert len(a) <= 60 and set(a) <= set("0123456789abcdef-")


def test_plan_restricts_what_is_started(ee_standin: EEStandIn, req) -> None:
    plan = make_plan(req)
    keep = [f for f in plan.files if f.name.region == "tile43" and f.name.period == "Jul"]
    plan = type(plan)(plan.request_id, plan.jobs, keep)
    started = _start(req, plan=plan)
    assert sorted(s.prefix for s in started) == sorted(f.name.prefix for f in keep)
    assert len(ee_standin.exports) == len(keep)


def test_429_and_503_are_retried(ee_standin: EEStandIn, req) -> None:
    ee_standin.fail_next(429, times=2)
    ee_standin.fail_next(503, times=1)
    started = _start(req)
    assert len(ee_standin.exports) == len(started) == len(make_plan(req).files)
    statuses = [r.status for r in ee_standin.export_requests()]
    assert statuses[:3] == [429, 429, 503]


def test_dropped_connections_are_retried(ee_standin: EEStandIn, req) -> None:
    ee_standin.fail_next(DROP, times=2)
    started = _start(req)
    assert len(ee_standin.exports) == len(started) == len(make_plan(req).files)
    assert [r.status for r in ee_standin.export_requests()][:2] == [DROP, DROP]


def test_persistent_503_raises_a_transient_error(ee_standin: EEStandIn, req) -> None:
    ee_standin.fail_next(503, times=100)
    with pytest.raises(TransientError, match="503"):
        _start(req)
    assert len(ee_standin.export_requests()) == FAST.attempts


def test_a_rejected_export_raises_and_says_which(ee_standin: EEStandIn, req) -> None:
    ee_standin.fail_next(400, times=1)
    with pytest.raises(session.EarthEngineError, match="tile42_2020_Jun_LAI"):
        _start(req)


def test_pacer_spaces_starts() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = gee.StartPacer(per_second=4, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        pacer.wait()
    assert slept == [0.25, 0.25]


def test_backoff_grows_exponentially_and_is_capped() -> None:
    b = gee.Backoff(base_s=1.0, max_s=5.0)
    assert all(0 <= b.delay(0) <= 1 for _ in range(20))
    assert max(b.delay(10) for _ in range(200)) <= 5.0


def test_task_states_read_operations(ee_standin: EEStandIn, req) -> None:
    started = _start(req)
    ee_standin.set_state(started[0].task_id, "SUCCEEDED")
    states = gee.task_states([started[0].task_id, started[1].task_id], project="leaf-test")
    assert states[started[0].task_id]["state"] == "SUCCEEDED"
    assert states[started[1].task_id]["state"] == "PENDING"
    assert len(gee.task_states(None, project="leaf-test")) == len(started)


def test_leaf_ee_url_must_be_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_EE_URL", "http://earthengine.example.com")
    with pytest.raises(session.EarthEngineError, match="loopback"):
        session.loopback_url()
    for ok in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"):
        monkeypatch.setenv("LEAF_EE_URL", ok)
        assert session.loopback_url() == ok


def test_export_needs_a_bucket() -> None:
    req = parse_request({**REQUEST, "out_location": "local", "GCS_bucket": None})
    with pytest.raises(session.EarthEngineError, match="GCS_bucket"):
        exports.export_specs(req.jobs()[0], EE_FILE_DIMENSIONS)


def test_importing_leaf_engine_does_not_import_ee() -> None:
    code = "import sys, leaf_engine.backends.gee, leaf_engine.cli.gee_cmds; print('ee' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_custom_region_in_another_crs_exports_its_footprint_grid(ee_standin: EEStandIn) -> None:
    poly = {"type": "Polygon", "coordinates": [[[-75.9, 45.2], [-75.5, 45.2], [-75.5, 45.5], [-75.9, 45.5],
                                                [-75.9, 45.2]]]}
    req = parse_request({"sensor": "S2_SR", "start_dates": ["2021-06-01"], "end_dates": ["2021-06-20"],
                         "regions": {"ottawa": poly}, "projection": "EPSG:32618", "resolution": 20,
                         "GCS_bucket": "leaf-out", "prod_names": ["LAI"], "algorithm": "SL2P-CCRS"})
    started = _start(req)
    gb = req.jobs()[0].geobox()
    assert sorted(s.product for s in started) == ["Date", "LAI", "Partition", "QC"]
    for body in ee_standin.exports:
        s = export_summary(body)
        assert s["prefix"].startswith("ottawa/2021/ottawa_2021_20210601-20210620_")
        assert s["crs"] == "EPSG:32618"
        t = gb.affine
        assert s["crs_transform"] == [t.a, t.b, t.c, t.d, t.e, t.f]
        assert t.c % 20 == 0 and t.f % 20 == 0  # on the CRS's resolution-aligned grid
        bb = gb.boundingbox
        assert s["region"]["coordinates"] == [bb.left, bb.bottom, bb.right, bb.top]
        # Pixels outside the polygon are no data: the job image is clipped to it; CCRS reads NALCMS.
        clip_geometries = {c["geometry"]["function"] for c in find_calls(body["expression"], "Image.clip")}
        assert clip_geometries == {"GeometryConstructors.Rectangle", "GeometryConstructors.Polygon"}
        assert "USGS/NLCD_RELEASES/2020_REL/NALCMS" in json.dumps(body["expression"])


def test_duplicate_detection_never_swallows_rate_limits() -> None:
    class Resp:
        def __init__(self, status: int):
            self.status = status

    def error(status: int, message: str) -> Exception:
        cause = Exception("http")
        cause.resp = Resp(status)  # type: ignore[attr-defined]
        try:
            raise cause
        except Exception:
            try:
                raise RuntimeError(message)  # the client re-raises inside the except block
            except RuntimeError as e:
                return e

    assert exports.is_duplicate_start(error(409, "whatever"))
    assert exports.is_duplicate_start(error(400, "Task with requestId abc already exists"))
    assert not exports.is_duplicate_start(error(429, "too many requests already running"))
    assert not exports.is_duplicate_start(error(400, "Invalid region"))
