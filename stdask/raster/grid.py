"""Observations to pixels: the grid a raster is built on.

Three mappings (SpaSEG spec §2; deviation S1):

``"array"``
    Visium: pixel (row, col) = (``array_row``, ``array_col``) as they are. On the hexagonal lattice only
    alternate positions are filled; the empty ones stay empty.
``"pitch"`` (stdask's quantisation, every other platform)
    row = round((s0 - min s0) / pitch), col = round((s1 - min s1) / pitch), with s0, s1 the first and second
    spatial axes (the reference's convention: the row follows ``spatial[:, 0]``). ``pitch`` is the bin size
    (Stereo-seq binN), else the median nearest-neighbour distance. The minimum is always subtracted, so no
    image carries empty margins.
``"scale"``
    The reference's platform factors, for parity: each axis is shifted to start at 0 only if *any*
    coordinate is negative, multiplied by ``scale`` and truncated to int.

Several observations can land on one pixel ("collisions"). :class:`PixelGrid` counts them; the raster
builder (:mod:`stdask.raster.build`) averages their feature vectors instead of keeping the last one written,
and every colliding observation reads back its pixel's value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

MODES = ("array", "pitch", "scale")
#: observations used to estimate the median nearest-neighbour distance (an even stride through the rows)
NN_SAMPLE = 200_000

#: largest frame (slices x height x width pixels) a grid may span: rasters are dense, so a far outlier or a
#: tiny pitch would otherwise ask for terabytes
MAX_PIXELS = 1 << 31


@dataclass(frozen=True)
class Collisions:
    """How observations share pixels.

    Attributes
    ----------
    n_obs
        Observations mapped.
    n_pixels
        Occupied pixels.
    n_colliding_obs
        Observations on a pixel shared with at least one other observation.
    n_shared_pixels
        Pixels holding two or more observations.
    max_per_pixel
        The largest number of observations on one pixel.
    """

    n_obs: int
    n_pixels: int
    n_colliding_obs: int
    n_shared_pixels: int
    max_per_pixel: int

    def to_dict(self) -> dict:
        return {k: int(v) for k, v in self.__dict__.items()}

    def __str__(self) -> str:
        if not self.n_shared_pixels:
            return f"{self.n_obs:,} observations on {self.n_pixels:,} pixels, no collisions"
        return (f"{self.n_obs:,} observations on {self.n_pixels:,} pixels: {self.n_colliding_obs:,} share "
                f"{self.n_shared_pixels:,} pixels (up to {self.max_per_pixel} per pixel; values averaged)")


@dataclass(frozen=True)
class PixelGrid:
    """Pixel of every observation of one or several slices sharing one frame.

    Attributes
    ----------
    row, col
        (n_obs,) int64 pixel row and column.
    slice
        (n_obs,) int64 slice index (0 for a single slice).
    height, width
        Frame size H x W: max(row) + 1 and max(col) + 1 over all slices.
    n_slices
        Number of slices B.
    mode
        ``"array"``, ``"pitch"`` or ``"scale"``.
    pitch
        Coordinate units per pixel (``"pitch"`` mode), else ``None``.
    scale
        Pixels per coordinate unit (``"scale"`` mode), else ``None``.
    origin
        (2,) coordinates subtracted before quantising (s0, s1); zeros in ``"array"`` mode.
    """

    row: np.ndarray
    col: np.ndarray
    slice: np.ndarray
    height: int
    width: int
    n_slices: int = 1
    mode: str = "pitch"
    pitch: float | None = None
    scale: float | None = None
    origin: tuple = (0.0, 0.0)
    _collisions: list = field(default_factory=list, repr=False, compare=False)

    @property
    def n_obs(self) -> int:
        return len(self.row)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, H, W)."""
        return (self.n_slices, self.height, self.width)

    @property
    def pixel(self) -> np.ndarray:
        """(n_obs,) int64 flat pixel index into the (B, H, W) frame: ``(slice * H + row) * W + col``."""
        return (self.slice * self.height + self.row) * self.width + self.col

    def collisions(self) -> Collisions:
        """Collision counts (computed once)."""
        if not self._collisions:
            _, counts = np.unique(self.pixel, return_counts=True)
            shared = counts > 1
            self._collisions.append(Collisions(
                n_obs=self.n_obs, n_pixels=len(counts), n_colliding_obs=int(counts[shared].sum()),
                n_shared_pixels=int(shared.sum()), max_per_pixel=int(counts.max()) if len(counts) else 0))
        return self._collisions[0]

    def subset(self, b: int) -> np.ndarray:
        """Positions (into the observation order) of slice ``b``."""
        return np.flatnonzero(self.slice == b)

    def meta(self) -> dict:
        """JSON-able description (stored with rasters and results)."""
        return {"mode": self.mode, "pitch": self.pitch, "scale": self.scale,
                "origin": [float(v) for v in self.origin], "height": int(self.height), "width": int(self.width),
                "n_slices": int(self.n_slices), "collisions": self.collisions().to_dict()}


def median_nn_distance(coords: np.ndarray, sample: int = NN_SAMPLE) -> float:
    """Median distance of an observation to its nearest other observation.

    Parameters
    ----------
    coords
        (n, 2) float64 coordinates.
    sample
        At most this many observations (an even stride through the rows, so the result is deterministic)
        are queried against all of them.

    Returns
    -------
    float, in coordinate units. Coincident observations (distance 0) are skipped; raises if every
    observation coincides with another.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if len(coords) < 2:
        raise ValueError("need at least 2 observations to estimate a pixel pitch; pass pitch=")
    tree = cKDTree(coords)
    step = max(1, len(coords) // sample)
    q = coords[::step]
    d, _ = tree.query(q, k=min(len(coords), 8))
    d = d[:, 1:]
    pos = np.where(d > 0, d, np.inf).min(axis=1)
    pos = pos[np.isfinite(pos)]
    if len(pos) == 0:
        raise ValueError("all observations share their coordinates; pass pitch=")
    return float(np.median(pos))


def _check_coords(coords: np.ndarray, what: str) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"{what}: coordinates must be (n_obs, 2), got shape {coords.shape}")
    if not np.isfinite(coords[:, :2]).all():
        bad = int((~np.isfinite(coords[:, :2])).any(axis=1).sum())
        raise ValueError(f"{what}: {bad} observation(s) have NaN or infinite coordinates")
    return coords[:, :2]


def quantize(coords, *, pitch: float | None = None, scale: float | None = None, array_rowcol=None,
             origin=None) -> PixelGrid:
    """Map the observations of one or several slices to one pixel frame.

    Parameters
    ----------
    coords
        (n, 2) float64 spatial coordinates of one slice, or a list of such arrays (one per slice, already
        aligned; the slices share the frame). Ignored in ``"array"`` mode except for its length.
    pitch
        Coordinate units per pixel (``"pitch"`` mode). ``None``: the median nearest-neighbour distance
        over all slices.
    scale
        Reference compatibility (``"scale"`` mode): pixels per coordinate unit, truncating (e.g. 1 for
        Stereo-seq bins, 1/14 for cell bins, 500 / max coordinate for MERFISH).
    array_rowcol
        ``"array"`` mode: (n, 2) integer (array_row, array_col) per slice (or a list).
    origin
        (2,) coordinates subtracted in ``"pitch"`` mode; default the minimum over all slices (one origin
        for all slices keeps aligned slices aligned).

    Returns
    -------
    PixelGrid

    Raises
    ------
    ValueError
        Non-finite coordinates, a pitch or scale that is not a positive finite number, both ``pitch``
        and ``scale``, negative array positions, or a frame of more than :data:`MAX_PIXELS` pixels.
    """
    def as_list(v):
        return list(v) if isinstance(v, (list, tuple)) else [v]

    if array_rowcol is not None:
        parts = [np.asarray(a) for a in as_list(array_rowcol)]
        for i, a in enumerate(parts):
            if a.ndim != 2 or a.shape[1] != 2:
                raise ValueError(f"array_rowcol of slice {i} must be (n_obs, 2), got {a.shape}")
            if len(a) and not np.array_equal(a, np.round(a)):
                raise ValueError(f"array_rowcol of slice {i} has non-integer positions")
            if len(a) and a.min() < 0:
                raise ValueError(f"array_rowcol of slice {i} has negative positions")
        rows = [a[:, 0].astype(np.int64) for a in parts]
        cols = [a[:, 1].astype(np.int64) for a in parts]
        return _grid(rows, cols, "array", None, None, (0.0, 0.0))
    parts = [_check_coords(c, f"slice {i}") for i, c in enumerate(as_list(coords))]
    allc = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(allc) == 0:
        raise ValueError("no observations to place on a grid")
    if pitch is not None and scale is not None:
        raise ValueError("give pitch= (stdask quantisation) or scale= (reference truncation), not both")
    if scale is not None:
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        # the reference shifts each axis to 0 only when any coordinate is negative, then truncates
        shift = allc.min(axis=0) if (allc < 0).any() else np.zeros(2)
        rows = [np.trunc((p[:, 0] - shift[0]) * scale).astype(np.int64) for p in parts]
        cols = [np.trunc((p[:, 1] - shift[1]) * scale).astype(np.int64) for p in parts]
        return _grid(rows, cols, "scale", None, float(scale), tuple(float(v) for v in shift))
    if pitch is None:
        pitch = median_nn_distance(allc)
    if not (np.isfinite(pitch) and pitch > 0):
        raise ValueError(f"pitch must be a positive finite number, got {pitch!r}")
    o = allc.min(axis=0) if origin is None else np.asarray(origin, dtype=np.float64)
    if origin is not None and (allc < o - 0.5 * pitch).any():
        raise ValueError(f"origin {tuple(o)} lies above some coordinates; pixels would be negative")
    # np.rint rounds half to even, as round() in the spec's formula does in numpy
    rows = [np.rint((p[:, 0] - o[0]) / pitch).astype(np.int64) for p in parts]
    cols = [np.rint((p[:, 1] - o[1]) / pitch).astype(np.int64) for p in parts]
    return _grid(rows, cols, "pitch", float(pitch), None, (float(o[0]), float(o[1])))


def _grid(rows, cols, mode, pitch, scale, origin) -> PixelGrid:
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    sl = np.concatenate([np.full(len(r), b, dtype=np.int64) for b, r in enumerate(rows)])
    H = int(row.max()) + 1 if len(row) else 1
    W = int(col.max()) + 1 if len(col) else 1
    if len(rows) * H * W > MAX_PIXELS:
        size = f"pitch {pitch:g}" if pitch is not None else f"scale {scale:g}"
        raise ValueError(f"the raster would span {len(rows)} x {H:,} x {W:,} pixels ({size}), more than "
                         f"{MAX_PIXELS:,}: the coordinates reach far beyond the tissue (remove the far-away "
                         "observations) or the pitch is too small (pass a larger pitch)")
    return PixelGrid(row=row, col=col, slice=sl, height=H, width=W, n_slices=len(rows), mode=mode, pitch=pitch,
                     scale=scale, origin=origin)


def dataset_pitch(ds) -> float:
    """Pitch of a dataset's bins in store units: the ingest bin size (Stereo-seq binN), the bin width of a
    :func:`stdask.pp.bin` store, else the median nearest-neighbour distance of its observations."""
    prov = ds.provenance
    if int(prov.get("bin_size", 0) or 0) > 0 and not prov.get("cellbin", False):
        return float(prov["bin_size"])
    try:
        info = ds.get_result("uns", "binning")
        w, h = float(info["bin_width"]), float(info["bin_height"])
        if np.isclose(w, h):
            return w
    except (KeyError, TypeError):
        pass
    return median_nn_distance(ds.coords)


def dataset_grid(datasets, *, pitch: float | None = None, scale: float | None = None,
                 use_array: bool | None = None) -> PixelGrid:
    """The pixel grid of one dataset or of several aligned ones (one frame).

    ``use_array`` (default: when every dataset has ``array_row`` and ``array_col`` in obs and neither
    ``pitch`` nor ``scale`` is given) selects Visium's array positions; otherwise the coordinates are
    quantised with ``pitch`` (default: :func:`dataset_pitch` of the first dataset, one pitch for all) or
    truncated with ``scale``.
    """
    datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    # the stored column names only: loading obs would read every name (~1 GB at 10^7 bins)
    has_array = all({"array_row", "array_col"} <= set(ds.store.keys("obs")) for ds in datasets)
    if use_array is None:
        use_array = has_array and pitch is None and scale is None
    if use_array:
        if not has_array:
            raise ValueError("use_array=True needs obs columns 'array_row' and 'array_col' in every dataset")
        return quantize(None, array_rowcol=[ds.store.obs[["array_row", "array_col"]].to_numpy() for ds in datasets])
    if pitch is None and scale is None:
        pitch = dataset_pitch(datasets[0])
    return quantize([ds.coords for ds in datasets], pitch=pitch, scale=scale)


__all__ = ["Collisions", "PixelGrid", "quantize", "median_nn_distance", "dataset_pitch", "dataset_grid", "MODES"]
