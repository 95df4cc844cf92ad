"""Hostile requests: bounded decoding, strict fields, admission limits and who may write where.

Each case is one the service once crashed on, looped on, accepted silently or spent gigabytes on.
"""

from __future__ import annotations

import io
import json
import logging
import time
import tracemalloc
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from leaf_engine import logs
from leaf_engine.decoding import MAX_DEPTH, clip, decode_attributes, decode_json
from leaf_engine.errors import LeafError, RequestError
from leaf_engine.limits import Limits
from leaf_engine.naming import error_records_prefix, run_record_key
from leaf_engine.request import parse_request
from leaf_engine.service import RequestMessage, RequestService, ServiceConfig
from leaf_engine.sinks import LocalSink

TODAY = date(2026, 6, 1)
BUCKET = "leaf-out"
POLY = {"type": "Polygon", "coordinates": [[[-76, 45], [-75, 45], [-75, 46], [-76, 46], [-76, 45]]]}


def _raw(**extra: Any) -> dict[str, Any]:
    return {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42_911"], "resolution": 1000,
            "GCS_bucket": BUCKET, "out_folder": "prod", **extra}


def _problems(data: Any, **kw: Any) -> list[dict[str, Any]]:
    with pytest.raises(RequestError) as e:
        parse_request(data, today=TODAY, **kw)
    return [p.to_dict() for p in e.value.problems]


def _rules(data: Any, **kw: Any) -> str:
    return json.dumps(_problems(data, **kw))


# ------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("body, fragment", [
    (b'{"year": ' + b"9" * 5000 + b"}", "a number of 5,000 characters"),
    (b"[" * 900 + b"]" * 900, f"at most {MAX_DEPTH}"),
    (b'{"sensor": "S2_SR", "sensor": "L8_SR"}', "more than once"),
    (b'{"a": {"b": 1, "b": 2}}', "more than once"),
    (b'{"sensor": "\\ud800"}', "lone surrogate"),
    (b'{"\\udfff": 1}', "lone surrogate"),
    (b'{"year": NaN}', "JSON object"),
    (b'{"year": 1e999}', "JSON object"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"\xef\xbb\xbf{}", "JSON object"),  # a BOM is not JSON
    (b"", "JSON object"),
])
def test_hostile_bodies_are_refused_with_a_reason(body: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as e:
        decode_json(body, max_bytes=1 << 20)
    assert fragment in str(e.value)


def test_size_is_checked_before_parsing() -> None:
    body = json.dumps(_raw(months=[99] * 3_000_000)).encode()
    tracemalloc.start()
    with pytest.raises(RequestError, match="request_bytes"):
        parse_request(body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000  # nothing of the 12 MB body was parsed


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert decode_json(json.dumps({"a": "[" * 1000}).encode(), max_bytes=1 << 20) == {"a": "[" * 1000}


def test_attributes() -> None:
    assert decode_attributes(None) == ({}, [])
    assert decode_attributes({"request_id": "r1"}) == ({"request_id": "r1"}, [])
    got, problems = decode_attributes(["request_id", "r1"])
    assert got == {} and problems[0].key == "(attributes)"
    got, problems = decode_attributes({"request_id": 5, "ok": "y", "s": "\ud800"})
    assert got == {"ok": "y"} and len(problems) == 2


def test_clip_truncates_and_escapes() -> None:
    assert clip("short") == "short"
    long = clip("x" * 10_000)
    assert long.endswith("(truncated: 10,000 characters)") and len(long) < 300
    assert clip("a\ud800b") == "a\\ud800b"
    assert clip([1] * 10_000).endswith("characters as JSON)")
    assert "digits" in clip(10 ** 5000)
    json.dumps(clip({"k": "\udc80" * 3})).encode("utf-8")  # writable as UTF-8


def test_log_lines_survive_hostile_values() -> None:
    stream = io.StringIO()
    logger = logging.getLogger(logs.LOGGER_NAME)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger.addHandler(handler)
    try:
        logs.error("bad \ud800 message", request_id="\udfff", problems=["x" * 1_000_000], thing=object())
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    entry = json.loads(line)
    line.encode("utf-8")
    assert entry["message"] == "bad \\ud800 message" and entry["truncated"] is True
    assert len(line) < logs.MAX_LINE_CHARS


# ---------------------------------------------------------------------------------------- strict fields


@pytest.mark.parametrize("folder", ["a\x00b", "a\x7fb", "a\u202eb", "\ufeffa", "a\u200bb", "a b", "é", "a\nb",
                                    "a/./b", "x" * 1000, "a//b", "a#b", "a*b"])
def test_out_folder_safe_character_set(folder: str) -> None:
    assert any(p["key"] == "out_folder" for p in _problems(_raw(out_folder=folder)))


def test_region_names_and_object_key_length() -> None:
    assert "regions.bad" in _rules(_raw(tile_names=None, regions={"bad\n": POLY}))
    assert "at most 100" in _rules(_raw(tile_names=None, regions={"r" * 300: POLY}))
    deep = "/".join(["abcdefghij" * 12] * 7)  # 846 characters: allowed, but the keys would exceed 1,024 bytes
    found = _problems(_raw(tile_names=None, regions={"r" * 100: POLY}, out_folder=deep))
    assert any("1024" in p["rule"] and p["key"] == "out_folder" for p in found), found


@pytest.mark.parametrize("overrides, key, fragment", [
    ({"start_dates": ["2020-W27-3"], "end_dates": ["2020-07-30"]}, "start_dates", "YYYY-MM-DD"),
    ({"start_dates": ["20200701"], "end_dates": ["2020-07-30"]}, "start_dates", "YYYY-MM-DD"),
    ({"start_dates": ["２０２０-07-01"], "end_dates": ["2020-07-30"]}, "start_dates", "YYYY-MM-DD"),
    ({"start_dates": ["2026-07-01"], "end_dates": ["2026-07-30"]}, "start_dates", "future"),
    ({"start_dates": ["2020-07-01", "2020-07-01"], "end_dates": ["2020-07-30", "2020-07-30"]},
     "start_dates/end_dates", "twice"),
    ({"start_dates": "2020-07-01", "end_dates": ["2020-07-30"]}, "start_dates", "list of one"),
    ({"tile_names": "tile42"}, "tile_names", "list of one"),
    ({"prod_names": "LAI"}, "prod_names", "list of one"),
    ({"tile_names": None, "regions": {"r": {**POLY, "crs": {"type": "name"}}}}, "regions.r", "'crs'"),
    ({"tile_names": None, "regions": {"r": {"type": "Feature", "properties": {}, "geometry": {**POLY, "crs": 1}}}},
     "regions.r", "'crs'"),
    ({"request_id": 5}, "request_id", "string"),
    ({"request_id": True}, "request_id", "string"),
    ({"request_id": "ok\n"}, "request_id", "string"),
    ({"rerun": ["overwrite"]}, "rerun", "one of"),
    ({"projection": "+proj=longlat +nadgrids=/etc/passwd"}, "projection", "authority code"),
    ({"projection": "EPSG:4978"}, "projection", "2D projected or geographic"),  # geocentric
    ({"projection": "EPSG:5714"}, "projection", "2D projected or geographic"),  # vertical
    ({"tile_names": None, "regions": {"south": {"type": "Polygon", "coordinates": [  # far outside the LCC grid
        [[-10, -89], [10, -89], [10, -80], [-10, -80], [-10, -89]]]}}}, "regions.south", "pixels_per_job"),
    ({"networks": "a" * 100_000}, "networks", "at most 1024"),
    ({"sensor": "\ud800"}, "sensor", "lone surrogate"),
])
def test_strict_rules(overrides: dict, key: str, fragment: str) -> None:
    body = json.dumps(_raw(**overrides)).encode()
    found = _problems(body)
    assert any(p["key"] == key and fragment in p["rule"] for p in found), found


def test_legacy_single_date_keys_still_take_one_date() -> None:
    req = parse_request({k: v for k, v in _raw().items() if k != "months"} | {"start_date": "2020-07-01",
                                                                             "end_date": "2020-07-31"}, today=TODAY)
    assert req.windows() == [(date(2020, 7, 1), date(2020, 7, 31))]


def test_the_service_never_names_a_local_file() -> None:
    assert "shipped set" in _rules(_raw(networks="/etc/passwd"), service=True)
    assert "LEAF_ALLOWED_NETWORKS" in _rules(_raw(networks="gs://elsewhere/n.json"), service=True)
    assert "local engine" in _rules(_raw(scenes="/etc/passwd"), service=True)
    assert "local engine" in _rules(_raw(landcover="/data/lc.tif"), service=True)
    ok = parse_request(_raw(networks="gs://nets/team/s2.json"), today=TODAY, service=True,
                       network_prefixes=("gs://nets/team",))
    assert ok.networks == "gs://nets/team/s2.json"
    assert "shipped set" in _rules(_raw(networks="gs://nets/team/../x.json"), service=True,
                                   network_prefixes=("gs://nets/team",))
    assert parse_request(_raw(networks="leaf_sl2p_s2_10m"), today=TODAY, service=True).networks == "leaf_sl2p_s2_10m"


def test_problems_are_capped() -> None:
    found = _problems(_raw(start_dates=["2020-13-01"] * 5000, end_dates=["2020-07-30"] * 5000))
    assert len(found) == 101 and "4900 more" in found[-1]["value"]


# ------------------------------------------------------------------------------------------ admission limits


def _world() -> dict:  # half the world: wider ones are refused as antimeridian-crossing before their area counts
    return {"type": "Polygon", "coordinates": [[[-170, -80], [10, -80], [10, 80], [-170, 80], [-170, -80]]]}


@pytest.mark.parametrize("overrides, limit", [
    ({"tile_names": None, "regions": {"w": _world()}, "resolution": 30}, "region_area_km2"),
    ({"tile_names": None, "regions": {"w": _world()}, "resolution": 10}, "region_area_km2"),
    ({"tile_names": ["tile42"], "resolution": 5}, "pixels_per_job"),
    ({"tile_names": None, "regions": {f"r{i}": POLY for i in range(600)}}, "regions"),
    ({"months": None, "year": None, "start_dates": [f"2020-01-{d:02d}" for d in range(1, 29)] * 5,
      "end_dates": [f"2020-{m:02d}-28" for m in range(2, 7) for _ in range(28)]}, "windows"),
])
def test_admission_limits_refuse_fast_and_small(overrides: dict, limit: str) -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    found = _problems(_raw(**overrides))
    elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hit = [p for p in found if f"admission limit {limit}" in p["rule"]]
    assert hit, found
    assert f"LEAF_LIMIT_{limit.upper()}" in hit[0]["rule"] and ("split" in hit[0]["rule"] or "send" in
                                                                   hit[0]["rule"] or "simplify" in hit[0]["rule"])
    assert elapsed < 5 and peak < 50_000_000


def test_counts_multiply_out_without_building_the_plan() -> None:
    limits = Limits(objects=100, pixels_per_request=1e20)
    tiles = ["tile42", "tile43"]
    found = _problems(_raw(tile_names=tiles, months=list(range(1, 13)), resolution=10), limits=limits)
    objects = [p for p in found if "limit objects" in p["rule"]]
    # 2 tiles × 12 months × 6 files × 9 shards (90,000 px at 10 m / 32,768 → 3 × 3)
    assert objects and objects[0]["value"] == 2 * 12 * 6 * 9


def test_antimeridian_polygons_are_refused_clearly() -> None:
    crossing = {"type": "Polygon", "coordinates": [[[170, 50], [-170, 50], [-170, 60], [170, 60], [170, 50]]]}
    found = _problems(_raw(tile_names=None, regions={"aleutians": crossing}))
    assert "antimeridian" in found[0]["rule"] and "MultiPolygon" in found[0]["rule"]


def test_limits_from_env_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Limits.from_env({"LEAF_LIMIT_PIXELS_PER_JOB": "2e10"}).pixels_per_job == 2e10
    assert Limits.from_env({}, jobs=3).jobs == 3
    with pytest.raises(LeafError, match="unknown admission limit"):
        Limits.from_env({"LEAF_LIMIT_PIXELZ": "1"})
    with pytest.raises(LeafError, match="positive"):
        Limits.from_env({"LEAF_LIMIT_JOBS": "-1"})
    assert Limits.parse_option("shards-per-file=4") == ("shards_per_file", 4)
    monkeypatch.setenv("LEAF_LIMIT_WINDOWS", "1")
    assert "limit windows" in _rules(_raw(months=[6, 7]))


def test_leaf_validate_applies_limits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from leaf_engine.cli import main

    path = tmp_path / "r.json"
    path.write_text(json.dumps(_raw(months=[6, 7])))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["validate", str(path), "--limit", "windows=1"]) == 2
    assert "admission limit windows" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- who writes where


class Buckets:
    def __init__(self, root: Path):
        self.root = root
        self.sinks: dict[str, LocalSink] = {}

    def __call__(self, bucket: str) -> LocalSink:
        return self.sinks.setdefault(bucket, LocalSink(self.root / bucket))


def _service(tmp_path: Path, **env: str) -> tuple[RequestService, Buckets, list]:
    buckets, starts = Buckets(tmp_path), []
    config = ServiceConfig.from_env({"LEAF_BACKEND": "external", "LEAF_ERRORS_URI": "gs://leaf-errors/bad", **env})
    return RequestService(config, sink_for=buckets, starter=lambda r, p, s: starts.append(p) or ["t"]), buckets, \
        starts


def _msg(raw: Any, mid: str = "m1", **attributes: str) -> RequestMessage:
    return RequestMessage(raw if isinstance(raw, bytes) else json.dumps(raw).encode(), attributes, mid)


def test_allowed_outputs(tmp_path: Path) -> None:
    service, buckets, starts = _service(tmp_path, LEAF_ALLOWED_OUTPUTS="leaf-out/team-a, other-bucket")
    assert service.handle(_msg(_raw(out_folder="team-a/x"))).status == "started"
    assert service.handle(_msg(_raw(GCS_bucket="other-bucket", out_folder="y"))).status == "started"
    refused = service.handle(_msg(_raw(out_folder="team-b/x"), "m2"))
    assert refused.status == "invalid" and "LEAF_ALLOWED_OUTPUTS" in refused.problems[0]["rule"]
    assert refused.record_uri and "leaf-errors" in refused.record_uri  # not written into team-b's folder
    assert not buckets(BUCKET).list("team-b")
    assert len(starts) == 2


def test_a_request_may_not_overwrite_another_requests_outputs(tmp_path: Path) -> None:
    service, _buckets, starts = _service(tmp_path)
    assert service.handle(_msg(_raw(), "m1")).status == "started"
    other = service.handle(_msg(_raw(prod_names=["LAI"]), "m2"))  # a different request, same LAI file names
    assert other.status == "invalid" and "overwrite another request's outputs" in other.problems[0]["rule"]
    # the same request re-sent with rerun overwrite, or under another request id, is the same production
    assert service.handle(_msg(_raw(rerun="overwrite"), "m3")).status == "started"
    assert service.handle(_msg(_raw(), "m4", request_id="again")).status == "started"
    # a request elsewhere in the bucket is unaffected
    assert service.handle(_msg(_raw(out_folder="other"), "m5")).status == "started"
    assert len(starts) == 4


def test_a_request_id_cannot_be_reused_for_another_request(tmp_path: Path) -> None:
    """A publisher that names a request id first must not make a later, different request a silent duplicate."""
    service, _buckets, starts = _service(tmp_path)
    assert service.handle(_msg(_raw(), "m1", request_id="rid-1")).status == "started"
    other = service.handle(_msg(_raw(months=[8]), "m2", request_id="rid-1"))
    assert other.status == "invalid" and other.problems[0]["key"] == "request_id"
    assert "different request" in other.problems[0]["rule"]
    assert service.handle(_msg(_raw(), "m3", request_id="rid-1")).status == "duplicate"  # the same one again
    assert len(starts) == 1


def test_an_invalid_message_never_replaces_a_run_record(tmp_path: Path) -> None:
    service, buckets, _starts = _service(tmp_path)
    first = service.handle(_msg(_raw(), "m1", request_id="run-1"))
    assert first.status == "started"
    before = buckets(BUCKET).read_json(run_record_key("prod", "run-1"))
    bad = service.handle(_msg(_raw(sensor="S9"), "m2", request_id="run-1"))
    assert bad.status == "invalid"
    assert buckets(BUCKET).read_json(run_record_key("prod", "run-1")) == before


def test_every_message_gets_its_own_error_record(tmp_path: Path) -> None:
    service, buckets, _ = _service(tmp_path)
    for mid in ("a", "b", "c/../d", "\ud800", ""):
        assert service.handle(RequestMessage(b"", {}, mid)).status == "invalid"
    keys = buckets("leaf-errors").list("bad/_errors/")
    assert len(keys) == 5, keys
    for key in keys:
        record = json.loads((tmp_path / "leaf-errors" / key).read_text(encoding="utf-8"))
        assert record["problems"] and record["error_id"].startswith("msg-")
    # a known request id names the records, so `leaf status` finds them by listing
    service.handle(_msg(_raw(sensor="S9"), "x1", request_id="req-7"))
    service.handle(_msg(_raw(sensor="S9"), "x2", request_id="req-7"))
    assert len(buckets(BUCKET).list(error_records_prefix("prod", "req-7"))) == 2


def test_a_crash_inside_the_service_is_recorded_not_redelivered(tmp_path: Path) -> None:
    service, buckets, _ = _service(tmp_path)

    def boom(*_a: Any) -> None:
        raise ZeroDivisionError("a bug")

    service.start = boom  # type: ignore[method-assign]
    result = service.handle(_msg(_raw()))
    assert result.status == "invalid" and result.problems[0]["key"] == "(service)"
    assert buckets("leaf-errors").list("bad/_errors/") or buckets(BUCKET).list("prod/_errors/")


def test_long_outlines_are_refused_before_they_are_gridded() -> None:
    """Gridding densifies an outline every 0.01°: 500 regions spanning the globe's width would take minutes."""
    def strip(i: int) -> dict:
        y = 40 + (i % 40) * 0.01
        return {"type": "Polygon", "coordinates": [[[-179.9, y], [-0.1, y], [-0.1, y + 0.005], [-179.9, y + 0.005],
                                                    [-179.9, y]]]}

    t0 = time.perf_counter()
    found = _problems(_raw(tile_names=None, regions={f"r{i}": strip(i) for i in range(500)}, resolution=10_000))
    assert any("region_outline_deg" in p["rule"] for p in found) and time.perf_counter() - t0 < 5


def test_a_region_is_gridded_once_per_request() -> None:
    req = parse_request(_raw(tile_names=None, regions={"ottawa": POLY}, months=list(range(1, 13))), today=TODAY)
    grids = {id(job.geobox()) for job in req.jobs()}
    assert len(req.jobs()) == 12 and len(grids) == 1


def test_leaf_validate_reads_no_more_than_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from leaf_engine.cli import main

    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(3 * 1024 ** 3)  # a sparse 3 GB file: refused without being read
    tracemalloc.start()
    assert main(["validate", str(path)]) == 2
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "request_bytes" in capsys.readouterr().err and peak < 20_000_000
