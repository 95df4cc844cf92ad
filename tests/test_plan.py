"""Pre-flight plan: files, shards as Earth Engine will name them, pixels and bytes."""

import pytest

from leaf_engine.plan import EE_FILE_DIMENSIONS, Plan, make_plan, shard_offsets
from leaf_engine.request import parse_request


def _req(**kw):
    return parse_request(
        {"sensor": "S2_SR", "year": 2020, "months": [6, 7], "tile_names": ["tile42"], "GCS_bucket": "leaf-out", **kw}
    )


def test_shard_offsets():
    assert EE_FILE_DIMENSIONS % 256 == 0
    assert shard_offsets(30000, 30000) is None
    assert shard_offsets(45000, 45000) == [(0, 0), (0, 32768), (32768, 0), (32768, 32768)]
    assert len(shard_offsets(90000, 90000)) == 9


def test_plan_counts_and_names():
    p = make_plan(_req(resolution=20))
    t = p.totals
    assert t["jobs"] == 2 and t["files"] == 12 and t["ee_tasks"] == 12 and t["objects"] == 48
    assert t["pixels"] == 12 * 45000**2
    lai = p.files[0]
    assert lai.name.key() == "tile42/2020/tile42_2020_Jun_LAI_20m.tif"
    assert [s.key() for s in lai.shards][1] == "tile42/2020/tile42_2020_Jun_LAI_20m-0000000000-0000032768.tif"
    date_file = next(f for f in p.files if f.name.product == "Date")
    assert date_file.raw_bytes == 2 * date_file.pixels  # uint16
    assert len(set(p.expected_objects())) == 48


def test_plan_unsharded_and_round_trip():
    p = make_plan(_req(resolution=30, tile_names=["tile42_911"]))
    assert all(len(f.shards) == 1 and f.shards[0] == f.name for f in p.files)
    again = Plan.from_dict(p.to_dict())
    assert again.expected_objects() == p.expected_objects()
    assert again.totals == p.totals


@pytest.mark.parametrize("res", [10, 20, 30])
def test_plan_for_custom_region(res):
    poly = {
        "type": "Polygon",
        "coordinates": [[[-75.8, 45.3], [-75.6, 45.3], [-75.6, 45.5], [-75.8, 45.5], [-75.8, 45.3]]],
    }
    p = make_plan(_req(regions={"ottawa": poly}, resolution=res, projection="EPSG:32618"))
    assert {f.name.region for f in p.files} == {"ottawa"}
    assert p.files[0].width == pytest.approx(0.2 * 111_320 * 0.7022 / res, rel=0.02)  # 0.2° of longitude at 45.4° N
