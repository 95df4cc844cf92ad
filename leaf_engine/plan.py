"""Pre-flight plan of a request: jobs, output files, pixels, estimated bytes, Earth Engine tasks and shards.

Earth Engine splits an export larger than ``fileDimensions`` into shards named
``{prefix}-{row_offset:010d}-{col_offset:010d}.tif``; LEAF always passes :data:`EE_FILE_DIMENSIONS`, so the
shard names are known before anything starts and are written into the run record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import products
from .naming import OutputName
from .request import ProductionRequest

EE_FILE_DIMENSIONS = 32768
"""Pixels per side of one exported file (a multiple of Earth Engine's 256-pixel shard size)."""
OVERVIEW_FACTOR = 4 / 3
"""COG overviews add about a third to the full-resolution data."""
DEFLATE_RATIO = 0.5
"""Typical deflate ratio of 8/16-bit LEAF products over vegetated land (a planning figure, not a bound)."""


def shard_offsets(width: int, height: int, file_dimensions: int = EE_FILE_DIMENSIONS) -> list[tuple[int, int]] | None:
    """Pixel (row, col) offsets of the shards of a ``width`` × ``height`` export; None when it fits one file."""
    if width <= file_dimensions and height <= file_dimensions:
        return None
    return [(r, c) for r in range(0, height, file_dimensions) for c in range(0, width, file_dimensions)]


@dataclass(frozen=True)
class PlannedFile:
    name: OutputName
    job_id: str
    width: int
    height: int
    shards: list[OutputName] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def raw_bytes(self) -> int:
        return self.pixels * np.dtype(products.product(self.name.product).dtype).itemsize

    @property
    def est_bytes(self) -> int:
        return math.ceil(self.raw_bytes * OVERVIEW_FACTOR * DEFLATE_RATIO)

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": self.name.key(),
            "job_id": self.job_id,
            "product": self.name.product,
            "width": self.width,
            "height": self.height,
            "pixels": self.pixels,
            "raw_bytes": self.raw_bytes,
            "est_bytes": self.est_bytes,
            "shards": [s.key() for s in self.shards],
        }


@dataclass(frozen=True)
class Plan:
    request_id: str
    jobs: list[dict[str, Any]]
    files: list[PlannedFile]

    def expected_objects(self) -> list[str]:
        """Every object key the production will write (shards included)."""
        return [s.key() for f in self.files for s in f.shards]

    @property
    def totals(self) -> dict[str, int]:
        return {
            "jobs": len(self.jobs),
            "files": len(self.files),
            "objects": sum(len(f.shards) for f in self.files),
            "ee_tasks": len(self.files),
            "pixels": sum(f.pixels for f in self.files),
            "raw_bytes": sum(f.raw_bytes for f in self.files),
            "est_bytes": sum(f.est_bytes for f in self.files),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "totals": self.totals,
            "jobs": self.jobs,
            "files": [f.to_dict() for f in self.files],
            "assumptions": {
                "ee_file_dimensions": EE_FILE_DIMENSIONS,
                "overview_factor": round(OVERVIEW_FACTOR, 4),
                "deflate_ratio": DEFLATE_RATIO,
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        files = [
            PlannedFile(
                OutputName.parse(f["object"]),
                f["job_id"],
                f["width"],
                f["height"],
                [OutputName.parse(s) for s in f["shards"]],
            )
            for f in d["files"]
        ]
        return cls(d["request_id"], d["jobs"], files)


def make_plan(req: ProductionRequest) -> Plan:
    files: list[PlannedFile] = []
    jobs = []
    for job in req.jobs():
        gbox = job.geobox()
        height, width = gbox.shape.y, gbox.shape.x
        offsets = shard_offsets(width, height)
        jobs.append({**job.to_dict(), "width": width, "height": height})
        for name in job.output_names():
            shards = [name] if offsets is None else [name.with_shard(r, c) for r, c in offsets]
            files.append(PlannedFile(name, job.job_id, width, height, shards))
    return Plan(req.request_id, jobs, files)
