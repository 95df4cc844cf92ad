"""SL2P / SL2P-CCRS, the QC byte and the product encoding as an Earth Engine image graph.

Built from the **same network files** as the local engine (:class:`leaf_engine.sl2p.networks.NetworkSet`): the
coefficients become constant images, so no Earth Engine asset is needed. The maths mirrors the local engine:

    xn = x·input_slope + input_offset;  h = tanh(W1·xn + b1);  y = (W2·h + b2 − output_offset) / output_slope

Each hidden neuron is a band-wise product with a constant image summed by ``Reducer.sum`` — a few graph nodes per
network. Encoding and QC come from :mod:`leaf_engine.products`; inputs are cast to double so the graph computes
what the local engine computes in float64.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ... import products
from ...errors import NetworkFileError
from ...sl2p.domain import BOUNDARY_TOLERANCE, DIGIT_CAP
from ...sl2p.networks import Network, NetworkSet

DOMAIN_FLAG = "domain"
RANGE_FLAG = "out_of_range"


def _const(values: Sequence[float]) -> Any:
    import ee

    return ee.Image.constant([float(v) for v in values])


def network_image(x: Any, net: Network) -> Any:
    """One network applied to ``x`` (an image whose bands are the set's inputs in network order)."""
    import ee

    xn = x.multiply(_const(net.input_slope)).add(_const(net.input_offset))
    hidden = [
        xn.multiply(_const(w)).reduce(ee.Reducer.sum()).add(float(b)).tanh()
        for w, b in zip(net.layer1_weights, net.layer1_bias, strict=True)
    ]
    yn = ee.Image.cat(hidden).multiply(_const(net.layer2_weights)).reduce(ee.Reducer.sum()).add(net.layer2_bias)
    return yn.subtract(net.output_offset).divide(net.output_slope)


def _partitioned(x: Any, nets: tuple[Network, ...], network_index: Any | None) -> Any:
    """Per pixel the network of its index (SL2P-CCRS); identical networks are evaluated once."""
    out = network_image(x, nets[0])
    if len(nets) == 1 or network_index is None:
        return out
    done: dict[int, Any] = {id(nets[0]): out}
    for k, net in enumerate(nets[1:], start=1):
        if id(net) not in done:
            done[id(net)] = network_image(x, net)
        out = out.where(network_index.eq(k), done[id(net)])
    return out


def network_index_image(nets: NetworkSet, landcover: Any) -> Any:
    """Land-cover class → network index (classes outside the table use network 0, the generic one)."""
    assert nets.partition is not None
    classes = list(nets.partition)
    return landcover.remap(classes, [nets.partition[c] for c in classes], 0)


def select_exact(img: Any, names: Sequence[str]) -> Any:
    """Bands by their exact names. Earth Engine reads ``select`` names as regular expressions, and the Landsat 5/7
    network inputs (``green(B2)`` …) contain parentheses."""
    return img.select([re.escape(n) for n in names], list(names))


def domain_code(x: Any, bands: Sequence[str]) -> Any:
    """Decimal domain code of the reflectance ``bands``, by the rule of :mod:`leaf_engine.sl2p.domain`:
    c = ceil(min(10·ρ, DIGIT_CAP) − BOUNDARY_TOLERANCE) in double; digit = c mod 10, 0 for c ≤ 0; code = Σ digitᵢ·10ⁱ
    (first band = units digit)."""
    import ee

    tenths = select_exact(x, bands).multiply(10).min(DIGIT_CAP).subtract(BOUNDARY_TOLERANCE)
    digits = tenths.ceil().max(0).mod(10)
    return digits.multiply(_const([10.0**i for i in range(len(bands))])).reduce(ee.Reducer.sum())


def domain_flag(x: Any, nets: NetworkSet) -> Any:
    """1 where the reflectances fall outside the set's definition domain (QC bit 0); 0 when it has none."""
    import ee

    if nets.domain is None:
        return ee.Image.constant(0)
    codes = [int(c) for c in nets.domain.codes]
    # Integer codes, so remap matches exactly (Earth Engine warns that float inputs may fail to match).
    return domain_code(x, nets.domain.bands).toInt64().remap(codes, [0] * len(codes), 1)


def estimates_image(inputs: Any, nets: NetworkSet, variables: Sequence[str], *, uncertainty: bool = False,
                    landcover: Any | None = None) -> Any:
    """Bands: each variable's estimate (and ``{var}unc``), ``domain`` (0/1).

    ``inputs`` has at least the set's inputs by name; ``landcover`` (NALCMS classes) is needed for SL2P-CCRS.
    """
    import ee

    x = select_exact(inputs, nets.inputs).toDouble()
    index = network_index_image(nets, landcover) if nets.is_ccrs and landcover is not None else None
    if nets.is_ccrs and landcover is None:
        raise NetworkFileError(f"network set {nets.set_id} is SL2P-CCRS: it needs a land-cover partition image")
    bands = []
    for var in variables:
        v = nets.variable(var)
        bands.append(_partitioned(x, v.estimate, index).rename(var))
        if uncertainty:
            name = f"{var}{products.UNCERTAINTY_SUFFIX}"
            if v.uncertainty is None:  # as the local engine: the map is written, all nodata
                bands.append(ee.Image.constant(0).updateMask(ee.Image.constant(0)).rename(name))
            else:
                bands.append(_partitioned(x, v.uncertainty, index).rename(name))
    bands.append(domain_flag(x, nets).rename(DOMAIN_FLAG))
    return ee.Image.cat(bands)


def out_of_range_flag(estimates: Any, variables: Sequence[str]) -> Any:
    """1 where any variable's estimate lies outside its product's valid range (QC bit 1)."""
    import ee

    flag = ee.Image.constant(0)
    for var in variables:
        rng = products.product(var).valid_range
        if rng is None:
            continue
        e = estimates.select(var)
        flag = flag.Or(e.lt(rng[0]).Or(e.gt(rng[1])))
    return flag


def encode_image(values: Any, product: str, valid: Any) -> Any:
    """DN of one product: round(v·scale) clamped to 0..max DN, nodata where not ``valid`` or masked."""
    p = products.product(product)
    dn = values.multiply(p.scale).round().clamp(0, p.max_dn)
    dn = dn.unmask(p.nodata, False).where(valid.unmask(0, False).Not(), p.nodata)
    return cast_to(dn, p.dtype).rename(product)


def cast_to(img: Any, dtype: str) -> Any:
    """Cast to a product's dtype (``uint8`` or ``uint16``, from :mod:`leaf_engine.products`)."""
    casts = {"uint8": img.toUint8, "uint16": img.toUint16}
    return casts[dtype]()


def qc_image(domain: Any, out_of_range: Any, valid: Any, sensor_code: Any) -> Any:
    """The QC byte: flags of valid pixels; bit 2 alone (plus the sensor code) where there is no valid input."""
    ok = valid.unmask(0, False)  # sameFootprint=False: defined wherever the export is, not only where scenes are
    flags = (domain.unmask(0, False).multiply(products.QC_INPUT_OUT_OF_DOMAIN)
             .add(out_of_range.unmask(0, False).multiply(products.QC_OUTPUT_OUT_OF_RANGE))
             .multiply(ok))
    invalid = ok.Not().multiply(products.QC_INVALID)
    code = sensor_code.multiply(2**products.QC_SENSOR_SHIFT)
    return flags.add(invalid).add(code).toUint8().rename("QC")


def products_image(inputs: Any, nets_by_code: dict[int, NetworkSet], product_tokens: Sequence[str], *,
                   valid: Any, sensor_code: Any, landcover: Any | None = None, date: Any | None = None) -> Any:
    """Every product band of a job, encoded: biophysical DNs, uncertainty DNs, QC, Date, Partition.

    ``nets_by_code`` maps each sensor code to its network set (several when a request merges sensors): each pixel
    uses the networks of the sensor it was observed by (``sensor_code``, one band, unmasked everywhere).
    ``valid`` is 1 where the composite has a clear observation; ``date`` the chosen day of year.
    """
    import ee

    variables = [t for t in product_tokens if t in products.BIOPHYSICAL]
    unc = any(t.endswith(products.UNCERTAINTY_SUFFIX) for t in product_tokens)
    est = None
    for code, nets in nets_by_code.items():
        e = estimates_image(inputs, nets, variables, uncertainty=unc, landcover=landcover)
        est = e if est is None else est.where(sensor_code.eq(code), e)
    assert est is not None, "no network set"
    bands = []
    for token in product_tokens:
        if token in products.BIOPHYSICAL or token.removesuffix(products.UNCERTAINTY_SUFFIX) in products.BIOPHYSICAL:
            bands.append(encode_image(est.select(token), token, valid))
        elif token == "QC":
            bands.append(qc_image(est.select(DOMAIN_FLAG), out_of_range_flag(est, variables), valid, sensor_code))
        elif token == "Date":
            assert date is not None, "the Date product needs the composite's date band"
            bands.append(_ancillary(date, "Date", valid))
        elif token == "Partition":
            assert landcover is not None, "the Partition product needs the land-cover image"
            bands.append(_ancillary(landcover, "Partition", ee.Image.constant(1)))
        else:
            raise KeyError(f"no Earth Engine graph for product {token!r}")
    return ee.Image.cat(bands)


def _ancillary(img: Any, product: str, valid: Any) -> Any:
    p = products.product(product)
    out = img.unmask(p.nodata, False).where(valid.unmask(0, False).Not(), p.nodata)
    return cast_to(out, p.dtype).rename(product)
