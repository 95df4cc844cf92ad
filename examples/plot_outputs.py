"""Plot a month's LAI map and the season's LAI time series from the outputs of ``leaf produce``.

    .venv/bin/leaf produce examples/bouconne-2018.json          # writes out/bouconne-2018/...
    .venv/bin/python examples/plot_outputs.py out Jul lai.png     # OUTPUTS MONTH PNG

Reads the run's STAC catalogue with ``leaf_engine.open_outputs`` (physical units, QC decoded), keeps the pixels
whose QC says good (no flag set), and draws the map of MONTH on LEAF's fixed LAI scale plus the median and
inter-quartile range of LAI per period.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

import leaf_engine
from leaf_engine.styles import scale


def main(outputs: str = "out", month: str = "Jul", png: str = "lai.png") -> Path:
    ds = leaf_engine.open_outputs(outputs, ["LAI", "QC"])
    good = ~(ds["QC_domain"] | ds["QC_out_of_range"] | ds["QC_invalid"] | ds["QC_nodata"])
    lai = ds["LAI"].where(good)
    months = [t.strftime("%b") for t in ds["time"].to_index()]
    if month not in months:
        raise SystemExit(f"no {month} in the outputs; they have {', '.join(months)}")
    sc = scale("LAI")
    fig, (ax_map, ax_ts) = plt.subplots(1, 2, figsize=(11, 4.5), width_ratios=[1, 1.3])
    im = lai.isel(time=months.index(month)).plot.imshow(ax=ax_map, cmap=sc.cmap, vmin=sc.vmin, vmax=sc.vmax,
                                                       add_colorbar=False)
    fig.colorbar(im, ax=ax_map, label="LAI (m²/m²)")
    ax_map.set_title(f"LAI, {month} {int(ds['time'].dt.year[0])}")
    ax_map.set_aspect("equal")
    ax_map.set_xlabel("x (m)")
    ax_map.set_ylabel("y (m)")
    q = lai.quantile([0.25, 0.5, 0.75], dim=["y", "x"], skipna=True)
    times = ds["time"].values
    ax_ts.fill_between(times, q.sel(quantile=0.25), q.sel(quantile=0.75), alpha=0.3, color="tab:green",
                       label="25–75 %")
    ax_ts.plot(times, q.sel(quantile=0.5), "o-", color="tab:green", label="median")
    share = good.mean(dim=["y", "x"]).values
    for t, s in zip(times, share, strict=True):
        ax_ts.annotate(f"{s:.0%}", (t, float(np.nanmax(q.sel(quantile=0.75)))), ha="center", fontsize=7,
                       color="grey")
    ax_ts.set_ylabel("LAI (m²/m²), good pixels")
    ax_ts.set_title("LAI through the season (grey: share of good pixels)")
    ax_ts.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


if __name__ == "__main__":
    print(main(*sys.argv[1:4]))
