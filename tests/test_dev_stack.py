"""The README's cloud trial, as a newcomer runs it: the dev stack in one process (``python -m
tests.support.emulators``), its ``export`` lines pasted into the environment of ``leaf publish`` and ``leaf status``
(other processes), until the run is SUCCEEDED with every object present; then an invalid message's error record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
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


def test_readme_cloud_trial(tmp_path):
    if os.environ.get("LEAF_REQUIRE_EMULATORS") != "1" and not Path("/usr/bin/gcloud").exists():
        pytest.skip("needs gcloud's Pub/Sub emulator")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PUBSUB_", "STORAGE_EMULATOR", "LEAF_"))}
    proc = subprocess.Popen(_die_with_parent([sys.executable, "-m", "tests.support.emulators"]), cwd=REPO,
                            env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        env = _exports(proc)
        assert set(env) >= {"PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT",
                            "LEAF_REQUESTS_TOPIC"}
        published = _leaf(["publish", "examples/bouconne-2018-cloud.json", "--topic", env["LEAF_REQUESTS_TOPIC"]],
                          env)
        assert published.returncode == 0, published.stderr
        rid = json.loads(published.stdout)["request_id"]
        deadline = time.monotonic() + 240
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

        # An invalid message (sent around `leaf publish`, which would refuse it): status finds its error record.
        from google.cloud import pubsub_v1

        saved = {k: os.environ.get(k) for k in env}  # the session's emulators fixture set some of these
        os.environ.update(env)
        try:
            body = json.dumps({"sensor": "S9", "year": 2018, "months": [7], "tile_names": ["tile42"],
                               "GCS_bucket": "leaf-dev", "out_folder": "bouconne-2018"}).encode()
            pubsub_v1.PublisherClient().publish(env["LEAF_REQUESTS_TOPIC"], body, request_id="bad-1").result(60)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = _leaf(["status", "bad-1", "--bucket", "leaf-dev", "--folder", "bouconne-2018"], env)
            if "INVALID" in got.stdout:
                break
            time.sleep(1)
        assert "INVALID" in got.stdout and "sensor" in got.stdout, (got.stdout, got.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
