"""Packaging facts: pins in step, and importing leaf_engine loads no cloud SDK."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> set[str]:
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith(("#", "-r"))}


def test_pyproject_pins_match_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(meta["dependencies"]) == _pins(ROOT / "requirements.txt")
    assert set(meta["optional-dependencies"]["dev"]) == _pins(ROOT / "requirements-dev.txt")
    for pin in _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-dev.txt"):
        assert re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[\w.]+", pin), f"not pinned exactly: {pin}"


SDK_PREFIXES = ("ee.", "google.cloud.", "google.api_core", "googleapiclient")


def test_import_loads_no_cloud_sdk():
    # The bare 'google.cloud' namespace is created by .pth files at start-up; only real client modules count.
    code = (
        "import sys, leaf_engine, leaf_engine.request, leaf_engine.grid, leaf_engine.naming, leaf_engine.products\n"
        "import leaf_engine.sensors, leaf_engine.plan, leaf_engine.cli\n"
        "leaf_engine.cli._load_commands()\n"
        f"bad = [m for m in sys.modules if m == 'ee' or m.startswith({SDK_PREFIXES!r})]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing leaf_engine loaded cloud SDKs: {out}"
