"""STAC catalogue of LEAF outputs: items per region × period, a collection per run, completeness, tile-ready.

See ``records.catalogue_object`` (one finalized object) and ``expectations`` (what a run must write).
"""

from __future__ import annotations

from .check import FileCheck, check_file
from .concurrency import update_json
from .expectations import ExpectedItem, ExpectedObject, expectations, expectations_dict
from .records import CatalogueResult, ObjectEvent, catalogue_object
from .runs import CLAIMED, FAILED, INVALID, PROCESSING, RUN_STATES, SUCCEEDED, run_for_object, set_state
from .tile_ready import Publisher, PubSubPublisher, publisher_from_env

__all__ = [
    "CLAIMED", "FAILED", "INVALID", "PROCESSING", "RUN_STATES", "SUCCEEDED", "CatalogueResult", "ExpectedItem",
    "ExpectedObject", "FileCheck", "ObjectEvent", "PubSubPublisher", "Publisher", "catalogue_object", "check_file",
    "expectations", "expectations_dict", "publisher_from_env", "run_for_object", "set_state", "update_json",
]
