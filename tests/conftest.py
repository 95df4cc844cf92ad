"""Shared fixtures. Keep this file small: put helpers in tests/support/ and register fixtures here."""

from __future__ import annotations

import os

# The tests spawn servers while Pub/Sub (gRPC) clients run in this process: keep gRPC's fork handlers out.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Iterator

import pytest

from tests.support.emulators import Emulators, EmulatorUnavailable, running_emulators
from tests.support.local_runs import threaded_references, worker_cluster

pytest_plugins = ["tests.support.ee_standin"]  # the ee_standin fixture


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    """Pub/Sub emulator + fake-gcs-server for the whole session (started on first use, stopped at the end).

    A machine without gcloud/java skips the tests that need them, unless LEAF_REQUIRE_EMULATORS=1 (CI).
    """
    try:
        with running_emulators() as emu:
            yield emu
    except EmulatorUnavailable as e:
        if os.environ.get("LEAF_REQUIRE_EMULATORS") == "1":
            raise
        pytest.skip(f"emulators unavailable: {e}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A ``distributed.LocalCluster`` of two worker processes for the module's tests."""
    with worker_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def threaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each example from its catalogue file on threads: the reference of the runs through a STAC API."""
    return threaded_references(tmp_path_factory)
