"""The local engine over a real STAC API and a real Dask cluster of worker processes.

Servers on loopback: the example COGs over HTTP with range requests, and stac-fastapi (static backend) loaded
with the Bouconne (Sentinel-2) and Canberra (Landsat-5) items in the shapes Earth Search and Planetary Computer
publish. The outputs through the API on a ``distributed.LocalCluster`` of two worker processes must equal the
threaded run from the catalogue files, pixel for pixel, also when a worker is killed mid-run.
"""

from __future__ import annotations

from datetime import date

import pytest
import shapely

from leaf_engine.backends.local import stac_api
from leaf_engine.backends.local.engine import produce
from leaf_engine.backends.local.scenes import SceneError
from tests.support.local_runs import (
    EXAMPLES,
    PROBE,
    SOURCES,
    assert_api_run_equals_threaded,
    assert_same_outputs,
    example_request,
    output_arrays,
    run_killing_a_worker,
)
from tests.support.stac_api_server import flaky_proxy, public_shape_catalog, serve_files, serve_stac_api


@pytest.fixture(scope="module")
def apis(tmp_path_factory):
    """{'earth-search': url, 'planetary-computer': url} of two STAC APIs over the same HTTP-served COGs."""
    tmp = tmp_path_factory.mktemp("stac-apis")
    with serve_files(EXAMPLES / "data", PROBE) as files:
        urls = {}
        with serve_stac_api(public_shape_catalog(tmp / "es", SOURCES, "earth-search", files)) as es, \
                serve_stac_api(public_shape_catalog(tmp / "pc", SOURCES, "planetary-computer", files)) as pc:
            urls["earth-search"], urls["planetary-computer"] = es, pc
            yield urls


def test_search_pages_and_filters_by_window_and_geometry(apis, monkeypatch):
    monkeypatch.setattr(stac_api, "PAGE_SIZE", 2)  # 7 Bouconne items: four pages
    region = shapely.box(1.216, 43.639, 1.242, 43.66)
    items = stac_api.search_items(apis["earth-search"], "S2_SR", region, date(2018, 1, 1), date(2018, 12, 31))
    assert len(items) == 7 and {i.collection_id for i in items} == {"sentinel-2-l2a"}
    july = stac_api.discover(apis["planetary-computer"], "S2_SR", region, date(2018, 7, 1), date(2018, 7, 31))
    assert [s.id for s in july] == ["SENTINEL2X_20180708_L3A_bouconne"]
    assert july[0].bands["B8A"].href.endswith("/B8A.tif") and july[0].bands["B8A"].href.startswith("http://")
    far = shapely.box(10, 10, 11, 11)
    assert stac_api.discover(apis["earth-search"], "S2_SR", far, date(2018, 1, 1), date(2018, 12, 31)) == []


def test_api_errors_are_typed_and_say_what_to_do(apis, monkeypatch):
    monkeypatch.setattr(stac_api, "RETRY_BACKOFF", 0.01)  # the unanswered URL is retried 5 times
    region = shapely.box(1.216, 43.639, 1.242, 43.66)
    with pytest.raises(SceneError, match="collection"):
        stac_api.search_items(apis["earth-search"] + "#collections=S2_SR", "S2_SR", region, date(2018, 1, 1),
                              date(2018, 2, 1))
    with pytest.raises(SceneError, match="cannot search the STAC API"):
        stac_api.search_items("http://127.0.0.1:9/stac", "S2_SR", region, date(2018, 1, 1), date(2018, 2, 1))
    with pytest.raises(SceneError, match=r"refused the search .*HTTP 404"):  # a server that is no STAC API
        stac_api.search_items(apis["earth-search"] + "/no-such-api", "S2_SR", region, date(2018, 1, 1),
                              date(2018, 2, 1))
    assert stac_api.is_stac_api("https://earth-search.aws.element84.com/v1")
    assert not stac_api.is_stac_api("https://example.org/catalog.json") and not stac_api.is_stac_api("x/c.json")


def test_collections_are_checked_once_per_api_not_once_per_job(apis):
    region = shapely.box(1.216, 43.639, 1.242, 43.66)
    with flaky_proxy(apis["earth-search"]) as (url, log):
        for month in (1, 2, 3):
            stac_api.search_items(url, "S2_SR", region, date(2018, month, 1), date(2018, month, 28))
    checks = [path for method, path, _ in log.requests if method == "GET" and path.startswith("/collections/")]
    searches = [path for method, path, _ in log.requests if path.startswith("/search")]
    assert checks == ["/collections/sentinel-2-l2a"] and len(searches) >= 3, log.requests


@pytest.mark.parametrize("shape,name", [("earth-search", "bouconne-2018"), ("planetary-computer", "bouconne-2018"),
                                        ("planetary-computer", "canberra-1992-l5")])
def test_examples_through_the_api_on_worker_processes_equal_the_threaded_run(apis, cluster, threaded, shape, name,
                                                                             tmp_path):
    assert_api_run_equals_threaded(apis[shape], shape, name, cluster, threaded, tmp_path)


def test_a_killed_worker_costs_only_its_blocks(apis, threaded, tmp_path):
    """SIGKILL one of two worker processes while blocks are in flight: the scheduler recomputes its blocks
    elsewhere and the files are those of the threaded run."""
    run_killing_a_worker(lambda client: produce(
        example_request("bouconne-2018", scenes=apis["earth-search"]), out_dir=tmp_path, dask_address=client,
        progress=False, quicklooks=False, block_size=32), wait_s=60)
    assert_same_outputs(output_arrays(tmp_path), threaded["bouconne-2018"])
