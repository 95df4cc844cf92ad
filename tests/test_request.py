"""Production request: normalisation, legacy spellings, every problem listed, jobs and ids."""

from datetime import date

import pytest

from leaf_engine.errors import RequestError
from leaf_engine.request import gcs_bucket_problem, month_window, parse_request

TODAY = date(2026, 11, 25)
BASE = {"sensor": "S2_SR", "year": 2020, "months": [6], "tile_names": ["tile42"], "GCS_bucket": "leaf-out"}
POLY = {"type": "Polygon", "coordinates": [[[1.2, 43.6], [1.3, 43.6], [1.3, 43.7], [1.2, 43.7], [1.2, 43.6]]]}


def parse(**overrides):
    data = {**BASE, **overrides}
    return parse_request({k: v for k, v in data.items() if v is not None}, today=TODAY)


def problems(**overrides) -> list[tuple[str, str]]:
    with pytest.raises(RequestError) as e:
        parse(**overrides)
    return [(p.key, p.rule) for p in e.value.problems]


def test_defaults_are_filled_and_normalised():
    d = parse(sensor="s2_sr").to_dict()
    assert d["sensor"] == "S2_SR"
    assert d["resolution"] == 20 and d["projection"] == "EPSG:3979" and d["out_location"] == "storage"
    assert d["prod_names"] == ["LAI", "fCOVER", "fAPAR", "Albedo"]
    assert d["algorithm"] == "SL2P" and d["uncertainty"] is False and d["rerun"] == "skip_existing"
    assert d["warnings"] == [] and len(d["request_id"]) == 20
    assert parse(sensor="L8_SR", year=2015).resolution == 30


def test_legacy_keys_are_accepted_and_reported():
    req = parse_request(
        {
            "sensor": "S2_SR",
            "year": 2020,
            "months": [6],
            "tile_names": ["tile42"],
            "bucket": "leaf-out",
            "folder": "v1",
            "spatial_scale": 20,
        },
        today=TODAY,
    )
    assert (req.GCS_bucket, req.out_folder, req.resolution) == ("leaf-out", "v1", 20)
    assert req.warnings == [
        "'bucket' is deprecated: use 'GCS_bucket'",
        "'folder' is deprecated: use 'out_folder'",
        "'spatial_scale' is deprecated: use 'resolution'",
    ]
    assert req.request_id == parse(out_folder="v1").request_id  # same request, whatever the spelling


def test_legacy_dates_and_custom_region():
    req = parse_request(
        {
            "sensor": "L8_SR",
            "start_date": "2020-06-01",
            "stop_date": "2020-06-10",
            "custom_region": POLY,
            "out_location": "local",
        },
        today=TODAY,
    )
    assert req.windows() == [(date(2020, 6, 1), date(2020, 6, 10))]
    assert list(req.regions) == ["custom_region"]
    assert len(req.warnings) == 3


def test_legacy_and_new_key_together_is_a_problem():
    assert ("bucket", "legacy key 'bucket' conflicts with 'GCS_bucket'; give only 'GCS_bucket'") in problems(
        bucket="other"
    )


def test_every_problem_is_listed_at_once():
    with pytest.raises(RequestError) as e:
        parse_request(
            {
                "sensor": "MODIS",
                "year": 2020,
                "months": [13],
                "tile_names": ["tile99"],
                "GCS_bucket": "Bad..Bucket",
                "prod_names": ["LAI", "NDVI"],
                "resolution": 0,
                "projection": "EPSG:999999",
                "sensro": 1,
                "out_location": "drive",
            },
            today=TODAY,
        )
    keys = [p.key for p in e.value.problems]
    assert keys == [
        "sensro",
        "sensor",
        "months",
        "tile_names",
        "prod_names",
        "resolution",
        "projection",
        "out_location",
        "GCS_bucket",
    ]
    text = str(e.value)
    assert "did you mean 'sensor'" in text and "'tile99'" in text and "13" in text and "Drive" in text


@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        ({"sensor": "L5_SR", "year": 2015}, "year", "outside the life of L5_SR"),
        ({"sensor": "L9_SR", "year": 2019}, "year", "outside the life of L9_SR"),
        ({"sensor": "S2_SR", "year": 2016}, "year", "outside the life of S2_SR"),
        ({"sensor": "L7_SR", "year": 2024}, "year", "outside the life of L7_SR"),
        ({"year": 2031}, "year", "between 1984 and 2026"),
        ({"year": "2020"}, "year", "integer"),
        ({"months": [0]}, "months", "1..12"),
        ({"months": [-1, 6]}, "months", "only entry"),
        ({"months": [6, 6]}, "months", "repeat"),
        ({"months": []}, "months", "non-empty"),
        ({"months": None, "year": None}, "months", "required"),
        ({"start_dates": ["2020-06-10"], "end_dates": ["2020-06-01"]}, "end_dates", "before its start"),
        ({"start_dates": ["2020-06-01", "2020-07-01"], "end_dates": ["2020-06-30"]}, "end_dates", "as many"),
        ({"start_dates": ["2020-13-01"], "end_dates": ["2020-06-30"]}, "start_dates", "ISO date"),
        ({"start_dates": ["2020-06-01"]}, "end_dates", "together"),
        ({"tile_names": ["tile42_955"]}, "tile_names", "unknown sub-tile"),
        ({"tile_names": None}, "tile_names", "give tile_names"),
        ({"regions": {"r1": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}}, "regions.r1", "Polygon"),
        ({"regions": {"bad name": POLY}}, "regions.bad name", "must match"),
        ({"regions": {"tile42": POLY}}, "regions.tile42", "tile name"),
        ({"prod_names": []}, "prod_names", "at least one"),
        ({"prod_names": ["lai", "Biomass"]}, "prod_names", "unknown product"),
        ({"resolution": -30}, "resolution", "positive"),
        ({"resolution": 7}, "resolution", "divide"),
        ({"resolution": True}, "resolution", "positive"),
        ({"projection": "EPSG:0"}, "projection", "unknown CRS"),
        ({"out_location": "drive"}, "out_location", "Drive"),
        ({"out_location": "s3"}, "out_location", "one of"),
        ({"GCS_bucket": None}, "GCS_bucket", "required"),
        ({"GCS_bucket": "my_google_bucket"}, "GCS_bucket", "google"),
        ({"out_folder": "a/../b"}, "out_folder", ".."),
        ({"out_folder": "_runs/x"}, "out_folder", "reserved"),
        ({"algorithm": "SNAP"}, "algorithm", "one of"),
        ({"sensor": "L5_SR", "year": 2010, "algorithm": "SL2P-CCRS"}, "algorithm", "no SL2P-CCRS networks"),
        ({"networks": "no_such_set"}, "networks", "no such file"),
        ({"uncertainty": "yes"}, "uncertainty", "true or false"),
        ({"rerun": "always"}, "rerun", "one of"),
        ({"Sensor": "S2_SR"}, "Sensor", "did you mean 'sensor'"),
        ({"tile_name": ["tile42"]}, "tile_name", "did you mean 'tile_names'"),
    ],
)
def test_each_rule(overrides, key, fragment):
    found = problems(**overrides)
    assert any(k == key and fragment in rule for k, rule in found), found


def test_valid_variants():
    assert parse(months=-1).months == [-1]
    assert parse(months=[7, 6]).months == [6, 7]
    assert parse(sensor="LS_SR", year=2022, resolution=30).sensor == "LS_SR"
    assert parse(projection="epsg:4326").projection == "EPSG:4326"
    assert parse(algorithm="sl2p-ccrs").output_products()[-1] == "Partition"
    assert parse(networks="leaf_sl2p_s2_10m").networks == "leaf_sl2p_s2_10m"
    req = parse(prod_names=["LAI", "QC", "date"], uncertainty=True)
    assert req.output_products() == ("LAI", "LAIunc", "QC", "Date")
    assert parse(GCS_bucket=None, out_location="local").GCS_bucket is None
    assert parse(out_folder="/a/b/").out_folder == "a/b"


def test_dates_override_months_with_a_warning():
    req = parse(start_dates=["2020-06-01"], end_dates=["2020-06-30"])
    assert req.months is None and req.year is None
    assert any("months ignored" in w for w in req.warnings)
    assert req.jobs()[0].period == "Jun"


def test_windows_are_inclusive():
    assert month_window(2020, 2) == (date(2020, 2, 1), date(2020, 2, 29))
    assert month_window(2021, 2) == (date(2021, 2, 1), date(2021, 2, 28))
    assert month_window(2020, 12) == (date(2020, 12, 1), date(2020, 12, 31))
    assert month_window(2020, -1) == (date(2020, 6, 15), date(2020, 9, 15))


def test_jobs_are_region_by_window():
    req = parse(tile_names=["tile42", "tile43_411"], months=[5, 6, 7], sensor="L8_SR", resolution=30)
    jobs = req.jobs()
    assert [j.job_id for j in jobs] == [
        f"{t}_2020_{m}" for t in ("tile42", "tile43_411") for m in ("May", "Jun", "Jul")
    ]
    j = jobs[0]
    assert (j.start, j.end, j.period) == (date(2020, 5, 1), date(2020, 5, 31), "May")
    assert [n.product for n in j.output_names()] == ["LAI", "fCOVER", "fAPAR", "Albedo", "QC", "Date"]
    assert j.output_names()[0].key() == "tile42/2020/tile42_2020_May_LAI_30m.tif"
    assert jobs[3].geobox().shape.x == 15_000  # a 450 km sub-tile at 30 m


def test_request_id_is_deterministic_and_content_sensitive():
    a, b = parse(), parse()
    assert a.request_id == b.request_id
    assert parse(months=[7]).request_id != a.request_id
    assert parse(rerun="overwrite").request_id != a.request_id  # overwrite is a new run, not a duplicate
    assert parse_request({**BASE}, request_id="abc-1", today=TODAY).request_id == "abc-1"
    with pytest.raises(RequestError, match="request_id"):
        parse_request({**BASE}, request_id="../etc", today=TODAY)


@pytest.mark.parametrize(
    "payload, fragment", [(b"\xff\xfe", "UTF-8"), ("{not json", "JSON object"), ("[1, 2]", "JSON object")]
)
def test_undecodable_messages(payload, fragment):
    with pytest.raises(RequestError, match=fragment):
        parse_request(payload, today=TODAY)


@pytest.mark.parametrize("name", ["abc", "leaf-outputs", "a.b.c", "a_b-1", "x" * 63])
def test_good_bucket_names(name):
    assert gcs_bucket_problem(name) is None


@pytest.mark.parametrize(
    "name", ["ab", "x" * 64, "Upper", "-start", "end-", "192.168.1.1", "goog-x", "a..b", "has space"]
)
def test_bad_bucket_names(name):
    assert gcs_bucket_problem(name)


def test_normalised_request_reads_back_unchanged():
    req = parse(months=[7, 6], bucket=None, GCS_bucket="leaf-out", uncertainty=True)
    again = parse_request(req.to_dict(), today=TODAY)
    assert again.to_dict() == {**req.to_dict(), "warnings": []}
    assert again.request_id == req.request_id
