"""The local engine over stac-fastapi-pgstac, the STAC API server behind Planetary Computer.

Servers on loopback: the example COGs over HTTP with range requests, and a PostgreSQL cluster with pgstac (a
database per shape) behind stac-fastapi-pgstac, loaded with the Bouconne (Sentinel-2) and Canberra (Landsat-5)
items in the shapes Earth Search and Planetary Computer publish. The Earth Search database also holds items the
engine must leave out or find: cloudy copies of the Bouconne scenes and items on the edges of a window.

pgstac pages with opaque ``next`` tokens, answers a search of an unknown collection with no items, applies the
CQL2 filter itself and answers 500 for a filter it cannot apply; the outputs through it on a
``distributed.LocalCluster`` of two worker processes must equal the threaded run from the catalogue files.

Needs PostgreSQL and PostGIS (``scripts/test`` installs them; ``LEAF_REQUIRE_PGSTAC=1`` makes their absence a
failure instead of a skip). ``LEAF_PGSTAC_PYTHON``: the interpreter of a virtual environment with another
stac-fastapi-pgstac release to serve the API (default: the locked one).
"""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC, date, datetime

import pystac
import pytest
import shapely

from leaf_engine.backends.local import stac_api
from leaf_engine.backends.local.scenes import SceneError
from tests.support.local_runs import (
    EXAMPLES,
    PROBE,
    SOURCES,
    assert_api_run_equals_threaded,
)
from tests.support.pgstac_server import catalog_contents, serve_pgstac, unavailable
from tests.support.stac_api_server import flaky_proxy, public_shape_catalog, serve_files

pytestmark = pytest.mark.slow

BOUCONNE = shapely.box(1.216, 43.639, 1.242, 43.66)
CLOUDY = 97.0  # above the engine's per-scene limit (composite.MAX_SCENE_CLOUD_COVER, 90)


def _copy(item: pystac.Item, suffix: str, when: datetime | None = None, cloud: float | None = -1.0) -> pystac.Item:
    """A copy of ``item`` under a new id, at ``when``, with ``cloud`` as eo:cloud_cover (None: not stated)."""
    out = item.clone()
    out.id = f"{item.id}_{suffix}"
    if when is not None:
        out.datetime = when
    if cloud is None:
        out.properties.pop("eo:cloud_cover", None)
    elif cloud >= 0:
        out.properties["eo:cloud_cover"] = cloud
    return out


def _edge_items(items: list[pystac.Item]) -> list[pystac.Item]:
    """Cloudy copies of the 2018 Bouconne scenes, and June 2019 items on the edges of the window (the first and
    the last microsecond of the month, one just after; the first states no cloud cover)."""
    s2 = [i for i in items if i.collection_id == "sentinel-2-l2a"]
    first = s2[0]
    return [*(_copy(i, "cloudy", cloud=CLOUDY) for i in s2),
            _copy(first, "2019-06-01", datetime(2019, 6, 1, tzinfo=UTC), cloud=None),
            _copy(first, "2019-06-30", datetime(2019, 6, 30, 23, 59, 59, 999_999, tzinfo=UTC), cloud=10.0),
            _copy(first, "2019-07-01", datetime(2019, 7, 1, tzinfo=UTC), cloud=10.0)]


@pytest.fixture(scope="module")
def apis(tmp_path_factory):
    """{'earth-search': url, 'planetary-computer': url}: stac-fastapi-pgstac over one database each."""
    reason = unavailable()
    if reason:
        if os.environ.get("LEAF_REQUIRE_PGSTAC") == "1":
            pytest.fail(f"LEAF_REQUIRE_PGSTAC=1 but {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("pgstac")
    with serve_files(EXAMPLES / "data", PROBE) as files:
        databases = {}
        for shape in ("earth-search", "planetary-computer"):
            collections, items = catalog_contents(public_shape_catalog(tmp / shape, SOURCES, shape, files))
            databases[shape] = (collections, items + _edge_items(items) if shape == "earth-search" else items)
        # the same Earth Search items behind an API with paging only (no query/filter/sort/fields extensions)
        with serve_pgstac(databases, {"minimal": ("earth-search", "pagination")}) as urls:
            yield urls


def _searches(log) -> list[str]:
    return [path + body.decode() for method, path, body in log.requests if path.split("?")[0].endswith("/search")]


def test_search_follows_next_tokens_and_filters_cloud_cover_on_the_server(apis, monkeypatch):
    monkeypatch.setattr(stac_api, "PAGE_SIZE", 2)
    year = (date(2018, 1, 1), date(2018, 12, 31))
    with flaky_proxy(apis["earth-search"]) as (url, log):
        clear = stac_api.search_items(url, "S2_SR", BOUCONNE, *year, max_cloud_cover=90)
        pages_filtered = _searches(log)
        log.requests.clear()
        every = stac_api.search_items(url, "S2_SR", BOUCONNE, *year)
        pages_all = _searches(log)
    assert len(clear) == 7 and not any(i.id.endswith("_cloudy") for i in clear)  # the server applied the filter
    assert len(every) == 14 and sum(i.id.endswith("_cloudy") for i in every) == 7
    assert len(pages_filtered) == 4 and len(pages_all) == 7  # 7 and 14 items, 2 a page
    assert all("token" in p for p in pages_all[1:]) and "filter" in pages_filtered[0]
    assert "filter" not in pages_all[0]
    # the engine's rule, on the items of either search
    es = apis["earth-search"]
    assert sorted(s.id for s in stac_api.discover(es, "S2_SR", BOUCONNE, *year)) == sorted(i.id for i in clear)
    assert len(stac_api.discover(es, "S2_SR", BOUCONNE, *year, max_cloud_cover=100)) == 14


def test_an_api_without_the_filter_extension_gives_the_same_scenes(apis):
    year = (date(2018, 1, 1), date(2018, 12, 31))
    with flaky_proxy(apis["minimal"]) as (url, log):
        items = stac_api.search_items(url, "S2_SR", BOUCONNE, *year, max_cloud_cover=90)
        landing = json.loads(urllib.request.urlopen(url + "/").read())
    assert not any(c.endswith("#filter") or "/filter" in c for c in landing["conformsTo"])
    assert len(items) == 14 and not any("filter" in s for s in _searches(log))  # cloud cover left to the engine
    scenes = stac_api.discover(apis["minimal"], "S2_SR", BOUCONNE, *year)
    assert [s.id for s in scenes] == [s.id for s in stac_api.discover(apis["earth-search"], "S2_SR", BOUCONNE, *year)]
    assert len(scenes) == 7 and not any(s.id.endswith("_cloudy") for s in scenes)


def test_search_window_is_whole_days_and_keeps_items_without_cloud_cover(apis):
    june = stac_api.discover(apis["earth-search"], "S2_SR", BOUCONNE, date(2019, 6, 1), date(2019, 6, 30))
    assert [s.id.rsplit("_", 1)[1] for s in june] == ["2019-06-01", "2019-06-30"]
    july = stac_api.discover(apis["planetary-computer"], "S2_SR", BOUCONNE, date(2018, 7, 1), date(2018, 7, 31))
    assert [s.id for s in july] == ["SENTINEL2X_20180708_L3A_bouconne"]
    assert july[0].bands["B8A"].href.startswith("http://") and july[0].bands["B8A"].href.endswith("/B8A.tif")
    canberra = shapely.box(149.083, -35.349, 149.202, -35.262)
    l5 = stac_api.discover(apis["planetary-computer"], "L5_SR", canberra, date(1992, 3, 1), date(1992, 3, 31))
    assert [s.id for s in l5] == ["LS5_TM_NBAR_090_084_19920323"]
    far = shapely.box(10, 10, 11, 11)
    assert stac_api.discover(apis["earth-search"], "S2_SR", far, date(2018, 1, 1), date(2019, 12, 31)) == []
    # a region of many vertices is searched by its bounding box: the same scenes
    ring = shapely.Point(1.229, 43.6495).buffer(0.01, quad_segs=256)
    assert shapely.get_num_coordinates(ring.convex_hull) > stac_api.SEARCH_HULL_VERTICES
    assert [s.id for s in stac_api.discover(apis["planetary-computer"], "S2_SR", ring, date(2018, 7, 1),
                                            date(2018, 7, 31))] == ["SENTINEL2X_20180708_L3A_bouconne"]


def test_a_filter_the_server_cannot_apply_falls_back_to_the_plain_search(apis, monkeypatch):
    """pgstac answers 500 for a CQL2 operator it does not know: the search is repeated without the filter."""
    monkeypatch.setattr(stac_api, "cloud_filter", lambda limit: {"op": "no-such-op", "args": []})
    with flaky_proxy(apis["earth-search"]) as (url, log):
        scenes = stac_api.discover(url, "S2_SR", BOUCONNE, date(2018, 1, 1), date(2018, 12, 31))
    assert len(scenes) == 7 and not any(s.id.endswith("_cloudy") for s in scenes)
    searches = _searches(log)
    assert "no-such-op" in searches[0] and "no-such-op" not in searches[-1]


def test_api_errors_are_typed_and_say_what_to_do(apis, monkeypatch):
    monkeypatch.setattr(stac_api, "RETRY_BACKOFF", 0.01)
    window = (date(2018, 1, 1), date(2018, 2, 1))
    es = apis["earth-search"]
    # pgstac answers a search of an unknown collection with no items: the engine names it and the known ones
    with pytest.raises(SceneError, match=r"no collection 'sentinel-2-l1c'.*'sentinel-2-l2a'.*#collections=S2_SR"):
        stac_api.search_items(es + "#collections=S2_SR:sentinel-2-l1c", "S2_SR", BOUCONNE, *window)
    with pytest.raises(SceneError, match="collection"):
        stac_api.search_items(es + "#collections=S2_SR", "S2_SR", BOUCONNE, *window)
    with pytest.raises(SceneError, match="cannot search the STAC API"):
        stac_api.search_items("http://127.0.0.1:9/stac", "S2_SR", BOUCONNE, *window)
    with pytest.raises(SceneError, match=r"refused the search .*HTTP 404"):
        stac_api.search_items(es + "/no-such-api", "S2_SR", BOUCONNE, *window)
    # 503 and 429 (Retry-After) twice for every request: retried, POST searches included
    monkeypatch.setattr(stac_api, "PAGE_SIZE", 3)
    with flaky_proxy(es, failures=2) as (url, log):
        items = stac_api.search_items(url, "S2_SR", BOUCONNE, date(2018, 1, 1), date(2018, 12, 31), 90)
    assert len(items) == 7 and log.errors[503] >= 4 and log.errors[429] >= 4
    assert any(m == "POST" for m, _, _ in log.requests)
    with flaky_proxy(es, failures=100) as (url, log), \
            pytest.raises(SceneError, match=r"kept failing .*HTTP (503|429) after 5 retries.*retry the job later"):
        stac_api.search_items(url, "S2_SR", BOUCONNE, *window)
    assert sum(log.errors.values()) == stac_api.MAX_RETRIES + 1


@pytest.mark.parametrize("shape,name", [("earth-search", "bouconne-2018"), ("planetary-computer", "bouconne-2018"),
                                        ("planetary-computer", "canberra-1992-l5")])
def test_examples_through_pgstac_on_worker_processes_equal_the_threaded_run(apis, cluster, threaded, shape, name,
                                                                            tmp_path):
    assert_api_run_equals_threaded(apis[shape], shape, name, cluster, threaded, tmp_path)
