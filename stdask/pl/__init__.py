"""Plots (matplotlib): stLearn's CCI plots and spatial maps of any per-cell value.

Every function takes an AnnData (stLearn layout) or a :class:`~stdask.dataset.SpatialDataset` first,
returns the matplotlib Figure (not registered with pyplot unless ``show=True``), writes ``<save>.png``
and ``<save>.pdf`` when ``save=`` is given, and keeps the numbers it drew in ``fig.stdask_data``.
"""
from .plotdata import MissingResultError, PlotData
from .figures import save_figure
from .cci import lr_diagnostics, lr_n_spots, lr_summary
from .cci_network import cci_check, cci_map, ccinet_plot, lr_cci_map, lr_chord_plot
from .spatial import lr_result_plot, spatial

__all__ = ["lr_diagnostics", "lr_summary", "lr_n_spots", "ccinet_plot", "lr_chord_plot", "lr_cci_map", "cci_map",
           "cci_check", "lr_result_plot", "spatial", "PlotData", "MissingResultError", "save_figure"]
