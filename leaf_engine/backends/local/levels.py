"""GDAL's averaged overview levels of a map that does not halve, made while the map's blocks arrive.

An averaged level whose parent has an odd size (2001 → 1000 px: ratio 2.001) is GDAL's weighted AVERAGE, which
the blocks cannot make on their own (a 2×2 would straddle two blocks). Made after the last block, from the parent
level's file, these levels were most of a job's serial tail (≈ 0.1 s per map at 2001², 0.4 s at 4001²). But each
row of such a level depends only on the parent rows under it, so :class:`LevelStream` makes it as soon as those
rows are complete, with GDAL itself: a resampled read of a fractional window of those rows, read back from the
parent level's open file (the same weights as GDAL's read of the whole parent; ``tests/test_local_writer.py``
checks every level against the COG driver's). Each level hands its rows to the level below it, which resamples
them the same way. Nothing of the full-resolution map is held: the blocks may arrive in any order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import DatasetWriter
from rasterio.windows import Window

READ_ROWS = 128
"""Most rows of a level made in one resampled read, so the strips and GDAL's working buffers stay small whatever
the region (blocks arriving bottom-up complete the whole map at once). With 512 the writer's peak at 4097² was
56 MB instead of 38 (``tests/test_local_writer.py``)."""

_PIXEL_GRID = Affine(1, 0, 0, 0, -1, 1)  # the in-memory strips' georeferencing: pixel space (GDAL warns on identity)


class _Level:
    """One GDAL level of ``shape`` from a parent of ``parent`` px whose rows become available in order: read from
    the parent's open dataset (``source``) or, below the first level, handed over by the level above and kept
    until used. Writes its rows into ``out`` as they can be made and feeds them to ``below``."""

    def __init__(self, parent: tuple[int, int], shape: tuple[int, int], dtype: np.dtype, nodata: float,
                 out: _RowFile, below: _Level | None, source: Callable[[], DatasetWriter] | None = None):
        self.parent, self.shape, self.dtype, self.nodata = parent, shape, dtype, nodata
        self.out, self.below, self.source = out, below, source
        self.carry = np.empty((0, parent[1]), dtype)  # without a source: parent rows [first, first + len(carry))
        self.first = 0
        self.made = 0  # rows [0, made) of this level are written

    def _needed(self, rows: int) -> int:
        """Parent rows that this level's rows [0, rows) read (GDAL's ceil of the last row's end, one row spare)."""
        return min(self.parent[0], math.ceil(rows * self.parent[0] / self.shape[0]) + 1)

    def feed(self, rows: np.ndarray, start: int) -> None:
        """The parent's rows [start, start + len(rows)), the next ones in order (a level without a source)."""
        if start != self.first + len(self.carry):
            raise RuntimeError(f"parent rows from {start} after rows up to {self.first + len(self.carry)}")
        self.carry = np.concatenate([self.carry, rows]) if len(self.carry) else rows.copy()
        self.advance(start + len(rows))

    def advance(self, end: int) -> bool:
        """Make every row whose parent rows lie in [0, end); whether any was made."""
        H, (h, w) = self.parent[0], self.shape
        last = h if end == H else self.made
        while last < h and self._needed(last + 1) <= end:
            last += 1
        made = self.made
        for i0 in range(self.made, last, READ_ROWS):
            i1 = min(last, i0 + READ_ROWS)
            data = self._resample((i0 * H / h, (i1 - i0) * H / h), (i1 - i0, w))
            self.out.write(data, i0)
            self.made = i1
            if self.below is not None:
                self.below.feed(data, i0)
        return self.made > made

    def _resample(self, window: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
        """GDAL's resampled read of parent rows ``window`` (fractional offset, height) into ``shape``, through an
        in-memory dataset of the parent rows under it (from the window's floor to its ceiling, a row spare each
        side): read from the source, or from the kept rows (then those no later read needs are dropped). Not a
        resampled read of the source itself: its nodata mask's blocks would stay in GDAL's cache (≈ 60 MB at
        4097² for four maps)."""
        r0 = max(self.first, math.floor(window[0]) - 1)
        if self.source is not None:
            r1 = min(self.parent[0], math.ceil(window[0] + window[1]) + 1)
            strip = self.source().read(1, window=Window(0, r0, self.parent[1], r1 - r0))
        else:
            strip = self.carry[r0 - self.first:]
        with rasterio.open("strip", "w+", driver="MEM", width=self.parent[1], height=len(strip), count=1,
                           dtype=self.dtype, nodata=self.nodata, transform=_PIXEL_GRID) as mem:
            mem.write(strip, 1)
            data = mem.read(1, window=Window(0, window[0] - r0, self.parent[1], window[1]), out_shape=shape,
                            resampling=Resampling.average)
        if self.source is None:
            keep = max(self.first, math.floor(window[0] + window[1]) - 1)
            self.carry, self.first = self.carry[keep - self.first:], keep
        return data


class _RowFile:
    """A level's tiled GeoTIFF written in whole rows of tiles: GDAL compresses and writes a tile that one write
    covers at once, but keeps a tile written in parts in its block cache until the file is closed (one 1000² level
    written in strips of other heights took 50 ms to close, against 0.3 ms in whole tile rows)."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype, tile: int,
                 create: Callable[[Path, tuple[int, int]], DatasetWriter]):
        self.path = path
        self.ds = create(path, shape)
        self.band = np.empty((min(tile, shape[0]), shape[1]), dtype)  # rows [start, start + rows) of the level
        self.start = self.rows = 0

    def write(self, data: np.ndarray, row: int) -> None:
        if row != self.start + self.rows:
            raise RuntimeError(f"{self.path}: rows from {row} after rows up to {self.start + self.rows}")
        while len(data):
            n = min(len(data), len(self.band) - self.rows)
            self.band[self.rows:self.rows + n] = data[:n]
            self.rows += n
            data = data[n:]
            if self.rows == len(self.band):
                self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.ds.write(self.band[:self.rows], 1, window=Window(0, self.start, self.band.shape[1], self.rows))
        self.start, self.rows = self.start + self.rows, 0

    def close(self) -> None:
        if not self.ds.closed:
            self._flush()
            self.ds.close()


class LevelStream:
    """The averaged levels ``shapes`` below a parent level of ``parent`` px, made as the parent's rows complete.

    ``parent_ds()`` is the parent level's dataset, open for reading and writing; the writer reports every block it
    wrote into it (:meth:`add`). ``create(path, shape)`` opens a new GeoTIFF for a level, tiled ``tile``² px; the
    levels are written to ``paths``."""

    def __init__(self, parent: tuple[int, int], shapes: list[tuple[int, int]], dtype: np.dtype, nodata: float,
                 paths: list[Path], create: Callable[[Path, tuple[int, int]], DatasetWriter], tile: int,
                 parent_ds: Callable[[], DatasetWriter]):
        self.parent, self.paths = parent, paths
        self._files = [_RowFile(p, s, np.dtype(dtype), tile, create) for p, s in zip(paths, shapes, strict=True)]
        below = None
        parents = [parent, *shapes[:-1]]
        for k in reversed(range(len(shapes))):
            below = _Level(parents[k], shapes[k], np.dtype(dtype), nodata, self._files[k], below,
                           source=parent_ds if k == 0 else None)
        assert below is not None
        self._first = below
        self._filled = np.zeros(parent[0], np.int64)  # pixels written per parent row
        self.done = 0  # parent rows [0, done) are complete

    @property
    def complete(self) -> bool:
        return self.done == self.parent[0]

    def add(self, row: int, shape: tuple[int, int]) -> bool:
        """The writer wrote a block of ``shape`` at parent row ``row`` (any column); whether rows of the parent
        were read back for it."""
        self._filled[row:row + shape[0]] += shape[1]
        full = self._filled[self.done:] >= self.parent[1]
        end = self.done + (len(full) if full.all() else int(full.argmin()))
        if end == self.done:
            return False
        self.done = end
        return self._first.advance(end)

    def close(self) -> None:
        for f in self._files:
            f.close()

    def discard(self) -> None:
        """Close and remove what was written."""
        self.close()
        for p in self.paths:
            p.unlink(missing_ok=True)
