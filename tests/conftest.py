"""Shared fixtures. Keep this file small: put helpers in tests/support/ and register fixtures here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.emulators import Emulators, EmulatorUnavailable, running_emulators

pytest_plugins = ["tests.support.ee_standin"]  # the ee_standin fixture


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    """Pub/Sub emulator + fake-gcs-server for the whole session (started on first use, stopped at the end).

    A machine without gcloud/java skips the tests that need them, unless LEAF_REQUIRE_EMULATORS=1 (CI).
    """
    import os

    try:
        with running_emulators() as emu:
            yield emu
    except EmulatorUnavailable as e:
        if os.environ.get("LEAF_REQUIRE_EMULATORS") == "1":
            raise
        pytest.skip(f"emulators unavailable: {e}")
