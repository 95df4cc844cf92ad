"""SL2P network sets (schema ``sl2p-nets/1``): loading, validation, canonical names.

A set file holds, per variable, an ``estimate`` and an ``uncertainty`` network (one for SL2P, a list indexed by
``network_index`` for SL2P-CCRS), the input names in network order, an optional definition domain and, for
SL2P-CCRS, the land-cover class → network index table. Every network is re-ordered at load time to the set's
``inputs`` order, so callers always map inputs **by name**.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NetworkFileError
from ..sensors import ANGLE_INPUTS, SENSORS

SCHEMA = "sl2p-nets/1"
DOMAIN_METHOD = "leaf_decimal_code"

CANONICAL_VARIABLES: tuple[str, ...] = ("LAI", "fAPAR", "fCOVER", "Albedo", "CCC", "CWC", "DASF")
_ALIASES = {"lai_cab": "CCC", "lai_cw": "CWC"}
"""SNAP's names for canopy chlorophyll and water content."""
LANDSAT_HIDDEN_VARIABLES: frozenset[str] = frozenset({"DASF"})
"""DASF of the Landsat sets is suspect (nets README): never exposed."""
_RANGE_SOURCE_PREFERENCE = ("LEAF_production", "SL2P-SL2PCCRS_PYTHON", "LEAF-Toolbox")
"""Which ``qc_output_ranges`` entry wins for variables that products.py does not cover (CCC, CWC, DASF)."""


class NetworkFileWarning(UserWarning):
    """A network file lacks something optional (uncertainty networks, a usable definition domain)."""


@dataclass(frozen=True, eq=False)
class Network:
    """One two-layer SL2P network, inputs in the set's order.

    Forward: ``xn = x*input_slope + input_offset; h = tanh(layer1_weights @ xn + layer1_bias);
    yn = layer2_weights·h + layer2_bias; y = (yn - output_offset) / output_slope``.
    """

    input_slope: np.ndarray
    input_offset: np.ndarray
    layer1_weights: np.ndarray
    """[n_hidden][n_inputs], row = hidden neuron."""
    layer1_bias: np.ndarray
    layer2_weights: np.ndarray
    layer2_bias: float
    output_slope: float
    output_offset: float

    @property
    def n_inputs(self) -> int:
        return int(self.input_slope.shape[0])

    @property
    def n_hidden(self) -> int:
        return int(self.layer1_bias.shape[0])


@dataclass(frozen=True)
class VariableNets:
    """Estimate and uncertainty networks of one variable: length 1 for SL2P, one per network index for CCRS."""

    estimate: tuple[Network, ...]
    uncertainty: tuple[Network, ...] | None


@dataclass(frozen=True, eq=False)
class Domain:
    """Definition domain (method ``leaf_decimal_code``): the band order of the digits and the sorted codes."""

    bands: tuple[str, ...]
    codes: np.ndarray


@dataclass(frozen=True, eq=False)
class NetworkSet:
    set_id: str
    inputs: tuple[str, ...]
    """Input names in network order."""
    variables: dict[str, VariableNets]
    domain: Domain | None
    partition: dict[int, int] | None
    """NALCMS land-cover class → network index (SL2P-CCRS); None for plain SL2P."""
    output_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Valid ranges from the file's ``qc_output_ranges`` (used for variables products.py does not cover)."""
    source: str = ""
    """Where the set was loaded from (set id or path)."""
    notes: tuple[str, ...] = ()
    """What the file lacks or what was ignored (also issued as :class:`NetworkFileWarning` on first load)."""

    @property
    def is_ccrs(self) -> bool:
        return self.partition is not None

    @property
    def band_inputs(self) -> tuple[str, ...]:
        """Inputs that are not angles (the reflectance bands)."""
        return tuple(n for n in self.inputs if n not in ANGLE_INPUTS)

    @property
    def n_networks(self) -> int:
        """Networks per variable (1 for SL2P, the length of the CCRS lists)."""
        return max(len(v.estimate) for v in self.variables.values())

    def variable(self, name: str) -> VariableNets:
        """A variable by canonical name or any case/alias of it; raises NetworkFileError if absent."""
        key = canonical_variable(name)
        if key not in self.variables:
            raise NetworkFileError(
                f"network set {self.set_id!r} has no variable {name!r}; it has: {', '.join(self.variables)}")
        return self.variables[key]


def canonical_variable(name: str) -> str:
    """Canonical spelling of a variable name: ``FAPAR`` → ``fAPAR``, ``LAI_Cab`` → ``CCC``; others unchanged."""
    low = name.strip().lower()
    for c in CANONICAL_VARIABLES:
        if c.lower() == low:
            return c
    return _ALIASES.get(low, name.strip())


# --- locating set files -------------------------------------------------------------------------------------

def _nets_dir() -> Path:
    return Path(str(resources.files("leaf_engine") / "data" / "nets"))


def shipped_sets() -> tuple[str, ...]:
    """Ids of the network sets shipped with the package (their files live in ``leaf_engine/data/nets``)."""
    return tuple(sorted(p.stem for p in _nets_dir().glob("*.json")))


def _resolve(path_or_set_id: str | Path) -> Path:
    p = Path(path_or_set_id)
    if p.suffix.lower() == ".json" or p.exists():
        if not p.is_file():
            raise NetworkFileError(f"network file {str(p)!r} does not exist; give a path to a {SCHEMA} JSON file "
                                   f"or one of the shipped set ids: {', '.join(shipped_sets())}")
        return p
    shipped = _nets_dir() / f"{p.name}.json"
    if shipped.is_file():
        return shipped
    raise NetworkFileError(f"unknown network set {str(path_or_set_id)!r}: give a path to a {SCHEMA} JSON file "
                           f"or one of the shipped set ids: {', '.join(shipped_sets())}")


def load_network_set(path_or_set_id: str | Path) -> NetworkSet:
    """Load a ``sl2p-nets/1`` set by shipped set id (e.g. ``leaf_sl2p_s2_20m``) or by path. Cached per file."""
    path = _resolve(path_or_set_id).resolve()
    stat = path.stat()
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> NetworkSet:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NetworkFileError(f"cannot read network file {path!r}: {e}; it must be a {SCHEMA} JSON file") from e
    return parse_network_set(doc, source=path)


# --- parsing ------------------------------------------------------------------------------------------------

def parse_network_set(doc: Mapping[str, Any], source: str = "<memory>") -> NetworkSet:
    """Build a :class:`NetworkSet` from a parsed ``sl2p-nets/1`` document."""
    if not isinstance(doc, Mapping):
        raise NetworkFileError(f"{source}: expected a JSON object of schema {SCHEMA}")
    schema = doc.get("schema")
    if schema != SCHEMA:
        raise NetworkFileError(f"{source}: schema is {schema!r}, expected {SCHEMA!r} (see data/nets/README.md)")
    inputs = tuple(str(n) for n in doc.get("inputs") or ())
    if not inputs or len(set(inputs)) != len(inputs):
        raise NetworkFileError(f"{source}: 'inputs' must list the distinct input names in network order")
    set_id = str(doc.get("set_id") or Path(source).stem)
    variables = _parse_variables(doc.get("variables"), inputs, source, _is_landsat(doc, inputs))
    partition = _parse_partition(doc.get("partition"), variables, source)
    notes: list[str] = []
    domain = _parse_domain(doc.get("definition_domain"), inputs, source, notes)
    no_unc = [v for v, nets in variables.items() if nets.uncertainty is None]
    if no_unc:
        notes.append(f"{set_id}: no uncertainty networks for {', '.join(no_unc)}")
    for note in notes:
        warnings.warn(note, NetworkFileWarning, stacklevel=3)
    if doc.get("definition_domain") is None:  # a known property of some shipped sets (L5/L7): noted, not warned
        notes.append(f"{set_id}: no definition domain: the input-domain flag is not computed")
    return NetworkSet(set_id=set_id, inputs=inputs, variables=variables, domain=domain, partition=partition,
                      output_ranges=_parse_ranges(doc.get("qc_output_ranges")), source=source,
                      notes=tuple(notes))


def _is_landsat(doc: Mapping[str, Any], inputs: tuple[str, ...]) -> bool:
    if "landsat" in str(doc.get("sensor", "")).lower():
        return True
    bands = {n for n in inputs if n not in ANGLE_INPUTS}
    return any(s.is_landsat and bands == set(s.band_names()) for s in SENSORS.values())


def _parse_variables(raw: Any, inputs: tuple[str, ...], source: str, landsat: bool) -> dict[str, VariableNets]:
    if not isinstance(raw, Mapping) or not raw:
        raise NetworkFileError(f"{source}: 'variables' must map variable names to their networks")
    out: dict[str, VariableNets] = {}
    for name, body in raw.items():
        key = canonical_variable(str(name))
        if landsat and key in LANDSAT_HIDDEN_VARIABLES:
            continue
        if key in out:
            raise NetworkFileError(f"{source}: variable {name!r} appears twice (names are case-insensitive)")
        where = f"{source}: variables.{name}"
        if isinstance(body, Mapping) and "layer1_weights" in body:  # a bare network: estimate only
            body = {"estimate": body}
        if not isinstance(body, Mapping) or body.get("estimate") is None:
            raise NetworkFileError(f"{where}: needs an 'estimate' network (or list of networks)")
        estimate = _parse_net_list(body["estimate"], inputs, f"{where}.estimate")
        unc_raw = body.get("uncertainty")
        uncertainty = None if unc_raw in (None, [], {}) else _parse_net_list(unc_raw, inputs, f"{where}.uncertainty")
        if uncertainty is not None and len(uncertainty) != len(estimate):
            raise NetworkFileError(f"{where}: {len(estimate)} estimate but {len(uncertainty)} uncertainty networks")
        out[key] = VariableNets(estimate=estimate, uncertainty=uncertainty)
    if not out:
        raise NetworkFileError(f"{source}: no usable variables")
    return out


def _parse_net_list(raw: Any, inputs: tuple[str, ...], where: str) -> tuple[Network, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise NetworkFileError(f"{where}: empty list of networks")
    return tuple(parse_network(item, inputs, f"{where}[{i}]" if isinstance(raw, list) else where)
                 for i, item in enumerate(items))


def _floats(raw: Any, where: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise NetworkFileError(f"{where}: '{what}' must be numbers ({e})") from e
    if not np.all(np.isfinite(arr)):
        raise NetworkFileError(f"{where}: '{what}' has non-finite numbers")
    return arr


def _scaling(net: Mapping[str, Any], where: str, kind: str) -> tuple[Any, Any]:
    """Slope and offset of a min/max normalisation; derived from ``*_min``/``*_max`` when not stored."""
    slope, offset = net.get(f"{kind}_slope"), net.get(f"{kind}_offset")
    if slope is not None and offset is not None:
        return slope, offset
    lo, hi = net.get(f"{kind}_min"), net.get(f"{kind}_max")
    if lo is None or hi is None:
        raise NetworkFileError(f"{where}: needs '{kind}_slope'/'{kind}_offset' or '{kind}_min'/'{kind}_max'")
    lo_a, hi_a = _floats(lo, where, f"{kind}_min"), _floats(hi, where, f"{kind}_max")
    if np.any(hi_a <= lo_a):
        raise NetworkFileError(f"{where}: '{kind}_max' must exceed '{kind}_min'")
    # x_n = 2 (x - min) / (max - min) - 1
    s = 2.0 / (hi_a - lo_a)
    return s, -lo_a * s - 1.0


def parse_network(net: Any, inputs: tuple[str, ...], where: str) -> Network:
    """One network dict → :class:`Network` with its input columns re-ordered to ``inputs``."""
    if not isinstance(net, Mapping):
        raise NetworkFileError(f"{where}: a network must be a JSON object")
    order = tuple(str(n) for n in net.get("inputs") or inputs)
    if sorted(order) != sorted(inputs):
        raise NetworkFileError(f"{where}: network inputs {list(order)} differ from the set's inputs {list(inputs)}")
    n_in = len(order)
    in_slope, in_offset = (_floats(v, where, f"input_{k}") for v, k in zip(_scaling(net, where, "input"),
                                                                            ("slope", "offset"), strict=True))
    w1 = _floats(net.get("layer1_weights"), where, "layer1_weights")
    b1 = _floats(net.get("layer1_bias"), where, "layer1_bias").reshape(-1)
    n_hid = b1.shape[0]
    if w1.shape == (n_in, n_hid) and n_in != n_hid:  # stored input-major: make rows hidden neurons
        w1 = w1.T
    w2 = _floats(net.get("layer2_weights"), where, "layer2_weights").reshape(-1)
    if w1.shape != (n_hid, n_in) or w2.shape != (n_hid,) or in_slope.shape != (n_in,) or in_offset.shape != (n_in,):
        raise NetworkFileError(
            f"{where}: shapes do not fit {n_in} inputs and {n_hid} hidden neurons (layer1_weights {w1.shape}, "
            f"layer2_weights {w2.shape}, input_slope {in_slope.shape}, input_offset {in_offset.shape})")
    out_slope, out_offset = (float(_floats(v, where, "output scaling").reshape(-1)[0])
                             for v in _scaling(net, where, "output"))
    if out_slope == 0.0:
        raise NetworkFileError(f"{where}: output_slope is 0")
    perm = np.array([order.index(n) for n in inputs])
    return Network(
        input_slope=np.ascontiguousarray(in_slope[perm]),
        input_offset=np.ascontiguousarray(in_offset[perm]),
        layer1_weights=np.ascontiguousarray(w1[:, perm]),
        layer1_bias=b1,
        layer2_weights=w2,
        layer2_bias=float(_floats(net.get("layer2_bias"), where, "layer2_bias").reshape(-1)[0]),
        output_slope=out_slope,
        output_offset=out_offset,
    )


def _parse_partition(raw: Any, variables: dict[str, VariableNets], source: str) -> dict[int, int] | None:
    counts = {len(v.estimate) for v in variables.values()}
    if raw is None:
        if counts != {1}:
            raise NetworkFileError(f"{source}: lists of networks need a 'partition' table (class → network_index)")
        return None
    classes = raw.get("classes") if isinstance(raw, Mapping) else None
    if not isinstance(classes, Mapping) or not classes:
        raise NetworkFileError(f"{source}: 'partition.classes' must map land-cover classes to network_index")
    table: dict[int, int] = {}
    for cls, entry in classes.items():
        idx = entry.get("network_index") if isinstance(entry, Mapping) else entry
        try:
            table[int(cls)] = int(idx)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise NetworkFileError(f"{source}: partition class {cls!r} needs an integer network_index") from e
    n = min(counts)
    bad = sorted({i for i in table.values() if not 0 <= i < n})
    if bad:
        raise NetworkFileError(f"{source}: partition network_index {bad} outside 0..{n - 1}")
    return dict(sorted(table.items()))


def _parse_domain(raw: Any, inputs: tuple[str, ...], source: str, notes: list[str]) -> Domain | None:
    if raw is None:
        return None
    method = raw.get("method") if isinstance(raw, Mapping) else None
    if method != DOMAIN_METHOD:
        notes.append(f"{source}: definition domain method {method!r} is not {DOMAIN_METHOD!r}; "
                     "the input-domain flag is not computed for this set")
        return None
    bands = tuple(str(b) for b in raw.get("bands") or ())
    missing = [b for b in bands if b not in inputs]
    if not bands or missing or len(set(bands)) != len(bands):
        raise NetworkFileError(f"{source}: definition_domain.bands {list(bands)} must be distinct inputs of the set "
                               f"(not found: {missing})")
    if len(bands) > 18:
        raise NetworkFileError(f"{source}: a decimal domain code of {len(bands)} bands does not fit 64 bits")
    codes = np.unique(np.asarray(raw.get("codes") or [], dtype=np.int64))
    return Domain(bands=bands, codes=codes)


def _parse_ranges(raw: Any) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, Mapping):
        return {}
    entries = [v for v in raw.values() if isinstance(v, Mapping)]
    if not entries and raw and all(isinstance(v, (list, tuple)) for v in raw.values()):  # flat {var: [lo, hi]}
        entries = [raw]

    def rank(key: str) -> int:
        return next((i for i, p in enumerate(_RANGE_SOURCE_PREFERENCE) if p.lower() in key.lower()), 99)

    ordered = [raw[k] for k in sorted((k for k in raw if isinstance(raw[k], Mapping)), key=rank)] or entries
    out: dict[str, tuple[float, float]] = {}
    for entry in ordered:
        for var, rng in entry.items():
            key = canonical_variable(str(var))
            if key in out or not isinstance(rng, (list, tuple)) or len(rng) != 2:
                continue
            lo, hi = float(rng[0]), float(rng[1])
            if math.isfinite(lo) and math.isfinite(hi):
                out[key] = (lo, hi)
    return out

