"""Fast SL2P kernel (numba, both cores): every estimate, uncertainty, flag and DN in one pass over the inputs.

How it stays fast and accurate:
* Pixels are processed in small chunks that stay in L1 cache; inner loops run over pixels so they vectorise
  (AVX2/AVX-512); five hidden neurons are accumulated together, four inputs per pass, so each accumulator
  load/store carries four multiply-adds.
* The input scaling is folded into the first layer: ``W1·(s·x + o) + b1 = (W1·s)·(x − c) + b1'`` with a
  float64 centre ``c`` per input. ``x − c`` is formed in float64 and only then rounded to float32, which avoids
  the cancellation of ``189·cosVZA − 188`` in float32 (it alone would cost ~1e-4 in LAI).
* tanh is a rational approximation (the minimax 13/6 form used by Eigen and XLA, max error ≈ 3e-7 in float32),
  which vectorises; libm's tanh does not and costs more than all the multiply-adds together.
* The domain code is built in float64 (the rule of :mod:`.domain`, exactly) and looked up in a bitset of 10**n_bands
  bits (12.5 MB for 8 bands); larger code spaces fall back to binary search.
* SL2P-CCRS: each chunk is split by network index (gather → compute → scatter), so mixed chunks cost only the
  networks present.

Compilation takes tens of seconds; ``cache=True`` keeps it on disk next to this module for later processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from ..errors import NetworkFileError
from ..products import BIOPHYSICAL, product
from .domain import BOUNDARY_TOLERANCE, DIGIT_CAP
from .networks import Domain, Network, NetworkSet

CHUNK = 256
"""Pixels per chunk: centred inputs (≤ 16 × 256 float32) and accumulators stay in L1."""
MAX_INPUTS = 16
"""Inputs the kernel takes (SL2P sets have 7 to 11)."""
BITSET_MAX_BANDS = 8
"""Up to 8 bands the domain lookup is a 12.5 MB bitset; more bands use binary search over the codes."""
TANH_CLAMP = 7.90531110763549805
"""Beyond this |x| the float32 tanh is ±1 to rounding; the rational form is clamped there."""

# Only flags that do not reorder arithmetic: contraction to FMA and no signed zeros. 'reassoc' would undo the
# float64 centring, 'nnan' NaN propagation, 'arcp' costs accuracy in tanh's division.
# error_model="numpy": float division without a ZeroDivisionError branch, which would block vectorisation.
_FASTMATH = {"contract", "nsz"}


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _tanh(x: float) -> float:
    # Minimax rational approximation on [-7.9, 7.9] (coefficients of Eigen's ptanh_float); odd numerator/even
    # denominator in x², evaluated in float32.
    # clamp with selects (they vectorise; min/max carry NaN logic); NaN pixels are handled by the caller
    x = np.float32(TANH_CLAMP) if x > np.float32(TANH_CLAMP) else x
    x = np.float32(-TANH_CLAMP) if x < np.float32(-TANH_CLAMP) else x
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * x
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p / q


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def tanh32(x: np.ndarray) -> np.ndarray:
    """The kernel's tanh on a float32 array (exposed to test its accuracy)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i])
    return out


@njit(inline="always", cache=True)
def _w5(w1, h, k, j0, nj, i, use):
    """Weights of input i for neurons j0..j0+4 (0 beyond the layer or when not ``use``)."""
    z = np.float32(0.0)
    return (w1[h, k, j0, i] if use and nj > 0 else z, w1[h, k, j0 + 1, i] if use and nj > 1 else z,
            w1[h, k, j0 + 2, i] if use and nj > 2 else z, w1[h, k, j0 + 3, i] if use and nj > 3 else z,
            w1[h, k, j0 + 4, i] if use and nj > 4 else z)


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _heads(d, m, k, w1, b1, w2, b2, y, acc, yacc):
    """y[h, :m] = network k of every head on centred inputs d[:, :m] (float32)."""
    n_heads, _, n_hid, n_in = w1.shape
    for h in range(n_heads):
        for p in range(m):
            yacc[p] = b2[h, k]
        # five neurons at a time (SL2P's hidden layer) and four inputs per pass: few accumulator loads/stores
        # per multiply-add; acc is (5, CHUNK)
        for j0 in range(0, n_hid, 5):
            nj = min(5, n_hid - j0)
            for jj in range(5):
                bj = b1[h, k, j0 + jj] if jj < nj else np.float32(0.0)
                for p in range(m):
                    acc[jj, p] = bj
            for i in range(0, n_in, 4):
                # four inputs × five neurons per pass (indices past the end repeat the last input, weight 0)
                ia, ib, ic, id_ = i, min(i + 1, n_in - 1), min(i + 2, n_in - 1), min(i + 3, n_in - 1)
                wa0, wa1, wa2, wa3, wa4 = _w5(w1, h, k, j0, nj, ia, True)
                wb0, wb1, wb2, wb3, wb4 = _w5(w1, h, k, j0, nj, ib, i + 1 < n_in)
                wc0, wc1, wc2, wc3, wc4 = _w5(w1, h, k, j0, nj, ic, i + 2 < n_in)
                wd0, wd1, wd2, wd3, wd4 = _w5(w1, h, k, j0, nj, id_, i + 3 < n_in)
                for p in range(m):
                    xa = d[ia, p]
                    xb = d[ib, p]
                    xc = d[ic, p]
                    xd = d[id_, p]
                    acc[0, p] += wa0 * xa + wb0 * xb + wc0 * xc + wd0 * xd
                    acc[1, p] += wa1 * xa + wb1 * xb + wc1 * xc + wd1 * xd
                    acc[2, p] += wa2 * xa + wb2 * xb + wc2 * xc + wd2 * xd
                    acc[3, p] += wa3 * xa + wb3 * xb + wc3 * xc + wd3 * xd
                    acc[4, p] += wa4 * xa + wb4 * xb + wc4 * xc + wd4 * xd
            for jj in range(nj):
                w2j = w2[h, k, j0 + jj]
                for p in range(m):
                    yacc[p] += w2j * _tanh(acc[jj, p])
        for p in range(m):
            y[h, p] = yacc[p]


@njit(inline="always", cache=True)
def _in_domain(code, bitset, codes):
    if bitset.shape[0] > 0:
        if code < 0 or code >= bitset.shape[0] * 64:
            return False
        return (bitset[code >> 6] >> np.uint64(code & 63)) & np.uint64(1) == np.uint64(1)
    i = np.searchsorted(codes, code)
    return i < codes.shape[0] and codes[i] == code


@njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _run(xs, n_in, net_index, centre, w1, b1, w2, b2, dom_mult, bitset, codes,
         vals, dn, dn_scale, dn_max, dn_nodata, oor, range_lo, range_hi, ood, n_threads):
    npix = xs[0].shape[0]
    n_heads = w1.shape[0]
    n_nets = w1.shape[1]
    want_vals = vals.shape[0] > 0
    want_dn = dn.shape[0] > 0
    n_oor = oor.shape[0]
    want_dom = ood.shape[0] > 0
    per_pixel_net = net_index.shape[0] > 0
    n_chunks = (npix + CHUNK - 1) // CHUNK
    n_blocks = min(n_chunks, n_threads * 8)  # several blocks per thread balance the load
    for blk in prange(n_blocks):
        d = np.empty((n_in, CHUNK), np.float32)
        dg = np.empty((n_in, CHUNK), np.float32)
        y = np.empty((n_heads, CHUNK), np.float32)
        yg = np.empty((n_heads, CHUNK), np.float32)
        acc = np.empty((5, CHUNK), np.float32)
        yacc = np.empty(CHUNK, np.float32)
        bad = np.empty(CHUNK, np.bool_)
        codef = np.empty(CHUNK, np.float64)
        bad_band = np.empty(CHUNK, np.bool_)
        idx = np.empty(CHUNK, np.int64)
        counts = np.zeros(n_nets, np.int64)
        for c in range(blk * n_chunks // n_blocks, (blk + 1) * n_chunks // n_blocks):
            s = c * CHUNK
            m = min(CHUNK, npix - s)
            for p in range(m):
                bad[p] = False
                bad_band[p] = False
                codef[p] = 0.0
            for i in range(n_in):
                xi = xs[i]
                ci = centre[i]
                mult = dom_mult[i]
                if want_dom and mult > 0.0:  # a domain band: its digit is added while the input is at hand
                    _load_band(xi, s, m, ci, mult, d[i], bad, bad_band, codef)
                else:
                    for p in range(m):
                        v = np.float64(xi[s + p])
                        d[i, p] = np.float32(v - ci)
                        bad[p] |= not np.isfinite(v)
            # networks: one pass when the chunk uses one network, else gather/compute/scatter per network
            if not per_pixel_net:
                _heads(d, m, 0, w1, b1, w2, b2, y, acc, yacc)
            else:
                counts[:] = 0
                for p in range(m):
                    counts[net_index[s + p]] += 1
                for k in range(n_nets):
                    if counts[k] == m:
                        _heads(d, m, k, w1, b1, w2, b2, y, acc, yacc)
                    elif counts[k] > 0:
                        g = 0
                        for p in range(m):
                            if net_index[s + p] == k:
                                idx[g] = p
                                g += 1
                        for i in range(n_in):
                            for q in range(g):
                                dg[i, q] = d[i, idx[q]]
                        _heads(dg, g, k, w1, b1, w2, b2, yg, acc, yacc)
                        for h in range(n_heads):
                            for q in range(g):
                                y[h, idx[q]] = yg[h, q]
            any_bad = False
            for p in range(m):
                any_bad |= bad[p]
            if any_bad:
                for h in range(n_heads):
                    for p in range(m):
                        if bad[p]:
                            y[h, p] = np.nan
            if want_vals:
                for h in range(n_heads):
                    for p in range(m):
                        vals[h, s + p] = y[h, p]
            if want_dn:
                for h in range(n_heads):
                    sc = dn_scale[h]
                    for p in range(m):
                        v = y[h, p]
                        r = np.floor(v * sc + 0.5)  # half up, as Earth Engine's round for v >= 0
                        r = np.float32(0.0) if r < np.float32(0.0) else r
                        r = dn_max if r > dn_max else r
                        dn[h, s + p] = dn_nodata if np.isnan(v) else np.uint8(r)
            for h in range(n_oor):
                lo = range_lo[h]
                hi = range_hi[h]
                for p in range(m):
                    v = y[h, p]
                    oor[h, s + p] = (v < lo) | (v > hi)
            if want_dom:
                for p in range(m):
                    ood[s + p] = bad_band[p] or not _in_domain(np.int64(codef[p]), bitset, codes)


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _load_band(xb, s, m, ci, mult, di, bad, bad_band, codef):
    """Centre one reflectance input into ``di`` and add its domain digit times ``mult`` to ``codef``
    (the rule of domain.py, in float64)."""
    for p in range(m):
        v = np.float64(xb[s + p])
        di[p] = np.float32(v - ci)
        t = v * 10.0
        t = DIGIT_CAP if t > DIGIT_CAP else t
        c = np.ceil(t - BOUNDARY_TOLERANCE)
        dig = c - 10.0 * np.floor(c * 0.1)
        codef[p] += (dig if c > 0.0 else 0.0) * mult
        fin = np.isfinite(v)
        bad[p] |= not fin
        bad_band[p] |= not fin


@dataclass(frozen=True, eq=False)
class PackedHeads:
    """Coefficients of every head (variable × estimate/uncertainty) laid out for the kernel (float32)."""

    heads: tuple[tuple[str, bool], ...]
    """(variable, is_uncertainty) per head: estimates first, then uncertainties."""
    centre: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray


def _fold(net: Network, centre: np.ndarray, n_hid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Fold input and output scaling into the weights (float64): see the module docstring."""
    w1 = net.layer1_weights * net.input_slope[None, :]
    b1 = net.layer1_bias + net.layer1_weights @ (net.input_slope * centre + net.input_offset)
    w2 = net.layer2_weights / net.output_slope
    b2 = (net.layer2_bias - net.output_offset) / net.output_slope
    pad = n_hid - net.n_hidden  # zero-padded neurons contribute w2·tanh(0) = 0
    return (np.pad(w1, ((0, pad), (0, 0))), np.pad(b1, (0, pad)), np.pad(w2, (0, pad)), float(b2))


def pack(nets: NetworkSet, variables: tuple[str, ...], uncertainty: bool) -> PackedHeads:
    """Pack the estimate (and, if asked and available, uncertainty) networks of ``variables``."""
    return _pack_cached(nets, tuple(variables), bool(uncertainty))


@functools.lru_cache(maxsize=64)
def _pack_cached(nets: NetworkSet, variables: tuple[str, ...], uncertainty: bool) -> PackedHeads:
    heads: list[tuple[str, bool]] = [(v, False) for v in variables]
    if uncertainty:
        heads += [(v, True) for v in variables if nets.variable(v).uncertainty is not None]
    lists = [nets.variable(v).uncertainty if unc else nets.variable(v).estimate for v, unc in heads]
    n_nets = max(len(lst) for lst in lists)  # type: ignore[arg-type]
    n_hid = max(n.n_hidden for lst in lists for n in lst)  # type: ignore[union-attr]
    first = lists[0][0]  # type: ignore[index]
    centre = -first.input_offset / first.input_slope  # input value that maps to 0 in the first network
    n_in = len(nets.inputs)
    w1 = np.zeros((len(heads), n_nets, n_hid, n_in))
    b1 = np.zeros((len(heads), n_nets, n_hid))
    w2 = np.zeros((len(heads), n_nets, n_hid))
    b2 = np.zeros((len(heads), n_nets))
    for h, lst in enumerate(lists):
        for k in range(n_nets):
            w1[h, k], b1[h, k], w2[h, k], b2[h, k] = _fold(lst[min(k, len(lst) - 1)], centre, n_hid)  # type: ignore
    f32 = np.float32
    return PackedHeads(tuple(heads), centre, w1.astype(f32), b1.astype(f32), w2.astype(f32), b2.astype(f32))


@functools.lru_cache(maxsize=8)
def domain_bitset(domain: Domain) -> np.ndarray:
    """Bitset over all 10**n_bands codes (empty when the code space is too large: binary search is used)."""
    if len(domain.bands) > BITSET_MAX_BANDS:
        return np.zeros(0, np.uint64)
    bits = np.zeros((10 ** len(domain.bands) + 63) // 64, np.uint64)
    codes = domain.codes[(domain.codes >= 0) & (domain.codes < 10 ** len(domain.bands))]
    np.bitwise_or.at(bits, codes >> 6, np.left_shift(np.uint64(1), (codes & 63).astype(np.uint64)))
    return bits


@dataclass
class KernelResult:
    heads: tuple[tuple[str, bool], ...]
    values: np.ndarray | None
    """float32 (n_heads, n_pixels), or None when not asked for."""
    dn: np.ndarray | None
    """uint8 (n_heads, n_pixels): products.encode of each head (255 = no data)."""
    out_of_range: np.ndarray | None
    """bool (n_variables, n_pixels) for the estimate heads."""
    out_of_domain: np.ndarray | None
    """bool (n_pixels); None when the set has no domain or it was not asked for."""


def run(nets: NetworkSet, inputs: list[np.ndarray], variables: tuple[str, ...], *,
        network_index: np.ndarray | None = None, uncertainty: bool = False,
        ranges: dict[str, tuple[float, float]] | None = None, values: bool = True, dn: bool = False,
        domain: bool = True) -> KernelResult:
    """Run the kernel on flat inputs given **in the set's input order** (all float32, or all float64).

    ``network_index`` (int8, one per pixel) picks each pixel's CCRS network; ``ranges`` gives the valid range of
    each variable for the out-of-range flags (omitted: no flags).
    """
    packed = pack(nets, variables, uncertainty)
    # two compiled variants only: all-float32 inputs, or everything as float64
    dtype = np.dtype(np.float32) if all(np.asarray(x).dtype == np.float32 for x in inputs) else np.dtype(np.float64)
    flat = [np.ascontiguousarray(x, dtype=dtype).reshape(-1) for x in inputs]
    if len(flat) > MAX_INPUTS:
        raise NetworkFileError(f"the fast kernel takes at most {MAX_INPUTS} inputs, set {nets.set_id!r} has "
                               f"{len(flat)}: use precision='float64'")
    # a fixed-length tuple (padded with an empty array) compiles once for every set and indexes cheaply;
    # a typed List costs a C call per access
    xs = tuple(flat) + (np.zeros(0, dtype),) * (MAX_INPUTS - len(flat))
    npix = flat[0].shape[0]
    n_heads = len(packed.heads)
    vals = np.empty((n_heads, npix) if values else (0, 0), np.float32)
    dns = np.empty((n_heads, npix) if dn else (0, 0), np.uint8)
    dn_scale = np.array([product(v).scale if v in BIOPHYSICAL else 1.0 for v, _ in packed.heads], np.float32)
    ranges = ranges or {}
    lo = np.array([ranges[v][0] for v in variables if v in ranges], np.float32)
    hi = np.array([ranges[v][1] for v in variables if v in ranges], np.float32)
    if len(lo) not in (0, len(variables)):
        raise ValueError("ranges must cover every variable or none")
    oor = np.empty((len(lo), npix), np.bool_)
    dom = nets.domain if domain else None
    ood = np.empty(npix if dom is not None else 0, np.bool_)
    dom_mult = np.zeros(len(flat), np.float64)  # 10**position of each domain band, 0 for other inputs
    for pos, band in enumerate(dom.bands if dom else ()):
        dom_mult[nets.inputs.index(band)] = 10.0**pos
    bitset = domain_bitset(dom) if dom else np.zeros(0, np.uint64)
    codes = dom.codes if dom else np.zeros(0, np.int64)
    nidx = np.zeros(0, np.int8) if network_index is None else np.ascontiguousarray(network_index, np.int8).reshape(-1)
    nodata = product("LAI").nodata
    # blocks are handed out one at a time (dynamic scheduling): a thread slowed by other work on a shared
    # machine does not hold the others up
    with numba.parallel_chunksize(1):
        _run(xs, len(flat), nidx, packed.centre, packed.w1, packed.b1, packed.w2, packed.b2, dom_mult, bitset,
             codes, vals, dns, dn_scale, np.float32(product("LAI").max_dn), np.uint8(nodata),
             oor, lo, hi, ood, numba.get_num_threads())  # read here: using it in the kernel defeats caching
    return KernelResult(packed.heads, vals if values else None, dns if dn else None,
                        oor if len(lo) else None, ood if dom is not None else None)
