"""Progress bars for long work: one tqdm factory and a dask callback that drives it.

:func:`progress_bar` is what stdask code wraps loops in (tiles written, epochs trained);
:class:`TqdmCallback` shows the progress of a dask computation run by a local scheduler (threads or
synchronous). Work on a dask.distributed client shows ``distributed.progress`` instead; see
:func:`stdask.cluster.compute`, which picks the right one.

Both honour ``stdask.settings.progress``: with it ``False`` nothing is drawn.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dask.callbacks import Callback
from tqdm.auto import tqdm  # a widget in Jupyter (when ipywidgets is installed), text elsewhere

from stdask.settings import settings

__all__ = ["progress_bar", "TqdmCallback", "DELAY_S"]

#: Seconds a bar waits before it is drawn. Work that finishes sooner leaves no output, so quick
#: calls (small data, tests) stay quiet while long ones still report.
DELAY_S: float = 0.5


def progress_bar(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    **kwargs: Any,
) -> tqdm:
    """Return a tqdm progress bar that stays silent when it would tell the user nothing.

    Parameters
    ----------
    iterable
        Items to iterate over while counting, as with ``tqdm(iterable)``; ``None`` for a bar updated
        by hand (``bar.update(n)``).
    total
        Number of expected items; taken from ``len(iterable)`` when omitted and available.
    desc
        Label shown before the bar, e.g. ``"writing tiles"``.
    unit
        Name of one item (``"tile"``, ``"task"``, ``"epoch"``).
    **kwargs
        Passed to ``tqdm`` (e.g. ``leave=False``, ``position=1``, ``delay=0``).

    Returns
    -------
    tqdm.auto.tqdm
        Use it like any tqdm (iterate, ``update``, ``close``, or as a context manager). It is
        disabled (iterates, draws nothing) when ``stdask.settings.progress`` is ``False`` or when
        there is at most one item to count; it is drawn only once the work has lasted
        :data:`DELAY_S` seconds.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    disable = kwargs.pop("disable", False) or not settings.progress or (total is not None and total <= 1)
    kwargs.setdefault("delay", DELAY_S)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, **kwargs)


class TqdmCallback(Callback):
    """A dask scheduler callback that shows a tqdm bar counting finished tasks.

    Works with dask's local schedulers (``"threads"``, ``"sync"``, ``"processes"``); a
    dask.distributed client does not call these callbacks (use ``distributed.progress`` there).

    Parameters
    ----------
    desc
        Label of the bar.
    unit
        Name of one counted item; one item is one dask task.
    **tqdm_kwargs
        Passed to :func:`progress_bar`.

    Examples
    --------
    >>> import dask.array as da
    >>> with TqdmCallback(desc="sum"):
    ...     total = da.ones(1000, chunks=100).sum().compute(scheduler="threads")
    """

    def __init__(self, desc: str | None = None, unit: str = "task", **tqdm_kwargs: Any) -> None:
        super().__init__()
        self.desc = desc
        self.unit = unit
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: tqdm | None = None

    def _start_state(self, dsk: Mapping, state: dict[str, Any]) -> None:
        # The scheduler has sorted the graph into ready and waiting tasks; constants already
        # sit in state["cache"] and never run, so they are not counted.
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.bar = progress_bar(total=total, desc=self.desc, unit=self.unit, **self.tqdm_kwargs)

    def _posttask(self, key: Any, result: Any, dsk: Mapping, state: dict[str, Any], worker_id: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _finish(self, dsk: Mapping, state: dict[str, Any], errored: bool) -> None:
        if self.bar is not None:
            self.bar.close()  # on error the bar stays where the work stopped
            self.bar = None
