"""Maps of one per-cell value over the tissue, fast at any number of cells.

Up to ``max_scatter`` cells (default 50,000) are drawn as one rasterised scatter. Above that the cells are
binned with numpy onto the pixel grid of the axes (the mean of a numeric value per pixel, or its max/min;
the most frequent category per pixel), empty pixels within the cell radius take the value of the nearest
filled pixel (so sparse cells do not leave holes), and the grid is drawn as a single image: 10^6 cells
cost a few numpy passes and one ``imshow``, never one marker per cell.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .plotdata import STLEARN_RESULTS, MissingResultError, PlotData, as_plotdata, palette
from .figures import finish, new_figure

#: above this many cells, ``spatial`` bins to a pixel grid instead of drawing markers
MAX_SCATTER = 50_000
_AX_RECT = (0.08, 0.08, 0.66, 0.84)  # main axes [left, bottom, width, height] in figure fractions
_CB_RECT = (0.80, 0.25, 0.025, 0.5)


def _values(pdata: PlotData | None, n: int, color, use_result: str, layer: str | None):
    """(values, kind, name): kind ``'categorical'`` (a pd.Categorical) or ``'numeric'`` (float64 array)."""
    if color is None:
        return np.zeros(n), "none", ""
    if isinstance(color, str):
        if pdata is None:
            raise TypeError("color must be an array of values when data is a coordinate array")
        if color in pdata.obs.columns:
            col = pdata.obs[color]
            if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool \
                    or pd.api.types.is_string_dtype(col.dtype):
                return pdata.labels(color), "categorical", color
            return col.to_numpy(dtype=np.float64), "numeric", color
        if pdata.has_uns("lr_summary") and color in set(pdata.lr_summary().index):
            return pdata.lr_values(color, use_result), "numeric", f"{color}: {use_result}"
        if color in set(pdata.var_names):
            return pdata.gene_values(color, layer), "numeric", color
        raise MissingResultError(f"color {color!r} is neither an obs column, an LR of lr_summary nor a gene "
                                 f"(obs columns: {list(pdata.obs.columns)})")
    vals = color.array if isinstance(color, pd.Series) else color
    if isinstance(vals, pd.Categorical) or getattr(vals, "dtype", None) is not None and (
            isinstance(vals.dtype, pd.CategoricalDtype) or np.asarray(vals).dtype.kind in "OUSb"):
        vals = vals if isinstance(vals, pd.Categorical) else pd.Categorical(np.asarray(vals).astype(str))
        if len(vals) != n:
            raise ValueError(f"color has {len(vals)} values; there are {n} cells")
        return vals, "categorical", ""
    vals = np.asarray(vals, dtype=np.float64).ravel()
    if len(vals) != n:
        raise ValueError(f"color has {len(vals)} values; there are {n} cells")
    return vals, "numeric", ""


def _load_image(image, pdata: PlotData | None):
    if image is None or image is False:
        return None
    if image is True:
        if pdata is None or pdata.kind != "anndata":
            raise ValueError("image=True reads uns['spatial'][<library>]['images'] of an AnnData; pass an array "
                             "or a path")
        lib = next(iter(pdata.data.uns["spatial"].values()))
        q = lib.get("use_quality", "hires")
        imgs = lib.get("images", {})
        if q not in imgs:
            raise MissingResultError(f"uns['spatial'] has no {q!r} image")
        return np.asarray(imgs[q])
    if isinstance(image, (str, Path)):
        import matplotlib.image as mpimg

        return np.asarray(mpimg.imread(str(image)))
    return np.asarray(image)


def _grid(xy: np.ndarray, x0: float, y0: float, px: float, nx: int, ny: int) -> np.ndarray:
    ix = np.clip(((xy[:, 0] - x0) / px).astype(np.int64), 0, nx - 1)
    iy = np.clip(((xy[:, 1] - y0) / px).astype(np.int64), 0, ny - 1)
    return iy * nx + ix


def _spread(grid: np.ndarray, filled: np.ndarray, radius: float) -> None:
    """Give empty pixels within ``radius`` pixels of a filled one that pixel's value (in place)."""
    if radius < 0.5 or filled.all() or not filled.any():
        return
    from scipy.ndimage import distance_transform_edt

    dist, (iy, ix) = distance_transform_edt(~filled, return_indices=True)
    fill = ~filled & (dist <= radius)
    grid[fill] = grid[iy[fill], ix[fill]]
    filled |= fill


def rasterize(xy: np.ndarray, values, kind: str, *, extent: tuple[float, float, float, float], shape: tuple[int, int],
              agg: str = "mean", radius_px: float = 0.0) -> np.ndarray:
    """Bin cells onto a pixel grid.

    Parameters
    ----------
    xy
        (n, 2) float64 coordinates.
    values
        (n,) float64 (NaN = no value) for ``kind='numeric'``; int codes (-1 = missing) for ``'categorical'``.
    extent
        (x0, y0, px, _) grid origin and pixel side in the units of ``xy`` (the 4th entry is unused).
    shape
        (ny, nx) pixels; row 0 holds the smallest y.
    agg
        Numeric: ``'mean'``, ``'max'`` or ``'min'`` per pixel. Categorical: always the most frequent code
        (ties: the smallest code).
    radius_px
        Empty pixels within this many pixels of a filled pixel take its value.

    Returns
    -------
    (ny, nx) float64 grid (NaN = empty) or int64 codes (-1 = empty).
    """
    x0, y0, px, _ = extent
    ny, nx = shape
    p = _grid(xy, x0, y0, px, nx, ny)
    npix = nx * ny
    if kind == "categorical":
        codes = np.asarray(values, dtype=np.int64)
        ok = codes >= 0
        k = int(codes.max()) + 1 if ok.any() else 1
        uk, cnt = np.unique(p[ok] * k + codes[ok], return_counts=True)
        pix, code = uk // k, uk % k
        order = np.lexsort((-cnt, pix))
        first = np.ones(len(order), bool)
        first[1:] = pix[order][1:] != pix[order][:-1]
        out = np.full(npix, -1, np.int64)
        out[pix[order][first]] = code[order][first]
        out = out.reshape(ny, nx)
        filled = out >= 0
    else:
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        p, v = p[ok], v[ok]
        out = np.full(npix, np.nan)
        if agg == "mean":
            s = np.bincount(p, weights=v, minlength=npix)
            c = np.bincount(p, minlength=npix)
            nz = c > 0
            out[nz] = s[nz] / c[nz]
        elif agg in ("max", "min"):
            order = np.lexsort((v if agg == "max" else -v, p))
            ps = p[order]
            last = np.ones(len(ps), bool)
            last[:-1] = ps[1:] != ps[:-1]
            out[ps[last]] = v[order][last]
        else:
            raise ValueError(f"agg must be 'mean', 'max' or 'min', got {agg!r}")
        out = out.reshape(ny, nx)
        filled = np.isfinite(out)
    _spread(out, filled, radius_px)
    return out


def spatial(data, color=None, *, use_result: str = "lr_sig_scores", layer: str | None = None, image=None,
            extent: tuple[float, float, float, float] | None = None, image_alpha: float = 1.0,
            cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None, colors=None,
            agg: str = "mean", size: float | None = None, max_scatter: int = MAX_SCATTER, raster: bool | None = None,
            alpha: float = 1.0, na_color=(0.85, 0.85, 0.85, 1.0), invert_y: bool = True, title: str | None = None,
            colorbar_label: str | None = None,
            figsize: tuple[float, float] = (7, 6), dpi: float | None = None, save=None, show: bool = False):
    """Colour every cell by one value over the tissue.

    Parameters
    ----------
    data
        AnnData, :class:`~stdask.dataset.SpatialDataset`, or an (n, 2) array of x, y coordinates (then
        ``color`` must be an array).
    color
        What to show: an ``obs`` column (categorical -> legend; numeric -> colour bar), an LR name of
        ``lr_summary`` (its ``use_result`` column), a gene name (its expression; for a dataset only that
        column is kept from each tile), or an array of n values. ``None`` draws the cells in one colour.
    use_result
        For an LR: ``'lr_scores'``, ``'p_vals'``, ``'p_adjs'``, ``'-log10(p_adjs)'`` or ``'lr_sig_scores'``.
    layer
        Matrix for gene values (default X).
    image
        Background image: an (H, W[, C]) array, a path to a png/jpg, or ``True`` for an AnnData's
        ``uns['spatial'][<library>]['images'][<use_quality>]``.
    extent
        (x0, x1, y0, y1) in the coordinates' units: the image's left and right edges and its first and last
        rows' outer edges. Default (0, W, 0, H): one image pixel per unit (stLearn's scaled-image pixels).
    colors
        Category colours (a list in category order, or a dict); default ``uns['<label>_colors']`` or a palette.
    agg
        Per-pixel aggregation of a numeric value when rasterising: ``'mean'``, ``'max'`` or ``'min'``.
    size
        Cell diameter in coordinate units (default: the spot diameter when known, else the typical spacing).
    max_scatter
        Up to this many cells a rasterised scatter is drawn; above it a pixel grid (one image artist).
    raster
        Force (``True``) or forbid (``False``) the pixel grid.
    invert_y
        y grows downwards (image convention; stLearn's ``imagerow``).
    save
        Path prefix: writes ``<prefix>.png`` and ``<prefix>.pdf``.
    show
        Show the figure (never blocks).

    Returns
    -------
    matplotlib Figure; ``fig.stdask_data`` holds ``mode`` ('scatter' or 'raster'), ``values`` kind and, for
    a raster, the pixel side in coordinate units.
    """
    pdata, xy, unit = _coordinates(data)
    n = len(xy)
    values, kind, name = _values(pdata, n, color, use_result, layer)
    img = _load_image(image, pdata)

    fig = new_figure(figsize, dpi, show)
    ax = fig.add_axes(_AX_RECT)
    frame = _frame(xy, size, pdata, fig)
    if img is not None:
        x0, x1, y0, y1 = extent if extent is not None else (0.0, float(img.shape[1]), 0.0, float(img.shape[0]))
        ax.imshow(img, extent=(x0, x1, y1, y0), origin="upper", alpha=image_alpha, zorder=0,
                  interpolation="bilinear")

    mode = "raster" if (raster if raster is not None else n > max_scatter) else "scatter"
    info = {"mode": mode, "kind": kind, "n": n, "name": name}
    pal = None
    if kind == "categorical":
        pal = _category_colours(values, color, colors, pdata, na_color)
        info["categories"] = pal.cats
    norm = _numeric_norm(values, vmin, vmax) if kind == "numeric" else None
    if mode == "scatter":
        mappable = _draw_scatter(ax, fig, xy, values, kind, frame, pal, norm, cmap, alpha, na_color)
    else:
        mappable, grid_shape = _draw_raster(ax, xy, values, kind, frame, pal, norm, cmap, alpha, agg)
        info.update(pixel=frame.px, grid_shape=grid_shape)

    ax.set_xlim(frame.lo[0], frame.hi[0])
    ax.set_ylim((frame.hi[1], frame.lo[1]) if invert_y else (frame.lo[1], frame.hi[1]))
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"x ({unit})" if unit else "x")
    ax.set_ylabel(f"y ({unit})" if unit else "y")
    ax.tick_params(labelsize=7)
    if kind == "categorical":
        _legend(ax, pal, color)
    elif kind == "numeric":
        if colorbar_label is None:
            colorbar_label = (use_result if name == f"{color}: {use_result}" else color) if isinstance(color, str) \
                else ""
        _colorbar(fig, mappable, norm, cmap, colorbar_label)
    ax.set_title(title if title is not None else name, fontsize=10)
    fig.stdask_data = info
    return finish(fig, save, show)


def _coordinates(data) -> tuple[PlotData | None, np.ndarray, str]:
    """(plot data or ``None`` for a coordinate array, (n, 2) float64 x, y, unit)."""
    if isinstance(data, np.ndarray):
        xy = np.asarray(data, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise ValueError(f"coordinates must be (n, 2), got shape {xy.shape}")
        return None, xy[:, :2], ""
    pdata = as_plotdata(data)
    return pdata, pdata.coords, pdata.unit


class _Frame(NamedTuple):
    """What the main axes show: padded data limits and their scale on screen."""

    finite: np.ndarray  # (n,) bool: cells with finite coordinates
    lo: np.ndarray  # (2,) lower x, y limits, data units (padded by one cell diameter)
    hi: np.ndarray  # (2,) upper limits
    diam: float  # cell diameter, data units
    W: float  # main axes width, screen pixels
    H: float  # main axes height, screen pixels
    px: float  # data units per screen pixel (equal aspect)

    @property
    def span(self) -> np.ndarray:
        return self.hi - self.lo


def _frame(xy: np.ndarray, size: float | None, pdata: PlotData | None, fig) -> _Frame:
    """The :class:`_Frame` of cells ``xy`` of diameter ``size`` (default: the spot diameter when known,
    else the typical spacing) in the main axes of ``fig``."""
    finite = np.isfinite(xy).all(axis=1)
    if not finite.any():
        raise ValueError("no cell has finite coordinates")
    lo, hi = xy[finite].min(axis=0), xy[finite].max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    diam = size
    if diam is None:
        diam = pdata.spot_diameter if pdata is not None else None
    if diam is None or not np.isfinite(diam) or diam <= 0:
        diam = float(np.sqrt(span[0] * span[1] / max(1, finite.sum())))
    pad = diam
    lo, hi = lo - pad, hi + pad
    span = hi - lo
    W = _AX_RECT[2] * fig.get_figwidth() * fig.dpi
    H = _AX_RECT[3] * fig.get_figheight() * fig.dpi
    return _Frame(finite, lo, hi, diam, W, H, max(span[0] / W, span[1] / H))


class _Palette(NamedTuple):
    """Colours of a categorical value."""

    cats: list  # category names
    cols: list  # one RGBA colour per category
    lut: np.ndarray  # (n_cats + 1, 4) float64 colours, the last one for missing values
    codes: np.ndarray  # (n,) int64 category of each cell (-1: missing)


def _category_colours(values: pd.Categorical, color, colors, pdata: PlotData | None, na_color) -> _Palette:
    """The :class:`_Palette` of ``values``: ``colors`` (a list in category order or a dict), else the
    dataset's ``uns['<label>_colors']`` or a palette."""
    import matplotlib

    cats = list(values.categories)
    if colors is None:
        cols = pdata.label_colors(color if isinstance(color, str) else None, cats) if pdata is not None \
            else palette(len(cats))
    elif isinstance(colors, dict):
        cols = [matplotlib.colors.to_rgba(colors.get(c, na_color)) for c in cats]
    else:
        cols = [matplotlib.colors.to_rgba(c) for c in colors]
    lut = np.asarray(cols + [matplotlib.colors.to_rgba(na_color)], dtype=np.float64)
    return _Palette(cats, cols, lut, np.asarray(values.codes, dtype=np.int64))


def _numeric_norm(values: np.ndarray, vmin: float | None, vmax: float | None):
    """Colour normalisation from ``vmin`` / ``vmax``, else the finite values' range (never empty)."""
    import matplotlib

    fin = values[np.isfinite(values)]
    lo_v = vmin if vmin is not None else (float(fin.min()) if len(fin) else 0.0)
    hi_v = vmax if vmax is not None else (float(fin.max()) if len(fin) else 1.0)
    if hi_v <= lo_v:
        hi_v = lo_v + 1.0
    return matplotlib.colors.Normalize(lo_v, hi_v)


def _draw_scatter(ax, fig, xy: np.ndarray, values, kind: str, frame: _Frame, pal: _Palette | None, norm, cmap: str,
                  alpha: float, na_color):
    """One rasterised marker per cell, sized to the cell diameter; returns the numeric mappable (or ``None``)."""
    span, W, H = frame.span, frame.W, frame.H
    pts = (W / span[0] if span[0] / W >= span[1] / H else H / span[1]) * 72.0 / fig.dpi  # points per unit
    s = float(np.clip((frame.diam * pts) ** 2, 0.05, 400.0))
    if kind == "categorical":
        c = pal.lut[np.where(pal.codes >= 0, pal.codes, len(pal.lut) - 1)]
        ax.scatter(xy[:, 0], xy[:, 1], c=c, s=s, marker="o", linewidths=0, rasterized=True, alpha=alpha, zorder=1)
    elif kind == "numeric":
        nan = ~np.isfinite(values)
        if nan.any():
            ax.scatter(xy[nan, 0], xy[nan, 1], color=na_color, s=s, linewidths=0, rasterized=True, zorder=1)
        order = np.argsort(values[~nan], kind="stable")  # high values on top
        return ax.scatter(xy[~nan][order, 0], xy[~nan][order, 1], c=values[~nan][order], cmap=cmap,
                          norm=norm, s=s, linewidths=0, rasterized=True, alpha=alpha, zorder=1)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], color="0.3", s=s, linewidths=0, rasterized=True, alpha=alpha, zorder=1)
    return None


def _draw_raster(ax, xy: np.ndarray, values, kind: str, frame: _Frame, pal: _Palette | None, norm, cmap: str,
                 alpha: float, agg: str):
    """The cells binned to screen pixels and drawn as one image; returns (numeric mappable or ``None``,
    (ny, nx) grid shape)."""
    lo, span, px, finite = frame.lo, frame.span, frame.px, frame.finite
    nx, ny = max(1, int(np.ceil(span[0] / px))), max(1, int(np.ceil(span[1] / px)))
    radius = float(np.clip(0.5 * frame.diam / px, 1.0, 8.0))  # >= 1 px: no pinholes between dense cells
    ext = (lo[0], lo[1], px, px)
    shown = (lo[0], lo[0] + nx * px, lo[1] + ny * px, lo[1])
    xyf = xy[finite]
    mappable = None
    if kind == "categorical":
        g = rasterize(xyf, pal.codes[finite], "categorical", extent=ext, shape=(ny, nx), radius_px=radius)
        rgba = pal.lut[np.where(g >= 0, g, len(pal.lut) - 1)]
        rgba[..., 3] = np.where(g >= 0, alpha * pal.lut[np.maximum(g, 0), 3], 0.0)
        ax.imshow(rgba, extent=shown, origin="upper", interpolation="nearest", zorder=1)
    else:
        vals = values[finite] if kind == "numeric" else np.zeros(int(finite.sum()))
        g = rasterize(xyf, vals, "numeric", extent=ext, shape=(ny, nx), agg=agg, radius_px=radius)
        if kind == "numeric":
            mappable = ax.imshow(g, extent=shown, origin="upper", interpolation="nearest", cmap=cmap, norm=norm,
                                 alpha=alpha, zorder=1)
        else:
            grey = np.zeros(g.shape + (4,))
            grey[..., :3] = 0.3
            grey[..., 3] = np.where(np.isfinite(g), alpha, 0.0)
            ax.imshow(grey, extent=shown, origin="upper", interpolation="nearest", zorder=1)
    return mappable, (ny, nx)


def _legend(ax, pal: _Palette, color) -> None:
    """Category legend right of the main axes (25 entries per column)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=pal.cols[i], label=str(c)) for i, c in enumerate(pal.cats)]
    ncol = max(1, int(np.ceil(len(pal.cats) / 25)))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
              ncol=ncol, markerscale=1.2, title=color if isinstance(color, str) else None, title_fontsize=8)


def _colorbar(fig, mappable, norm, cmap: str, label: str) -> None:
    """Colour bar of a numeric value (of ``norm`` and ``cmap`` when nothing drawn carries them)."""
    import matplotlib

    if mappable is None:
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    cax = fig.add_axes(_CB_RECT)
    cb = fig.colorbar(mappable, cax=cax)
    cb.ax.tick_params(labelsize=7)
    cb.set_label(label, fontsize=8)


def lr_result_plot(data, lr: str, use_result: str = "lr_sig_scores", *, cmap: str = "Spectral_r", agg: str = "max",
                   title: str | None = None, **kwargs):
    """stLearn's ``lr_result_plot``: one LR's per-cell result over the tissue.

    Parameters
    ----------
    data
        AnnData or SpatialDataset with :func:`stdask.tl.cci.run` results.
    lr
        An LR of ``lr_summary`` (``"L_R"``).
    use_result
        ``'lr_scores'``, ``'p_vals'``, ``'p_adjs'``, ``'-log10(p_adjs)'`` or ``'lr_sig_scores'`` (default).
    agg
        Per-pixel aggregation when rasterised (default ``'max'``, so isolated hotspot cells stay visible).
    **kwargs
        As for :func:`spatial` (``image``, ``extent``, ``save``, ``show``, ...).

    Returns
    -------
    matplotlib Figure.
    """
    if use_result not in STLEARN_RESULTS:
        raise ValueError(f"use_result must be one of {STLEARN_RESULTS}, got {use_result!r}")
    pdata = as_plotdata(data)
    values = pdata.lr_values(lr, use_result)
    kwargs.setdefault("colorbar_label", use_result)
    return spatial(pdata, values, cmap=cmap, agg=agg, title=title if title is not None else f"{lr}: {use_result}",
                   **kwargs)
