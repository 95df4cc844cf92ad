"""The service image, replayed without a Docker engine (tests/support/image_replay.py): the build context that
.dockerignore lets through, the Dockerfile's install into a clean environment, then functions-framework started
exactly as the image's CMD with the image's ENV, one server per target, each sent a binary-mode CloudEvent, and
start_production also a raw Pub/Sub push envelope. A module or distribution missing from the image fails here.

The dependency install is cached like a Docker layer (.venv-image/, keyed by the Dockerfile's instructions and the
locks): the first run after a lock change takes about a minute and a half, later runs a few seconds."""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from leaf_engine.catalogue.expectations import record_expectations
from leaf_engine.naming import collection_key, run_record_key
from leaf_engine.sinks import GcsSink
from tests.support.emulators import (
    ERRORS_BUCKET,
    TILE_READY_TOPIC,
    Emulators,
    create_bucket,
    create_topic,
    free_port,
    wait_for,
)
from tests.support.fake_exports import geotiff_bytes
from tests.support.image_replay import Image, forbidden_distributions, replay

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".venv-image"
BUCKET = "leaf-image"
# The image must not carry the local engine (numba/llvmlite), plotting, Dask, the CLI, nor installer tooling.
LOCAL_ONLY = {"numba", "llvmlite", "matplotlib", "dask", "distributed", "rio-cogeo", "typer", "rich", "pip",
              "setuptools", "wheel"}
# First response of a booted server, on this 2-core machine shared with the rest of the suite. The unloaded
# number (infra/README.md) is about 2-3 s; this bound only catches a regression such as an eager heavy import.
FIRST_RESPONSE_LIMIT_S = 10.0
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"


@pytest.fixture(scope="module")
def image() -> Image:
    return replay(ROOT, CACHE)


@dataclass
class Server:
    url: str
    first_response_s: float
    log: Path


@contextmanager
def serve(image: Image, target: str, env: dict[str, str]) -> Iterator[Server]:
    """The container as Cloud Run starts it: image ENV, PORT and FUNCTION_TARGET set by the platform, the CMD."""
    port = free_port()
    full_env = {**image.env, **env, "PORT": str(port), "FUNCTION_TARGET": target}
    Path(full_env["HOME"]).mkdir(parents=True, exist_ok=True)  # made by the final stage's useradd
    log = CACHE / f"{target}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(image.cmd, env=full_env, cwd=image.workdir, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer: the app is loaded and serving
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"{target} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
                if time.monotonic() - started > 60:
                    pytest.fail(f"{target} did not answer within 60 s:\n{log.read_text()[-4000:]}")
                time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{port}", time.monotonic() - started, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def binary_cloudevent(url: str, ce_type: str, source: str, data: dict, subject: str | None = None) -> int:
    """A CloudEvent in binary content mode, as Eventarc delivers it: ce-* headers, the data as the body."""
    headers = {"ce-id": uuid.uuid4().hex, "ce-specversion": "1.0", "ce-type": ce_type, "ce-source": source,
               "ce-time": "2026-01-01T00:00:00Z"}
    if subject:
        headers["ce-subject"] = subject
    return _post(url, json.dumps(data).encode(), headers)


def pubsub_message(payload: bytes) -> dict:
    return {"data": base64.b64encode(payload).decode(), "messageId": uuid.uuid4().hex[:12],
            "publishTime": "2026-01-01T00:00:00Z", "attributes": {}}


def raw_push(url: str, topic: str, payload: bytes) -> int:
    """A Pub/Sub push subscription's own body, no CloudEvent headers (functions-framework converts it)."""
    envelope = {"message": pubsub_message(payload), "subscription": "projects/leaf-test/subscriptions/push"}
    return _post(f"{url}/{topic}", json.dumps(envelope).encode(), {})


def cloud_event_targets() -> list[str]:
    """The CloudEvent functions of functions/main.py: every one is booted and sent an event."""
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    return sorted(
        node.name for node in tree.body if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).split("(")[0].split(".")[-1] == "cloud_event" for d in node.decorator_list)
    )


def _request(folder: str) -> dict:
    return {"sensor": "S2_SR", "year": 2020, "months": [7, 8], "tile_names": ["tile42_911"], "resolution": 1000,
            "GCS_bucket": BUCKET, "out_folder": folder}


def _record(sink: GcsSink, folder: str, request_id: str) -> dict:
    got = sink.read_json(run_record_key(folder, request_id))
    return got[0] if got else {}


def _items_complete(sink: GcsSink, folder: str, request_id: str) -> bool:
    got = sink.read_json(collection_key(folder, request_id))
    statuses = got[0].get("leaf:items", {}) if got else {}
    return bool(statuses) and set(statuses.values()) == {"complete"}


def _clean_log(server: Server) -> None:
    text = server.log.read_text()
    for bad in ("Traceback", "Permission denied", "Control server error", "ModuleNotFoundError"):
        assert bad not in text, f"{server.log.name} logs {bad!r}:\n{text[-4000:]}"


# --- what the image holds ------------------------------------------------------------------------------


def test_image_holds_only_the_service_dependencies(image: Image):
    assert not forbidden_distributions(image.site_packages, LOCAL_ONLY), "the service image carries local-only deps"
    leftovers = [p for p in image.site_packages.glob("*/tests") if p.is_dir()]
    assert not leftovers, f"third-party test folders left in the image: {leftovers[:5]}"
    size_mb = image.installed_bytes() / 1e6
    assert size_mb < 420, f"the service environment grew to {size_mb:.0f} MB (infra/README.md reports the budget)"


def test_build_context_is_what_dockerignore_admits(tmp_path):
    from tests.support.image_replay import build_context

    files = build_context(ROOT, tmp_path)
    top = {f.split("/", 1)[0] for f in files}
    # docker build always sends the Dockerfile and .dockerignore themselves.
    want = {"locks", "pyproject.toml", "README.md", "leaf_engine", "functions", "Dockerfile", ".dockerignore"}
    assert top == want, top
    assert {f for f in files if f.startswith("locks/")} == {"locks/build.txt", "locks/service.txt"}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def test_image_user_has_a_home():
    # gunicorn puts its control socket under $HOME: the user needs one it owns.
    from tests.support.image_replay import parse_dockerfile

    final = parse_dockerfile((ROOT / "Dockerfile").read_text())[-1]
    env = dict(kv for op, a in final.instructions if op == "ENV" for kv in re.findall(r"(\w+)=(\S+)", a))
    runs = " ".join(a for op, a in final.instructions if op == "RUN")
    assert "HOME" in env and f"--home-dir {env['HOME']}" in runs and "--create-home" in runs, runs


def test_service_code_paths_import_nothing_local(image: Image):
    """Everything the targets reach (the Earth Engine backend, the catalogue's GeoTIFF check) imports in the
    image's environment, where the local-only distributions are absent."""
    code = (
        "import importlib, pkgutil, functions.main, leaf_engine.backends.gee as gee\n"
        "for m in pkgutil.iter_modules(gee.__path__): importlib.import_module(f'leaf_engine.backends.gee.{m.name}')\n"
        "import rasterio, pyproj, ee, leaf_engine.catalogue.check\n"
        "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'numba', 'llvmlite', 'matplotlib', 'dask', 'distributed', 'pandas', 'typer', 'rich'}))\n"
    )
    python = image.root / "opt" / "venv" / "bin" / "python"
    res = subprocess.run([str(python), "-c", code], env=image.env, cwd=image.workdir, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.strip() == "[]", res.stdout


# --- the booted image ----------------------------------------------------------------------------------


def test_replayed_image_serves_each_target(image: Image, emulators: Emulators):
    from tests.support.ee_standin import EEStandIn

    create_bucket(emulators, BUCKET)
    create_bucket(emulators, ERRORS_BUCKET)
    ready = create_topic(emulators, TILE_READY_TOPIC)
    requests_topic = create_topic(emulators, f"image-requests-{uuid.uuid4().hex[:6]}")
    sink = GcsSink(BUCKET)
    finished = create_topic(emulators, "run-finished")
    # The deployment's environment (infra/run.tf), pointed at the emulators.
    env = {**emulators.env, "LEAF_TILE_READY_TOPIC": ready, "LEAF_RUN_FINISHED_TOPIC": finished,
           "LEAF_ERRORS_URI": f"gs://{ERRORS_BUCKET}/image", "LEAF_BACKEND": "gee", "LEAF_ALLOWED_OUTPUTS": BUCKET,
           "LEAF_MAX_TASKS_IN_FLIGHT": "1000", "LEAF_MAX_EECU_HOURS": "100"}
    targets = cloud_event_targets()
    assert {"start_production", "catalogue_output"} <= set(targets), targets
    with EEStandIn() as ee_server:
        env["LEAF_EE_URL"] = ee_server.url
        servers: dict[str, Server] = {}
        # start_production: a binary-mode CloudEvent (Eventarc) and a raw push envelope (push subscription).
        with serve(image, "start_production", env) as start:
            servers["start_production"] = start
            folders = {"ce": f"image/{uuid.uuid4().hex[:8]}", "push": f"image/{uuid.uuid4().hex[:8]}"}
            ids = {}
            for how, folder in folders.items():
                from leaf_engine.request import parse_request

                payload = json.dumps(_request(folder)).encode()
                ids[how] = parse_request(payload).request_id
                if how == "ce":
                    status = binary_cloudevent(start.url, PUBSUB_PUBLISHED,
                                               f"//pubsub.googleapis.com/{requests_topic}",
                                               {"message": pubsub_message(payload),
                                                "subscription": "projects/leaf-test/subscriptions/eventarc"})
                else:
                    status = raw_push(start.url, requests_topic, payload)
                assert 200 <= status < 300, f"start_production answered {status} to the {how} delivery"
                wait_for(lambda f=folder, r=ids[how]: _record(sink, f, r).get("state") == "PROCESSING", 60,
                         f"run {ids[how]} ({how}) to be PROCESSING")
            assert ee_server.exports, "no Earth Engine export was started"
            _clean_log(start)

        # catalogue_output: the outputs Earth Engine would write, each announced as Eventarc delivers it.
        with serve(image, "catalogue_output", env) as catalogue:
            servers["catalogue_output"] = catalogue
            expected = record_expectations(_record(sink, folders["ce"], ids["ce"])).objects  # a compact record
            with tempfile.TemporaryDirectory() as tmp:
                for key, obj in expected.items():
                    sink.put_bytes(key, geotiff_bytes(obj, Path(tmp)), "image/tiff")
            from google.cloud import storage

            for blob in storage.Client(project=emulators.project).list_blobs(BUCKET, prefix=folders["ce"]):
                if blob.name not in expected:
                    continue
                data = {"bucket": BUCKET, "name": blob.name, "generation": str(blob.generation),
                        "size": str(blob.size), "md5Hash": blob.md5_hash, "contentType": blob.content_type}
                status = binary_cloudevent(catalogue.url, STORAGE_FINALIZED,
                                           f"//storage.googleapis.com/projects/_/buckets/{BUCKET}", data,
                                           subject=f"objects/{blob.name}")
                assert 200 <= status < 300, f"catalogue_output answered {status} for {blob.name}"
            wait_for(lambda: _items_complete(sink, folders["ce"], ids["ce"]), 60,
                     "the catalogue to complete every item")
            _clean_log(catalogue)

        # reconcile_runs (the scheduled tick): Earth Engine reports the exports done, the reconciler ends the run.
        if "reconcile_runs" in targets:
            for task_id in ee_server.task_ids("PENDING", "RUNNING"):
                ee_server.succeed(task_id, write=False)  # the files are already in the bucket
            with serve(image, "reconcile_runs", env) as reconciler:
                servers["reconcile_runs"] = reconciler
                tick = json.dumps({"bucket": BUCKET, "folder": folders["ce"]}).encode()
                status = binary_cloudevent(reconciler.url, PUBSUB_PUBLISHED, "//pubsub.googleapis.com/reconcile",
                                           {"message": pubsub_message(tick),
                                            "subscription": "projects/leaf-test/subscriptions/scheduler"})
                assert 200 <= status < 300, f"reconcile_runs answered {status} to a Pub/Sub CloudEvent"
                wait_for(lambda: _record(sink, folders["ce"], ids["ce"]).get("state") == "SUCCEEDED", 60,
                         "the reconciler to end the run SUCCEEDED")
                _clean_log(reconciler)

        # Any further target gets a Pub/Sub CloudEvent with an empty JSON message.
        for target in set(targets) - set(servers):
            with serve(image, target, env) as other:
                servers[target] = other
                status = binary_cloudevent(other.url, PUBSUB_PUBLISHED, f"//pubsub.googleapis.com/{requests_topic}",
                                           {"message": pubsub_message(b"{}"),
                                            "subscription": "projects/leaf-test/subscriptions/scheduler"})
                assert 200 <= status < 300, f"{target} answered {status} to a Pub/Sub CloudEvent"
                _clean_log(other)

    slow = {t: round(s.first_response_s, 2) for t, s in servers.items() if s.first_response_s > FIRST_RESPONSE_LIMIT_S}
    assert not slow, f"first response slower than {FIRST_RESPONSE_LIMIT_S} s: {slow}"
