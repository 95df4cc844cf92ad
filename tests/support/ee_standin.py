"""A local HTTP stand-in for the Earth Engine REST API, for tests with no network.

It serves the discovery document and the algorithm list that ship inside the ``earthengine-api`` package, so the
real client library initialises against it (``ee.Initialize(credentials=None, url=..., project=...)``), records
every request, and answers exports and operations plausibly:

- ``POST .../image:export`` records the JSON body in :attr:`EEStandIn.exports` and returns a PENDING operation.
  A second body with an already used ``requestId`` starts nothing: by default it is answered 409 ALREADY_EXISTS
  (``duplicate="conflict"``), or with the first operation (``duplicate="same"``). Either way it is kept in
  :attr:`EEStandIn.duplicates`, not in ``exports``.
- ``GET .../operations`` (paged: ``pageSize``/``pageToken``, as ``ee.data.listOperations`` pages),
  ``GET .../operations/{id}`` and ``POST .../operations/{id}:cancel`` list, read and cancel them.
- A task lifecycle driven by the test: :meth:`EEStandIn.run`, :meth:`EEStandIn.succeed` (writes the export's real
  GeoTIFF(s) — one, or its ``fileDimensions`` shards, on the export's grid, CRS, dtype and noData — through
  ``writer``, e.g. into fake-gcs-server so finalize events flow; ``write=False`` plays "success with no file"),
  :meth:`EEStandIn.fail` (FAILED with an Earth Engine-style message), :meth:`EEStandIn.cancel`; each records
  ``batchEecuUsageSeconds``, ``startTime`` and ``endTime`` as Earth Engine does.
- :meth:`EEStandIn.fail_next` makes the next N matching calls answer an HTTP error (e.g. 429 or 503), or hang up
  (:data:`DROP`), so retry and backoff can be tested.

Use the :func:`ee_standin` fixture, or ``with EEStandIn() as server: ...``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

DROP = 0
"""A failure 'status' that closes the connection without an answer."""
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 503: "UNAVAILABLE"}
DONE_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
Writer = Callable[[str, str, bytes], None]
"""(bucket, object key, bytes): where a succeeded export's files go."""


def _shipped_json(name: str) -> bytes:
    """A JSON file that earthengine-api ships for its own tests (discovery document, algorithm list)."""
    return resources.files("ee").joinpath("tests", name).read_bytes()


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class _Failure:
    status: int
    remaining: int
    path_contains: str


@dataclass
class EEStandIn:
    """The stand-in server. ``start()`` binds 127.0.0.1 on a free port; ``url`` is what ``LEAF_EE_URL`` takes."""

    duplicate: str = "conflict"
    requests: list[RecordedRequest] = field(default_factory=list)
    exports: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    operations: dict[str, dict] = field(default_factory=dict)
    """Operation name → operation, in creation order."""
    bodies: dict[str, dict] = field(default_factory=dict)
    """Operation name → the ExportImageRequest body that created it."""
    writer: Writer | None = None
    """Where :meth:`succeed` writes the export's files (None: it cannot write files)."""
    cancels: list[str] = field(default_factory=list)
    unlisted: set[str] = field(default_factory=set)
    """Task ids the operations listing leaves out (as Earth Engine's listing may leave out old operations)."""

    def __post_init__(self) -> None:
        self._discovery = _shipped_json("cloud_api_discovery_document.json")
        self._algorithms = _shipped_json("algorithms.json")
        self._failures: list[_Failure] = []
        self._holds: list[tuple[str, threading.Event]] = []
        self._by_request_id: dict[str, str] = {}
        self._by_task_id: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> EEStandIn:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ee-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> EEStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test controls ----------------------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, path_contains: str = "image:export") -> None:
        """Answer the next ``times`` requests whose path contains ``path_contains`` with HTTP ``status``
        (:data:`DROP`: close the connection without answering)."""
        with self._lock:
            self._failures.append(_Failure(status, times, path_contains))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def clear_holds(self) -> None:
        with self._lock:
            self._holds.clear()

    def hold(self, path_contains: str = "image:export") -> threading.Event:
        """Keep every request whose path contains ``path_contains`` waiting (up to 2 minutes) until the returned
        event is set: a handler can then be killed in the middle of its starts."""
        release = threading.Event()
        with self._lock:
            self._holds.append((path_contains, release))
        return release

    def set_state(self, task_id: str, state: str, *, error: str | None = None, eecu_s: float | None = None
                  ) -> dict:
        """Move an operation (by task id or operation name) to ``state`` (RUNNING, SUCCEEDED, FAILED...)."""
        with self._lock:
            op = self._find(task_id)
            meta = op["metadata"]
            meta["state"] = state
            meta["updateTime"] = _now()
            if state == "RUNNING":
                meta.setdefault("startTime", _now())
            if eecu_s is not None:
                meta["batchEecuUsageSeconds"] = eecu_s
            op["done"] = state in DONE_STATES
            if op["done"]:
                meta["endTime"] = _now()
            if error is not None:
                op["error"] = {"code": 3 if state == "FAILED" else 1, "message": error}
            return op

    def _find(self, task_id: str) -> dict:
        op = self.operations.get(task_id) or self._by_task_id.get(task_id)
        if op is None:
            raise KeyError(task_id)
        return op

    # -- the task lifecycle -----------------------------------------------------------------------------------
    def task_ids(self, *states: str) -> list[str]:
        """Task ids of the operations in ``states`` (all when none given), in creation order."""
        with self._lock:
            return [n.rsplit("/", 1)[-1] for n, op in self.operations.items()
                    if not states or op["metadata"]["state"] in states]

    def task_for(self, prefix_part: str, *states: str) -> str:
        """The task id of the (latest) export whose fileNamePrefix contains ``prefix_part``."""
        found = [n for n, b in self.bodies.items()
                 if prefix_part in b["fileExportOptions"]["cloudStorageDestination"]["filenamePrefix"]
                 and (not states or self.operations[n]["metadata"]["state"] in states)]
        if not found:
            raise KeyError(prefix_part)
        return found[-1].rsplit("/", 1)[-1]

    def run(self, task_id: str, eecu_s: float = 1.0) -> dict:
        return self.set_state(task_id, "RUNNING", eecu_s=eecu_s)

    def succeed(self, task_id: str, *, write: bool = True, eecu_s: float = 10.0) -> list[str]:
        """SUCCEEDED; writes the export's files through ``writer`` unless ``write=False``. Returns their keys."""
        op = self._find(task_id)
        keys: list[str] = []
        if write:
            if self.writer is None:
                raise RuntimeError("the stand-in has no writer: give EEStandIn(writer=...) to write files")
            body = self.bodies[op["name"]]
            for key, data in export_files(body):
                self.writer(export_summary(body)["bucket"], key, data)
                keys.append(key)
        self.set_state(task_id, "SUCCEEDED", eecu_s=eecu_s)
        return keys

    def fail(self, task_id: str, message: str = "User memory limit exceeded.", eecu_s: float = 2.0) -> dict:
        return self.set_state(task_id, "FAILED", error=message, eecu_s=eecu_s)

    def cancel(self, task_id: str) -> dict:
        return self.set_state(task_id, "CANCELLED", error="Cancelled.")

    def succeed_all(self, *, states: tuple[str, ...] = ("PENDING", "RUNNING"), eecu_s: float = 10.0) -> int:
        ids = self.task_ids(*states)
        for task_id in ids:
            self.succeed(task_id, eecu_s=eecu_s)
        return len(ids)

    def export_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("image:export")]

    # -- request handling (called from the server threads) ----------------------------------------------------
    def _injected_failure(self, path: str) -> int | None:
        with self._lock:
            for f in self._failures:
                if f.remaining > 0 and f.path_contains in path:
                    f.remaining -= 1
                    return f.status
        return None

    def _start_export(self, project: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            rid = body.get("requestId") or ""
            if rid and rid in self._by_request_id:
                self.duplicates.append(body)
                if self.duplicate == "same":
                    return 200, self.operations[self._by_request_id[rid]]
                return 409, _error(409, f"a task with requestId {rid} was already started")
            task_id = uuid.uuid4().hex.upper()[:24]
            name = f"projects/{project}/operations/{task_id}"
            dest = body.get("fileExportOptions", {}).get("cloudStorageDestination", {})
            op = {
                "name": name,
                "metadata": {
                    "@type": "type.googleapis.com/google.earthengine.v1alpha.OperationMetadata",
                    "state": "PENDING",
                    "description": body.get("description", ""),
                    "createTime": _now(),
                    "updateTime": _now(),
                    "type": "EXPORT_IMAGE",
                    "destinationUris": [f"https://console.developers.google.com/storage/browser/"
                                        f"{dest.get('bucket', '')}/{dest.get('filenamePrefix', '')}"],
                },
                "done": False,
            }
            self.operations[name] = op
            self._by_task_id[task_id] = op
            self.bodies[name] = body
            if rid:
                self._by_request_id[rid] = name
            self.exports.append(body)
            return 200, op

    def _operation(self, name: str) -> tuple[int, Any]:
        with self._lock:
            op = self.operations.get(name)
            return (200, json.dumps(op).encode()) if op else (404, _error(404, f"operation {name} not found"))

    def _list_operations(self, project: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        size = int((query.get("pageSize") or ["100"])[0])
        start = int((query.get("pageToken") or ["0"])[0])
        with self._lock:  # serialised under the lock: the test may move states meanwhile
            ops = [op for n, op in self.operations.items()
                   if n.startswith(f"projects/{project}/") and n.rsplit("/", 1)[-1] not in self.unlisted]
            page: dict[str, Any] = {"operations": ops[start:start + size]}
            if start + size < len(ops):
                page["nextPageToken"] = str(start + size)
            return 200, json.dumps(page).encode()

    def _cancel(self, name: str) -> tuple[int, dict]:
        with self._lock:
            op = self.operations.get(name)
            if op is None:
                return 404, _error(404, f"operation {name} not found")
            self.cancels.append(name)
            if op["done"]:
                return 400, _error(400, f"operation {name} is already {op['metadata']['state']}")
        self.set_state(name, "CANCELLED", error="Cancelled.")
        return 200, {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _error(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}}


class _Handler(BaseHTTPRequestHandler):
    standin: EEStandIn
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this each answer waits ~40 ms

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = RecordedRequest(method, parts.path, parse_qs(parts.query), body)
        self.standin.requests.append(record)
        status, payload = self._route(method, parts.path, body, parse_qs(parts.query))
        record.status = status
        if status == DROP:  # hang up without an answer, like a reset connection
            self.close_connection = True
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> tuple[int, Any]:
        s = self.standin
        if path.endswith("/$discovery/rest") or path == "/$discovery/rest":
            return 200, s._discovery
        for part, release in list(s._holds):
            if part in path:
                release.wait(120)
        failure = s._injected_failure(path)
        if failure == DROP:
            return DROP, b""
        if failure is not None:
            return failure, _error(failure, f"injected {HTTPStatus(failure).phrase}")
        segs = [p for p in path.split("/") if p]
        # Paths look like /{version}/projects/{project}/...
        if len(segs) < 3 or segs[1] != "projects":
            return 404, _error(404, f"no route for {path}")
        project, rest = segs[2], segs[3:]
        if method == "GET" and rest == ["algorithms"]:
            return 200, s._algorithms
        if method == "POST" and rest == ["image:export"]:
            if not isinstance(body, dict) or "expression" not in body:
                return 400, _error(400, "ExportImageRequest needs an expression")
            return s._start_export(project, body)
        if method == "GET" and rest == ["operations"]:
            return s._list_operations(project, query)
        if method == "POST" and len(rest) == 2 and rest[0] == "operations" and rest[1].endswith(":cancel"):
            return s._cancel(f"projects/{project}/operations/{rest[1].removesuffix(':cancel')}")
        if method == "GET" and len(rest) == 2 and rest[0] == "operations":
            return s._operation(f"projects/{project}/operations/{rest[1]}")
        return 404, _error(404, f"no route for {method} {path}")


@pytest.fixture
def ee_standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[EEStandIn]:
    """A started stand-in with ``LEAF_EE_URL`` pointing at it (and ``LEAF_EE_PROJECT`` set)."""
    server = EEStandIn().start()
    monkeypatch.setenv("LEAF_EE_URL", server.url)
    monkeypatch.setenv("LEAF_EE_PROJECT", "leaf-test")
    try:
        yield server
    finally:
        server.stop()


# -- reading recorded export bodies -------------------------------------------------------------------------------


def find_calls(expression: dict, function_name: str) -> list[dict]:
    """Arguments (decoded) of every invocation of ``function_name`` in a serialised expression graph."""
    values = expression["values"]
    found: list[dict] = []

    def decode(v: Any) -> Any:
        if "constantValue" in v:
            return v["constantValue"]
        if "valueReference" in v:
            return decode(values[v["valueReference"]])
        if "arrayValue" in v:
            return [decode(x) for x in v["arrayValue"]["values"]]
        if "dictionaryValue" in v:
            return {k: decode(x) for k, x in v["dictionaryValue"]["values"].items()}
        if "functionInvocationValue" in v:
            f = v["functionInvocationValue"]
            args = {k: decode(x) for k, x in f.get("arguments", {}).items()}
            if f["functionName"] == function_name:
                found.append(args)
            return {"function": f["functionName"], "arguments": args}
        return v

    decode(values[expression["result"]])
    return found


def export_summary(body: dict) -> dict:
    """The facts of one recorded ``image:export`` body: destination, grid, region, format options, requestId."""
    expr = body["expression"]
    reprojects = find_calls(expr, "Image.reproject")
    clips = find_calls(expr, "Image.clip")
    file_opts = body["fileExportOptions"]
    gcs = file_opts["cloudStorageDestination"]
    tiff = file_opts.get("geoTiffOptions", {})
    region = clips[-1]["geometry"]["arguments"] if clips else None
    return {
        "request_id": body.get("requestId"),
        "description": body.get("description"),
        "bucket": gcs["bucket"],
        "prefix": gcs["filenamePrefix"],
        "file_format": file_opts["fileFormat"],
        "crs": reprojects[-1]["crs"]["arguments"]["crs"] if reprojects else None,
        "crs_transform": reprojects[-1]["crsTransform"] if reprojects else None,
        "region": region,
        "cloud_optimized": tiff.get("cloudOptimized", False),
        "no_data": tiff.get("noData", {}).get("floatValue"),
        "file_dimensions": tiff.get("tileDimensions"),
        "max_pixels": int(body["maxPixels"]["value"]) if "maxPixels" in body else None,
    }


# -- the files an export writes -------------------------------------------------------------------------------


def export_grid(body: dict) -> dict:
    """Grid of one recorded export: CRS, transform, width and height (from its region on its crsTransform)."""
    s = export_summary(body)
    a, b, c, d, e, f = s["crs_transform"]
    x0, y0, x1, y1 = s["region"]["coordinates"]
    return {"crs": s["crs"], "transform": [a, b, c, d, e, f], "width": round((x1 - x0) / abs(a)),
            "height": round((y1 - y0) / abs(e)), "prefix": s["prefix"], "nodata": s["no_data"],
            "file_dimensions": s["file_dimensions"]}


def export_files(body: dict) -> list[tuple[str, bytes]]:
    """The object keys and GeoTIFF bytes Earth Engine would write for one export: one file, or its
    ``fileDimensions`` shards named ``{prefix}-{row:010d}-{col:010d}.tif``, on the export's grid."""
    import numpy as np
    import rasterio
    from affine import Affine

    from leaf_engine import products

    g = export_grid(body)
    token = g["prefix"].rsplit("_", 2)[-2]
    prod = products.product(token)
    dims = g["file_dimensions"] or {"width": g["width"], "height": g["height"]}
    fw, fh = int(dims["width"]), int(dims["height"])
    sharded = g["width"] > fw or g["height"] > fh
    base = Affine(*g["transform"])
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in range(0, g["height"], fh if sharded else g["height"]):
            for col in range(0, g["width"], fw if sharded else g["width"]):
                w, h = (min(fw, g["width"] - col), min(fh, g["height"] - row)) if sharded else (g["width"],
                                                                                               g["height"])
                data = np.ones((h, w), dtype=prod.dtype)
                data[: h // 2] = 2
                path = f"{tmp}/{row}-{col}.tif"
                with rasterio.open(path, "w", driver="COG", width=w, height=h, count=1, dtype=prod.dtype,
                                   crs=g["crs"], transform=base @ Affine.translation(col, row),
                                   nodata=prod.nodata, compress="deflate") as dst:
                    dst.write(data, 1)
                key = f"{g['prefix']}-{row:010d}-{col:010d}.tif" if sharded else f"{g['prefix']}.tif"
                with open(path, "rb") as fh_:
                    out.append((key, fh_.read()))
    return out
