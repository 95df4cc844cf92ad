"""Bounded decoding of untrusted bytes: a message body becomes JSON data, or a list of problems — never a crash.

Checked *before* ``json.loads`` sees the text, so no input can exhaust the parser:

* size: at most ``max_bytes`` (the admission limit ``request_bytes``);
* UTF-8: the body must decode strictly (no lone surrogates, no invalid bytes);
* nesting: at most :data:`MAX_DEPTH` levels of ``[``/``{`` (CPython's parser recurses per level);
* numbers: at most :data:`MAX_NUMBER_CHARS` characters (an int of 4,301+ digits makes ``int()`` raise a plain
  ValueError; a long float is silently rounded);

and while parsing: duplicate object keys are an error (JSON leaves their meaning open; Python keeps the last),
``NaN``/``Infinity`` and non-finite numbers are refused, and a string holding a lone surrogate escape
(``"\\ud800"``) is refused because it cannot be written back as UTF-8.

Also here: :func:`clip`, the one way an offending value is shown in an error record or a log line (truncated,
saying so, and with what UTF-8 cannot carry escaped).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import Problem, RequestError

MAX_DEPTH = 32
"""Deepest nesting of arrays/objects accepted (a request needs 6: regions → geometry → coordinates → rings)."""
MAX_NUMBER_CHARS = 40
"""Longest number literal accepted (digits, sign, point and exponent)."""
MAX_ATTRIBUTES = 100
"""Pub/Sub allows 100 attributes per message."""
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
CLIP_CHARS = 200
"""Longest excerpt of an offending value kept in error records and log lines."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_LONG_NUMBER = re.compile(rf"-?[0-9][0-9.eE+-]{{{MAX_NUMBER_CHARS - 1},}}")


def clip(value: Any, limit: int = CLIP_CHARS) -> Any:
    """``value`` fit for an error record or a log line: small JSON values as they are; anything longer than
    ``limit`` characters (as JSON) becomes a string excerpt that says how long the original was; characters
    UTF-8 cannot carry (lone surrogates) are escaped as ``\\udXXX``."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        text = _int_text(value)
        if text.startswith("<"):
            return text
        return value if len(text) <= limit else f"{text[:limit]}... (truncated: a number of {len(text)} digits)"
    if isinstance(value, str):
        safe = escape_unencodable(value)
        return safe if len(safe) <= limit else f"{safe[:limit]}... (truncated: {len(value):,} characters)"
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        text = _safe_repr(value)
    safe = escape_unencodable(text)
    if len(safe) <= limit:
        try:
            return json.loads(safe)
        except (ValueError, RecursionError):
            return safe
    return f"{safe[:limit]}... (truncated: {len(text):,} characters as JSON)"


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:10_000]
    except Exception:  # a repr that fails must not hide the problem being reported
        return f"<{type(value).__name__}>"


def escape_unencodable(text: str) -> str:
    """``text`` with every character UTF-8 cannot encode (lone surrogates) written as a ``\\udXXX`` escape."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def excerpt(data: bytes, limit: int = 2000) -> str:
    """The start of a message body as text, for an error record: undecodable bytes shown as ``\\xNN``."""
    head = data[:limit].decode("utf-8", "backslashreplace")
    return head if len(data) <= limit else f"{head}... (truncated: {len(data):,} bytes)"


class _Duplicate(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a 64-bit float")
    return value


def _max_depth(blanked: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text whose strings are blanked (brackets in strings do not count)."""
    depth = deepest = 0
    for ch in re.findall(r"[\[\]{}]", blanked):
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def _lone_surrogate_path(value: Any) -> str | None:
    """The path of the first string (or key) holding a lone surrogate, without recursion; None if there is none."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if escape_unencodable(v) is not v:
                return path or "(message)"
        elif isinstance(v, dict):
            for k, item in v.items():
                if escape_unencodable(k) is not k:
                    return f"{path}.{escape_unencodable(k)}".lstrip(".") or "(message)"
                stack.append((f"{path}.{k}".lstrip("."), item))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(v))
    return None


def decode_json(data: bytes | str, *, max_bytes: int, what: str = "(message)") -> Any:
    """Decode untrusted JSON within the bounds above. Raises :class:`RequestError` naming what was wrong."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise RequestError([Problem(what, excerpt(data[:80].encode("utf-8", "backslashreplace")
                                                  if isinstance(data, str) else data[:80], 80),
                                    f"is {size:,} bytes; the limit request_bytes is {max_bytes:,} "
                                    "(LEAF_LIMIT_REQUEST_BYTES): split the request, or list fewer regions/dates")])
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError([Problem(what, excerpt(bytes(data[max(0, e.start - 20):e.start + 20]), 40),
                                        f"must be UTF-8 JSON: byte {e.start} is not UTF-8 ({e.reason})")]) from e
    else:
        text = data
        if escape_unencodable(text) is not text:
            raise RequestError([Problem(what, clip(text, 80), "must be UTF-8 text: it holds a lone surrogate")])
    blanked = _STRING.sub('""', text)
    depth = _max_depth(blanked)
    if depth > MAX_DEPTH:
        raise RequestError([Problem(what, clip(text, 80), f"nests {depth} levels of arrays/objects; at most "
                                    f"{MAX_DEPTH} are accepted")])
    long_number = _LONG_NUMBER.search(blanked)
    if long_number:
        raise RequestError([Problem(what, clip(long_number.group(), 60), f"a number of {len(long_number.group()):,}"
                                    f" characters; at most {MAX_NUMBER_CHARS} are accepted")])
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
    except _Duplicate as e:
        raise RequestError([Problem(escape_unencodable(e.key), clip(e.key), "the key appears more than once in one "
                                    "JSON object; give each key once")]) from None
    except RecursionError:  # unreachable with MAX_DEPTH far below the recursion limit; kept as a bound
        raise RequestError([Problem(what, clip(text, 80), "nests too deeply")]) from None
    except ValueError as e:  # JSONDecodeError, a non-finite number, an int over the digit limit
        raise RequestError([Problem(what, clip(text, 80), f"must be a JSON object: {e}")]) from None
    bad = _lone_surrogate_path(value)
    if bad is not None:
        raise RequestError([Problem(bad, None, "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                                    "which is not text; remove it")])
    return value


def decode_attributes(attributes: Any) -> tuple[dict[str, str], list[Problem]]:
    """Pub/Sub message attributes as a ``{str: str}`` dict, within Pub/Sub's own limits; problems for the rest.

    What cannot be used is dropped and reported, so the message still gets an error record.
    """
    if attributes is None:
        return {}, []
    if not isinstance(attributes, dict):
        return {}, [Problem("(attributes)", clip(attributes), "message attributes must be an object of strings")]
    out: dict[str, str] = {}
    problems: list[Problem] = []
    if len(attributes) > MAX_ATTRIBUTES:
        problems.append(Problem("(attributes)", f"{len(attributes)} attributes",
                                f"at most {MAX_ATTRIBUTES} attributes are accepted; extra ones ignored"))
    for k, v in list(attributes.items())[:MAX_ATTRIBUTES]:
        if not isinstance(k, str) or not isinstance(v, str):
            problems.append(Problem(f"attributes.{clip(str(k), 40)}", clip(v), "attribute values must be strings"))
            continue
        ek, ev = escape_unencodable(k), escape_unencodable(v)
        if ek is not k or ev is not v or len(k.encode()) > MAX_ATTRIBUTE_KEY_BYTES \
                or len(v.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            problems.append(Problem(f"attributes.{clip(ek, 40)}", clip(ev), "attribute keys must be UTF-8 of at "
                                    f"most {MAX_ATTRIBUTE_KEY_BYTES} bytes, values of at most "
                                    f"{MAX_ATTRIBUTE_VALUE_BYTES} bytes"))
            continue
        out[k] = v
    return out, problems


__all__ = ["CLIP_CHARS", "MAX_DEPTH", "MAX_NUMBER_CHARS", "clip", "decode_attributes", "decode_json",
           "escape_unencodable", "excerpt"]
