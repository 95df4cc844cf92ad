"""A compact numpy interpreter of serialised Earth Engine expression graphs (image band maths only).

It evaluates the JSON that ``ee.serializer.encode(obj, for_cloud_api=True)`` produces, for the image operations
LEAF's SL2P/QC/encoding graph uses, following Earth Engine's documented semantics:

- binary operators pair bands one to one, or broadcast a one-band operand; output band names come from the
  operand with more bands (image1 when equal); a pixel is masked when either input is masked;
- ``where`` replaces input pixels where ``test`` is non-zero and both ``test`` and ``value`` are unmasked;
- ``unmask`` fills masked pixels; ``reduce`` (sum, min, max) combines unmasked bands; ``remap`` maps listed
  values, others to the default; ``divide`` by 0 gives 0; ``round`` rounds half away from zero; integer casts
  clamp to the type's range;
- ``addBands`` suffixes duplicate names (``sum``, ``sum_1`` ...), as ``Image.cat`` does;
- ``Number`` arithmetic on constants (scene-level terms such as the compositing score's date term).

Images are :class:`Img` (ordered bands of float64 arrays with boolean masks). Leaves are ``Image.load(id)``:
pass ``images={id: Img}``. Anything else raises ``NotImplementedError`` naming the function, so a graph that uses
an operation this interpreter does not know fails loudly instead of being evaluated wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Band:
    name: str
    data: np.ndarray
    mask: np.ndarray


@dataclass
class Img:
    bands: list[Band]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> Img:
        out = []
        for name, a in arrays.items():
            a = np.asarray(a, dtype=np.float64)
            m = np.ones(a.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), a.shape)
            out.append(Band(name, a, m.copy()))
        return cls(out)

    def names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"no band {name!r} in {self.names()}")

    def selected(self, selector: str) -> Band:
        """The band a ``select`` picks: like Earth Engine, the selector is a regular expression over names."""
        for b in self.bands:
            if re.fullmatch(selector, b.name):
                return b
        raise KeyError(f"no band matches {selector!r} in {self.names()}")

    def array(self, name: str, fill: float = np.nan) -> np.ndarray:
        """A band's values with masked pixels set to ``fill``."""
        b = self.band(name)
        data, mask = np.broadcast_arrays(b.data, b.mask)
        return np.where(mask, data, fill)


class Reducer:
    def __init__(self, kind: str):
        self.kind = kind


def _pair(a: Img, b: Img, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Img:
    na, nb = len(a.bands), len(b.bands)
    if na != nb and 1 not in (na, nb):
        raise ValueError(f"band counts {na} and {nb} do not match")
    n = max(na, nb)
    names = a.names() if na >= nb else b.names()
    out = []
    for i in range(n):
        ba, bb = a.bands[i if na > 1 else 0], b.bands[i if nb > 1 else 0]
        with np.errstate(all="ignore"):
            data = np.asarray(fn(ba.data, bb.data), dtype=np.float64)
        out.append(Band(names[i], data, ba.mask & bb.mask))
    return Img(out)


def _unary(a: Img, fn: Callable[[np.ndarray], np.ndarray]) -> Img:
    with np.errstate(all="ignore"):
        return Img([Band(b.name, np.asarray(fn(b.data), dtype=np.float64), b.mask) for b in a.bands])


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _cast(lo: float, hi: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.trunc(np.clip(x, lo, hi))


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply,
    "divide": lambda x, y: np.where(y == 0, 0.0, x / np.where(y == 0, 1.0, y)),  # Earth Engine: x / 0 = 0
    "max": np.maximum, "min": np.minimum, "mod": np.fmod, "pow": np.power,
    "eq": lambda x, y: (x == y) * 1.0, "neq": lambda x, y: (x != y) * 1.0,
    "lt": lambda x, y: (x < y) * 1.0, "lte": lambda x, y: (x <= y) * 1.0,
    "gt": lambda x, y: (x > y) * 1.0, "gte": lambda x, y: (x >= y) * 1.0,
    "and": lambda x, y: ((x != 0) & (y != 0)) * 1.0, "or": lambda x, y: ((x != 0) | (y != 0)) * 1.0,
    "bitwiseAnd": lambda x, y: (x.astype(np.int64) & y.astype(np.int64)) * 1.0,
    "bitwiseOr": lambda x, y: (x.astype(np.int64) | y.astype(np.int64)) * 1.0,
    "leftShift": lambda x, y: (x.astype(np.int64) << y.astype(np.int64)) * 1.0,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh, "cos": np.cos, "sin": np.sin, "abs": np.abs, "ceil": np.ceil, "floor": np.floor,
    "round": _round_half_away, "not": lambda x: (x == 0) * 1.0, "toDouble": lambda x: x, "double": lambda x: x,
    "toFloat": lambda x: x.astype(np.float32).astype(np.float64),
    "float": lambda x: x.astype(np.float32).astype(np.float64),
    "toUint8": _cast(0, 255), "uint8": _cast(0, 255), "toUint16": _cast(0, 65535), "uint16": _cast(0, 65535),
    "toInt64": _cast(-(2.0**63), 2.0**63), "int64": _cast(-(2.0**63), 2.0**63),
    "toInt16": _cast(-32768, 32767), "toInt32": _cast(-(2**31), 2**31 - 1), "int": _cast(-(2**31), 2**31 - 1),
}


_REDUCERS: dict[str, tuple[Callable[..., np.ndarray], float]] = {
    "sum": (np.sum, 0.0), "min": (np.min, np.inf), "max": (np.max, -np.inf),
}
_NUMBER_BINARY: dict[str, Callable[[float, float], float]] = {
    "add": lambda x, y: x + y, "subtract": lambda x, y: x - y, "multiply": lambda x, y: x * y,
    "divide": lambda x, y: x / y if y else 0.0, "max": max, "min": min,
}
_NUMBER_UNARY: dict[str, Callable[[float], float]] = {"abs": abs, "floor": np.floor, "ceil": np.ceil}


class Interpreter:
    """Evaluate one serialised expression: ``Interpreter(images).evaluate(encoded)``."""

    def __init__(self, images: Mapping[str, Img]):
        self.images = dict(images)
        self.calls: list[str] = []

    def evaluate(self, encoded: Mapping[str, Any]) -> Any:
        self._values = encoded["values"]
        self._cache: dict[str, Any] = {}
        return self._ref(encoded["result"])

    def _ref(self, key: str) -> Any:
        if key not in self._cache:
            self._cache[key] = self._value(self._values[key])
        return self._cache[key]

    def _value(self, v: Mapping[str, Any]) -> Any:
        if "constantValue" in v:
            return v["constantValue"]
        if "valueReference" in v:
            return self._ref(v["valueReference"])
        if "arrayValue" in v:
            return [self._value(x) for x in v["arrayValue"]["values"]]
        if "dictionaryValue" in v:
            return {k: self._value(x) for k, x in v["dictionaryValue"]["values"].items()}
        if "functionInvocationValue" in v:
            f = v["functionInvocationValue"]
            if f["functionName"] in ("If", "Algorithms.If"):  # lazy, as on the server: only the chosen branch runs
                self.calls.append(f["functionName"])
                raw = f.get("arguments", {})
                chosen = "trueCase" if self._value(raw["condition"]) else "falseCase"
                return self._value(raw[chosen])
            args = {k: self._value(x) for k, x in f.get("arguments", {}).items()}
            return self._call(f["functionName"], args)
        raise NotImplementedError(f"value kind {sorted(v)}")

    def _call(self, name: str, a: dict[str, Any]) -> Any:
        self.calls.append(name)
        kind, _, op = name.partition(".")
        if kind == "Reducer" and op in _REDUCERS:
            return Reducer(op)
        if kind == "Number" and op in _NUMBER_BINARY:
            return float(_NUMBER_BINARY[op](float(a["left"]), float(a["right"])))
        if kind == "Number" and op in _NUMBER_UNARY:
            return float(_NUMBER_UNARY[op](float(a["input"])))
        if name == "Image.bandNames":
            return a["image"].names()
        if name == "List.contains":
            return a["element"] in a["list"]
        if name == "List.containsAll":
            return all(x in a["list"] for x in a["other"])
        if kind != "Image":
            raise NotImplementedError(f"{name} is not interpreted")
        if op in _BINARY:
            return _pair(_img(a["image1"]), _img(a["image2"]), _BINARY[op])
        if op in _UNARY:
            return _unary(_img(a["value"]), _UNARY[op])
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise NotImplementedError(f"{name} is not interpreted")
        return handler(a)

    # -- operations with their own argument shapes ---------------------------------------------------------------
    def _op_load(self, a: dict[str, Any]) -> Img:
        return self.images[a["id"]]

    def _op_constant(self, a: dict[str, Any]) -> Img:
        return _img(a["value"])

    def _op_select(self, a: dict[str, Any]) -> Img:
        img: Img = a["input"]
        picked = [img.bands[s] if isinstance(s, int) else img.selected(s) for s in a["bandSelectors"]]
        names = a.get("newNames") or [b.name for b in picked]
        return Img([Band(n, b.data, b.mask) for n, b in zip(names, picked, strict=True)])

    def _op_rename(self, a: dict[str, Any]) -> Img:
        img: Img = a["input"]
        return Img([Band(n, b.data, b.mask) for n, b in zip(a["names"], img.bands, strict=True)])

    def _op_addBands(self, a: dict[str, Any]) -> Img:
        dst, src = _img(a["dstImg"]), _img(a["srcImg"])
        if a.get("names") or a.get("overwrite"):
            raise NotImplementedError("Image.addBands names/overwrite")
        out = list(dst.bands)
        taken = {b.name for b in out}
        for b in src.bands:
            name, k = b.name, 0
            while name in taken:
                k += 1
                name = f"{b.name}_{k}"
            taken.add(name)
            out.append(Band(name, b.data, b.mask))
        return Img(out)

    def _op_reduce(self, a: dict[str, Any]) -> Img:
        """Across bands, per pixel, over unmasked bands only (masked where every band is masked)."""
        img: Img = a["image"]
        kind = a["reducer"].kind
        fn, neutral = _REDUCERS[kind]
        arrays = np.broadcast_arrays(*[b.data for b in img.bands], *[b.mask for b in img.bands])
        n = len(img.bands)
        data = np.stack([np.where(m, d, neutral) for d, m in zip(arrays[:n], arrays[n:], strict=True)])
        mask = np.logical_or.reduce(np.stack(arrays[n:]), axis=0)
        return Img([Band(kind, np.asarray(fn(data, axis=0), np.float64), mask)])

    def _op_where(self, a: dict[str, Any]) -> Img:
        inp, test, val = _img(a["input"]), _img(a["test"]), _img(a["value"])
        out = []
        for i, b in enumerate(inp.bands):
            t = test.bands[i if len(test.bands) > 1 else 0]
            v = val.bands[i if len(val.bands) > 1 else 0]
            replace = t.mask & (t.data != 0) & v.mask & b.mask
            data = np.where(replace, v.data, b.data)
            out.append(Band(b.name, data, np.broadcast_to(b.mask, data.shape)))
        return Img(out)

    def _op_unmask(self, a: dict[str, Any]) -> Img:
        img: Img = a["input"]
        fill = _img(a.get("value", 0))
        out = []
        for i, b in enumerate(img.bands):
            f = fill.bands[i if len(fill.bands) > 1 else 0]
            data = np.where(b.mask, b.data, f.data)
            out.append(Band(b.name, data, np.ones(np.shape(data), bool)))
        return Img(out)

    def _op_updateMask(self, a: dict[str, Any]) -> Img:
        img, m = _img(a["image"]), _img(a["mask"])
        out = []
        for i, b in enumerate(img.bands):
            mb = m.bands[i if len(m.bands) > 1 else 0]
            out.append(Band(b.name, b.data, b.mask & mb.mask & (mb.data != 0)))
        return Img(out)

    def _op_clamp(self, a: dict[str, Any]) -> Img:
        return _unary(_img(a["input"]), lambda x: np.clip(x, a["low"], a["high"]))

    def _op_remap(self, a: dict[str, Any]) -> Img:
        img: Img = a["image"]
        src = np.asarray(a["from"], dtype=np.float64)
        dst = np.asarray(a["to"], dtype=np.float64)
        band = img.band(a["bandName"]) if a.get("bandName") else img.bands[0]
        order = np.argsort(src)
        s_src, s_dst = src[order], dst[order]
        pos = np.clip(np.searchsorted(s_src, band.data), 0, len(s_src) - 1)
        hit = s_src[pos] == band.data
        default = a.get("defaultValue")
        data = np.where(hit, s_dst[pos], np.nan if default is None else default)
        mask = band.mask & (hit if default is None else True)
        return Img([Band("remapped", data, mask)])


def _img(x: Any) -> Img:
    """Promote numbers and lists to constant images, as Earth Engine does."""
    if isinstance(x, Img):
        return x
    if isinstance(x, (int, float)):
        return Img([Band("constant", np.asarray(float(x)), np.asarray(True))])
    if isinstance(x, list):
        return Img([Band(f"constant_{i}", np.asarray(float(v)), np.asarray(True)) for i, v in enumerate(x)])
    raise TypeError(f"not an image: {type(x).__name__}")


def evaluate(obj: Any, images: Mapping[str, Img]) -> Img:
    """Serialise an ``ee`` object and evaluate it on numpy images (``Image.load(id)`` → ``images[id]``)."""
    import ee

    return Interpreter(images).evaluate(ee.serializer.encode(obj, for_cloud_api=True))
