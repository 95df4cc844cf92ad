"""GDAL's averaged overview levels of a map that does not halve, made while the map's blocks arrive.

An averaged level whose parent has an odd size (2001 → 1000 px: ratio 2.001) is GDAL's weighted AVERAGE, which
the blocks cannot make on their own (a 2×2 would straddle two blocks). Made after the last block, from the parent
level's file, these levels were most of a job's serial tail (≈ 0.1 s per map at 2001², 0.4 s at 4001²). But each
row of such a level depends only on the parent rows under it, so :class:`LevelStream` makes it as soon as those
rows are complete: the parent level's blocks, in any order, are gathered into complete rows within a bounded
buffer, and each level resamples the rows it has into its own rows with GDAL itself (a resampled read of a
fractional window of an in-memory strip: the same weights as GDAL's read of the whole parent;
``tests/test_local_writer.py`` checks every level against the COG driver's) and hands them to the level below.

When the blocks arrive too far out of row order for the buffer (a retried block, a caller writing bottom-up) the
stream gives up (:attr:`LevelStream.failed`) and the writer makes the levels at the end, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

STREAM_BYTES = 16 * 1024 * 1024
"""Largest buffer of parent rows (bytes) that one map's stream holds: blocks arriving further ahead of the first
incomplete row than this make the stream give up. 16 MB holds three rows of 512² blocks up to 10 900 px wide
(uint8); memory stays bounded whatever the region."""

_PIXEL_GRID = Affine(1, 0, 0, 0, -1, 1)  # the strips' georeferencing: pixel space (GDAL warns on the identity)


class _Level:
    """One GDAL level from a parent that arrives in row order: writes its rows into ``out`` as they can be made
    and feeds them to ``below``."""

    def __init__(self, parent: tuple[int, int], shape: tuple[int, int], dtype: np.dtype, nodata: float,
                 out: _RowFile, below: _Level | None):
        self.parent, self.shape, self.dtype, self.nodata = parent, shape, dtype, nodata
        self.out, self.below = out, below
        self.carry = np.empty((0, parent[1]), dtype)  # parent rows [first, first + len(carry))
        self.first = 0
        self.made = 0  # rows [0, made) of this level are written

    def _needed(self, rows: int) -> int:
        """Parent rows that this level's rows [0, rows) read (GDAL's ceil of the last row's end, one row spare)."""
        return min(self.parent[0], math.ceil(rows * self.parent[0] / self.shape[0]) + 1)

    def feed(self, rows: np.ndarray, start: int) -> None:
        if start != self.first + len(self.carry):
            raise RuntimeError(f"parent rows from {start} after rows up to {self.first + len(self.carry)}")
        self.carry = np.concatenate([self.carry, rows]) if len(self.carry) else rows.copy()
        end = start + len(rows)
        i1 = self.shape[0] if end == self.parent[0] else self.made
        while i1 < self.shape[0] and self._needed(i1 + 1) <= end:
            i1 += 1
        if i1 <= self.made:
            return
        i0 = self.made
        (H, W), (h, w) = self.parent, self.shape
        # The strip holds every parent row GDAL reads for rows [i0, i1) (the window's floor, one row spare).
        r0 = max(self.first, math.floor(i0 * H / h) - 1)
        strip = self.carry[r0 - self.first:]
        with rasterio.open("strip", "w+", driver="MEM", width=W, height=len(strip), count=1, dtype=self.dtype,
                           nodata=self.nodata, transform=_PIXEL_GRID) as mem:
            mem.write(strip, 1)
            data = mem.read(1, window=Window(0, i0 * H / h - r0, W, (i1 - i0) * H / h), out_shape=(i1 - i0, w),
                            resampling=Resampling.average)
        self.out.write(data, i0)
        self.made = i1
        keep = max(self.first, math.floor(i1 * H / h) - 1)
        self.carry, self.first = self.carry[keep - self.first:], keep
        if self.below is not None:
            self.below.feed(data, i0)


class _RowFile:
    """A level's tiled GeoTIFF written in whole rows of tiles: GDAL compresses and writes a tile that one write
    covers at once, but keeps a tile written in parts in its block cache until the file is closed (one 1000² level
    written in strips of other heights took 50 ms to close, against 0.3 ms in whole tile rows)."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: np.dtype, tile: int,
                 create: Callable[[Path, tuple[int, int]], rasterio.io.DatasetWriter]):
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
    """The averaged levels ``shapes`` below a parent level of ``parent`` px, made from the parent's blocks.

    ``create(path, shape)`` opens a new GeoTIFF for a level, tiled ``tile``² px; the levels are written to
    ``paths``."""

    def __init__(self, parent: tuple[int, int], shapes: list[tuple[int, int]], dtype: np.dtype, nodata: float,
                 paths: list[Path], create: Callable[[Path, tuple[int, int]], rasterio.io.DatasetWriter], tile: int):
        self.parent, self.dtype, self.nodata, self.paths = parent, np.dtype(dtype), nodata, paths
        self._create, self._shapes, self._tile = create, shapes, tile
        self._first: _Level | None = None
        self._files: list[_RowFile] = []
        self.capacity = min(parent[0], STREAM_BYTES // (parent[1] * self.dtype.itemsize))
        self._buf: np.ndarray | None = None  # parent rows [base, base + len), grown as the blocks need, ≤ capacity
        self._base = 0
        self._filled = np.zeros(parent[0], np.int64)  # pixels written per parent row
        self.done = 0  # parent rows [0, done) are complete and handed to the first level
        self.failed = False

    @property
    def complete(self) -> bool:
        return not self.failed and self.done == self.parent[0]

    def add(self, data: np.ndarray, row: int, col: int) -> bool:
        """Take one block of the parent level; False once the stream has given up."""
        if self.failed:
            return False
        h, w = data.shape
        if row < self.done or row + h > self.done + self.capacity:
            self.abandon()
            return False
        if self._buf is None:
            self._open()
        assert self._buf is not None
        if row + h > self._base + len(self._buf):  # slide down to the first incomplete row, grow if need be
            rows = max(row + h - self.done, min(self.capacity, 2 * len(self._buf)))
            buf = self._buf if rows <= len(self._buf) else np.full((rows, self.parent[1]), self.nodata, self.dtype)
            keep = self._buf[self.done - self._base:]
            buf[:len(keep)] = keep
            self._buf, self._base = buf, self.done
        self._buf[row - self._base:row - self._base + h, col:col + w] = data
        self._filled[row:row + h] += w
        full = self._filled[self.done:] >= self.parent[1]
        end = self.done + (len(full) if full.all() else int(full.argmin()))
        if end > self.done:
            assert self._first is not None
            self._first.feed(self._buf[self.done - self._base:end - self._base], self.done)
            self.done = end
        return True

    def _open(self) -> None:
        self._buf = np.full((0, self.parent[1]), self.nodata, self.dtype)
        self._files = [_RowFile(p, s, self.dtype, self._tile, self._create)
                       for p, s in zip(self.paths, self._shapes, strict=True)]
        below = None
        parents = [self.parent, *self._shapes[:-1]]
        for parent, shape, out in reversed(list(zip(parents, self._shapes, self._files, strict=True))):
            below = _Level(parent, shape, self.dtype, self.nodata, out, below)
        self._first = below

    def close(self) -> None:
        for f in self._files:
            f.close()

    def abandon(self) -> None:
        """Give up: close and remove what was written, free the buffer."""
        self.failed = True
        self.close()
        for p in self.paths:
            p.unlink(missing_ok=True)
        self._buf, self._first, self._files = None, None, []
