"""Which dask arrays hold exactly a cache file's values, and where in the file they lie.

A variable's encoding cannot tell: xarray keeps it through ``copy(data=...)``,
``shift``, ``roll``, arithmetic and more, so a file handle found there may
describe values that are long gone. A dask array's name can: dask names each
array by a token of the computation that makes it, so two arrays of one name
hold the same values. nat4xr records the name of every dask array it makes
by reading a cache file (:func:`nat4xr.cachefile.open_cache`) or by selecting
from such an array (:func:`nat4xr.selection.select`), with the positions in
the file of its entries along each dimension (a :class:`Placement`). Anything
computed from those values, or the same values under other labels, has a
name that was never recorded, and readers take the general path.

A single plain xarray selection (``ds.isel(...)``, ``ds.sel(...)``) of a
recorded array is recognised too: :func:`placement` rebuilds that selection
from the current labels and accepts it only when dask gives the rebuilt array
the same name.

Examples
--------
>>> import numpy as np, xarray as xr, dask.array as da
>>> var = xr.Variable(("stim", "time"), da.zeros((4, 3), chunks=2, name="f"))
>>> record(var, "file", "x", {"stim": np.arange(4), "time": np.arange(3)})
>>> sub = xr.Variable(("stim", "time"), var.data[[2, 0]])
>>> record_selection(var, sub, {"stim": np.array([2, 0])})
>>> placement(sub).positions["stim"].tolist()
[2, 0]
>>> placement(xr.Variable(var.dims, var.data * 2)) is None
True
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["Placement", "placement", "record", "record_selection"]

#: Names remembered at most; the oldest are forgotten first (they then take the general path).
_LIMIT = 4096
_RECORDS: OrderedDict[str, Placement] = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class Placement:
    """Where the entries of one dask array lie in a file's variable.

    Attributes
    ----------
    variable : str
        The file's variable the values are from.
    dims : tuple of str
        The array's dims (the file's order).
    positions : dict
        For each dim, the file positions of the array's entries along it.
    chunks : tuple
        The array's dask chunks (to rebuild selections from it).
    dtype : numpy.dtype
    """

    _source: Callable[[], Any]
    variable: str
    dims: tuple[str, ...]
    positions: dict[str, np.ndarray]
    chunks: tuple[tuple[int, ...], ...]
    dtype: np.dtype

    @property
    def source(self) -> Any:
        """The file's handle, or None once nothing refers to it any more."""
        return self._source()

    def whole(self, dim: str, n: int) -> bool:
        """True when the entries along ``dim`` are the file's first ``n``, in order."""
        return np.array_equal(self.positions[dim], np.arange(n))


def _name(var: xr.Variable | xr.DataArray) -> str | None:
    if var.chunks is None:
        return None
    return getattr(var.data, "name", None)


def _ref(source: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(source)
    except TypeError:  # e.g. a plain string in the doctests: held strongly
        return lambda: source


def record(
    var: xr.Variable | xr.DataArray,
    source: Any,
    variable: str,
    positions: Mapping[Hashable, np.ndarray],
) -> None:
    """Record that the dask-backed ``var`` holds ``source``'s ``variable`` at ``positions``.

    Only the code that makes such an array (reading or selecting) may call
    this. Does nothing for an array without dask.
    """
    name = _name(var)
    if name is None:
        return
    entry = Placement(
        _ref(source),
        variable,
        tuple(map(str, var.dims)),
        {str(d): np.asarray(positions[d], dtype=np.int64) for d in var.dims},
        tuple(map(tuple, var.chunks)),
        np.dtype(var.dtype),
    )
    with _LOCK:
        _RECORDS[name] = entry
        _RECORDS.move_to_end(name)
        while len(_RECORDS) > _LIMIT:
            _RECORDS.popitem(last=False)


def _lookup(name: str | None) -> Placement | None:
    if name is None:
        return None
    with _LOCK:
        entry = _RECORDS.get(name)
    if entry is None or entry.source is None:
        return None
    return entry


def record_selection(
    parent: xr.Variable | xr.DataArray,
    child: xr.Variable | xr.DataArray,
    indexers: Mapping[Hashable, slice | np.ndarray],
) -> None:
    """Record ``child = parent.isel(indexers)`` when ``parent``'s placement is known.

    ``indexers`` are positions (slices or integer arrays) along the parent's dims.
    """
    entry = _lookup(_name(parent))
    if entry is None or tuple(map(str, child.dims)) != entry.dims:
        return
    positions = {}
    for dim in entry.dims:
        key = indexers.get(dim)
        positions[dim] = entry.positions[dim] if key is None else entry.positions[dim][key]
    record(child, entry.source, entry.variable, positions)


def placement(
    var: xr.Variable | xr.DataArray,
    labels: Mapping[str, np.ndarray] | None = None,
    locate: Callable[[Any, str, np.ndarray], np.ndarray | None] | None = None,
) -> Placement | None:
    """The placement of ``var``'s dask array, or None when its values are not a file's.

    Parameters
    ----------
    var : xarray.Variable or xarray.DataArray
    labels : dict, optional
        ``var``'s labels along its dims; with ``locate``, lets a plain xarray
        selection of a recorded array be recognised (see the module's notes).
    locate : callable, optional
        ``locate(source, dim, labels)``: the file positions of ``labels``
        along ``dim`` (None when some are not in the file).
    """
    name = _name(var)
    entry = _lookup(name)
    if entry is not None or labels is None or locate is None:
        return entry if entry is not None and entry.dims == tuple(map(str, var.dims)) else None
    return _rebuilt(var, labels, locate)


def _rebuilt(
    var: xr.Variable | xr.DataArray,
    labels: Mapping[str, np.ndarray],
    locate: Callable[[Any, str, np.ndarray], np.ndarray | None],
) -> Placement | None:
    """The placement of ``var`` when it is one xarray selection of a recorded ancestor."""
    import dask.array as da

    graph = var.data.__dask_graph__()
    with _LOCK:
        ancestors = [(n, _RECORDS[n]) for n in graph.layers if n in _RECORDS]
    dims = tuple(map(str, var.dims))
    for name, entry in ancestors:
        source = entry.source
        if source is None or entry.dims != dims:
            continue
        relative: dict[str, np.ndarray] = {}
        for dim in dims:
            pos = locate(source, dim, np.asarray(labels[dim]))
            if pos is None:
                break
            within = pd.Index(entry.positions[dim]).get_indexer(pos)
            if (within < 0).any():
                break
            relative[dim] = within
        else:
            ancestor = xr.Variable(dims, da.Array(graph, name, entry.chunks, dtype=entry.dtype))
            for form in (_as_arrays, _as_slices):
                indexers = form(relative, entry)
                if ancestor.isel(indexers).data.name == var.data.name:
                    positions = {d: entry.positions[d][relative[d]] for d in dims}
                    record(var, source, entry.variable, positions)
                    return _lookup(var.data.name)
    return None


def _as_arrays(relative: dict[str, np.ndarray], entry: Placement) -> dict[str, Any]:
    """Integer arrays along the dims that change (as ``ds.sel`` and ``ds.isel(list)`` pass)."""
    sizes = {d: len(p) for d, p in entry.positions.items()}
    return {d: k for d, k in relative.items() if not np.array_equal(k, np.arange(sizes[d]))}


def _as_slices(relative: dict[str, np.ndarray], entry: Placement) -> dict[str, Any]:
    """Slices where the positions are a range (as ``ds.isel(dim=slice(...))`` passes)."""
    out: dict[str, Any] = {}
    for dim, k in _as_arrays(relative, entry).items():
        if len(k) and np.array_equal(k, np.arange(k[0], k[0] + len(k))):
            out[dim] = slice(int(k[0]), int(k[0]) + len(k))
        else:
            out[dim] = k
    return out
