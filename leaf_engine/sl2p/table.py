"""SL2P on a table (CSV): field-plot samples in, estimates, uncertainties and flags out (float64).

Input columns are matched to the set's inputs by name: exact first, then case-insensitive; a Landsat 5/7 name
such as ``green(B2)`` also matches a column ``green`` or ``B2``. SL2P-CCRS sets also need a ``partition``
column (NALCMS class). The output keeps every input column and adds, per variable, ``<var>`` and
``<var>_uncertainty``, then ``input_out_of_domain`` (0/1) and ``<var>_out_of_range`` (0/1); SL2P-CCRS adds
``network_index``. ``<var>`` is the canonical name (``fAPAR``), or the spelling asked for (``FAPAR``).
What the set cannot give (uncertainty networks, a domain) is left empty with a warning.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LeafError
from ..products import BIOPHYSICAL
from .estimate import estimate
from .networks import NetworkFileWarning, NetworkSet, canonical_variable, load_network_set

PARTITION_COLUMN = "partition"
DOMAIN_COLUMN = "input_out_of_domain"
NETWORK_INDEX_COLUMN = "network_index"
_MISSING = {"", "nan", "na", "n/a", "null", "none"}


class TableError(LeafError):
    """An input table cannot be used with the network set (missing or ambiguous columns, non-numbers)."""


@dataclass
class TableResult:
    header: list[str]
    rows: list[list[str]]
    warnings: list[str] = field(default_factory=list)


def _aliases(name: str) -> list[str]:
    """Names a column may carry for a set input: itself, and for ``common(Bn)`` also ``common`` and ``Bn``."""
    m = re.fullmatch(r"\s*([^()]+?)\s*\(\s*([^()]+?)\s*\)\s*", name)
    return [name, m[1], m[2]] if m else [name]


def match_columns(header: Sequence[str], wanted: Iterable[str]) -> dict[str, int]:
    """Column index of each wanted name; raises :class:`TableError` naming every missing or ambiguous one."""
    out: dict[str, int] = {}
    missing: list[str] = []
    for name in wanted:
        idx = _find(header, name)
        if idx is None:
            missing.append(name)
        else:
            out[name] = idx
    if missing:
        raise TableError(f"input table lacks column(s) {', '.join(missing)}; its columns are: {', '.join(header)}")
    taken: dict[int, list[str]] = {}
    for name, idx in out.items():
        taken.setdefault(idx, []).append(name)
    clash = [f"{header[i]!r} ← {', '.join(names)}" for i, names in taken.items() if len(names) > 1]
    if clash:
        raise TableError(f"one column cannot feed several inputs: {'; '.join(clash)}; rename the columns "
                         "to the set's input names")
    return out


def _find(header: Sequence[str], name: str) -> int | None:
    for alias in _aliases(name):
        exact = [i for i, h in enumerate(header) if h.strip() == alias]
        if len(exact) == 1:
            return exact[0]
        loose = [i for i, h in enumerate(header) if h.strip().lower() == alias.lower()]
        if len(loose) == 1:
            return loose[0]
        if len(exact) > 1 or len(loose) > 1:
            raise TableError(f"several columns match input {name!r}: "
                             f"{', '.join(header[i] for i in (exact or loose))}; keep one")
    return None


def _column(rows: Sequence[Sequence[str]], idx: int, label: str) -> np.ndarray:
    out = np.empty(len(rows))
    for r, row in enumerate(rows):
        cell = row[idx].strip() if idx < len(row) else ""
        if cell.lower() in _MISSING:
            out[r] = np.nan
            continue
        try:
            out[r] = float(cell)
        except ValueError as e:
            raise TableError(f"column {label!r}, data row {r + 1}: {cell!r} is not a number") from e
    return out


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def _flag(v: bool) -> str:
    return "1" if v else "0"


def _variables(nets: NetworkSet, asked: Sequence[str] | None, warns: list[str]) -> tuple[str, ...]:
    if asked:
        names = tuple(dict.fromkeys(canonical_variable(v) for v in asked))
        missing = [v for v in names if v not in nets.variables]
        if missing:
            raise TableError(f"network set {nets.set_id!r} has no {', '.join(missing)}; "
                             f"it has: {', '.join(nets.variables)}")
        return names
    names = tuple(v for v in BIOPHYSICAL if v in nets.variables)
    absent = [v for v in BIOPHYSICAL if v not in nets.variables]
    if absent:
        warns.append(f"network set {nets.set_id!r} has no {', '.join(absent)}: not computed")
    if not names:
        raise TableError(f"network set {nets.set_id!r} has none of {', '.join(BIOPHYSICAL)}; "
                         f"choose with --variables from: {', '.join(nets.variables)}")
    return names


def _labels(names: tuple[str, ...], asked: Sequence[str] | None) -> dict[str, str]:
    """Output column stem per variable: spelled as the user asked (``FAPAR``), else the canonical name."""
    label = {v: v for v in names}
    for raw in reversed(asked or ()):  # reversed: the first spelling of a variable wins
        label[canonical_variable(raw)] = raw.strip()
    return label


def run_table(header: Sequence[str], rows: Sequence[Sequence[str]], nets: NetworkSet,
              variables: Sequence[str] | None = None) -> TableResult:
    """SL2P (float64) on table rows whose columns name the set's inputs."""
    warns: list[str] = []
    names = _variables(nets, variables, warns)
    cols = match_columns(header, nets.inputs)
    inputs = {n: _column(rows, i, header[i]) for n, i in cols.items()}
    partition = None
    if nets.is_ccrs:
        pcol = _find(header, PARTITION_COLUMN)
        if pcol is None:
            raise TableError(f"network set {nets.set_id!r} is SL2P-CCRS: the input table needs a "
                             f"{PARTITION_COLUMN!r} column (NALCMS land-cover class 1-19 per row); "
                             f"its columns are: {', '.join(header)}")
        partition = _column(rows, pcol, header[pcol])
    est = estimate(nets, inputs, names, partition=partition, uncertainty=True, precision="float64")
    warns += est.warnings
    label = _labels(names, variables)
    out_names = [*(c for v in names for c in (label[v], f"{label[v]}_uncertainty")), DOMAIN_COLUMN,
                 *(f"{label[v]}_out_of_range" for v in names)]
    if nets.is_ccrs:
        out_names.append(NETWORK_INDEX_COLUMN)
    kept = [i for i, h in enumerate(header) if h not in out_names]
    if len(kept) < len(header):
        warns.append("input columns named like outputs were replaced: "
                     + ", ".join(h for h in header if h in out_names))
    out_rows: list[list[str]] = []
    for r, row in enumerate(rows):
        cells = [row[i] if i < len(row) else "" for i in kept]
        for v in names:
            cells.append(_fmt(est.values[v][r]))
            cells.append(_fmt(est.uncertainty[v][r]) if v in est.uncertainty else "")
        cells.append(_flag(est.input_out_of_domain[r]) if est.domain_available else "")
        cells += [_flag(est.out_of_range[v][r]) for v in names]
        if est.network_index is not None:
            cells.append(str(int(est.network_index[r])))
        out_rows.append(cells)
    return TableResult([header[i] for i in kept] + out_names, out_rows, warns)


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file (comma-separated, UTF-8, optional BOM); blank lines are skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            all_rows = [row for row in csv.reader(f) if any(c.strip() for c in row)]
    except OSError as e:
        raise TableError(f"cannot read input table {str(path)!r}: {e.strerror or e}") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise TableError(f"input table {str(path)!r} is not a UTF-8 CSV file: {e}") from e
    if not all_rows:
        raise TableError(f"input table {str(path)!r} is empty: it needs a header row naming the inputs")
    return [h.strip() for h in all_rows[0]], all_rows[1:]


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    except OSError as e:
        raise TableError(f"cannot write output table {str(path)!r}: {e.strerror or e}") from e


def sl2p_table(input_csv: str | Path, networks: str | Path, output_csv: str | Path,
               variables: Sequence[str] | None = None) -> list[str]:
    """Read ``input_csv``, run the set ``networks`` (id or path), write ``output_csv``; returns the warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NetworkFileWarning)  # the same notes are returned below
        nets = load_network_set(networks)
    header, rows = read_csv(input_csv)
    result = run_table(header, rows, nets, variables)
    write_csv(output_csv, result.header, result.rows)
    return result.warnings
