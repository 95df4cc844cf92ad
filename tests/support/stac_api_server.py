"""Real servers on loopback for the STAC API tests and the scaling benchmark.

* :func:`serve_files`: a folder over HTTP with range requests (Starlette's ``StaticFiles`` under uvicorn), so GDAL
  reads the COGs tile by tile as it does from a cloud bucket.
* :func:`serve_stac_api`: a STAC API (``stac-fastapi-static``: stac-fastapi over a static catalog, item search
  with bbox/intersects/datetime/collections and paging) in front of a catalog folder.
* :func:`flaky_proxy`: an HTTP proxy that answers 503/429 before forwarding, for the retry tests.
* :func:`public_shape_catalog`: a static catalog of items rewritten into the shapes Earth Search and Planetary
  Computer publish (collection ids, asset keys, properties), with asset hrefs on the file server.

Each server is a child process, stopped by the context manager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pystac

_FILES_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/", app=StaticFiles(directory=sys.argv[1]))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


CORS_PATCH = """
# stac-fastapi.api 5.2 passes CORSMiddleware's arguments by position, and Starlette 1.x (which the functions
# framework needs) inserted allow_private_network before expose_headers: pass them by name.
import starlette.middleware.cors as cors
from stac_fastapi.api import middleware

def _init(self, app, allow_origins=("*",), allow_methods=("OPTIONS", "POST", "GET"),
          allow_headers=("Content-Type",), allow_credentials=False, allow_origin_regex=None, expose_headers=(),
          max_age=600):
    cors.CORSMiddleware.__init__(self, app, allow_origins=allow_origins, allow_methods=allow_methods,
                                 allow_headers=allow_headers, allow_credentials=allow_credentials,
                                 allow_origin_regex=allow_origin_regex, expose_headers=expose_headers,
                                 max_age=max_age)

if hasattr(middleware, "CORSMiddleware"):  # stac-fastapi 6+ uses Starlette's own
    middleware.CORSMiddleware.__init__ = _init
"""
"""Prefix of the scripts of the stac-fastapi servers (this one's and tests/support/pgstac_server.py's)."""

_STAC_API_APP = CORS_PATCH + """
import uvicorn
from stac_fastapi.static.app import app, settings
uvicorn.run(app, host=settings.app_host, port=settings.app_port, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def _child(cmd: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    try:
        _wait(ready_url, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_files(folder: Path, probe: str) -> Iterator[str]:
    """Serve ``folder`` at the returned base URL (no trailing slash); ``probe`` is a file in it to wait for."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with _child([sys.executable, "-c", _FILES_APP, str(folder), str(port)], f"{base}/{probe}"):
        yield base


@contextlib.contextmanager
def serve_stac_api(catalog: Path) -> Iterator[str]:
    """A STAC API over the static catalog file ``catalog``; yields its landing-page URL."""
    port = _free_port()
    env = {"CATALOG_HREF": str(catalog), "APP_HOST": "127.0.0.1", "APP_PORT": str(port), "RELOAD": "false",
           "LOG_LEVEL": "warning"}
    with _child([sys.executable, "-c", _STAC_API_APP],
                f"http://127.0.0.1:{port}/", env):
        yield f"http://127.0.0.1:{port}"


@dataclasses.dataclass
class ProxyLog:
    """What a :func:`flaky_proxy` saw: every request (method, path with query, body) and the errors it answered."""

    requests: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)
    errors: dict[int, int] = dataclasses.field(default_factory=lambda: {429: 0, 503: 0})


def forward(url: str, method: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes, Any]:
    """One request to ``url``: the answer's status, body and headers, error answers included."""
    import urllib.error

    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


@contextlib.contextmanager
def flaky_proxy(upstream: str, failures: int = 0) -> Iterator[tuple[str, ProxyLog]]:
    """An HTTP proxy in front of ``upstream`` that answers the first ``failures`` tries of every distinct request
    (method, path, query, body) with an error, alternately 503 and 429 (``Retry-After: 0``), then forwards it.
    Yields its URL and its :class:`ProxyLog`."""
    import http.server
    import threading

    tries: dict[tuple[str, str, bytes], int] = {}
    log = ProxyLog()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            key = (self.command, self.path, body)
            with lock:
                n = tries[key] = tries.get(key, 0) + 1
                log.requests.append(key)
            if n <= failures:
                status = 503 if n % 2 else 429
                with lock:
                    log.errors[status] += 1
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
            # Host passes through: the API's links name the proxy
            status, out, out_headers = forward(upstream + self.path, self.command, headers, body or None)
            self.send_response(status)
            for k, v in out_headers.items():
                if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclasses.dataclass
class BlobLog:
    """What a :func:`sas_blob_store` saw: the tokens it issued, and the reads it served and refused by token."""

    issued: list[str] = dataclasses.field(default_factory=list)
    served: dict[str, int] = dataclasses.field(default_factory=dict)
    refused: dict[str, int] = dataclasses.field(default_factory=dict)


_BLOB_APP = """
import http.server, json, sys, threading, time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from tests.support.stac_api_server import forward

upstream, life, blob_port, sas_port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
log = {"issued": [], "served": {}, "refused": {}}
lock = threading.Lock()


def answer(h, status, body, headers=()):
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


class Tokens(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/_log":
            with lock:
                return answer(self, 200, json.dumps(log).encode())
        now = time.time()
        with lock:
            token = f"st={now!r}&sp=rl&sig=t{len(log['issued'])}"
            log["issued"].append(token)
        expiry = datetime.now(UTC) + timedelta(seconds=60 + life)
        body = {"msft:expiry": expiry.isoformat().replace("+00:00", "Z"), "token": token}
        answer(self, 200, json.dumps(body).encode(), [("Content-Type", "application/json")])

    def log_message(self, *args):
        pass


class Blobs(http.server.BaseHTTPRequestHandler):
    def _handle(self):
        url = urlsplit(self.path)  # a proxy request names the absolute URL
        query = parse_qs(url.query)
        fresh = "st" in query and time.time() - float(query["st"][0]) < life + 0.5
        if not url.netloc.endswith(".blob.core.windows.net") or not fresh:
            with lock:
                log["refused"][url.query] = log["refused"].get(url.query, 0) + 1
            return answer(self, 403, b"<Error><Code>AuthenticationFailed</Code></Error>")
        with lock:
            log["served"][url.query] = log["served"].get(url.query, 0) + 1
        headers = {k: v for k, v in self.headers.items() if k.lower() == "range"}
        status, out, out_headers = forward(upstream + url.path, self.command, headers)
        self.send_response(status)
        for k, v in out_headers.items():
            if k.lower() in ("content-range", "content-type", "accept-ranges", "last-modified", "etag"):
                self.send_header(k, v)
        # a HEAD answer's length is the file's, as the upstream said (GDAL's file size)
        self.send_header("Content-Length", out_headers.get("Content-Length", "0") if self.command == "HEAD"
                         else str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_HEAD = _handle

    def log_message(self, *args):
        pass


blobs = http.server.ThreadingHTTPServer(("127.0.0.1", blob_port), Blobs)
threading.Thread(target=blobs.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", sas_port), Tokens).serve_forever()
"""


@contextlib.contextmanager
def sas_blob_store(upstream: str, token_life: float) -> Iterator[tuple[str, str, Callable[[], BlobLog]]]:
    """Planetary Computer's two services on loopback (a child process: GDAL may hold the GIL while it waits for
    an answer), in front of the file server ``upstream``:

    * its SAS token API (``GET /{account}/{container}`` → ``{"msft:expiry", "token"}``), whose tokens the
      ``planetary-computer`` package renews a minute before their stated expiry, stated ``60 + token_life`` s
      ahead;
    * Azure Blob Storage as an HTTP proxy (GDAL's ``GDAL_HTTP_PROXY``): a read of
      ``http://ACCOUNT.blob.core.windows.net/PATH?TOKEN`` is forwarded to ``upstream/PATH`` while its token is
      younger than ``token_life`` + 0.5 s, else refused with 403 (Azure's ``AuthenticationFailed``).

    Yields the proxy's address (host:port), the SAS API's URL and a function returning the :class:`BlobLog`."""
    blob_port, sas_port = _free_port(), _free_port()
    sas = f"http://127.0.0.1:{sas_port}"

    def log() -> BlobLog:
        with urllib.request.urlopen(f"{sas}/_log", timeout=10) as resp:
            return BlobLog(**json.loads(resp.read()))

    repo = str(Path(__file__).resolve().parents[2])  # the script imports forward() from this module
    with _child([sys.executable, "-c", _BLOB_APP, upstream, str(token_life), str(blob_port), str(sas_port)],
                f"{sas}/_log", {"PYTHONPATH": repo}):
        yield f"127.0.0.1:{blob_port}", sas, log


# ------------------------------------------------------------------------------------------- public shapes

EARTH_SEARCH_S2_KEYS = {"B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
                        "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl"}
"""Earth Search v1 ``sentinel-2-l2a`` asset keys (by Sentinel-2 band); Planetary Computer keeps the band names."""


def _reshape(item: pystac.Item, shape: str, files_url: str, rel_folder: str) -> pystac.Item:
    out = item.clone()
    out.collection_id = "sentinel-2-l2a" if str(item.properties.get("platform", "")).startswith("sentinel") \
        else "landsat-c2-l2"
    out.links = []
    assets = {}
    for key, asset in item.assets.items():
        name = Path(asset.href).name
        new_key = EARTH_SEARCH_S2_KEYS.get(key, key) if shape == "earth-search" else key
        a = asset.clone()
        a.href = f"{files_url}/{rel_folder}/{item.id}/{name}"
        assets[new_key] = a
    out.assets = assets
    if shape == "planetary-computer":  # PC's property conventions
        out.properties["s2:mgrs_tile" if out.collection_id.startswith("sentinel") else "landsat:wrs_path"] = "x"
    else:
        out.properties["earthsearch:payload_id"] = f"test/{item.id}"
    return out


def public_shape_catalog(folder: Path, sources: dict[str, Path], shape: str, files_url: str) -> Path:
    """A static catalog under ``folder`` with the items of each example catalog (``rel folder → catalog.json``)
    rewritten into ``shape`` (``earth-search`` or ``planetary-computer``); returns the catalog file."""
    root = pystac.Catalog(id=f"{shape}-test", description=f"items in the shape of {shape}")
    collections: dict[str, pystac.Collection] = {}
    for rel, cat_file in sources.items():
        for item in pystac.Catalog.from_file(str(cat_file)).get_items(recursive=True):
            new = _reshape(item, shape, files_url, rel)
            coll = collections.get(new.collection_id or "")
            if coll is None:
                coll = pystac.Collection(id=new.collection_id or "", description=new.collection_id or "",
                                         extent=pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                                                              pystac.TemporalExtent([[None, None]])))
                collections[coll.id] = coll
                root.add_child(coll)
            coll.add_item(new)
    for coll in collections.values():
        coll.update_extent_from_items()
    root.normalize_hrefs(str(folder))
    root.save(pystac.CatalogType.SELF_CONTAINED)
    # the example items carry no 'collection' field in their own JSON on disk before this: check it did land
    doc = json.loads((folder / "catalog.json").read_text())
    assert any(link["rel"] == "child" for link in doc["links"])
    return folder / "catalog.json"
