"""Real servers on loopback for the STAC API tests and the scaling benchmark.

* :func:`serve_files`: a folder over HTTP with range requests (Starlette's ``StaticFiles`` under uvicorn), so GDAL
  reads the COGs tile by tile as it does from a cloud bucket.
* :func:`serve_stac_api`: a STAC API (``stac-fastapi-static``: stac-fastapi over a static catalog, item search
  with bbox/intersects/datetime/collections and paging) in front of a catalog folder.
* :func:`public_shape_catalog`: a static catalog of items rewritten into the shapes Earth Search and Planetary
  Computer publish (collection ids, asset keys, properties), with asset hrefs on the file server.

Each server is a child process, stopped by the context manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pystac

_FILES_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/", app=StaticFiles(directory=sys.argv[1]))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


_STAC_API_APP = """
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

middleware.CORSMiddleware.__init__ = _init
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
