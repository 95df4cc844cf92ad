"""The shared Typer application and consoles (stdout for results, stderr for messages)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="leaf",
    help="LEAF: LAI, fCOVER, fAPAR and Albedo maps from Landsat and Sentinel-2 with SL2P, on the CCRS tile grid.\n\n"
    "Global options: --version, --debug (show tracebacks).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output keeps whole table rows (rich would otherwise wrap at 80 columns).
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
console_err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
