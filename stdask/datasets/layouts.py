"""Where the observations of a synthetic slice sit: Visium spots, Stereo-seq bins or single cells.

Observations fill a roughly square lattice row by row (row-major, ``row = i // n_cols``), so the position
of observation ``i`` is a closed-form function of ``i`` (plus, for single cells, a jitter drawn from the
per-block stream), and any index range can be placed without touching the others.

Units
-----
* ``"visium"``: micrometres; hexagonal lattice, 100 um centre pitch (``array_col`` steps of 2 = 100 um along
  a row, rows 50*sqrt(3) um apart, odd rows shifted by 50 um), 55 um spots, as on a Visium slide.
* ``"stereo"``: DNB units (500 nm pitch); square lattice of ``bin_size`` x ``bin_size`` DNB bins. ``x, y`` are
  the DNB coordinates of a bin's *origin* (its smallest x and y), i.e. ``origin + bin_index * bin_size``,
  the coordinate Stereopy gives a bin.
* ``"cells"``: micrometres; hexagonal lattice of 10 um pitch, each cell jittered uniformly by up to
  +-2 um in x and y.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..random_streams import sequence_stream
from .purposes import JITTER

LAYOUTS = ("visium", "stereo", "cells")

#: Stereo-seq DNB pitch in micrometres
DNB_PITCH_UM = 0.5
#: Visium centre-to-centre spot pitch and spot diameter, micrometres
VISIUM_PITCH_UM = 100.0
VISIUM_SPOT_UM = 55.0
#: single-cell lattice pitch and the maximal jitter per axis, micrometres
CELL_PITCH_UM = 10.0
CELL_JITTER_UM = 2.0
#: margin between the tissue and the coordinate origin, micrometres (Visium, cells)
MARGIN_UM = {"visium": 200.0, "cells": 20.0}


def stereo_origin(bin_size: int) -> int:
    """DNB coordinate of the first bin's origin (same in x and y).

    A multiple of both ``bin_size`` and 600 (the least common multiple of the GEF bin sizes 1, 5, 10, 20,
    50, 100, 150, 200) near 5,000 DNB, so absolute (``x // N``) and relative (``(x - x_min) // N``) binning
    agree for every standard bin size and for ``bin_size``.
    """
    step = math.lcm(int(bin_size), 600)
    return step * max(1, math.ceil(5000 / step))


@dataclass(frozen=True)
class Geometry:
    """Lattice of a synthetic slice.

    Attributes
    ----------
    layout
        ``"visium"``, ``"stereo"`` or ``"cells"``.
    n_obs
        Number of observations.
    n_cols, n_rows
        Lattice columns (observations per row) and rows; the last row may be partial.
    step_x, step_y
        Distance between lattice columns / rows, in coordinate units.
    x0, y0
        Coordinates of lattice site (row 0, column 0), in coordinate units.
    unit
        ``"um"`` or ``"DNB"``.
    um_per_unit
        Micrometres per coordinate unit (1.0 or 0.5).
    bin_size
        Stereo-seq bin side in DNB (``"stereo"`` only, else 0).
    hex_shift
        Fraction of ``step_x`` by which odd rows are shifted (0.5 for hexagonal lattices, 0 for square).
    jitter
        Maximal absolute jitter per axis, in coordinate units.
    """

    layout: str
    n_obs: int
    n_cols: int
    n_rows: int
    step_x: float
    step_y: float
    x0: float
    y0: float
    unit: str
    um_per_unit: float
    bin_size: int
    hex_shift: float
    jitter: float

    @classmethod
    def build(cls, layout: str, n_obs: int, bin_size: int) -> "Geometry":
        """Lattice for ``n_obs`` observations, as close to a square tissue as the lattice allows."""
        if layout == "stereo":
            n_cols = max(1, math.ceil(math.sqrt(n_obs)))
            origin = float(stereo_origin(bin_size))
            return cls(layout, n_obs, n_cols, math.ceil(n_obs / n_cols), float(bin_size), float(bin_size),
                       origin, origin, "DNB", DNB_PITCH_UM, int(bin_size), 0.0, 0.0)
        pitch = VISIUM_PITCH_UM if layout == "visium" else CELL_PITCH_UM
        row_step = pitch * math.sqrt(3.0) / 2.0
        # square tissue: n_cols * pitch == n_rows * row_step and n_cols * n_rows == n_obs
        n_cols = max(1, math.ceil(math.sqrt(n_obs * row_step / pitch)))
        margin = MARGIN_UM[layout]
        jitter = CELL_JITTER_UM if layout == "cells" else 0.0
        return cls(layout, n_obs, n_cols, math.ceil(n_obs / n_cols), pitch, row_step, margin, margin,
                   "um", 1.0, 0, 0.5, jitter)

    @property
    def extent(self) -> float:
        """Side of the square that holds the lattice, in coordinate units (the normalising length)."""
        return max(self.n_cols * self.step_x, self.n_rows * self.step_y)

    @property
    def width(self) -> float:
        """Extent of the lattice in x, in coordinate units."""
        return self.n_cols * self.step_x

    @property
    def height(self) -> float:
        """Extent of the lattice in y, in coordinate units."""
        return self.n_rows * self.step_y

    def row_col(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lattice row and column of observations ``index`` ((n,) int64 each)."""
        index = np.asarray(index, dtype=np.int64)
        return index // self.n_cols, index % self.n_cols

    def nominal_xy(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unjittered coordinates of observations ``index`` ((n,) float64 each, coordinate units)."""
        row, col = self.row_col(index)
        x = self.x0 + (col + self.hex_shift * (row % 2)) * self.step_x
        y = self.y0 + row * self.step_y
        return x.astype(np.float64), y.astype(np.float64)

    def xy(self, start: int, stop: int, seed: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of observations ``start .. stop-1`` including the jitter.

        The jitter of observation ``i`` comes from stream ``(seed, JITTER, i // block_size)``, so it is
        the same whichever range asks for it.
        """
        index = np.arange(start, stop, dtype=np.int64)
        x, y = self.nominal_xy(index)
        if self.jitter > 0 and stop > start:
            for b in range(start // block_size, (stop - 1) // block_size + 1):
                b0 = b * block_size
                n_b = min(block_size, self.n_obs - b0)
                jit = sequence_stream(seed, JITTER, b).uniform(-self.jitter, self.jitter, size=(n_b, 2))
                lo, hi = max(start, b0), min(stop, b0 + n_b)
                x[lo - start:hi - start] += jit[lo - b0:hi - b0, 0]
                y[lo - start:hi - start] += jit[lo - b0:hi - b0, 1]
        return x, y

    def visium_array(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Visium ``array_row`` and ``array_col`` ((n,) int64 each; ``array_col`` has the parity of the row)."""
        row, col = self.row_col(index)
        return row, 2 * col + (row % 2)

    def hex_neighbours(self, index: np.ndarray) -> np.ndarray:
        """The six lattice neighbours of each observation (hexagonal layouts only).

        Returns
        -------
        numpy.ndarray
            (n, 6) int64 observation indices, -1 where the neighbour lies outside the tissue.
        """
        row, col = self.row_col(index)
        odd = (row % 2).astype(np.int64)
        # rows r +- 1 of a hex lattice whose odd rows are shifted right: even rows meet columns (c-1, c),
        # odd rows meet (c, c+1)
        d_row = np.array([0, 0, -1, -1, 1, 1])
        d_col_even = np.array([-1, 1, -1, 0, -1, 0])
        nb_row = row[:, None] + d_row[None, :]
        nb_col = col[:, None] + d_col_even[None, :] + (odd[:, None] * (d_row[None, :] != 0))
        nb = nb_row * self.n_cols + nb_col
        ok = (nb_row >= 0) & (nb_col >= 0) & (nb_col < self.n_cols) & (nb < self.n_obs) & (nb >= 0)
        return np.where(ok, nb, -1)


def barcodes_10x(index: np.ndarray, suffix: str = "-1") -> np.ndarray:
    """10x-style 16-nt barcodes, unique per index (the observation names of the Visium and cells layouts).

    The index goes through a bijection of ``[0, 2**32)`` (xor-shift / odd-multiply mixing) and is then
    written as 16 bases (2 bits each), so barcodes look random yet never collide.

    Parameters
    ----------
    index
        (n,) non-negative integers below ``2**32``.
    suffix
        Appended to each barcode (10x writes the GEM well, ``-1``).

    Returns
    -------
    numpy.ndarray
        (n,) object array of ``str``.
    """
    mask = np.uint64(0xFFFFFFFF)
    # the offset keeps index 0 away from the all-A barcode; every step is a bijection of [0, 2**32)
    h = (np.asarray(index, dtype=np.uint64) + np.uint64(0x9E3779B9)) & mask
    for mult in (0x7FEB352D, 0x846CA68B):
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(mult)) & mask
    h ^= h >> np.uint64(16)
    shifts = np.arange(30, -1, -2, dtype=np.uint64)
    digits = ((h[:, None] >> shifts[None, :]) & np.uint64(3)).astype(np.uint8)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
    codes = np.ascontiguousarray(letters).view("S16").ravel()
    return np.char.add(codes.astype("U16"), suffix).astype(object)
