"""The one write convention of stdask's analyses, as scanpy and stLearn mutate ``adata``.

Every function that takes a dataset first and records results with ``ds.set_result`` is decorated with
:func:`writes_results`:

- by default its results go into that dataset (pending until ``ds.write()``) and its result object is returned
  (``None`` for the pure transforms of ``pp``, as in scanpy);
- ``copy=True`` runs it on :meth:`~stdask.dataset.SpatialDataset.copy` of the dataset (the same store, a copy of
  its pending results), so the caller's dataset is left untouched; the result object is returned, or the copy
  itself where the function returns nothing or is a transform of ``pp`` (scanpy's ``copy=True``).

Keys follow stLearn where stLearn has them (``lr_summary``, ``lr_scores``, ``per_lr_cci_<label>``, ...) and are
the user's choice through ``key_added=`` otherwise; the README's output table lists them.
"""
from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _detached(data: Any) -> Any:
    """A copy of a dataset (or of each dataset of a sequence) whose pending results are its own."""
    if isinstance(data, (list, tuple)):
        return type(data)(_detached(d) for d in data)
    if not hasattr(data, "copy") or not hasattr(data, "set_result"):
        raise TypeError(f"copy=True needs a SpatialDataset (or a list of them), got {type(data).__name__}")
    return data.copy()


def writes_results(func: F | None = None, *, returns_dataset: bool = False):
    """Give an analysis ``func(ds, ...)`` the package's write convention (module docstring).

    ``func`` records its results with ``ds.set_result``; it must not have a ``copy`` parameter of its own. The
    wrapper adds the keyword-only ``copy: bool = False`` and accepts the retired ``write=`` switch with a
    ``FutureWarning`` (``write=True`` is now the default; ``write=False`` means ``copy=True``).

    ``@writes_results(returns_dataset=True)`` marks a transform whose results live in the dataset (``pp``'s
    layers, embeddings and graphs): with ``copy=True`` it returns the copied dataset, as scanpy returns the
    copied AnnData.
    """
    if func is None:
        return functools.partial(writes_results, returns_dataset=returns_dataset)
    sig = inspect.signature(func)
    if "copy" in sig.parameters:
        raise TypeError(f"{func.__qualname__} has its own copy parameter; writes_results adds it")

    @functools.wraps(func)
    def wrapper(data, *args, copy: bool = False, **kwargs):
        if "write" in kwargs:
            write = kwargs.pop("write")
            warnings.warn(f"{func.__name__}(write=...) is retired: results go into the dataset by default; pass "
                          "copy=True to leave the dataset untouched", FutureWarning, stacklevel=2)
            copy = copy or not write
        target = _detached(data) if copy else data
        out = func(target, *args, **kwargs)
        return target if (copy and (returns_dataset or out is None)) else out

    params = list(sig.parameters.values())
    extra = inspect.Parameter("copy", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        params.insert(len(params) - 1, extra)
    else:
        params.append(extra)
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.writes_results = True  # type: ignore[attr-defined]
    return wrapper


__all__ = ["writes_results"]
