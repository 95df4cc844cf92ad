"""Who may write where: the service's checks of a valid request against the deployment, before it is claimed.

* ``LEAF_ALLOWED_OUTPUTS``: comma list of ``bucket`` or ``bucket/prefix``; a request's ``GCS_bucket`` +
  ``out_folder`` must lie under one of them. Unset: every bucket the service account can write (and a warning
  in the log at start-up); set it in every deployment.
* ``LEAF_ALLOWED_NETWORKS``: comma list of ``gs://bucket[/prefix]`` under which a request's ``networks`` file may
  be; unset, only the shipped network sets are accepted.
* A request never writes objects that another request's live run expects (its outputs, its records) unless it
  is the same request (same normalised fields; only ``rerun`` and ``request_id`` may differ), e.g. re-sent with
  ``rerun: overwrite``. Runs that FAILED or were INVALID expect nothing.

Also the identifiers of error records: one per message, ``{out_folder}/_errors/{error_id}-{message}.json``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import LeafError, Problem
from .request import ProductionRequest

if TYPE_CHECKING:
    from .sinks import Sink

ALLOWED_OUTPUTS_ENV = "LEAF_ALLOWED_OUTPUTS"
ALLOWED_NETWORKS_ENV = "LEAF_ALLOWED_NETWORKS"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_NOT_LIVE = ("FAILED", "INVALID")


def parse_allowed_outputs(text: str | None) -> tuple[tuple[str, str], ...] | None:
    """``"b1,b2/team-a"`` → ``(("b1", ""), ("b2", "team-a"))``; None when unset (no restriction)."""
    if text is None or not text.strip():
        return None
    out = []
    for entry in text.split(","):
        entry = entry.strip().removeprefix("gs://").strip("/")
        if not entry:
            continue
        bucket, _, prefix = entry.partition("/")
        if not bucket or any(p in ("", ".", "..") for p in prefix.split("/") if prefix):
            raise LeafError(f"{ALLOWED_OUTPUTS_ENV}: {entry!r} is not 'bucket' or 'bucket/prefix'")
        out.append((bucket, prefix.strip("/")))
    if not out:
        raise LeafError(f"{ALLOWED_OUTPUTS_ENV} is set but names no bucket")
    return tuple(out)


def parse_allowed_networks(text: str | None) -> tuple[str, ...]:
    if text is None or not text.strip():
        return ()
    out = []
    for entry in text.split(","):
        entry = entry.strip().rstrip("/")
        if not entry:
            continue
        if not entry.startswith("gs://") or len(entry) <= 5:
            raise LeafError(f"{ALLOWED_NETWORKS_ENV}: {entry!r} is not a gs://bucket[/prefix] URI")
        out.append(entry)
    return tuple(out)


def output_allowed(allowed: tuple[tuple[str, str], ...] | None, bucket: str | None, folder: str) -> bool:
    """Is ``gs://bucket/folder`` under one of the allowed outputs (None: no restriction)?"""
    if allowed is None:
        return True
    if not bucket:
        return False
    folder = folder.strip("/")
    return any(bucket == b and (not p or folder == p or folder.startswith(p + "/")) for b, p in allowed)


def output_problems(allowed: tuple[tuple[str, str], ...] | None, req: ProductionRequest) -> list[Problem]:
    if output_allowed(allowed, req.GCS_bucket, req.out_folder):
        return []
    where = ", ".join(f"gs://{b}/{p}".rstrip("/") for b, p in allowed or ())
    return [Problem("GCS_bucket/out_folder", f"gs://{req.GCS_bucket}/{req.out_folder}".rstrip("/"),
                    f"this service writes only under {where} ({ALLOWED_OUTPUTS_ENV}): choose a bucket and "
                    "out_folder there, or ask the operators to allow yours")]


def _same_request(a: Mapping[str, Any], b: ProductionRequest) -> bool:
    """Does the normalised request ``a`` (from a run record) describe the same production as ``b``?"""
    mine = {k: v for k, v in b.to_dict().items() if k not in ("rerun", "request_id", "warnings")}
    theirs = {k: v for k, v in a.items() if k not in ("rerun", "request_id", "warnings")}
    return mine == theirs


def _expected_objects(run: dict[str, Any], sink: Sink | None) -> Any:
    """The objects a compact run record expects (derived from its stored request); empty if it has none.

    With the ``sink`` the records were read from, the derivation is the catalogue's, cached per claim (keyed by
    the record's URI, claim token and creation time: a record whose request changes is a new claim)."""
    if not isinstance(run.get("request"), dict):
        return {}
    from .catalogue.expectations import record_expectations
    from .catalogue.runs import run_expectations

    try:
        return (run_expectations(sink, run) if sink is not None else record_expectations(run)).objects
    except Exception:  # a record this version cannot read cannot be compared; its owner is not blocked either
        return {}


def conflict_problems(runs: list[dict[str, Any]], req: ProductionRequest, objects: set[str], *,
                      sink: Sink | None = None) -> list[Problem]:
    """Problems when another request's live run (in ``runs``, the records of the request's out_folder) expects
    any of ``objects`` (what ``req`` would write) and is not the same request. ``sink``: where ``runs`` were
    read; given, each run's expectations are derived once per claim, not on every message."""
    for run in runs:
        rid = run.get("request_id")
        if run.get("state") in _NOT_LIVE:
            continue
        request = run.get("request")
        if rid == req.request_id:
            if isinstance(request, dict) and not _same_request(request, req):
                # Else the second request would be taken for a duplicate of the first and silently dropped.
                return [Problem("request_id", req.request_id,
                                f"already names a different request (run {rid}, {run.get('state')}) in this "
                                "out_folder: give this request its own request_id (or none: one is derived "
                                "from its content)")]
            continue
        theirs = run.get("objects") or _expected_objects(run, sink)
        clash = next((k for k in objects if k in theirs), None)
        if clash is None:
            continue
        if isinstance(request, dict) and _same_request(request, req):
            continue
        return [Problem("out_folder", req.out_folder,
                        f"run {rid} ({run.get('state')}) already produces objects this request would overwrite "
                        f"(e.g. {clash}): a request may not overwrite another request's outputs; use another "
                        "out_folder, or re-send that same request (rerun 'overwrite')")]
    return []


def sanitized_message_id(message_id: str) -> str:
    """A message id fit for an object name, unique per message id (a hash is added when characters were
    replaced or it was cut)."""
    mid = str(message_id)
    safe = _UNSAFE_CHARS.sub("_", mid)[:64]
    if safe != mid or not safe:
        safe = f"{safe[:40]}-{hashlib.sha256(mid.encode('utf-8', 'backslashreplace')).hexdigest()[:12]}"
    return safe


def error_id(request_id: Any, data: bytes) -> str:
    """The request id when it is safe as part of an object name, else ``msg-<hash of the body>``."""
    if isinstance(request_id, str) and _SAFE_ID.fullmatch(request_id):
        return request_id
    return "msg-" + hashlib.sha256(data).hexdigest()[:20]


__all__ = ["ALLOWED_NETWORKS_ENV", "ALLOWED_OUTPUTS_ENV", "conflict_problems", "error_id", "output_allowed",
           "output_problems", "parse_allowed_networks", "parse_allowed_outputs", "sanitized_message_id"]
