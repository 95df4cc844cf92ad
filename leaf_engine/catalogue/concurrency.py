"""Optimistic read-modify-write of JSON documents under generation preconditions.

Every writer reads a document and its generation, changes it, and writes it back conditioned on that generation.
If someone else wrote in between, the write fails with PreconditionFailed and the cycle starts again (with jittered
backoff), so no update is ever lost however many events race on one item.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import TransientError
from ..sinks import PreconditionFailed, Sink

R = TypeVar("R")

DEADLINE_S = 120.0
"""Give up (and let the platform redeliver the event) after this long under contention."""
_BACKOFF_START_S = 0.01
_BACKOFF_CAP_S = 0.5

Mutation = Callable[[dict | None], tuple[dict | None, R]]
"""Takes the current document (None when absent); returns (new document or None for "no change", result)."""


def update_json(sink: Sink, key: str, mutate: Mutation[R], *, deadline_s: float = DEADLINE_S) -> R:
    """Apply ``mutate`` to the document at ``key`` atomically; retry on concurrent writes. Returns its result."""
    start = time.monotonic()
    backoff = _BACKOFF_START_S
    attempts = 0
    while True:
        attempts += 1
        current = sink.read_json(key)
        doc, generation = current if current is not None else (None, 0)
        new_doc, result = mutate(doc)
        if new_doc is None:
            return result
        try:
            sink.write_json(key, new_doc, if_generation_match=generation)
            return result
        except PreconditionFailed:
            if time.monotonic() - start > deadline_s:
                raise TransientError(
                    f"{key}: still contended after {attempts} attempts in {deadline_s:.0f}s; the event will be "
                    "redelivered") from None
            time.sleep(random.uniform(0, backoff))
            backoff = min(_BACKOFF_CAP_S, backoff * 2)
