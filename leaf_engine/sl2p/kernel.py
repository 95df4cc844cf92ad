"""Fast SL2P kernel (numba, both cores): every estimate, uncertainty, flag and DN in one pass over the inputs.

How it stays fast and accurate:
* Pixels are processed in chunks of ``CHUNK`` that stay in L1 cache, in one flat float32 buffer per chunk whose
  rows (centred inputs, an accumulator, a NaN row, a pre-activation row) sit at constant offsets. The neuron
  loop is outside, the pixel loops inside, so LLVM vectorises them across pixels (AVX2/AVX-512) with no aliasing
  checks. Per neuron, two short loops: the pre-activation (unrolled over 8, 11 or 12 inputs, zero-padded) and the
  activation, both bound by the FMA units. (Pairs of neurons sharing one division cost three multiply-adds to
  save it: 5 % slower on a CPU whose divider keeps up, as AVX-512 Zen 4 does; the divider is not on the FMA ports.)
* The inputs of the chunk ``PREFETCH_CHUNKS`` ahead are prefetched into L2 while this one computes: a chunk reads
  its eleven input rows in one burst and then computes for microseconds, too irregular for the hardware
  prefetchers (+10–20 % when the inputs come from memory).
* The input scaling is folded into the first layer: ``W1·(s·x + o) + b1 = (W1·s)·(x − c) + b1'`` with a centre
  ``c`` per input that is a float32 number, so ``x − c`` of a float32 input is exact (Sterbenz) and float64
  inputs are centred in float64 then rounded once. This avoids the cancellation of ``189·cosVZA − 188`` in
  float32 (it alone would cost ~1e-4 in LAI).
* tanh is a rational x·P(x²)/Q(x²) of degree 9/6 fitted on [0, 7.9] whose error is bounded by
  ``TANH_MAX_ERROR`` over every float32 input; Q is monic (its evaluation starts with an add) and each
  neuron's output weight is folded into P, so the activation adds into the accumulator with no multiply.
  ``ACTIVATION_MAX_ERROR`` adds the roundings of the folding, and
  :func:`error_bound` carries it (and float32 rounding) through the layers. libm's tanh does not vectorise
  and costs more than all the multiply-adds together.
* Non-finite inputs are tracked arithmetically (``d − d`` is 0 or NaN, summed into a NaN row): no branches.
  The activation loop may therefore assume finite numbers (its clamp is vminps/vmaxps).
* The domain code follows the rule of :mod:`.domain` exactly. For float32 inputs the digits of all (up to 8)
  domain bands and their code (uint32) are computed in float32 in one vectorised loop (from a copy of the
  chunk's domain bands) and trusted only where ``10·ρ − 1e-5`` is at least ``DIGIT_GUARD`` from an integer and
  below ``DIGIT_RANGE``; a chunk with any other pixel is redone in float64. Codes are looked up in a bitset of
  10**n_bands bits (12.5 MB for 8 bands, branch-free, in 32-bit words); larger code spaces use binary search.
* SL2P-CCRS: each chunk is split by network index (gather → compute → scatter), so mixed chunks cost only the
  networks present.

Compilation takes tens of seconds: ``python -m leaf_engine.compiled`` (run by ``scripts/test`` and
``scripts/demo``) does it once and ``cache=True`` keeps it on disk (next to this module, or in
``NUMBA_CACHE_DIR``) for every later process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..compiled import parallel_launch, read_only
from ..errors import NetworkFileError
from ..products import BIOPHYSICAL, product
from .domain import BOUNDARY_TOLERANCE, DIGIT_CAP
from .networks import Domain, Network, NetworkSet

CHUNK = 256
"""Pixels per chunk: the chunk buffer (15 rows × 256 float32) stays in L1."""
MAX_INPUTS = 12
"""Inputs the kernel takes (SL2P sets have 7 to 11); layers are unrolled for 8 or 12 inputs (zero-padded)."""
ROW_ACC = 12
"""Row of the chunk buffer that accumulates a head's output."""
ROW_NAN = 13
"""Row of the chunk buffer that is 0, or NaN where any input of the pixel is not finite."""
ROW_HID = 14
"""Row of the chunk buffer that holds one hidden neuron's pre-activation."""
BUF_ROWS = 15
PREFETCH_CHUNKS = 8
"""How many chunks ahead the inputs are prefetched (8 × 11 rows × 1 kB per thread: well within L2); 4, 8 and 16
measured alike, 1 and 2 no better than none."""
DIGIT_GUARD = 2e-6
"""Float32 domain digits are trusted when ``10·ρ − 1e-5`` is at least this far from an integer (its float32 error
is ≤ 9.6e-7 for |10·ρ| < 15); otherwise the chunk's codes are rebuilt in float64."""
DIGIT_RANGE = 15.0
BITSET_MAX_BANDS = 8
"""Up to 8 bands the domain lookup is a 12.5 MB bitset; more bands use binary search over the codes. Float32
inputs of such a set get their digits in float32, from a copy of the chunk's domain bands (``raw``: 8 rows of
``CHUNK``, absent bands 0)."""
TANH_CLAMP = 7.9
"""The rational tanh is fitted on [0, 7.9] and held at its value there beyond (1 − tanh(7.9) = 2.8e-7)."""
TANH_P = (-3.1255116482498124e-05, 0.036399032920598984, 13.710640907287598, 646.8984985351562, 5090.1875)
"""Numerator of the kernel's tanh x·P(x²)/Q(x²), highest power first (float32 numbers; the degree 9/6 fit of
``benchmarks/tanh_bound.py --fit`` scaled so that Q is monic)."""
TANH_Q = (116.23982238769531, 2343.61328125, 5090.19189453125)
"""Q(u) = u³ + TANH_Q[0]·u² + TANH_Q[1]·u + TANH_Q[2]: monic, so its evaluation starts with an add."""
TANH_MAX_ERROR = 6e-7
"""Bound on |kernel tanh − tanh| over every float32 input, evaluation in float32 included (checked on every
float32 in [0, 8] by ``benchmarks/tanh_bound.py``, on a dense sample by the tests); the function is odd."""
ACTIVATION_MAX_ERROR = TANH_MAX_ERROR + 3 * 2.0**-24
"""Bound on |kernel activation − v·tanh| per unit of |v| (the output weight): the tanh's own error, plus the
float32 rounding of v folded into P (one rounding per coefficient, relative to |v·tanh|) and the evaluation's
roundings moving with v (two more). Checked on every shipped neuron by the tests."""

# Only flags that do not reorder arithmetic: contraction to FMA and no signed zeros. 'reassoc' would undo the
# float64 centring, 'nnan' NaN propagation, 'arcp' costs accuracy in tanh's division.
# error_model="numpy": float division without a ZeroDivisionError branch, which would block vectorisation.
_FASTMATH = {"contract", "nsz"}
# The activation loop alone may also assume no NaN/inf: a non-finite pre-activation comes only from a
# non-finite input, and those pixels are made NaN through the NaN row at the end whatever tanh returned. This
# lets the clamp compile to vminps/vmaxps instead of compare-and-blend.
_FASTMATH_ACT = {"contract", "nsz", "nnan", "ninf"}


@intrinsic
def _prefetch(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Prefetch the cache line of ``arr[idx]`` into L2 (``llvm.prefetch``, read, locality 1): a hint with no
    effect on results; ``idx`` must be within the array."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 1), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _tanh_times(x, p4, p3, p2, p1, p0):  # type: ignore[no-untyped-def]
    """v·tanh(x) for a numerator ``p = v·TANH_P`` (the output weight v folded into P): 8 multiply-adds, one add
    and a division, all vectorised (libm's tanh does not vectorise).
    x·P(x²)/Q(x²) is a near-minimax fit of tanh on [0, 7.9] (Lawson-weighted least squares,
    benchmarks/tanh_bound.py). The clamp is a plain min/max: non-finite inputs are made NaN by the caller."""
    x = min(max(x, np.float32(-TANH_CLAMP)), np.float32(TANH_CLAMP))
    u = x * x
    p = p4 * u + p3
    p = p * u + p2
    p = p * u + p1
    p = p * u + p0
    q = u + np.float32(TANH_Q[0])
    q = q * u + np.float32(TANH_Q[1])
    q = q * u + np.float32(TANH_Q[2])
    return p * x / q


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _tanh(x: float) -> float:
    return _tanh_times(x, np.float32(TANH_P[0]), np.float32(TANH_P[1]), np.float32(TANH_P[2]),
                       np.float32(TANH_P[3]), np.float32(TANH_P[4]))


@njit(cache=True, fastmath=_FASTMATH_ACT, error_model="numpy")
def activations32(x: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """The kernel's activation v·tanh(x) from ``pc = v·TANH_P`` on a float32 array of finite numbers (exposed to
    test its accuracy)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _tanh_times(x[i], pc[0], pc[1], pc[2], pc[3], pc[4])
    return out


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def tanh32(x: np.ndarray) -> np.ndarray:
    """The kernel's tanh on a float32 array (exposed to test its accuracy; without the kernel's no-NaN/inf
    assumption, so that infinite inputs are defined here too)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i])
    return out


def _centred(v, c32, c64):  # pragma: no cover - only its compiled overload below runs
    return np.float32(v - c64)


@overload(_centred, inline="always")
def _centred_impl(v, c32, c64):  # type: ignore[no-untyped-def]
    """Centre one input: float32 inputs in float32 (exact by Sterbenz's lemma within a factor 2 of the centre,
    the case of the large-offset angle inputs), float64 inputs in float64 then rounded once."""
    if isinstance(v, types.Float) and v.bitwidth == 32:
        return lambda v, c32, c64: v - c32
    return lambda v, c32, c64: np.float32(v - c64)


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _preact8(buf, w, b, row):
    """``buf[row] = b + w · d`` over every pixel of a chunk, 8 input rows in 2 FMA chains (``row`` is a
    constant once inlined)."""
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    w4, w5, w6, w7 = w[4], w[5], w[6], w[7]
    for p in range(CHUNK):
        a0 = (b + w0 * buf[p] + w2 * buf[2 * CHUNK + p]
              + w4 * buf[4 * CHUNK + p] + w6 * buf[6 * CHUNK + p])
        a1 = (w1 * buf[1 * CHUNK + p] + w3 * buf[3 * CHUNK + p]
              + w5 * buf[5 * CHUNK + p] + w7 * buf[7 * CHUNK + p])
        buf[row * CHUNK + p] = a0 + a1


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _preact11(buf, w, b, row):
    """``buf[row] = b + w · d`` over every pixel of a chunk, 11 input rows in 3 FMA chains (the 20 m sets)."""
    w0, w1, w2, w3, w4, w5 = w[0], w[1], w[2], w[3], w[4], w[5]
    w6, w7, w8, w9, w10 = w[6], w[7], w[8], w[9], w[10]
    for p in range(CHUNK):
        a0 = (b + w0 * buf[p] + w3 * buf[3 * CHUNK + p]
              + w6 * buf[6 * CHUNK + p] + w9 * buf[9 * CHUNK + p])
        a1 = (w1 * buf[1 * CHUNK + p] + w4 * buf[4 * CHUNK + p]
              + w7 * buf[7 * CHUNK + p] + w10 * buf[10 * CHUNK + p])
        a2 = w2 * buf[2 * CHUNK + p] + w5 * buf[5 * CHUNK + p] + w8 * buf[8 * CHUNK + p]
        buf[row * CHUNK + p] = a0 + a1 + a2


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _preact12(buf, w, b, row):
    """``buf[row] = b + w · d`` over every pixel of a chunk, 12 input rows in 3 FMA chains."""
    w0, w1, w2, w3, w4, w5 = w[0], w[1], w[2], w[3], w[4], w[5]
    w6, w7, w8, w9, w10, w11 = w[6], w[7], w[8], w[9], w[10], w[11]
    for p in range(CHUNK):
        a0 = (b + w0 * buf[p] + w3 * buf[3 * CHUNK + p]
              + w6 * buf[6 * CHUNK + p] + w9 * buf[9 * CHUNK + p])
        a1 = (w1 * buf[1 * CHUNK + p] + w4 * buf[4 * CHUNK + p]
              + w7 * buf[7 * CHUNK + p] + w10 * buf[10 * CHUNK + p])
        a2 = (w2 * buf[2 * CHUNK + p] + w5 * buf[5 * CHUNK + p]
              + w8 * buf[8 * CHUNK + p] + w11 * buf[11 * CHUNK + p])
        buf[row * CHUNK + p] = a0 + a1 + a2


@njit(fastmath=_FASTMATH_ACT, error_model="numpy", cache=True)
def _activate(buf, pc):
    """``buf[ACC] += v2 · tanh(buf[HID])`` over every pixel of a chunk, ``pc = v2·TANH_P`` (its own function:
    its fastmath flags differ from the caller's)."""
    p4, p3, p2, p1, p0 = pc[0], pc[1], pc[2], pc[3], pc[4]
    for p in range(CHUNK):
        buf[ROW_ACC * CHUNK + p] += _tanh_times(buf[ROW_HID * CHUNK + p], p4, p3, p2, p1, p0)


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _preact(buf, width, w, b, row):
    if width == 8:
        _preact8(buf, w, b, row)
    elif width == 11:
        _preact11(buf, w, b, row)
    else:
        _preact12(buf, w, b, row)


@njit(fastmath=_FASTMATH, error_model="numpy", cache=True)
def _heads(buf, k, w1, b1, tp, b2, y):
    """y[h, :] = network k of every head on the centred inputs in ``buf`` (float32).

    Per hidden neuron, two short loops: the pre-activation and the activation (tanh times the output weight).
    Two simple loops keep more iterations in flight than one long dependency chain would (one fused loop measured
    no faster). The
    pixel loops run over the whole chunk (a constant trip count; pixels past the valid ones hold stale finite
    inputs and are never read back) and every buffer access sits at a constant offset from one base (rows of
    ``CHUNK``), so LLVM vectorises them across pixels without runtime alias checks. Not inlined: one compiled
    copy serves every call site of every kernel variant (inlined, it tripled the compile time)."""
    n_heads = b1.shape[0]
    n_hid = b1.shape[2]
    width = w1.shape[3]
    for h in range(n_heads):
        bias = b2[h, k]
        for p in range(CHUNK):
            buf[ROW_ACC * CHUNK + p] = bias
        for j in range(n_hid):
            _preact(buf, width, w1[h, k, j], b1[h, k, j], ROW_HID)
            _activate(buf, tp[h, k, j])
        for p in range(CHUNK):
            y[h, p] = buf[ROW_ACC * CHUNK + p] + buf[ROW_NAN * CHUNK + p]  # NaN where an input is not finite


@njit(inline="always", cache=True)
def _in_bitset(bits, code):  # type: ignore[no-untyped-def]
    """Whether bit ``code`` of the bitset (32-bit words, :func:`domain_bitset`) is set; ``code`` is in range."""
    return (bits[code >> 5] >> (code & 31)) & 1 == 1


@njit(inline="always", cache=True)
def _lookup_bitset(codef, m, bitset, ood, s):
    """``ood[s + p] = code p not in the bitset`` without branches (NaN and out-of-range codes are outside)."""
    top = bitset.shape[0] * 32.0
    out = ood[s:s + m]  # a view indexed from 0: ``ood[s + p]`` with a signed s would be gathered lane by lane
    for p in range(m):
        c = codef[p]
        valid = (c >= 0.0) & (c < top)  # False for NaN
        code = np.uint32(c if valid else 0.0)
        out[p] = not (valid & _in_bitset(bitset, code))


@njit(inline="always", cache=True)
def _in_codes(codef, codes):
    """Binary search of one code in the sorted codes (code spaces too large for a bitset)."""
    if not codef >= 0.0:  # also NaN: a band was not finite
        return False
    code = np.int64(codef)
    i = np.searchsorted(codes, code)
    return i < codes.shape[0] and codes[i] == code


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _load_input(xi, s, m, c32, c64, buf, row):
    """Centre one input into ``buf`` row ``row`` and fold its finiteness into the NaN row (d − d is 0 or NaN:
    two adds, which leave the multiply-add units to the networks)."""
    xv = xi[s:s + m]  # a view indexed from 0: ``xi[s + p]`` with a signed s would be gathered lane by lane
    for p in range(m):
        d = _centred(xv[p], c32, c64)
        buf[row * CHUNK + p] = d
        buf[ROW_NAN * CHUNK + p] += d - d


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _add_digits(xb, s, m, mult, codef):
    """Add one band's domain digit times ``mult`` to ``codef`` (the rule of domain.py, in float64); a band that is
    not finite makes the code NaN (v·0)."""
    xv = xb[s:s + m]
    for p in range(m):
        v = np.float64(xv[p])
        t = v * 10.0
        t = DIGIT_CAP if t > DIGIT_CAP else t
        c = np.ceil(t - BOUNDARY_TOLERANCE)
        dig = c - 10.0 * np.floor(c * 0.1)
        codef[p] += (dig if c > 0.0 else 0.0) * mult + v * 0.0


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _digit32(v):  # type: ignore[no-untyped-def]
    """Float32 form of one digit of :func:`_add_digits`, and whether it can be trusted: not where
    ``|10·ρ − 1e-5|`` ≥ ``DIGIT_RANGE``, within ``DIGIT_GUARD`` of an integer, or not finite (such chunks are
    redone in float64). tests/test_sl2p_domain.py checks the guard on every float32 near each digit boundary,
    with and without a fused multiply-add."""
    sv = v * np.float32(10.0) - np.float32(BOUNDARY_TOLERANCE)
    c = np.ceil(sv)
    f = c - sv  # in [0, 1): 0 or 1 − tiny next to an integer
    ok = ((np.abs(sv) < np.float32(DIGIT_RANGE)) & (f >= np.float32(DIGIT_GUARD))  # False for NaN
          & (f <= np.float32(1.0 - DIGIT_GUARD)))
    c = c if c > np.float32(0.0) else np.float32(0.0)
    return (c - np.float32(10.0) if c >= np.float32(10.0) else c), ok


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _flags8(raw, m, bits, codes, out):  # type: ignore[no-untyped-def]
    """Out-of-domain flags ``out`` of a chunk from the 8 rows of ``raw``, unless a digit cannot be trusted
    (returns True, flags not written). The digits and the code are one vectorised loop, every intermediate in
    registers (the code is exact in uint32: below 10**8); the lookup in the bitset's 32-bit words is a loop of
    its own, since LLVM does not vectorise gathers for every CPU and a gather would keep the whole loop scalar."""
    ten = np.float32(10.0)
    bad = False
    for p in range(m):
        d0, k0 = _digit32(raw[p])
        d1, k1 = _digit32(raw[CHUNK + p])
        d2, k2 = _digit32(raw[2 * CHUNK + p])
        d3, k3 = _digit32(raw[3 * CHUNK + p])
        d4, k4 = _digit32(raw[4 * CHUNK + p])
        d5, k5 = _digit32(raw[5 * CHUNK + p])
        d6, k6 = _digit32(raw[6 * CHUNK + p])
        d7, k7 = _digit32(raw[7 * CHUNK + p])
        ok = k0 & k1 & k2 & k3 & k4 & k5 & k6 & k7
        lo = ((d3 * ten + d2) * ten + d1) * ten + d0 if ok else np.float32(0.0)  # exact: integers below 10**4
        hi = ((d7 * ten + d6) * ten + d5) * ten + d4 if ok else np.float32(0.0)  # (untrusted digits: maybe inf)
        codes[p] = np.uint32(hi) * np.uint32(10000) + np.uint32(lo)
        bad |= not ok
    if not bad:
        for p in range(m):
            out[p] = not _in_bitset(bits, codes[p])
    return bad


@njit(inline="always", fastmath=_FASTMATH, error_model="numpy", cache=True)
def _codes64(xs, s, m, dom_in, codef):
    """Float64 domain codes of a chunk: digit ``pos`` from input ``dom_in[pos]``, times 10**pos."""
    for p in range(m):
        codef[p] = 0.0
    mult = 1.0
    for pos in range(dom_in.shape[0]):
        _add_digits(xs[dom_in[pos]], s, m, mult, codef)
        mult *= 10.0


@njit(inline="always", cache=True)
def _lookup64(codef, m, bitset, codes, ood, s):  # type: ignore[no-untyped-def]
    """Out-of-domain flags of a chunk from its float64 codes: in the bitset, or by binary search without one."""
    if bitset.shape[0] > 0:
        _lookup_bitset(codef, m, bitset, ood, s)
    else:
        for p in range(m):
            ood[s + p] = not _in_codes(codef[p], codes)


def _domain_flags(xs, s, m, dom_in, raw, codef, code32, bitset, codes, ood):  # pragma: no cover - overloaded
    raise NotImplementedError


@overload(_domain_flags, inline="always")
def _domain_flags_impl(xs, s, m, dom_in, raw, codef, code32, bitset, codes, ood):  # type: ignore[no-untyped-def]
    """Out-of-domain flag of each pixel of a chunk into ``ood``. Float32 inputs of a set with at most 8 domain
    bands (a bitset): float32 digits of the ``raw`` copy, unless a pixel of the chunk is not safe for them;
    otherwise, and for float64 inputs, float64 digits and codes (``codef``)."""
    if not (isinstance(xs.dtype.dtype, types.Float) and xs.dtype.dtype.bitwidth == 32):
        def impl64(xs, s, m, dom_in, raw, codef, code32, bitset, codes, ood):
            _codes64(xs, s, m, dom_in, codef)
            _lookup64(codef, m, bitset, codes, ood, s)

        return impl64

    def impl(xs, s, m, dom_in, raw, codef, code32, bitset, codes, ood):
        if bitset.shape[0] > 0:
            for pos in range(dom_in.shape[0]):  # the domain bands in digit order, into the rows of ``raw``
                xv = xs[dom_in[pos]][s:s + m]
                rv = raw[pos * CHUNK:(pos + 1) * CHUNK]
                for p in range(m):
                    rv[p] = xv[p]
            if not _flags8(raw, m, bitset, code32, ood[s:s + m]):
                return
        _codes64(xs, s, m, dom_in, codef)
        _lookup64(codef, m, bitset, codes, ood, s)

    return impl


@njit(inline="always", cache=True, error_model="numpy")
def dn_value(v, scale, max_dn, nodata):  # type: ignore[no-untyped-def]
    """products.encode of one float32 value: ``v·scale + 0.5`` in float32, rounded twice as numpy computes it,
    floored (half up, as Earth Engine's round for v ≥ 0), clamped to 0..max_dn, NaN → nodata. Callers must not be
    compiled with fast-math ``contract``: a fused multiply-add rounds once and moves some DN by one."""
    r = np.floor(v * scale + np.float32(0.5))
    r = np.float32(0.0) if r < np.float32(0.0) else r
    r = max_dn if r > max_dn else r
    return nodata if np.isnan(v) else np.uint8(r)


@njit(cache=True, error_model="numpy")
def _encode_dn(y, dn, s, m, dn_scale, dn_max, dn_nodata):  # type: ignore[no-untyped-def]
    """``dn[:, s:s + m]`` = :func:`dn_value` of each head's chunk ``y``. Its own function, without the kernel's
    fast-math flags (see dn_value). In float32 throughout: a float64 ``+ 0.5`` converted every value (3.7× slower)."""
    for h in range(y.shape[0]):
        sc = dn_scale[h]
        out8 = dn[h, s:s + m]
        yh = y[h]
        for p in range(m):
            out8[p] = dn_value(yh[p], sc, dn_max, dn_nodata)


@njit(parallel=True, cache=True, fastmath=_FASTMATH, error_model="numpy")
def _run(xs, n_in, net_index, centre32, centre64, w1, b1, tp, b2, dom_in, bitset, codes,
         vals, dn, dn_scale, dn_max, dn_nodata, oor, range_lo, range_hi, ood, n_threads):
    npix = xs[0].shape[0]
    n_heads = b1.shape[0]
    n_nets = b1.shape[1]
    want_vals = vals.shape[0] > 0
    want_dn = dn.shape[0] > 0
    n_oor = oor.shape[0]
    want_dom = ood.shape[0] > 0
    per_pixel_net = net_index.shape[0] > 0
    n_chunks = (npix + CHUNK - 1) // CHUNK
    n_blocks = min(n_chunks, n_threads * 8)  # several blocks per thread balance the load
    for blk in prange(n_blocks):
        buf = np.zeros(BUF_ROWS * CHUNK, np.float32)  # rows past n_in stay 0 (their weights are 0 too)
        bufg = np.zeros(BUF_ROWS * CHUNK, np.float32)
        raw = np.zeros(BITSET_MAX_BANDS * CHUNK, np.float32)  # rows of absent bands stay 0: digit 0, trusted
        y = np.empty((n_heads, CHUNK), np.float32)
        yg = np.empty((n_heads, CHUNK), np.float32)
        codef = np.empty(CHUNK, np.float64)
        code32 = np.empty(CHUNK, np.uint32)
        idx = np.empty(CHUNK, np.int64)
        counts = np.zeros(n_nets, np.int64)
        for c in range(blk * n_chunks // n_blocks, (blk + 1) * n_chunks // n_blocks):
            s = c * CHUNK
            m = min(CHUNK, npix - s)
            for p in range(m):
                buf[ROW_NAN * CHUNK + p] = 0.0
            for i in range(n_in):
                _load_input(xs[i], s, m, centre32[i], centre64[i], buf, i)
            ahead = s + PREFETCH_CHUNKS * CHUNK
            if ahead + CHUNK <= npix:
                for i in range(n_in):
                    for q in range(0, CHUNK, 16):  # one 64-byte line of float32 (float64: every other line)
                        _prefetch(xs[i], ahead + q)
            # networks: one pass when the chunk uses one network, else gather/compute/scatter per network
            if not per_pixel_net:
                _heads(buf, 0, w1, b1, tp, b2, y)
            else:
                counts[:] = 0
                for p in range(m):
                    counts[net_index[s + p]] += 1
                for k in range(n_nets):
                    if counts[k] == m:
                        _heads(buf, k, w1, b1, tp, b2, y)
                    elif counts[k] > 0:
                        g = 0
                        for p in range(m):
                            if net_index[s + p] == k:
                                idx[g] = p
                                g += 1
                        for r in range(n_in):
                            for q in range(g):
                                bufg[r * CHUNK + q] = buf[r * CHUNK + idx[q]]
                        for q in range(g):
                            bufg[ROW_NAN * CHUNK + q] = buf[ROW_NAN * CHUNK + idx[q]]
                        _heads(bufg, k, w1, b1, tp, b2, yg)
                        for h in range(n_heads):
                            for q in range(g):
                                y[h, idx[q]] = yg[h, q]
            if want_vals:
                for h in range(n_heads):
                    out = vals[h, s:s + m]
                    for p in range(m):
                        out[p] = y[h, p]
            if want_dn:
                _encode_dn(y, dn, s, m, dn_scale, dn_max, dn_nodata)
            for h in range(n_oor):
                lo = range_lo[h]
                hi = range_hi[h]
                outb = oor[h, s:s + m]
                for p in range(m):
                    v = y[h, p]
                    outb[p] = (v < lo) | (v > hi)
            if want_dom:
                _domain_flags(xs, s, m, dom_in, raw, codef, code32, bitset, codes, ood)


@dataclass(frozen=True, eq=False)
class PackedHeads:
    """Coefficients of every head (variable × estimate/uncertainty) laid out for the kernel (float32)."""

    heads: tuple[tuple[str, bool], ...]
    """(variable, is_uncertainty) per head: estimates first, then uncertainties."""
    centre: np.ndarray
    """float32 per input (kept also as float64: the same numbers)."""
    centre64: np.ndarray
    w1: np.ndarray
    """(heads, nets, neurons, width)."""
    b1: np.ndarray
    w2: np.ndarray
    """(heads, nets, neurons): the output weights (for the error bound; the kernel uses ``tanh_p``)."""
    tanh_p: np.ndarray
    """(heads, nets, neurons, 5): each neuron's tanh numerator times its output weight (``w2·TANH_P``)."""
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
    # the input value that maps to 0 in the first network, rounded to float32 so float32 inputs centre exactly
    centre = (-first.input_offset / first.input_slope).astype(np.float32).astype(np.float64)
    n_in = len(nets.inputs)
    if n_in > MAX_INPUTS:
        raise NetworkFileError(f"the fast kernel takes at most {MAX_INPUTS} inputs, set {nets.set_id!r} has "
                               f"{n_in}: use precision='float64'")
    width = 8 if n_in <= 8 else 11 if n_in == 11 else 12  # the unrolled widths (rows past n_in: weight 0)
    w1 = np.zeros((len(heads), n_nets, n_hid, width))
    b1 = np.zeros((len(heads), n_nets, n_hid))
    w2 = np.zeros((len(heads), n_nets, n_hid))
    b2 = np.zeros((len(heads), n_nets))
    for h, lst in enumerate(lists):
        for k in range(n_nets):
            w1[h, k, :, :n_in], b1[h, k], w2[h, k], b2[h, k] = _fold(lst[min(k, len(lst) - 1)], centre,  # type: ignore
                                                                      n_hid)
    f32 = np.float32
    w2 = w2.astype(f32)
    tanh_p = (w2.astype(np.float64)[..., None] * np.array(TANH_P)).astype(f32)
    return PackedHeads(tuple(heads), centre.astype(f32), centre, w1.astype(f32), b1.astype(f32), w2, tanh_p,
                       b2.astype(f32))


@functools.lru_cache(maxsize=8)
def domain_bitset(domain: Domain) -> np.ndarray:
    """Bitset over all 10**n_bands codes in 32-bit words (empty when the code space is too large: binary search
    is used)."""
    if len(domain.bands) > BITSET_MAX_BANDS:
        return np.zeros(0, np.uint32)
    bits = np.zeros((10 ** len(domain.bands) + 31) // 32, np.uint32)
    codes = domain.codes[(domain.codes >= 0) & (domain.codes < 10 ** len(domain.bands))]
    np.bitwise_or.at(bits, codes >> 5, np.left_shift(np.uint32(1), (codes & 31).astype(np.uint32)))
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
    flat = [read_only(np.ascontiguousarray(x, dtype=dtype).reshape(-1)) for x in inputs]
    # a fixed-length tuple (padded with an empty array) compiles once for every set and indexes cheaply;
    # a typed List costs a C call per access
    xs = tuple(flat) + (read_only(np.zeros(0, dtype)),) * (MAX_INPUTS - len(flat))
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
    bitset = read_only(domain_bitset(dom) if dom else np.zeros(0, np.uint32))
    dom_in = np.array([nets.inputs.index(b) for b in dom.bands] if dom else [], np.int64)  # input of each digit
    codes = read_only(np.ascontiguousarray(dom.codes if dom else np.zeros(0), np.int64))  # whoever loaded the set
    nidx = read_only(np.zeros(0, np.int8) if network_index is None
                     else np.ascontiguousarray(network_index, np.int8).reshape(-1))
    nodata = product("LAI").nodata
    # blocks are handed out one at a time (dynamic scheduling): a thread slowed by other work on a shared
    # machine does not hold the others up
    with parallel_launch(), numba.parallel_chunksize(1):
        _run(xs, len(flat), nidx, packed.centre, packed.centre64, packed.w1, packed.b1, packed.tanh_p, packed.b2,
             dom_in, bitset, codes, vals, dns, dn_scale, np.float32(product("LAI").max_dn), np.uint8(nodata),
             oor, lo, hi, ood, numba.get_num_threads())  # read here: using it in the kernel defeats caching
    return KernelResult(packed.heads, vals if values else None, dns if dn else None,
                        oor if len(lo) else None, ood if dom is not None else None)


_U32 = 2.0**-24
"""Unit roundoff of float32."""


def _gamma(k: int) -> float:
    return k * _U32 / (1 - k * _U32)


@dataclass(frozen=True)
class ErrorBound:
    """A-priori bound on |float32 kernel − exact network| for one head, over a box of inputs."""

    tanh: float
    """From the activation: Σ|w2|·ACTIVATION_MAX_ERROR (tanh is 1-Lipschitz and enters the output linearly)."""
    rounding: float
    """From float32 rounding (worst case: every rounding error of every layer in the same direction)."""

    @property
    def total(self) -> float:
        return self.tanh + self.rounding


def error_bound(nets: NetworkSet, variable: str, uncertainty: bool = False,
                box: dict[str, tuple[float, float]] | None = None) -> ErrorBound:
    """Bound on the float32 kernel's error for ``variable``'s network(s), for inputs in ``box``
    (default: reflectances in [0, 1], cosVZA/cosSZA in [0, 1], cosRAA in [−1, 1]).

    Per hidden neuron j the pre-activation a_j = b1_j + Σ_i w1_ji·d_i (d = input − centre) is accumulated in
    float32 from rounded weights and centred inputs: |Δa_j| ≤ γ(n+3)·(|b1_j| + Σ_i |w1_ji|·max|d_i|). The
    output y = b2 + Σ_j w2_j·t_j with t_j = tanh~(a_j + Δa_j): |Δy| ≤ Σ_j |w2_j|·(|Δa_j| + ACTIVATION_MAX_ERROR) +
    γ(n_hid+2)·(|b2| + Σ_j |w2_j|) (|t_j| ≤ 1). Everything is in output units (scaling folded).
    """
    box = box or {}
    lo = np.array([box.get(n, (-1.0 if n == "cosRAA" else 0.0, 1.0))[0] for n in nets.inputs])
    hi = np.array([box.get(n, (-1.0 if n == "cosRAA" else 0.0, 1.0))[1] for n in nets.inputs])
    packed = pack(nets, (variable,), uncertainty)
    h = len(packed.heads) - 1  # the uncertainty head comes after the estimate head
    c = packed.centre64
    dmax = np.maximum(np.abs(lo - c), np.abs(hi - c))
    n_in = len(c)
    worst_t = worst_r = 0.0
    for k in range(packed.w1.shape[1]):
        w1 = np.abs(packed.w1[h, k, :, :n_in].astype(np.float64))
        b1 = np.abs(packed.b1[h, k].astype(np.float64))
        w2 = np.abs(packed.w2[h, k].astype(np.float64))
        da = _gamma(n_in + 3) * (b1 + w1 @ dmax)
        worst_t = max(worst_t, float(w2.sum()) * ACTIVATION_MAX_ERROR)
        worst_r = max(worst_r, float((w2 * da).sum()) + _gamma(w1.shape[0] + 2) * (abs(float(packed.b2[h, k]))
                                                                                    + float(w2.sum())))
    return ErrorBound(worst_t, worst_r)


def warm_up() -> float:
    """Compile the kernel (or load it from numba's on-disk cache) for float32 and float64 inputs; seconds."""
    import time

    from .networks import load_network_set

    t0 = time.perf_counter()
    for set_id in ("leaf_sl2p_s2_20m", "leaf_sl2pccrs_l8"):  # the 12- and 8-input layouts, plain and CCRS
        nets = load_network_set(set_id)
        for dtype in (np.float32, np.float64):
            x = [np.full(64, 0.5, dtype) for _ in nets.inputs]
            idx = np.zeros(64, np.int8) if nets.is_ccrs else None
            run(nets, x, ("LAI",), network_index=idx, dn=True, uncertainty=True,
                ranges={"LAI": product("LAI").valid_range})  # type: ignore[dict-item]
    return time.perf_counter() - t0
