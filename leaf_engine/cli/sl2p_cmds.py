"""``leaf sl2p-table``: run SL2P on a CSV table of samples (field plots, test vectors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app, console, console_err


@app.command("sl2p-table")
def sl2p_table_cmd(
    input_csv: Annotated[Path, typer.Argument(help="CSV whose columns are named like the set's inputs "
                                              "(cosVZA, cosSZA, cosRAA, bands; SL2P-CCRS also 'partition').")],
    networks: Annotated[str, typer.Option("--networks", "-n", help="Shipped set id (e.g. leaf_sl2p_s2_20m) "
                                          "or path to a sl2p-nets/1 JSON file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output CSV: the input columns plus estimates, "
                                      "uncertainties and flags.")],
    variables: Annotated[str | None, typer.Option(
        "--variables", help="Comma-separated variables (LAI,fAPAR,fCOVER,Albedo,CCC,CWC,...); "
        "default: the four products the set has.")] = None,
) -> None:
    """Run SL2P (float64) on every row of INPUT_CSV and write estimates, uncertainties and QC flags."""
    from ..sl2p.table import sl2p_table  # loaded on use: keeps `leaf --help` quick

    asked = [v.strip() for v in variables.split(",") if v.strip()] if variables else None
    for warning in sl2p_table(input_csv, networks, out, asked):
        console_err.print(f"warning: {warning}", markup=False, highlight=False)
    console.print(f"wrote {out}", markup=False, highlight=False)
