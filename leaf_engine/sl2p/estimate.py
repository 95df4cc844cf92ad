"""``estimate``: run a network set on named input arrays → estimates, uncertainties and QC flags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import NetworkFileError
from ..products import BIOPHYSICAL, PRODUCTS
from . import domain as domain_mod
from . import reference
from .networks import NetworkSet, canonical_variable

DEFAULT_VARIABLES: tuple[str, ...] = BIOPHYSICAL
_REFERENCE_BLOCK = 1 << 18
"""Pixels per block of the float64 reference path (bounds its temporaries to a few tens of MB)."""


@dataclass
class Estimates:
    """Results of :func:`estimate`; every array has the inputs' (broadcast) shape."""

    values: dict[str, np.ndarray]
    uncertainty: dict[str, np.ndarray]
    """Empty when not requested; variables whose set has no uncertainty network are missing (see warnings)."""
    input_out_of_domain: np.ndarray
    """QC bit 0. All False when the set has no definition domain (then ``domain_available`` is False)."""
    out_of_range: dict[str, np.ndarray]
    """QC bit 1 per variable: estimate outside the valid range (NaN estimates are not flagged)."""
    network_index: np.ndarray | None = None
    """SL2P-CCRS: the network each pixel used; None for plain SL2P."""
    domain_available: bool = True
    warnings: list[str] = field(default_factory=list)


def valid_range(nets: NetworkSet, variable: str) -> tuple[float, float] | None:
    """Valid range of a variable: products.py for the four products, else the set's ``qc_output_ranges``."""
    if variable in BIOPHYSICAL:
        return PRODUCTS[variable].valid_range
    return nets.output_ranges.get(variable)


def network_index_of(nets: NetworkSet, partition: np.ndarray) -> np.ndarray:
    """CCRS network index per pixel from NALCMS classes. Classes not in the set's table (and NaN) use network 0,
    the generic SL2P network that the table also gives to urban, water and snow."""
    assert nets.partition is not None
    top = max(nets.partition) + 1
    lut = np.zeros(top + 1, np.int8)  # last slot: any class outside 0..top-1
    for cls, idx in nets.partition.items():
        if cls >= 0:
            lut[cls] = idx
    p = np.asarray(partition)
    if p.dtype.kind == "f":
        p = np.where(np.isfinite(p), p, -1)
    cls = p.astype(np.int64, copy=False)
    return lut[np.where((cls >= 0) & (cls < top), cls, top)]


def _resolve_variables(nets: NetworkSet, variables: Iterable[str]) -> tuple[str, ...]:
    names = tuple(canonical_variable(v) for v in variables)
    missing = [v for v in names if v not in nets.variables]
    if missing:
        raise NetworkFileError(f"network set {nets.set_id!r} has no {', '.join(missing)}; "
                               f"it has: {', '.join(nets.variables)}")
    if not names:
        raise NetworkFileError("ask for at least one variable")
    return tuple(dict.fromkeys(names))


def _inputs_in_order(nets: NetworkSet, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    missing = [n for n in nets.inputs if n not in inputs]
    if missing:
        raise NetworkFileError(f"network set {nets.set_id!r} needs inputs {', '.join(missing)} "
                               f"(it takes: {', '.join(nets.inputs)}; given: {', '.join(map(str, inputs))})")
    try:
        return list(np.broadcast_arrays(*(np.asarray(inputs[n]) for n in nets.inputs)))
    except ValueError as e:
        raise NetworkFileError(f"inputs of network set {nets.set_id!r} have different shapes: {e}") from e


def estimate(nets: NetworkSet, inputs: Mapping[str, np.ndarray],
             variables: Iterable[str] = DEFAULT_VARIABLES, *, partition: np.ndarray | None = None,
             uncertainty: bool = False, precision: Literal["float32", "float64"] = "float32") -> Estimates:
    """Estimates, optional uncertainties, input-domain and output-range flags of ``variables``.

    ``inputs`` are keyed by the set's input names (``cosVZA``, ``cosSZA``, ``cosRAA`` and band names) and
    broadcast to one shape (any ndim). ``partition`` (NALCMS classes) is required for SL2P-CCRS sets; classes
    not in the set's table use network index 0. ``precision="float32"`` runs the fast kernel (within 1e-4 of
    float64); ``"float64"`` runs the plain numpy reference. NaN or infinite inputs give NaN outputs.
    """
    names = _resolve_variables(nets, variables)
    arrays = _inputs_in_order(nets, inputs)
    shape = arrays[0].shape
    net_idx = None
    if nets.is_ccrs:
        if partition is None:
            raise NetworkFileError(f"network set {nets.set_id!r} is SL2P-CCRS: give a land-cover partition "
                                   "(NALCMS classes) per pixel")
        net_idx = network_index_of(nets, np.broadcast_to(np.asarray(partition), shape))
    warns: list[str] = list(nets.notes) if uncertainty else [n for n in nets.notes if "uncertainty" not in n]
    no_unc = [v for v in names if nets.variables[v].uncertainty is None]
    if uncertainty and no_unc and not any("uncertainty" in n for n in warns):
        warns.append(f"network set {nets.set_id!r} has no uncertainty networks for {', '.join(no_unc)}")
    ranges = {v: r for v in names if (r := valid_range(nets, v)) is not None}
    if len(ranges) < len(names):
        warns.append(f"no valid range known for {', '.join(v for v in names if v not in ranges)}: not flagged")
    if precision == "float64":
        res = _estimate_reference(nets, arrays, names, net_idx, uncertainty, ranges)
    elif precision == "float32":
        res = _estimate_kernel(nets, arrays, names, net_idx, uncertainty, ranges)
    else:
        raise ValueError(f"precision must be 'float32' or 'float64', not {precision!r}")
    res.values = {k: v.reshape(shape) for k, v in res.values.items()}
    res.uncertainty = {k: v.reshape(shape) for k, v in res.uncertainty.items()}
    res.out_of_range = {k: v.reshape(shape) for k, v in res.out_of_range.items()}
    res.input_out_of_domain = res.input_out_of_domain.reshape(shape)
    res.network_index = None if net_idx is None else net_idx.reshape(shape)
    res.domain_available = nets.domain is not None
    res.warnings = warns
    return res


def _flags_without_range(names: tuple[str, ...], ranges: Mapping[str, tuple[float, float]], npix: int
                         ) -> dict[str, np.ndarray]:
    return {v: np.zeros(npix, bool) for v in names if v not in ranges}


def _estimate_kernel(nets: NetworkSet, arrays: list[np.ndarray], names: tuple[str, ...],
                     net_idx: np.ndarray | None, uncertainty: bool,
                     ranges: dict[str, tuple[float, float]]) -> Estimates:
    from . import kernel  # numba loads only when the fast path is used

    dtype = np.float32 if all(a.dtype == np.float32 for a in arrays) else np.float64
    flat = [np.ascontiguousarray(a, dtype=dtype).reshape(-1) for a in arrays]
    ranged = tuple(v for v in names if v in ranges)
    out = kernel.run(nets, flat, names, network_index=net_idx, uncertainty=uncertainty, ranges=None)
    npix = flat[0].shape[0]
    assert out.values is not None
    values = {v: out.values[h] for h, (v, unc) in enumerate(out.heads) if not unc}
    unc_vals = {v: out.values[h] for h, (v, unc) in enumerate(out.heads) if unc}
    oor = {v: _range_flag(values[v], ranges[v]) for v in ranged}
    oor.update(_flags_without_range(names, ranges, npix))
    ood = out.out_of_domain if out.out_of_domain is not None else np.zeros(npix, bool)
    return Estimates(values, unc_vals, ood, {v: oor[v] for v in names})


def _range_flag(values: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    return (values < rng[0]) | (values > rng[1])


def _estimate_reference(nets: NetworkSet, arrays: list[np.ndarray], names: tuple[str, ...],
                        net_idx: np.ndarray | None, uncertainty: bool,
                        ranges: dict[str, tuple[float, float]]) -> Estimates:
    x = np.stack([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])
    npix = x.shape[1]
    nidx = None if net_idx is None else net_idx.reshape(-1)
    bad = ~np.all(np.isfinite(x), axis=0)
    values = {v: np.empty(npix) for v in names}
    unc_names = [v for v in names if uncertainty and nets.variables[v].uncertainty is not None]
    unc_vals = {v: np.empty(npix) for v in unc_names}
    for s in range(0, npix, _REFERENCE_BLOCK):
        blk = slice(s, s + _REFERENCE_BLOCK)
        xb, ib = x[:, blk], None if nidx is None else nidx[blk]
        for v in names:
            values[v][blk] = reference.forward_partitioned(nets.variables[v].estimate, xb, ib)
        for v in unc_names:
            unc_vals[v][blk] = reference.forward_partitioned(nets.variables[v].uncertainty, xb, ib)  # type: ignore
    for out in (*values.values(), *unc_vals.values()):
        out[bad] = np.nan
    oor = {v: _range_flag(values[v], ranges[v]) for v in names if v in ranges}
    oor.update(_flags_without_range(names, ranges, npix))
    if nets.domain is not None:
        bands = {b: x[nets.inputs.index(b)] if arrays[nets.inputs.index(b)].dtype != np.float32
                 else arrays[nets.inputs.index(b)].reshape(-1) for b in nets.domain.bands}
        ood = domain_mod.out_of_domain(nets.domain, bands)
    else:
        ood = np.zeros(npix, bool)
    return Estimates(values, unc_vals, ood, {v: oor[v] for v in names})
