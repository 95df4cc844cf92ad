"""Output names: parse(make(x)) == x for every valid name; foreign objects are rejected."""

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leaf_engine.errors import NamingError
from leaf_engine.naming import MONTHS, SEASON, OutputName, period_token
from leaf_engine.products import all_product_tokens

regions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
folders = st.lists(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True), max_size=3).map("/".join)
dates = st.dates(min_value=date(1984, 1, 1), max_value=date(2100, 12, 31))
periods = st.one_of(
    st.sampled_from([*MONTHS, SEASON]),
    st.tuples(dates, st.integers(0, 400)).map(lambda t: f"{t[0]:%Y%m%d}-{t[0] + timedelta(days=t[1]):%Y%m%d}"),
)
names = st.builds(
    OutputName,
    out_folder=folders,
    region=regions,
    year=st.integers(1984, 2100),
    period=periods,
    product=st.sampled_from(all_product_tokens()),
    resolution=st.integers(1, 100_000),
    shard=st.none() | st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
)


@given(names)
def test_parse_make_round_trip(name):
    assert OutputName.parse(name.key()) == name


@given(dates, st.integers(0, 400))
def test_period_token_round_trips_custom_windows(start, days):
    end = start + timedelta(days=days)
    token = period_token(start, end)
    if token not in (*MONTHS, SEASON):
        assert token == f"{start:%Y%m%d}-{end:%Y%m%d}"


def test_examples():
    n = OutputName("leaf/v1", "tile42_911", 2020, "Jun", "LAI", 30, (0, 32768))
    assert n.key() == "leaf/v1/tile42_911/2020/tile42_911_2020_Jun_LAI_30m-0000000000-0000032768.tif"
    assert n.prefix == "leaf/v1/tile42_911/2020/tile42_911_2020_Jun_LAI_30m"
    assert n.unsharded().quicklook_key() == "leaf/v1/tile42_911/2020/tile42_911_2020_Jun_LAI_30m.png"
    assert OutputName("", "r", 2020, "season", "QC", 20).key() == "r/2020/r_2020_season_QC_20m.tif"
    assert period_token(date(2020, 6, 1), date(2020, 6, 30)) == "Jun"
    assert period_token(date(2020, 6, 15), date(2020, 9, 15)) == "season"
    assert period_token(date(2020, 6, 1), date(2020, 6, 29)) == "20200601-20200629"


@pytest.mark.parametrize(
    "key",
    [
        "leaf/_runs/abc.json",
        "tile42/2020/tile42_2020_Jun_LAI_30m.tiff",
        "tile42/2020/tile42_2020_Jun_NDVI_30m.tif",
        "tile42/2021/tile42_2020_Jun_LAI_30m.tif",
        "tile43/2020/tile42_2020_Jun_LAI_30m.tif",
        "tile42/2020/tile42_2020_June_LAI_30m.tif",
        "tile42/2020/tile42_2020_Jun_LAI_30m-1-2.tif",
        "tile42_2020_Jun_LAI_30m.tif",
    ],
)
def test_foreign_objects_are_rejected(key):
    with pytest.raises(NamingError):
        OutputName.parse(key)
