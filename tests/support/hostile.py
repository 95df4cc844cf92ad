"""Hostile production messages for the attack tests: hypothesis strategies over the whole request (types,
unicode, sizes, geometry) and a fixed corpus of malformed Pub/Sub push envelopes."""

from __future__ import annotations

import base64
import json
from datetime import date, timedelta
from typing import Any

from hypothesis import strategies as st

BASE: dict[str, Any] = {"sensor": "S2_SR", "year": 2020, "months": [7], "tile_names": ["tile42_911"],
                        "resolution": 1000, "GCS_bucket": "leaf-out", "out_folder": "fuzz"}
KEYS = ("sensor", "year", "months", "start_dates", "end_dates", "tile_names", "regions", "prod_names", "resolution",
        "projection", "out_location", "GCS_bucket", "out_folder", "algorithm", "networks", "uncertainty", "scenes",
        "landcover", "rerun", "request_id", "warnings", "spatial_scale", "custom_region", "start_date", "bucket",
        "folder")

# Every code point class that has broken something: controls, NUL, DEL, bidi, zero-width, BOM, lone surrogates.
NASTY_CHARS = "\x00\x01\x1f\x7f\u202e\u200b\ufeff\u2028\ud800\udfff/\\.*?#[] é\U0001f600"
nasty_text = st.text(alphabet=st.sampled_from(NASTY_CHARS) | st.characters(), max_size=40)
big_text = st.integers(1_000, 200_000).map(lambda n: "x" * n)
scalars = (st.none() | st.booleans() | st.integers(-(10 ** 30), 10 ** 30) | st.integers(-3, 13)
           | st.floats(allow_nan=False, allow_infinity=False) | nasty_text | big_text
           | st.sampled_from(["S2_SR", "tile42", "2020-07-01", "2020-W27-3", "2099-01-01", "EPSG:3979", "gs://x/y",
                              "/etc/passwd", "overwrite", "local", "leaf_sl2p_s2_10m", "SL2P-CCRS"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(nasty_text | st.sampled_from(KEYS), inner, max_size=6), max_leaves=20)

coordinate = st.floats(-200, 200, allow_nan=False) | st.sampled_from([-180.0, 180.0, -90.0, 90.0, 0.0])
ring = st.lists(st.tuples(coordinate, coordinate).map(list), min_size=0, max_size=12).map(
    lambda pts: [*pts, pts[0]] if pts else pts)
box = st.tuples(st.floats(-180, 179), st.floats(-89, 89), st.floats(0.001, 360), st.floats(0.001, 180)).map(
    lambda b: [[[b[0], b[1]], [b[0] + b[2], b[1]], [b[0] + b[2], b[1] + b[3]], [b[0], b[1] + b[3]], [b[0], b[1]]]])
geometry = st.one_of(
    st.builds(lambda rings: {"type": "Polygon", "coordinates": rings}, st.lists(ring, max_size=3) | box),
    st.builds(lambda polys: {"type": "MultiPolygon", "coordinates": polys}, st.lists(box, max_size=3)),
    st.builds(lambda g, crs: {**g, "crs": crs}, box.map(lambda c: {"type": "Polygon", "coordinates": c}),
              json_values),
    json_values,
)
regions = st.dictionaries(nasty_text | st.sampled_from(["ottawa", "r1", "tile42"]), geometry, min_size=0,
                          max_size=3)

field_values: dict[str, st.SearchStrategy] = {
    "regions": regions,
    "resolution": st.sampled_from([1, 5, 10, 30, 1000, 0, -1, 10 ** 30, 2.5, True]) | json_values,
    "months": st.lists(st.integers(-2, 14), max_size=20) | json_values,
    "start_dates": st.lists(st.dates().map(str) | nasty_text, max_size=5) | json_values,
    "end_dates": st.lists(st.dates().map(str) | nasty_text, max_size=5) | json_values,
}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request close to valid, with some keys replaced, removed or added with hostile values."""
    req = dict(BASE)
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(KEYS) | nasty_text)
        if draw(st.integers(0, 5)) == 0:
            req.pop(key, None)
        else:
            req[key] = draw(field_values.get(key, json_values))
    if draw(st.booleans()):
        req.pop("tile_names", None)
        req["regions"] = draw(regions)
    return req


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Message bodies: hostile requests as JSON, arbitrary JSON, raw bytes, deep nesting, long numbers."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return json.dumps(draw(requests())).encode()
    if kind == 6:
        return json.dumps(draw(json_values)).encode()
    if kind == 7:
        return draw(st.binary(max_size=300))
    if kind == 8:
        depth = draw(st.integers(1, 3000))
        return b'{"sensor": ' + b"[" * depth + b"]" * depth + b"}"
    return b'{"year": ' + b"7" * draw(st.integers(30, 10_000)) + b"}"


attributes = st.one_of(st.just({}), st.dictionaries(st.sampled_from(["request_id", "x"]) | nasty_text,
                                                    nasty_text | st.sampled_from(["r-1", "ok", ""]), max_size=3))


def envelope(data: bytes, attributes: Any = None, message_id: Any = "m-1") -> dict[str, Any]:
    """A Pub/Sub push envelope, as the subscription POSTs it."""
    message: dict[str, Any] = {"data": base64.b64encode(data).decode(), "messageId": message_id,
                               "publishTime": "2026-01-01T00:00:00Z"}
    if attributes is not None:
        message["attributes"] = attributes
    return {"message": message, "subscription": "projects/leaf-test/subscriptions/push"}


def malformed_envelopes() -> list[tuple[str, Any]]:
    """(name, JSON body of the push) — envelopes no well-behaved publisher sends, each a past crash or loop."""
    valid = json.dumps(BASE).encode()
    return [
        ("attributes-list", envelope(valid, ["request_id", "r1"], "mal-1")),
        ("attributes-string", envelope(valid, "request_id=r1", "mal-2")),
        ("attribute-int", envelope(valid, {"request_id": 5}, "mal-3")),
        ("attribute-surrogate", envelope(valid, {"request_id": "\ud800"}, "mal-4")),
        ("attribute-huge", envelope(valid, {"request_id": "r" * 100_000}, "mal-5")),
        ("data-not-base64", {"message": {"data": "%%% not base64 %%%", "messageId": "mal-6"}, "subscription": "s"}),
        ("data-int", {"message": {"data": 12345, "messageId": "mal-7"}, "subscription": "s"}),
        ("data-object", {"message": {"data": {"sensor": "S2_SR"}, "messageId": "mal-8"}, "subscription": "s"}),
        ("data-empty", {"message": {"data": "", "messageId": "mal-10"}, "subscription": "s"}),
        ("message-id-int", envelope(b"{}", None, 11)),
        ("message-id-path", envelope(b"{}", None, "../../etc/mal-12")),
        ("message-id-huge", envelope(b"{}", None, "m" * 10_000 + "mal-13")),
        ("body-list", envelope(b"[1, 2, 3]", None, "mal-14")),
        ("body-latin1", envelope('{"sensor": "caf\u00e9"}'.encode("latin-1"), None, "mal-15")),
        ("body-deep", envelope(b"[" * 5000 + b"]" * 5000, None, "mal-16")),
        ("body-long-int", envelope(b'{"year": ' + b"9" * 5000 + b"}", None, "mal-17")),
        ("body-dup-keys", envelope(b'{"sensor": "S2_SR", "sensor": "L8_SR"}', None, "mal-18")),
        ("body-surrogate", envelope(json.dumps({**BASE, "out_folder": "a\ud800"}).encode(), None, "mal-19")),
        ("body-huge", envelope(json.dumps({**BASE, "months": [7] * 1_000_000}).encode(), None, "mal-20")),
        ("body-nul", envelope(b'{"sensor": "S2_SR\x00"}', None, "mal-21")),
        ("request-id-int", envelope(json.dumps({**BASE, "request_id": 5}).encode(), None, "mal-22")),
    ]


safe_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum() and not s.startswith("tile"))


@st.composite
def plausible_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Requests that are mostly valid, of every size: they reach the admission limits and the run record."""
    req: dict[str, Any] = {"sensor": draw(st.sampled_from(["S2_SR", "L8_SR", "LS_SR"])), "year": 2020,
                           "GCS_bucket": "leaf-out", "out_folder": "p/" + draw(safe_name),
                           "resolution": draw(st.sampled_from([1, 10, 20, 30, 100, 1000, 10_000]))}
    if draw(st.booleans()):
        req["months"] = draw(st.lists(st.integers(1, 12), min_size=1, max_size=12, unique=True))
    else:
        starts = draw(st.lists(st.dates(min_value=date(2019, 1, 1), max_value=date(2021, 12, 1)), min_size=1,
                               max_size=200))
        req["start_dates"] = [d.isoformat() for d in starts]
        req["end_dates"] = [(d + timedelta(days=draw(st.integers(0, 60)))).isoformat() for d in starts]
    if draw(st.booleans()):
        req["tile_names"] = draw(st.lists(st.sampled_from(["tile42", "tile43", "tile42_911", "tile33_411",
                                                           "tile99"]), min_size=1, max_size=4))
    else:
        req["regions"] = draw(st.dictionaries(safe_name, box.map(lambda c: {"type": "Polygon", "coordinates": c}),
                                              min_size=1, max_size=4))
    if draw(st.booleans()):
        req["prod_names"] = draw(st.lists(st.sampled_from(["LAI", "fCOVER", "fAPAR", "Albedo"]), min_size=1))
    if draw(st.booleans()):
        req["uncertainty"] = True
    return req
