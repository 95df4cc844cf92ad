"""Build the example inputs under ``examples/data/`` from the real samples (see examples/README.md).

    python scripts/build_examples.py [SAMPLES_DIR] [--out examples/data]

SAMPLES_DIR defaults to ``../shared/data/samples`` relative to the repository root. The outputs are small COGs
(int16/uint16, deflate) and self-contained STAC catalogs with relative links, committed so the examples run
without the samples folder.

- ``bouconne-2018/``: THEIA L3A monthly Sentinel-2 surface reflectance composites (7 dates), one COG per
  SL2P band; the 20 m bands are averaged back to 20 m (the package author had resampled them to 10 m).
  L3A has no angles and no scene classification: the sun angles are computed (NOAA solar position, scene
  centre, 10:40 UTC), the view angles are nominal, the items say so (``leaf:angles_source: computed``)
  and carry no mask asset.
- ``canberra-1992-l5/``: one Geoscience Australia Landsat-5 TM NBAR scene with its PQ mask, translated into a
  QA_PIXEL-style layer (bits below) so the engine's Landsat mask applies; sun angles from the scene metadata.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

REPO = Path(__file__).resolve().parents[1]
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
VIEW_EXT = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
PROJ_EXT = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
EO_EXT = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"

# --- Bouconne (THEIA L3A) ---
BOUCONNE_FILE = "s2_theia_l3a_bouconne_2018/2018_3A_Theia_Bouconne.tif"
BOUCONNE_DATES = ("20180429", "20180513", "20180708", "20180815", "20180915", "20181015", "20181115")
BOUCONNE_LAYOUT = ("B2", "B3", "B4", "B8", "B5", "B6", "B7", "B8A", "B11", "B12")
"""Band order within each date of the source file (samples README, checked against the spectra)."""
BOUCONNE_BANDS = {  # SL2P input → (STAC asset key as in the public L2A catalogues, native resolution m)
    "B3": ("B03", 10),
    "B4": ("B04", 10),
    "B5": ("B05", 20),
    "B6": ("B06", 20),
    "B7": ("B07", 20),
    "B8A": ("B8A", 20),
    "B11": ("B11", 20),
    "B12": ("B12", 20),
}
THEIA_NODATA = -10000
L3A_UTC_TIME = (10, 40)
"""Nominal acquisition time over the tile (the L3A composite has no single time): used for the sun angles."""
NOMINAL_VIEW_ZENITH = 5.0
"""L3A mixes acquisitions; the view zenith over Bouconne is below 12° on both orbits: 5° is nominal."""

# --- Canberra (GA Landsat-5 NBAR) ---
CANBERRA_DIR = "l5_tm_nbar_canberra_19920323"
CANBERRA_BANDS = {"green": "B20", "red": "B30", "nir08": "B40", "swir16": "B50", "swir22": "B70"}
GA_NODATA = -999
# GA PQ bits (datacube docs): 0-7 band saturation, 8 contiguity, 9 land (1) / sea (0), 10-11 ACCA/Fmask cloud
# (1 = clear), 12-13 ACCA/Fmask cloud shadow (1 = clear). Translated into Landsat C2 QA_PIXEL bits:
PQ_TO_QA_PIXEL = {  # QA_PIXEL bit → PQ bits that must all be 1 (clear) for the QA bit to stay 0
    0: (0, 1, 2, 3, 4, 5, 6, 7, 8),  # fill (saturated / non-contiguous: unusable, like fill)
    3: (10, 11),  # cloud
    4: (12, 13),  # cloud shadow
    7: (9,),  # water
}
QA_CLEAR_BIT = 6


@dataclass(frozen=True)
class SunAngles:
    zenith: float
    azimuth: float


def solar_position(when: datetime, lon: float, lat: float) -> SunAngles:
    """Sun zenith and azimuth (degrees, azimuth clockwise from north) with NOAA's solar position equations."""
    day = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60 + when.second / 3600
    g = 2 * math.pi / 365 * (day - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    true_solar_min = hour * 60 + eqtime + 4 * lon
    ha = math.radians(true_solar_min / 4 - 180)
    phi = math.radians(lat)
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    zen = math.acos(max(-1.0, min(1.0, cos_z)))
    az = (
        math.degrees(math.atan2(math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi)))
        + 180
    )
    return SunAngles(math.degrees(zen), az % 360)


def write_cog(data: np.ndarray, profile: dict, dst: Path) -> None:
    """Write one band as a deflate COG (no overviews needed at these sizes)."""
    with tempfile.TemporaryDirectory() as tmp:
        src_path = Path(tmp) / "src.tif"
        with rasterio.open(src_path, "w", **profile) as ds:
            ds.write(data, 1)
        cog_translate(
            src_path, dst, cog_profiles.get("deflate"), overview_level=0, quiet=True, in_memory=True
        )


def raster_band(dtype: str, nodata: float, scale: float, offset: float, res: float) -> list[dict]:
    return [
        {"data_type": dtype, "nodata": nodata, "scale": scale, "offset": offset, "spatial_resolution": res}
    ]


def footprint(crs, bounds) -> tuple[list[float], dict]:
    w, s, e, n = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    geom = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return [w, s, e, n], geom


def add_asset(
    item: pystac.Item,
    key: str,
    href: str,
    title: str,
    bands: list[dict],
    roles: Sequence[str],
    common_name: str | None = None,
) -> None:
    extra: dict = {"raster:bands": bands}
    if common_name:
        extra["eo:bands"] = [{"name": key, "common_name": common_name}]
    item.add_asset(
        key,
        pystac.Asset(
            href=href, media_type=pystac.MediaType.COG, title=title, roles=list(roles), extra_fields=extra
        ),
    )


def build_bouconne(samples: Path, out: Path) -> pystac.Catalog:
    src_path = samples / BOUCONNE_FILE
    cat = pystac.Catalog(
        "bouconne-2018",
        "THEIA L3A Sentinel-2 monthly surface reflectance, Bouconne forest, 2018. "
        "Contains modified Copernicus Sentinel data 2018; THEIA/CNES, Etalab Licence Ouverte 2.0.",
    )
    with rasterio.open(src_path) as src:
        # Crop to an even pixel count so the 20 m grid nests in the 10 m grid from the same origin.
        w10, h10 = src.width // 2 * 2, src.height // 2 * 2
        crs = src.crs
        t10 = src.transform
        bounds = (t10.c, t10.f - h10 * 10, t10.c + w10 * 10, t10.f)
        bbox, geom = footprint(crs, bounds)
        lon, lat = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
        for d_index, d in enumerate(BOUCONNE_DATES):
            day = datetime.strptime(d, "%Y%m%d").replace(
                hour=L3A_UTC_TIME[0], minute=L3A_UTC_TIME[1], tzinfo=UTC
            )
            sun = solar_position(day, lon, lat)
            item_id = f"SENTINEL2X_{d}_L3A_bouconne"
            item = pystac.Item(
                item_id,
                geom,
                bbox,
                day,
                properties={
                    "platform": "sentinel-2",
                    "constellation": "sentinel-2",
                    "instruments": ["msi"],
                    "eo:cloud_cover": 0.0,
                    "proj:epsg": crs.to_epsg(),
                    "view:sun_elevation": round(90 - sun.zenith, 3),
                    "view:sun_azimuth": round(sun.azimuth, 3),
                    "view:incidence_angle": NOMINAL_VIEW_ZENITH,
                    "view:azimuth": 0.0,
                    "leaf:angles_source": "computed",
                    "leaf:angles_note": (
                        f"L3A composites carry no angles: sun position computed (NOAA equations) for the "
                        f"scene centre at {L3A_UTC_TIME[0]:02d}:{L3A_UTC_TIME[1]:02d} UTC; view zenith "
                        f"nominal {NOMINAL_VIEW_ZENITH} deg, view azimuth unknown (0)."
                    ),
                    "leaf:mask": "none: L3A is cloud-screened and has no SCL; every pixel counts as clear",
                    "s2:product_type": "THEIA L3A",
                    "s2:processing_baseline": "L3A (no BOA offset)",
                },
                stac_extensions=[RASTER_EXT, VIEW_EXT, PROJ_EXT, EO_EXT],
            )
            item_dir = out / item_id
            item_dir.mkdir(parents=True, exist_ok=True)
            for net_input, (key, res) in BOUCONNE_BANDS.items():
                band = d_index * len(BOUCONNE_LAYOUT) + BOUCONNE_LAYOUT.index(net_input) + 1
                f = res // 10
                data = src.read(
                    band,
                    window=((0, h10), (0, w10)),
                    out_shape=(h10 // f, w10 // f),
                    resampling=Resampling.average,
                ).astype("int16")
                profile = {
                    "driver": "GTiff",
                    "dtype": "int16",
                    "count": 1,
                    "width": w10 // f,
                    "height": h10 // f,
                    "crs": crs,
                    "transform": rasterio.Affine(res, 0, t10.c, 0, -res, t10.f),
                    "nodata": THEIA_NODATA,
                }
                write_cog(data, profile, item_dir / f"{key}.tif")
                add_asset(
                    item,
                    key,
                    f"./{key}.tif",
                    f"{key} surface reflectance ×1e-4",
                    raster_band("int16", THEIA_NODATA, 1e-4, 0.0, res),
                    ["data", "reflectance"],
                )
            cat.add_item(item)
    return cat


def _pq_to_qa_pixel(pq: np.ndarray) -> np.ndarray:
    qa = np.zeros(pq.shape, np.uint16)
    for qa_bit, pq_bits in PQ_TO_QA_PIXEL.items():
        need = sum(1 << b for b in pq_bits)
        qa |= ((pq & need) != need).astype(np.uint16) << qa_bit
    clear = (qa == 0).astype(np.uint16)
    return qa | clear << QA_CLEAR_BIT


def _xml_float(text: str, tag: str) -> float:
    m = re.search(rf"<{tag}>([-0-9.]+)</{tag}>", text)
    if not m:
        raise SystemExit(f"{tag} not found in the Canberra metadata.xml")
    return float(m.group(1))


def build_canberra(samples: Path, out: Path) -> pystac.Catalog:
    base = samples / CANBERRA_DIR
    nbar = next(base.glob("LS5_TM_NBAR_*"))
    pq_file = next(base.glob("LS5_TM_PQ_*/scene01/*.tif"))
    meta = (nbar / "metadata.xml").read_text()
    sun_elev, sun_az = (
        _xml_float(meta, "ILLUMINATIONELEVATIONANGLE"),
        _xml_float(meta, "ILLUMINATIONELEVATIONAZIMUTH"),
    )
    centre = re.search(r"center_dt: '([^']+)'", (nbar / "agdc-metadata.yaml").read_text())
    when = (
        datetime.fromisoformat(centre.group(1)).replace(tzinfo=UTC)
        if centre
        else datetime(1992, 3, 23, 23, 14, tzinfo=UTC)
    )
    cat = pystac.Catalog(
        "canberra-1992-l5",
        "Geoscience Australia Landsat-5 TM NBAR, path 90 row 84, 1992-03-23 "
        "(from the datacube package test data, Apache-2.0).",
    )
    item_id = "LS5_TM_NBAR_090_084_19920323"
    item_dir = out / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    item = None
    for key, suffix in CANBERRA_BANDS.items():
        path = next((nbar / "scene01").glob(f"*_{suffix}.tif"))
        with rasterio.open(path) as src:
            if item is None:
                bbox, geom = footprint(src.crs, src.bounds)
                item = pystac.Item(
                    item_id,
                    geom,
                    bbox,
                    when,
                    properties={
                        "platform": "landsat-5",
                        "constellation": "landsat",
                        "instruments": ["tm"],
                        "eo:cloud_cover": 0.0,
                        "proj:epsg": src.crs.to_epsg(),
                        "view:sun_elevation": sun_elev,
                        "view:sun_azimuth": sun_az,
                        "view:off_nadir": 0.0,
                        "view:incidence_angle": 0.0,
                        "view:azimuth": 0.0,
                        "leaf:angles_source": "scene metadata (metadata.xml); view nadir",
                        "leaf:product": "GA NBAR (BRDF-adjusted surface reflectance ×1e-4), not USGS C2 L2",
                    },
                    stac_extensions=[RASTER_EXT, VIEW_EXT, PROJ_EXT, EO_EXT],
                )
                profile = {
                    "driver": "GTiff",
                    "count": 1,
                    "width": src.width,
                    "height": src.height,
                    "crs": src.crs,
                    "transform": src.transform,
                }
                res = src.res[0]
            write_cog(
                src.read(1), {**profile, "dtype": "int16", "nodata": GA_NODATA}, item_dir / f"{key}.tif"
            )
        add_asset(
            item,
            key,
            f"./{key}.tif",
            f"TM {suffix[:2]} NBAR ×1e-4",
            raster_band("int16", GA_NODATA, 1e-4, 0.0, res),
            ["data", "reflectance"],
            key,
        )
    with rasterio.open(pq_file) as src:
        qa = _pq_to_qa_pixel(src.read(1))
    write_cog(qa, {**profile, "dtype": "uint16", "nodata": None}, item_dir / "qa_pixel.tif")
    add_asset(
        item,
        "qa_pixel",
        "./qa_pixel.tif",
        "QA_PIXEL-style bits translated from GA PQ",
        [{"data_type": "uint16", "spatial_resolution": res}],
        ["qa-mask"],
    )
    cat.add_item(item)
    return cat


def save(cat: pystac.Catalog, out: Path) -> None:
    cat.normalize_hrefs(str(out))
    for item in cat.get_items():  # assets sit next to their item: keep the relative hrefs
        item.set_self_href(str(out / item.id / f"{item.id}.json"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", nargs="?", type=Path, default=REPO.parent / "shared" / "data" / "samples")
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "data")
    args = ap.parse_args(argv)
    if not args.samples.is_dir():
        raise SystemExit(f"samples folder {args.samples} not found: pass it as the first argument")
    for name, build in (("bouconne-2018", build_bouconne), ("canberra-1992-l5", build_canberra)):
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        save(build(args.samples, out), out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
