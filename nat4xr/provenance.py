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

Arrays built of others (a :func:`nat4xr.concat` result) may carry a
selector instead (:func:`record_selector`): how to select from them through
their inputs.

Plain xarray selections of a recorded array (``ds.isel(...)``,
``ds.sel(...)``, one per axis in a row) are recognised by rebuilding them
from the labels and comparing dask names (:func:`placement`); the graph
itself is never read.

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

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "Placement",
    "placement",
    "record",
    "record_selection",
    "record_selector",
    "same_file",
    "selector",
]

#: Names remembered at most; the oldest are forgotten first (they then take the general path).
_LIMIT = 1024
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
    auto : bool
        True when nat4xr chose the chunks (``chunks="auto"``): selections of
        the array may then be chunked anew by their own size; False when the
        user chose them, and selections keep their boundaries.
    """

    _source: Callable[[], Any]
    _array: Callable[[], Any]
    variable: str
    dims: tuple[str, ...]
    positions: dict[str, np.ndarray]
    chunks: tuple[tuple[int, ...], ...]
    dtype: np.dtype
    _name: str = ""
    _again: Callable[[], Any] | None = None
    auto: bool = False

    @property
    def source(self) -> Any:
        """The file's handle, or None once nothing refers to it any more."""
        return self._source()

    @property
    def array(self) -> Any:
        """The dask array recorded, or None once it is gone or no longer holds those values.

        Assigning into a dask array (``var[...] = x``, ``da.data[...] = x``)
        changes that very object, and its name with it: an object whose name
        is no longer the recorded one holds other values.
        """
        array = self._array()
        if (array is None or getattr(array, "name", None) != self._name) and self._again:
            array = self._again()  # an array as opened, made again (see ``record``)
        if array is None or getattr(array, "name", None) != self._name:
            return None
        return array

    @property
    def name(self) -> str:
        """The dask name of the array."""
        return self._name

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
    again: Callable[[], Any] | None = None,
    auto: bool = False,
) -> None:
    """Record that the dask-backed ``var`` holds ``source``'s ``variable`` at ``positions``.

    Only the code that makes such an array (reading or selecting) may call
    this. Does nothing for an array without dask. A record holds only weak
    references (to the handle and the array), so it never keeps a file open,
    or locked against ``cache clear``, once no Dataset refers to it; a plain
    selection of an array is recognised while that array lives, or while
    ``again`` (for arrays as opened, or selected from the file) can make it
    anew from a live handle. ``auto`` as in :class:`Placement`.
    """
    name = _name(var)
    if name is None:
        return
    entry = Placement(
        _ref(source),
        _ref(var.data),
        variable,
        tuple(map(str, var.dims)),
        {str(d): np.asarray(positions[d], dtype=np.int64) for d in var.dims},
        tuple(map(tuple, var.chunks)),
        np.dtype(var.dtype),
        name,
        again,
        auto,
    )
    with _LOCK:
        _RECORDS[name] = entry
        _RECORDS.move_to_end(name)
        while len(_RECORDS) > _LIMIT:
            _RECORDS.popitem(last=False)


def same_file(a: Any, b: Any) -> bool:
    """True when two handles name one file: the same object, or equal path and identity.

    A file opened twice gives two handles, and dask arrays of one name from
    either (the name is a token of the path and the file's identity).
    """
    if a is None or b is None:
        return False
    if a is b:
        return True
    path = getattr(a, "path", None)
    return (
        path is not None
        and path == getattr(b, "path", None)
        and (getattr(a, "identity", None) == getattr(b, "identity", None))
    )


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
    hint: Any = None,
) -> None:
    """Record ``child = parent.isel(indexers)`` when ``parent``'s placement is known.

    ``indexers`` are positions (slices or integer arrays) along the parent's
    dims; ``hint`` as in :func:`placement`.
    """
    entry = placement(parent, hint)
    if entry is None or tuple(map(str, child.dims)) != entry.dims:
        return
    positions = {}
    for dim in entry.dims:
        key = indexers.get(dim)
        positions[dim] = entry.positions[dim] if key is None else entry.positions[dim][key]
    record(child, entry.source, entry.variable, positions, auto=entry.auto)


def placement(var: xr.Variable | xr.DataArray, hint: Any = None) -> Placement | None:
    """The placement of ``var``'s dask array, or None when its values are not a file's.

    Parameters
    ----------
    var : xarray.Variable or xarray.DataArray
        The data (a DataArray's coordinates let plain selections be recognised).
    hint : object, optional
        The file handle the data claim to come from (e.g. from the encoding):
        without it, only recorded names are looked up. It narrows the search
        for plain selections; recognition rests on dask names alone.
    """
    name = _name(var)
    entry = _lookup(name)
    if entry is None and name is not None and hint is not None and isinstance(var, xr.DataArray):
        entry = _rebuilt(var, hint)
    return entry if entry is not None and entry.dims == tuple(map(str, var.dims)) else None


def _rebuilt(var: xr.DataArray, hint: Any) -> Placement | None:
    """The placement of ``var`` when it is plain xarray selections of a recorded array.

    From the labels of ``var``, the selections that would give it are rebuilt
    from recorded arrays that are still alive (one ``isel`` over every axis,
    or one per axis in any order; integer arrays, or slices where the
    positions run in steps of one), and accepted only when dask names the
    rebuilt array as it named ``var``'s: then the values are the same, and
    their file positions are known, even when the labels are not the file's.
    """
    with _LOCK:
        entries = [e for e in reversed(_RECORDS.values()) if same_file(e.source, hint)]
    target = var.data.name
    dims = tuple(map(str, var.dims))
    tries = 0
    for entry in entries:
        array = entry.array
        source = entry.source
        if array is None or source is None or entry.dims != dims or tries == _TRIES:
            continue
        relative = _relative(var, entry, source)
        if relative is None:
            continue
        tries += 1
        parent = xr.Variable(dims, array)
        for indexers in _candidates(relative, entry):
            try:
                rebuilt = parent
                for step in indexers:
                    rebuilt = rebuilt.isel(step)
            except (IndexError, ValueError):
                continue
            if rebuilt.data.name == target:
                positions = {d: entry.positions[d][relative.get(d, slice(None))] for d in dims}
                record(var.variable, source, entry.variable, positions, auto=entry.auto)
                return _lookup(target)
    return None


#: Recorded arrays (holding all of the labels) tried, most recent first, per recognition.
_TRIES = 8


def _relative(var: xr.DataArray, entry: Placement, source: Any) -> dict[str, np.ndarray] | None:
    """Positions within ``entry``'s array of ``var``'s labels, along the axes that differ."""
    out = {}
    for dim in entry.dims:
        if dim not in var.coords:
            return None
        labels = np.asarray(var[dim].values)
        ids = _labels(source, dim, entry.positions[dim])
        if ids is None:
            return None
        index = pd.Index(ids)
        if not index.is_unique:
            return None
        pos = index.get_indexer(labels)
        if (pos < 0).any():
            return None
        if not np.array_equal(pos, np.arange(len(ids))):
            out[dim] = pos
    return out


def _labels(source: Any, dim: str, positions: np.ndarray) -> np.ndarray | None:
    """The file's labels at ``positions`` along ``dim`` (None when the file has none)."""
    if dim == "stim":
        axis = getattr(source, "stims", None)
    elif dim == "neuron":
        axis = getattr(source, "neurons", None)
    else:
        axis = getattr(source, "axes", {}).get(dim)
    return None if axis is None else np.asarray(axis)[positions]


def _candidates(relative: dict[str, np.ndarray], entry: Placement) -> list[list[dict[str, Any]]]:
    """Chains of ``isel`` steps that give the ``relative`` positions from ``entry``'s array.

    Along ``stim`` and ``neuron`` a selection may also have named every
    position (``ds.isel(neuron=all_of_them)``), which dask names differently
    from leaving the axis alone, so both are tried.
    """
    whole = [d for d in ("stim", "neuron") if d in entry.dims and d not in relative]
    out: list[list[dict[str, Any]]] = []
    for n_whole in range(len(whole) + 1):
        for named in itertools.combinations(whole, n_whole):
            arrays = {d: k.astype(np.int64) for d, k in relative.items()}
            arrays.update({d: np.arange(len(entry.positions[d])) for d in named})
            if not arrays:
                out.append([])
                continue
            slices = {d: _as_slice(k) for d, k in arrays.items()}
            for form in (arrays, slices):
                out.append([dict(form)])
                if len(form) > 1:
                    out += [[{d: form[d]} for d in order] for order in itertools.permutations(form)]
    return out


def _as_slice(k: np.ndarray) -> slice | np.ndarray:
    """A slice for positions that run in steps of one, else the positions."""
    if len(k) and np.array_equal(k, np.arange(k[0], k[0] + len(k))):
        return slice(int(k[0]), int(k[0]) + len(k))
    return k


#: How to select from dask arrays built of others (a ``concat`` result), by dask name.
_SELECTORS: dict[str, Callable[..., Any]] = {}


def record_selector(array: Any, selector: Callable[..., Any]) -> None:
    """Remember how to select from the dask ``array`` other than by indexing it.

    ``selector(var, indexers)`` gives ``var.isel(indexers)`` for a variable
    holding ``array`` (same values), or None to leave it to indexing. Only
    the code that makes ``array`` may call this. The selector is forgotten
    when ``array`` is collected: what it holds (the inputs, their files)
    lives no longer than the array does.
    """
    name = array.name
    with _LOCK:
        _SELECTORS[name] = selector
    weakref.finalize(array, _forget_selector, name, selector)


def _forget_selector(name: str, selector: Callable[..., Any]) -> None:
    with _LOCK:
        if _SELECTORS.get(name) is selector:
            del _SELECTORS[name]


def selector(var: xr.Variable | xr.DataArray) -> Callable[..., Any] | None:
    """The selector recorded for ``var``'s dask array (:func:`record_selector`), or None."""
    name = _name(var)
    if name is None:
        return None
    with _LOCK:
        return _SELECTORS.get(name)
