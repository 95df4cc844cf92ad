"""The README's cloud trial, as a newcomer runs it: the dev stack in one process (``python -m
tests.support.emulators``), its ``export`` lines pasted into the environment of ``leaf publish`` and ``leaf status``
(other processes), until the run is SUCCEEDED with every object present; then an invalid message's error record.
With ``--backend gee`` the same trial ends through the Earth Engine stand-in, catalogue_output and reconcile_runs,
with a tile-ready message per item and one run-finished message."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.emulators import _die_with_parent

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.emulators, pytest.mark.slow]


def _exports(proc: subprocess.Popen, timeout_s: float = 180) -> dict[str, str]:
    """Read the stack's stdout until its comment line after the exports; parse ``export K=V`` lines."""
    env: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                pytest.fail(f"the dev stack exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            continue
        m = re.match(r"export (\w+)=(\S+)$", line.strip())
        if m:
            env[m[1]] = m[2].strip("'")
        elif line.startswith("# Ctrl-C"):
            return env
    pytest.fail("the dev stack printed no export lines in time")


def _leaf(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    leaf = Path(sys.executable).with_name("leaf")
    return subprocess.run([str(leaf), *args], env={**os.environ, **env}, capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def _needs_emulators() -> None:
    if os.environ.get("LEAF_REQUIRE_EMULATORS") != "1" and not Path("/usr/bin/gcloud").exists():
        pytest.skip("needs gcloud's Pub/Sub emulator")


@contextmanager
def _dev_stack(*args: str) -> Iterator[dict[str, str]]:
    """``python -m tests.support.emulators ARGS`` from a clean environment; yields its exports; stops it after."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PUBSUB_", "STORAGE_EMULATOR", "LEAF_"))}
    proc = subprocess.Popen(_die_with_parent([sys.executable, "-m", "tests.support.emulators", *args]), cwd=REPO,
                            env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        env = _exports(proc)
        assert set(env) >= {"PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT",
                            "LEAF_REQUESTS_TOPIC"}
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def _in_env(env: dict[str, str]) -> Iterator[None]:
    """This process's Pub/Sub clients pointed at the dev stack (the session's emulators fixture set some of these)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield


def _publish_and_wait(env: dict[str, str], timeout_s: float = 240) -> dict:
    """README: ``leaf publish examples/bouconne-2018-cloud.json``, then ``leaf status`` until SUCCEEDED."""
    published = _leaf(["publish", "examples/bouconne-2018-cloud.json", "--topic", env["LEAF_REQUESTS_TOPIC"]], env)
    assert published.returncode == 0, published.stderr
    rid = json.loads(published.stdout)["request_id"]
    deadline = time.monotonic() + timeout_s
    report: dict = {}
    while time.monotonic() < deadline:
        got = _leaf(["status", rid, "--bucket", "leaf-dev", "--folder", "bouconne-2018", "--json"], env)
        if got.returncode == 0:
            report = json.loads(got.stdout)
            if report["state"] == "SUCCEEDED":
                break
        time.sleep(2)
    assert report.get("state") == "SUCCEEDED", report
    assert report["present"] == report["expected"] == 12 and len(report["complete_items"]) == 2
    return {**report, "request_id": rid}


def test_readme_cloud_trial(tmp_path):
    _needs_emulators()
    with _dev_stack() as env:
        _publish_and_wait(env)

        # An invalid message (sent around `leaf publish`, which would refuse it): status finds its error record.
        from google.cloud import pubsub_v1

        with _in_env(env):
            body = json.dumps({"sensor": "S9", "year": 2018, "months": [7], "tile_names": ["tile42"],
                               "GCS_bucket": "leaf-dev", "out_folder": "bouconne-2018"}).encode()
            pubsub_v1.PublisherClient().publish(env["LEAF_REQUESTS_TOPIC"], body, request_id="bad-1").result(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = _leaf(["status", "bad-1", "--bucket", "leaf-dev", "--folder", "bouconne-2018"], env)
            if "INVALID" in got.stdout:
                break
            time.sleep(1)
        assert "INVALID" in got.stdout and "sensor" in got.stdout, (got.stdout, got.stderr)


def test_readme_cloud_trial_earth_engine_stand_in():
    """``./scripts/dev-stack --backend gee``: the stand-in completes the exports (real GeoTIFFs into fake-gcs), the
    catalogue announces both items, the ticked reconcile_runs ends the run SUCCEEDED and says so once."""
    _needs_emulators()
    with _dev_stack("--backend", "gee") as env:
        assert {"LEAF_EE_URL", "LEAF_RECONCILE_TOPIC", "LEAF_RUN_FINISHED_TOPIC"} <= set(env)
        from google.cloud import pubsub_v1

        from tests.support.emulators import pull

        with _in_env(env):
            subscriber = pubsub_v1.SubscriberClient()
            subs = {}
            for name in ("LEAF_TILE_READY_TOPIC", "LEAF_RUN_FINISHED_TOPIC"):
                path = f"projects/{env['GOOGLE_CLOUD_PROJECT']}/subscriptions/trial-{name.lower()}"
                subscriber.create_subscription(request={"name": path, "topic": env[name]})
                subs[name] = path
        report = _publish_and_wait(env, timeout_s=120)
        assert report["backend"] == "gee", report
        with _in_env(env):
            ready = pull(subs["LEAF_TILE_READY_TOPIC"], expect=2, timeout_s=30, settle_s=1)
            finished = pull(subs["LEAF_RUN_FINISHED_TOPIC"], expect=1, timeout_s=30, settle_s=1)
        assert sorted(json.loads(m.data)["period"] for m in ready) == ["Jul", "Nov"]
        assert [(json.loads(m.data)["request_id"], json.loads(m.data)["state"]) for m in finished] == [
            (report["request_id"], "SUCCEEDED")]
        assert {t["state"] for t in report["tasks"]} == {"COMPLETE"} and len(report["tasks"]) == 12
        # README's pass by hand reaches the stand-in (an ended, announced run has nothing left to do)
        by_hand = _leaf(["reconcile", "--bucket", "leaf-dev", "--folder", "bouconne-2018"], env)
        assert by_hand.returncode == 0, (by_hand.stdout, by_hand.stderr)
        assert all(json.loads(line)["state"] == "SUCCEEDED" for line in by_hand.stdout.splitlines()), by_hand.stdout
        # The files are the stand-in's real GeoTIFFs, read back from the bucket.
        import rasterio

        with _in_env(env):
            from google.cloud import storage

            blobs = [b for b in storage.Client().list_blobs("leaf-dev", prefix="bouconne-2018/")
                     if b.name.endswith(".tif")]
            assert len(blobs) == 12
            with rasterio.MemoryFile(blobs[0].download_as_bytes()) as mem, mem.open() as ds:
                assert ds.crs.to_epsg() == 32631 and ds.width > 0 and ds.count == 1


def test_dev_stack_tasks_advance_and_an_unwritable_export_fails_once():
    """The dev stack's Earth Engine workers: PENDING → RUNNING → SUCCEEDED (files written), or FAILED with the
    reason when the export's files cannot be made (not an error on every step)."""
    from tests.support.ee_standin import EEStandIn
    from tests.support.emulators import _advance_exports

    written: list[str] = []
    standin = EEStandIn(writer=lambda bucket, key, data: written.append(key))
    _, op = standin._start_export("leaf-test", {"expression": {}, "fileExportOptions": {
        "cloudStorageDestination": {"bucket": "b", "filenamePrefix": "f/r/2018/r_2018_Jul_LAI_20m"}}})
    task_id = op["name"].rsplit("/", 1)[-1]
    step = _advance_exports(standin, 0.0)
    step()
    assert standin.task_ids("RUNNING") == [task_id]
    step()  # the body has no graph to size its GeoTIFF from: the export fails with the reason
    assert standin.task_ids("FAILED") == [task_id] and not written
    assert "could not write this export" in standin.operations[op["name"]]["error"]["message"]
    step()
    assert standin.task_ids("FAILED") == [task_id]
