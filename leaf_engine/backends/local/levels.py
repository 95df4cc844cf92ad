"""GDAL's averaged overview levels of a map that does not halve, made while the map's blocks arrive.

An averaged level whose parent has an odd size (2001 → 1000 px: ratio 2.001) is GDAL's weighted AVERAGE, which
the blocks cannot make on their own (a 2×2 would straddle two blocks). Made after the last block, from the parent
level's file, these levels were most of a job's serial tail (≈ 0.1 s per map at 2001², 0.4 s at 4001²). But each
row of such a level depends only on the parent rows under it, so :class:`LevelStream` makes it as soon as those
rows are complete: the parent level's blocks, in any order, are gathered into complete rows within a bounded
buffer, and each level resamples the rows it has into its own rows with GDAL itself (a resampled read of a
fractional window of an in-memory strip of them: the same weights as GDAL's read of the whole parent;
``tests/test_local_writer.py`` checks every level against the COG driver's) and hands them to the level below.

When the blocks arrive too far out of row order for the buffer (a retried block, a caller writing bottom-up) the
stream gives up (:attr:`LevelStream.failed`) and the writer makes the levels after the last block, as before.
(Reading the complete rows back from the parent level's file instead needs no buffer, but measured slower: the
tiles are decompressed again, ≈ 1.4× the client's CPU at 4001², and a longer tail.)
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

STREAM_BYTES = 8 * 1024 * 1024
"""Largest buffer of parent rows (bytes) that one map's stream holds: blocks arriving further ahead of the first
incomplete row than this make the stream give up. 8 MB holds four rows of 512² blocks up to 4096 px wide, two up
to 8192 (uint8); the buffer grows only as far as the blocks' order needs."""

READ_ROWS = 128
"""Most rows of a level made in one resampled read, so the strips and GDAL's working buffers stay small whatever
the region (blocks arriving bottom-up complete the whole map at once)."""

_PIXEL_GRID = Affine(1, 0, 0, 0, -1, 1)  # the in-memory strips' georeferencing: pixel space (GDAL warns on identity)


class _Level:
    """One GDAL level of ``shape`` from a parent of ``parent`` px whose rows are handed over in order and kept
    until used. Writes its rows into ``out`` as they can be made and feeds them to ``below``."""

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
        """The parent's rows [start, start + len(rows)), the next ones in order."""
        if start != self.first + len(self.carry):
            raise RuntimeError(f"parent rows from {start} after rows up to {self.first + len(self.carry)}")
        self.carry = np.concatenate([self.carry, rows]) if len(self.carry) else rows.copy()
        self.advance(start + len(rows))

    def advance(self, end: int) -> None:
        """Make every row whose parent rows lie in [0, end)."""
        H, (h, w) = self.parent[0], self.shape
        last = h if end == H else self.made
        while last < h and self._needed(last + 1) <= end:
            last += 1
        for i0 in range(self.made, last, READ_ROWS):
            i1 = min(last, i0 + READ_ROWS)
            data = self._resample((i0 * H / h, (i1 - i0) * H / h), (i1 - i0, w))
            self.out.write(data, i0)
            self.made = i1
            if self.below is not None:
                self.below.feed(data, i0)

    def _resample(self, window: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
        """GDAL's resampled read of parent rows ``window`` (fractional offset, height) into ``shape``, through an
        in-memory dataset of the kept rows from the window's floor (a row spare); then the rows no later read
        needs are dropped."""
        r0 = max(self.first, math.floor(window[0]) - 1)
        r1 = min(self.first + len(self.carry), math.ceil(window[0] + window[1]) + 1)
        strip = self.carry[r0 - self.first:r1 - self.first]
        with rasterio.open("strip", "w+", driver="MEM", width=self.parent[1], height=len(strip), count=1,
                           dtype=self.dtype, nodata=self.nodata, transform=_PIXEL_GRID) as mem:
            mem.write(strip, 1)
            data = mem.read(1, window=Window(0, window[0] - r0, self.parent[1], window[1]), out_shape=shape,
                            resampling=Resampling.average)
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
    """The averaged levels ``shapes`` below a parent level of ``parent`` px, made from the parent's blocks.

    ``create(path, shape)`` opens a new GeoTIFF for a level, tiled ``tile``² px; the levels are written to
    ``paths``."""

    def __init__(self, parent: tuple[int, int], shapes: list[tuple[int, int]], dtype: np.dtype, nodata: float,
                 paths: list[Path], create: Callable[[Path, tuple[int, int]], DatasetWriter], tile: int):
        self.parent, self.dtype, self.nodata, self.paths = parent, np.dtype(dtype), nodata, paths
        self._files = [_RowFile(p, s, self.dtype, tile, create) for p, s in zip(paths, shapes, strict=True)]
        below = None
        parents = [parent, *shapes[:-1]]
        for k in reversed(range(len(shapes))):
            below = _Level(parents[k], shapes[k], self.dtype, nodata, self._files[k], below)
        assert below is not None
        self._first = below
        self.capacity = min(parent[0], STREAM_BYTES // (parent[1] * self.dtype.itemsize))
        self._buf = np.full((0, parent[1]), nodata, self.dtype)  # parent rows [base, base + len), grown as needed
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
            self.discard()
            return False
        if row + h > self._base + len(self._buf):  # slide down to the first incomplete row, grow if need be
            rows = max(row + h - self.done, len(self._buf))
            buf = self._buf if rows <= len(self._buf) else np.full((rows, self.parent[1]), self.nodata, self.dtype)
            keep = self._buf[self.done - self._base:]
            buf[:len(keep)] = keep
            self._buf, self._base = buf, self.done
        self._buf[row - self._base:row - self._base + h, col:col + w] = data
        self._filled[row:row + h] += w
        full = self._filled[self.done:] >= self.parent[1]
        end = self.done + (len(full) if full.all() else int(full.argmin()))
        if end > self.done:
            self._first.feed(self._buf[self.done - self._base:end - self._base], self.done)
            self.done = end
        return True

    def close(self) -> None:
        for f in self._files:
            f.close()

    def discard(self) -> None:
        """Give up: close and remove what was written, free the buffer."""
        self.failed = True
        self.close()
        for p in self.paths:
            p.unlink(missing_ok=True)
        self._buf = np.full((0, self.parent[1]), self.nodata, self.dtype)
