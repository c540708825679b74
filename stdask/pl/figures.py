"""Figure creation, saving (png + pdf) and showing for every ``stdask.pl`` function.

Figures are plain :class:`matplotlib.figure.Figure` objects, not registered with pyplot unless ``show=True``,
so a loop that draws hundreds of plots (the report) holds no figures after it returns and never blocks.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when the first figure is drawn, not with stdask
    from matplotlib.figure import Figure

#: default resolution of saved pngs (pixel size = figsize x dpi)
DPI = 100


def new_figure(figsize: tuple[float, float], dpi: float | None = None, show: bool = False, **kwargs) -> "Figure":
    """A figure of ``figsize`` inches at ``dpi``; registered with pyplot only when it is to be shown."""
    from matplotlib.figure import Figure

    dpi = DPI if dpi is None else dpi
    if show:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, dpi=dpi, **kwargs)
    return Figure(figsize=figsize, dpi=dpi, **kwargs)


def save_figure(fig: "Figure", save: str | Path | None) -> list[Path]:
    """Write ``fig`` as ``<prefix>.png`` and ``<prefix>.pdf``.

    ``save`` is a path prefix; a ``.png`` or ``.pdf`` suffix is dropped (``"out/map.png"`` writes
    ``out/map.png`` and ``out/map.pdf``). The png is ``figsize x dpi`` pixels (no tight bounding box).
    """
    if save is None or save is False:
        return []
    prefix = Path(save)
    if prefix.suffix.lower() in (".png", ".pdf"):
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    if isinstance(fig.get_layout_engine(), PlaceHolderLayoutEngine):
        # left behind by a finished fig.tight_layout(); it would make every savefig draw the figure twice
        fig.set_layout_engine(None)
    out = []
    for ext in (".png", ".pdf"):
        path = prefix.parent / (prefix.name + ext)
        fig.savefig(path, dpi=fig.dpi, facecolor=fig.get_facecolor())
        out.append(path)
    return out


def finish(fig: "Figure", save=None, show: bool = False) -> "Figure":
    """Save (when asked), show without blocking (when asked) and return the figure."""
    save_figure(fig, save)
    if show:
        import matplotlib.pyplot as plt

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-interactive.*")
            warnings.filterwarnings("ignore", message=".*cannot be shown.*")
            plt.show(block=False)
    return fig
