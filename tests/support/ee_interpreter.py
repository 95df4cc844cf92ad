"""A compact numpy interpreter of serialised Earth Engine expression graphs (image band maths only).

It evaluates the JSON that ``ee.serializer.encode(obj, for_cloud_api=True)`` produces, for the image operations
LEAF's SL2P/QC/encoding graph uses, following Earth Engine's documented semantics:

- binary operators pair bands one to one, or broadcast a one-band operand; output band names come from the
  operand with more bands (image1 when equal); a pixel is masked when either input is masked;
- **footprints**: every band has one (a leaf image's is given by the test; constants have none, i.e. unbounded).
  Outside its footprint a band is masked whatever its values. Binary operators intersect footprints; ``where``,
  ``updateMask``, ``selfMask``, ``mask`` and ``unmask`` (by default) keep the input's (Earth Engine's algorithm
  list: "The output image retains the metadata and footprint of the input image");
- ``where`` replaces input pixels where ``test`` is non-zero and both ``test`` and ``value`` are unmasked;
- ``unmask(value, sameFootprint)`` gives masked pixels the value's value *and mask*; with ``sameFootprint`` true
  (the default) only inside the input's footprint, with false the footprint is the union of both;
- ``ImageCollection.fromImages``/``Collection.merge``/``Collection.map`` (function definitions are evaluated per
  element), ``Collection.limit`` (sort by a property, stable), ``reduce.max``; ``mosaic`` puts later images on top
  ("prioritizes images last to first"); ``qualityMosaic`` takes per pixel the image with the highest quality,
  and — its ties being undocumented — raises on a tie between unmasked pixels, so a graph that relies on it fails;
- ``reduce`` (sum, min, max) combines unmasked bands; ``remap`` maps listed
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Band:
    name: str
    data: np.ndarray
    mask: np.ndarray
    footprint: np.ndarray | None = None
    """Where the band is defined (None: everywhere). ``mask`` is always False outside it."""


def _fp_and(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return b if a is None else a
    return a & b


def _fp_or(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return None if a is None or b is None else a | b


def _within(mask: np.ndarray, fp: np.ndarray | None) -> np.ndarray:
    return mask if fp is None else np.broadcast_to(mask, np.broadcast_shapes(np.shape(mask), fp.shape)) & fp


@dataclass
class Img:
    bands: list[Band]
    properties: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], mask: np.ndarray | None = None,
                    footprint: np.ndarray | None = None, properties: Mapping[str, Any] | None = None) -> Img:
        """Bands of one image; ``footprint`` (boolean) limits where it is defined, as an asset's extent does."""
        out = []
        for name, a in arrays.items():
            a = np.asarray(a, dtype=np.float64)
            m = np.ones(a.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), a.shape)
            fp = None if footprint is None else np.broadcast_to(np.asarray(footprint, bool), a.shape).copy()
            out.append(Band(name, a, _within(m.copy(), fp), fp))
        return cls(out, dict(properties or {}))

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
        out.append(Band(names[i], data, ba.mask & bb.mask, _fp_and(ba.footprint, bb.footprint)))
    return Img(out, dict(a.properties))


def _unary(a: Img, fn: Callable[[np.ndarray], np.ndarray]) -> Img:
    with np.errstate(all="ignore"):
        return Img([Band(b.name, np.asarray(fn(b.data), dtype=np.float64), b.mask, b.footprint) for b in a.bands],
                   dict(a.properties))


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
    """Evaluate one serialised expression: ``Interpreter(images).evaluate(encoded)``.

    ``images`` maps ``Image.load`` ids to :class:`Img`; ``collections`` maps ``ImageCollection.load`` ids to lists
    of :class:`Img` (collection filters are not interpreted: give the collection as it would be after them).
    """

    def __init__(self, images: Mapping[str, Img], collections: Mapping[str, list[Img]] | None = None):
        self.images = dict(images)
        self.collections = dict(collections or {})
        self.calls: list[str] = []

    def evaluate(self, encoded: Mapping[str, Any]) -> Any:
        self._values = encoded["values"]
        self._cache: dict[str, Any] = {}
        return self._ref(encoded["result"], {})

    def _ref(self, key: str, scope: Mapping[str, Any]) -> Any:
        if scope:  # inside a mapped function: values may depend on its arguments, so no caching
            return self._value(self._values[key], scope)
        if key not in self._cache:
            self._cache[key] = self._value(self._values[key], scope)
        return self._cache[key]

    def _value(self, v: Mapping[str, Any], scope: Mapping[str, Any]) -> Any:
        if "constantValue" in v:
            return v["constantValue"]
        if "valueReference" in v:
            return self._ref(v["valueReference"], scope)
        if "argumentReference" in v:
            return scope[v["argumentReference"]]
        if "arrayValue" in v:
            return [self._value(x, scope) for x in v["arrayValue"]["values"]]
        if "dictionaryValue" in v:
            return {k: self._value(x, scope) for k, x in v["dictionaryValue"]["values"].items()}
        if "functionDefinitionValue" in v:
            d = v["functionDefinitionValue"]
            names, body = d["argumentNames"], d["body"]
            return lambda *args: self._ref(body, {**scope, **dict(zip(names, args, strict=True))})
        if "functionInvocationValue" in v:
            f = v["functionInvocationValue"]
            if f["functionName"] in ("If", "Algorithms.If"):  # lazy, as on the server: only the chosen branch runs
                self.calls.append(f["functionName"])
                raw = f.get("arguments", {})
                chosen = "trueCase" if self._value(raw["condition"], scope) else "falseCase"
                return self._value(raw[chosen], scope)
            args = {k: self._value(x, scope) for k, x in f.get("arguments", {}).items()}
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
        if name == "Element.set":
            obj: Img = a["object"]
            return Img(list(obj.bands), {**obj.properties, a["key"]: a.get("value")})
        if name == "Element.get":
            return a["object"].properties[a["property"]]
        if kind in ("ImageCollection", "Collection", "reduce"):
            handler = getattr(self, f"_col_{kind}_{op}", None)
            if handler is None:
                raise NotImplementedError(f"{name} is not interpreted")
            return handler(a)
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

    # -- collections (a list of Img, in collection order) ------------------------------------------------------
    def _col_ImageCollection_load(self, a: dict[str, Any]) -> list[Img]:
        return list(self.collections[a["id"]])

    def _col_ImageCollection_fromImages(self, a: dict[str, Any]) -> list[Img]:
        return [_img(x) for x in a["images"]]

    def _col_Collection_merge(self, a: dict[str, Any]) -> list[Img]:
        return [*a["collection1"], *a["collection2"]]

    def _col_Collection_map(self, a: dict[str, Any]) -> list[Img]:
        return [a["baseAlgorithm"](x) for x in a["collection"]]

    def _col_Collection_limit(self, a: dict[str, Any]) -> list[Img]:
        col = list(a["collection"])
        if a.get("key") is not None:  # Python's sort is stable: equal keys keep collection order
            col.sort(key=lambda x: x.properties[a["key"]], reverse=a.get("ascending") is False)
        return col[: a["limit"]] if a.get("limit") is not None else col

    def _col_reduce_max(self, a: dict[str, Any]) -> Img:
        """Per pixel and band name, the maximum over the images where that band is unmasked."""
        col: list[Img] = a["collection"]
        out = []
        for name in col[0].names():
            data, masks, fp = _stacked([img.band(name) for img in col])
            out.append(Band(name, np.where(masks, data, -np.inf).max(axis=0), masks.any(axis=0), fp))
        return Img(out)

    def _col_ImageCollection_mosaic(self, a: dict[str, Any]) -> Img:
        """Later images on top: a pixel takes the last image in which it is unmasked (band by band)."""
        col: list[Img] = a["collection"]
        out = []
        for name in col[0].names():
            data, masks, fp = _stacked([img.band(name) for img in col])
            last = len(col) - 1 - np.argmax(masks[::-1], axis=0)  # index of the last unmasked image
            out.append(Band(name, np.take_along_axis(data, last[None], 0)[0], masks.any(axis=0), fp))
        return Img(out)

    def _col_ImageCollection_qualityMosaic(self, a: dict[str, Any]) -> Img:
        """Per pixel the image with the highest quality band. Earth Engine does not document which image wins a
        tie, so a tie between unmasked pixels raises: a graph must not depend on it."""
        col: list[Img] = a["collection"]
        qd, qm, _ = _stacked([img.band(a["qualityBand"]) for img in col])
        q = np.where(qm, qd, -np.inf)
        winners = (q == q.max(axis=0)) & qm
        if (winners.sum(axis=0) > 1).any():
            raise ValueError("qualityMosaic tie: Earth Engine does not document which image wins")
        pick = np.argmax(winners, axis=0)[None]
        out = []
        for name in col[0].names():
            data, masks, fp = _stacked([img.band(name) for img in col])
            mask = np.take_along_axis(masks, pick, 0)[0] & winners.any(axis=0)
            out.append(Band(name, np.take_along_axis(data, pick, 0)[0], mask, fp))
        return Img(out)

    # -- operations with their own argument shapes ---------------------------------------------------------------
    def _op_load(self, a: dict[str, Any]) -> Img:
        return self.images[a["id"]]

    def _op_constant(self, a: dict[str, Any]) -> Img:
        return _img(a["value"])

    def _op_select(self, a: dict[str, Any]) -> Img:
        img: Img = a["input"]
        picked = [img.bands[s] if isinstance(s, int) else img.selected(s) for s in a["bandSelectors"]]
        names = a.get("newNames") or [b.name for b in picked]
        return Img([Band(n, b.data, b.mask, b.footprint) for n, b in zip(names, picked, strict=True)],
                   dict(img.properties))

    def _op_rename(self, a: dict[str, Any]) -> Img:
        img: Img = a["input"]
        return Img([Band(n, b.data, b.mask, b.footprint) for n, b in zip(a["names"], img.bands, strict=True)],
                   dict(img.properties))

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
            out.append(Band(name, b.data, b.mask, b.footprint))
        return Img(out, dict(dst.properties))

    def _op_reduce(self, a: dict[str, Any]) -> Img:
        """Across bands, per pixel, over unmasked bands only (masked where every band is masked)."""
        img: Img = a["image"]
        kind = a["reducer"].kind
        fn, neutral = _REDUCERS[kind]
        arrays = np.broadcast_arrays(*[b.data for b in img.bands], *[b.mask for b in img.bands])
        n = len(img.bands)
        data = np.stack([np.where(m, d, neutral) for d, m in zip(arrays[:n], arrays[n:], strict=True)])
        mask = np.logical_or.reduce(np.stack(arrays[n:]), axis=0)
        fp = img.bands[0].footprint
        for b in img.bands[1:]:
            fp = _fp_or(fp, b.footprint)
        return Img([Band(kind, np.asarray(fn(data, axis=0), np.float64), mask, fp)])

    def _op_where(self, a: dict[str, Any]) -> Img:
        inp, test, val = _img(a["input"]), _img(a["test"]), _img(a["value"])
        out = []
        for i, b in enumerate(inp.bands):
            t = test.bands[i if len(test.bands) > 1 else 0]
            v = val.bands[i if len(val.bands) > 1 else 0]
            replace = t.mask & (t.data != 0) & v.mask & b.mask
            data = np.where(replace, v.data, b.data)
            out.append(Band(b.name, data, np.broadcast_to(b.mask, data.shape), b.footprint))
        return Img(out, dict(inp.properties))

    def _op_unmask(self, a: dict[str, Any]) -> Img:
        """Masked pixels take the value's value and mask: inside the input's footprint only (``sameFootprint``
        true, the default), or over the union of both footprints (false)."""
        img: Img = a["input"]
        fill = _img(a["value"] if a.get("value") is not None else 0)
        same = a.get("sameFootprint", True) is not False
        out = []
        for i, b in enumerate(img.bands):
            f = fill.bands[i if len(fill.bands) > 1 else 0]
            data = np.where(b.mask, b.data, f.data)
            mask = np.where(b.mask, True, f.mask)
            fp = b.footprint if same else _fp_or(b.footprint, f.footprint)
            out.append(Band(b.name, data, _within(mask, fp), fp))
        return Img(out, dict(img.properties))

    def _op_updateMask(self, a: dict[str, Any]) -> Img:
        img, m = _img(a["image"]), _img(a["mask"])
        out = []
        for i, b in enumerate(img.bands):
            mb = m.bands[i if len(m.bands) > 1 else 0]
            out.append(Band(b.name, b.data, b.mask & mb.mask & (mb.data != 0), b.footprint))
        return Img(out, dict(img.properties))

    def _op_selfMask(self, a: dict[str, Any]) -> Img:
        img: Img = a["image"]
        return Img([Band(b.name, b.data, b.mask & (b.data != 0), b.footprint) for b in img.bands],
                   dict(img.properties))

    def _op_mask(self, a: dict[str, Any]) -> Img:
        """The mask as an image (1/0), defined over the input's footprint."""
        img: Img = a["image"]
        if a.get("mask") is not None:
            raise NotImplementedError("Image.mask(mask): use updateMask")
        out = []
        for b in img.bands:
            data = np.broadcast_to(b.mask, np.broadcast_shapes(np.shape(b.mask), np.shape(b.data))) * 1.0
            out.append(Band(b.name, data, _within(np.ones(data.shape, bool), b.footprint), b.footprint))
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
        return Img([Band("remapped", data, mask, band.footprint)], dict(img.properties))


def _stacked(bands: list[Band]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Data and masks of same-named bands of a collection, stacked on a first axis; the union footprint."""
    shape = np.broadcast_shapes(*[np.shape(b.data) for b in bands], *[np.shape(b.mask) for b in bands])
    data = np.stack([np.broadcast_to(b.data, shape) for b in bands]).astype(np.float64)
    masks = np.stack([np.broadcast_to(b.mask, shape) for b in bands])
    fp = bands[0].footprint
    for b in bands[1:]:
        fp = _fp_or(fp, b.footprint)
    return data, masks, fp


def _img(x: Any) -> Img:
    """Promote numbers and lists to constant images, as Earth Engine does."""
    if isinstance(x, Img):
        return x
    if isinstance(x, (int, float)):
        return Img([Band("constant", np.asarray(float(x)), np.asarray(True))])
    if isinstance(x, list):
        return Img([Band(f"constant_{i}", np.asarray(float(v)), np.asarray(True)) for i, v in enumerate(x)])
    raise TypeError(f"not an image: {type(x).__name__}")


def evaluate(obj: Any, images: Mapping[str, Img], collections: Mapping[str, list[Img]] | None = None) -> Img:
    """Serialise an ``ee`` object and evaluate it on numpy images (``Image.load(id)`` → ``images[id]``)."""
    import ee

    return Interpreter(images, collections).evaluate(ee.serializer.encode(obj, for_cloud_api=True))
