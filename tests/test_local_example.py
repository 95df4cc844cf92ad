"""The shipped examples through ``leaf produce``, as a new user runs them: real Sentinel-2 (Bouconne, 2018)
and Landsat-5 (Canberra, 1992) spectra, outputs checked for plausibility, QC sensor code and nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from leaf_engine import products
from leaf_engine.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MONTHS = ("Apr", "May", "Jul", "Aug", "Sep", "Oct", "Nov")


def _read(path: Path, product: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return products.decode(product, src.read(1)) if product in products.BIOPHYSICAL else src.read(1)


@pytest.fixture(scope="module")
def bouconne(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bouconne")
    # Run from another folder: the request's relative 'scenes' path must resolve against the request file.
    assert main(["produce", str(EXAMPLES / "bouconne-2018.json"), "--out", str(out), "--no-progress"]) == 0
    return out / "bouconne-2018" / "bouconne" / "2018"


def test_bouconne_writes_every_month_and_product(bouconne):
    for month in MONTHS:
        for product in ("LAI", "fCOVER", "fAPAR", "Albedo", "QC", "Date"):
            path = bouconne / f"bouconne_2018_{month}_{product}_20m.tif"
            assert cog_validate(str(path), quiet=True)[0], path
            assert path.with_suffix(".png").is_file()


def test_bouconne_forest_lai_is_plausible_and_autumn_drops(bouconne):
    medians = {m: float(np.nanmedian(_read(bouconne / f"bouconne_2018_{m}_LAI_20m.tif", "LAI"))) for m in MONTHS}
    for m in MONTHS[:-1]:  # broadleaf forest in leaf: LAI about 3-4 (samples README: 3.0-3.7)
        assert 2.5 < medians[m] < 4.5, medians
    assert medians["Nov"] < medians["Oct"] - 0.5 and 1.0 < medians["Nov"] < 2.5, medians
    fcover = np.nanmedian(_read(bouconne / "bouconne_2018_Jul_fCOVER_20m.tif", "fCOVER"))
    assert 0.5 < fcover < 0.95


def test_bouconne_qc_date_and_nodata(bouconne):
    qc = _read(bouconne / "bouconne_2018_Jul_QC_20m.tif", "QC")
    lai = _read(bouconne / "bouconne_2018_Jul_LAI_20m.tif", "LAI")
    date = _read(bouconne / "bouconne_2018_Jul_Date_20m.tif", "Date")
    inside = qc != products.product("QC").nodata
    assert 0.8 < inside.mean() < 1.0  # the polygon does not fill its bounding grid: outside is nodata
    fields = products.qc_fields(qc[inside])
    assert (fields["sensor_code"] == 21).all()  # QC byte 168 + flags
    # L3A composites are cloud-free and cover the polygon; the only invalid pixels are the Bouconne lake (no SCL,
    # so the spectral water test of sensors.WATER_TEST applies).
    assert 0 < fields["invalid"].mean() < 0.01
    clear = inside & (products.qc_fields(qc)["invalid"] == 0)
    assert np.isnan(lai[~clear]).all() and np.isfinite(lai[clear]).all()
    assert (date[clear] == 189).all() and (date[~clear] == 0).all()  # 8 July 2018, 1-based day of year
    with rasterio.open(bouconne / "bouconne_2018_Jul_LAI_20m.tif") as src:
        assert src.crs.to_epsg() == 32631 and src.res == (20.0, 20.0) and src.nodata == 255
        assert src.transform.c % 20 == 0 and src.transform.f % 20 == 0
        assert src.tags()["window"] == "2018-07-01/2018-07-31" and src.tags()["scenes_used"] == "1"


def test_canberra_landsat5(tmp_path):
    assert main(["produce", str(EXAMPLES / "canberra-1992-l5.json"), "--out", str(tmp_path), "--no-progress"]) == 0
    folder = tmp_path / "canberra-1992-l5" / "canberra" / "1992"
    qc = _read(folder / "canberra_1992_Mar_QC_30m.tif", "QC")
    fields = products.qc_fields(qc[qc != 0])
    assert (fields["sensor_code"] == 5).all()
    assert 0.05 < fields["invalid"].mean() < 0.3  # the swath edge (nodata) and PQ cloud/shadow pixels
    lai = _read(folder / "canberra_1992_Mar_LAI_30m.tif", "LAI")
    assert 0.3 < np.nanmedian(lai) < 3.0  # dry late-summer pasture, woodland and city
