"""Product catalogue and encoding: scale, dtype, nodata, valid range, units; the QC byte.

One table drives the local engine, the Earth Engine backend, the GeoTIFF tags and the STAC metadata.
Encoding rule (SPEC §5): DN = round(value·scale) (halves up) clamped to 0..254; 255 = no data (never 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sensors import SENSORS

BIOPHYSICAL: tuple[str, ...] = ("LAI", "fCOVER", "fAPAR", "Albedo")
"""Products a request may ask for; QC and Date are always written."""

ANCILLARY: tuple[str, ...] = ("QC", "Date", "Partition")


@dataclass(frozen=True)
class Product:
    name: str
    units: str
    scale: float
    """DN = round(value·scale); value = DN / scale."""
    dtype: str
    nodata: int
    valid_range: tuple[float, float] | None
    """Estimates outside this range set QC bit 1 (output out of range)."""
    description: str

    @property
    def max_dn(self) -> int:
        return (
            int(np.iinfo(self.dtype).max) - 1
            if self.nodata == np.iinfo(self.dtype).max
            else int(np.iinfo(self.dtype).max)
        )

    @property
    def step(self) -> float:
        return 1.0 / self.scale


PRODUCTS: dict[str, Product] = {
    p.name: p
    for p in (
        Product("LAI", "m2/m2", 20.0, "uint8", 255, (0.0, 15.0), "leaf area index (stored up to 12.7)"),
        Product("fCOVER", "1", 200.0, "uint8", 255, (0.0, 1.0), "fraction of vegetation cover"),
        Product(
            "fAPAR", "1", 200.0, "uint8", 255, (0.0, 1.0), "fraction of absorbed photosynthetically active radiation"
        ),
        # SL2P's albedo network estimates black-sky albedo (LEAF-Toolbox: "Black sky albedo at 10:30 local time"),
        # the directional-hemispherical reflectance at the sun angle, not a blue- or white-sky surface albedo.
        Product("Albedo", "1", 200.0, "uint8", 255, (0.0, 1.0), "black-sky albedo (directional-hemispherical)"),
        Product(
            "QC",
            "bit field",
            1.0,
            "uint8",
            0,
            None,
            "bit0 input out of domain, bit1 output out of range, bit2 invalid, bits3-7 sensor code",
        ),
        Product("Date", "day of year", 1.0, "uint16", 0, None, "1-based day of year of the chosen observation"),
        Product("Partition", "class", 1.0, "uint8", 0, None, "NALCMS land-cover class (1-19) used by SL2P-CCRS"),
    )
}

UNCERTAINTY_SUFFIX = "unc"
"""An uncertainty map of product P is written as product ``P + UNCERTAINTY_SUFFIX`` with P's encoding."""


def product(name: str) -> Product:
    """Product facts by name; uncertainty products (``LAIunc``) share their variable's encoding."""
    if name in PRODUCTS:
        return PRODUCTS[name]
    base = name.removesuffix(UNCERTAINTY_SUFFIX)
    if name.endswith(UNCERTAINTY_SUFFIX) and base in BIOPHYSICAL:
        p = PRODUCTS[base]
        return Product(name, p.units, p.scale, p.dtype, p.nodata, None, f"uncertainty of {p.description}")
    raise KeyError(f"unknown product {name!r}; known: {', '.join(all_product_tokens())}")


def all_product_tokens() -> tuple[str, ...]:
    return (*PRODUCTS, *(f"{b}{UNCERTAINTY_SUFFIX}" for b in BIOPHYSICAL))


def encode(name: str, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Encode physical values to DN. Pixels where ``valid`` is False, or values are NaN, become nodata (255)."""
    p = product(name)
    v = np.asarray(values)
    with np.errstate(over="ignore"):  # huge values overflow to inf and then saturate, as they should
        # Half up (not numpy's half-to-even) so that DNs equal Earth Engine's round() exactly.
        dn = np.clip(np.floor(v * p.scale + 0.5), 0, p.max_dn)
    out = np.where(np.isnan(dn), p.nodata, dn).astype(p.dtype)
    if valid is not None:
        out[~np.asarray(valid, dtype=bool)] = p.nodata
    return out


def decode(name: str, dn: np.ndarray) -> np.ndarray:
    """DN back to physical values (float32); nodata becomes NaN."""
    p = product(name)
    d = np.asarray(dn)
    out = d.astype(np.float32) / np.float32(p.scale)
    return np.where(d == p.nodata, np.float32(np.nan), out)


# QC byte. Bits 0-2 are flags; bits 3-7 the sensor code (sensors.Sensor.qc_code).
QC_INPUT_OUT_OF_DOMAIN = 1 << 0
QC_OUTPUT_OUT_OF_RANGE = 1 << 1
QC_INVALID = 1 << 2
QC_SENSOR_SHIFT = 3
QC_BITS: dict[str, str] = {
    "0": "input reflectance outside the network's definition domain",
    "1": "estimate outside the product's valid range",
    "2": "invalid: no clear observation (cloud, shadow, cirrus, snow/ice, water, saturation, reflectance out of range)",
    "3-7": "sensor code: " + ", ".join(f"{s.id.removesuffix('_SR')}={s.qc_code}" for s in SENSORS.values())
    + " (byte value code*8)",
}


def qc_byte(
    domain: np.ndarray, out_of_range: np.ndarray, invalid: np.ndarray, sensor_code: np.ndarray | int
) -> np.ndarray:
    """Assemble the QC byte from boolean flags and the sensor code (scalar or per pixel)."""
    code = np.asarray(sensor_code, dtype=np.uint8)
    return (
        np.asarray(domain, dtype=np.uint8) * QC_INPUT_OUT_OF_DOMAIN
        | np.asarray(out_of_range, dtype=np.uint8) * QC_OUTPUT_OUT_OF_RANGE
        | np.asarray(invalid, dtype=np.uint8) * QC_INVALID
        | (code << QC_SENSOR_SHIFT).astype(np.uint8)
    ).astype(np.uint8)


def qc_fields(qc: np.ndarray) -> dict[str, np.ndarray]:
    """Split QC bytes into their fields (inverse of :func:`qc_byte`)."""
    q = np.asarray(qc, dtype=np.uint8)
    return {
        "domain": (q & QC_INPUT_OUT_OF_DOMAIN) > 0,
        "out_of_range": (q & QC_OUTPUT_OUT_OF_RANGE) > 0,
        "invalid": (q & QC_INVALID) > 0,
        "sensor_code": q >> QC_SENSOR_SHIFT,
    }
