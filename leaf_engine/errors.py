"""Typed errors. Each message says what was wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class LeafError(Exception):
    """Base class of every error LEAF raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: which key, which value, which rule it breaks."""

    key: str
    value: object
    rule: str

    def __str__(self) -> str:
        from .decoding import clip  # shown values are truncated and made UTF-8-safe in one place

        return f"{clip(self.key, 120)}: {clip(jsonable(self.value))!r} — {self.rule}"

    def to_dict(self) -> dict:
        from .decoding import clip

        return {"key": clip(self.key, 120), "value": clip(jsonable(self.value)), "rule": clip(self.rule, 2000)}


def jsonable(value: object, fallback: Callable[[object], object] = repr) -> object:
    """``value`` as JSON data: containers recursively, objects by their ``to_dict()``, anything else by
    ``fallback``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v, fallback) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v, fallback) for k, v in value.items()}
    if callable(getattr(value, "to_dict", None)):
        return jsonable(value.to_dict(), fallback)  # type: ignore[attr-defined]
    return fallback(value)


class RequestError(LeafError):
    """A production request is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid production request ({len(self.problems)} problem(s)):\n{lines}")

    def to_dict(self) -> dict:
        return {"error": "invalid_request", "problems": [p.to_dict() for p in self.problems]}


class GridError(LeafError):
    """A tile name, region or resolution does not fit the CCRS grid."""


class NetworkFileError(LeafError):
    """An SL2P network file cannot be used (missing, wrong schema, inputs not provided)."""


class NamingError(LeafError):
    """An object name does not follow the LEAF output naming rule."""


class EarthEngineError(LeafError):
    """Earth Engine cannot be used as configured (credentials, project, endpoint) or refused a request."""


class TransientError(LeafError):
    """A cloud call failed in a way that may succeed when retried (429, 5xx, 503)."""
