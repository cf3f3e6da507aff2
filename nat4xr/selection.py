"""Selection on nat4xr Datasets: metadata tables, masks, and the bidirectional rule.

Everything here works from the small coordinates (ids, per-axis metadata and
the ``(stim, neuron)`` ``coverage``) and never reads ``response``; the new
Dataset comes from xarray's public indexing (:meth:`xarray.Dataset.isel`),
so a lazy ``response`` stays lazy. The ``.nat4`` accessor
(:class:`nat4xr.accessor.Nat4Accessor`) delegates its tables and selections
to these functions.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=5, seed=2)
>>> val = select_matching(ds, "stim", subset="val")
>>> val.sizes["stim"], ds.sizes["stim"]
(2, 8)
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import provenance
from .errors import Nat4Warning

__all__ = [
    "AXES",
    "aligned_mask",
    "axis_coords",
    "axis_table",
    "coverage_array",
    "filter_mask",
    "ids",
    "metadata_values",
    "prune",
    "repeats_held",
    "select",
    "select_matching",
    "with_data_coverage",
]

#: The two axes that selection works on; each one's rule prunes the other.
AXES = ("stim", "neuron")
_OTHER = {"stim": "neuron", "neuron": "stim"}
# Coordinates whose possible values are known beforehand: asking for one that
# this Dataset does not hold (val stims of an estimation-only Dataset) is an
# empty selection, not a typo.
_DOMAINS: dict[str, frozenset[str]] = {
    "subset": frozenset({"est", "val"}),
    "area": frozenset({"A1", "PEG"}),
}
# Backend encodings that describe the on-disk layout of the full array; once a
# selection has changed a dask variable's shape they are stale.
_STALE_ENCODING = ("chunksizes", "original_shape", "preferred_chunks", "contiguous")


# -- small helpers on coordinates ---------------------------------------------------------------


def metadata_values(var: xr.Variable | xr.DataArray | np.ndarray) -> np.ndarray:
    """In-memory values of a small (metadata) variable.

    Dask-backed metadata (e.g. after ``Dataset.chunk``) is computed with the
    synchronous scheduler: these arrays are tiny, and shipping them to a
    cluster would cost more than reading them here.

    Parameters
    ----------
    var : xarray.Variable, xarray.DataArray or array
        A coordinate such as ``subset`` or ``coverage``.

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2).chunk()
    >>> metadata_values(ds["subset"]).tolist()
    ['est', 'est', 'val']
    """
    data = getattr(var, "data", var)
    if hasattr(data, "dask"):
        data = data.compute(scheduler="sync")
    return np.asarray(data)


def axis_coords(ds: xr.Dataset, dim: str) -> list[Hashable]:
    """Names of the 1-D coordinates along ``dim`` (the id coordinate itself excluded).

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
    >>> axis_coords(ds, "stim")
    ['subset', 'n_repeats']
    """
    # iterate names, not ds.coords.items(): that builds a DataArray per coordinate
    variables = ds.variables
    return [n for n in ds.coords if n != dim and variables[n].dims == (dim,)]


def ids(ds: xr.Dataset, dim: str) -> np.ndarray:
    """The ids along ``dim`` (its coordinate's values, else positions).

    Raises
    ------
    ValueError
        When ``ds`` has no ``dim`` dimension.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
    >>> ids(ds, "neuron").tolist() == ds["neuron"].values.tolist()
    True
    """
    if dim not in ds.dims:
        raise ValueError(
            f"this Dataset has no {dim!r} dimension (dims: {list(ds.dims)}); "
            "the .nat4 accessor needs a nat4xr Dataset (see nat4xr.open_nat4)"
        )
    if dim in ds.variables:
        return metadata_values(ds.variables[dim])
    return np.arange(ds.sizes[dim])


def coverage_array(ds: xr.Dataset) -> np.ndarray:
    """The ``(stim, neuron)`` coverage as an in-memory bool array.

    Raises
    ------
    ValueError
        When ``ds`` has no ``coverage`` (or no ``response``), or its dims are
        not ``stim`` and ``neuron``.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2, p_missing=0.0)
    >>> coverage_array(ds).all()
    np.True_
    """
    if "coverage" not in ds.variables:
        need = "response" if "response" not in ds.variables else "coverage"
        raise ValueError(
            f"this Dataset has no {need!r} variable, which the .nat4 accessor needs; "
            "open one with nat4xr.open_nat4 or build one with nat4xr.make_dataset"
        )
    var = ds.variables["coverage"]
    if set(var.dims) != set(AXES):
        raise ValueError(f"coverage has dims {var.dims}, expected ('stim', 'neuron')")
    cov = metadata_values(var).astype(bool, copy=False)
    return cov.T if var.dims == ("neuron", "stim") else cov


def axis_table(ds: xr.Dataset, dim: str) -> pd.DataFrame:
    """Metadata of one axis as a DataFrame indexed by id (2-D coordinates excluded).

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3)
    >>> list(axis_table(ds, "stim").columns)
    ['subset', 'n_repeats']
    """
    index = ids(ds, dim)
    columns = {name: metadata_values(ds.variables[name]) for name in axis_coords(ds, dim)}
    return pd.DataFrame(columns, index=pd.Index(index, name=dim))


# -- masks from filters -------------------------------------------------------------------------


def aligned_mask(mask: Any, labels: Any, dim: str, what: str = "mask") -> np.ndarray:
    """A boolean mask over ``labels`` (the ids along ``dim``), aligned by label when it has them.

    The one rule for every argument that chooses stims or cells by a mask:

    - an :class:`xarray.DataArray` with a ``dim`` coordinate, or a
      :class:`pandas.Series`, is read by label: each of ``labels`` takes the
      mask's value at the same id, whatever the mask's order (ids the mask
      has beyond ``labels`` are ignored, so a mask made on a larger Dataset
      applies to any selection of it); an id of ``labels`` the mask lacks
      raises ``KeyError`` naming it;
    - anything without labels (a NumPy array, a list, a DataArray without a
      ``dim`` coordinate) is positional and must have one entry per label.

    Parameters
    ----------
    mask : DataArray, Series or array-like of bool
    labels : array-like
        The ids along ``dim``, in the object's order.
    dim : str
        The axis (``'stim'`` or ``'neuron'``).
    what : str
        Names the argument in errors.

    Returns
    -------
    numpy.ndarray
        Bool, one entry per label.

    Raises
    ------
    KeyError
        For ids of ``labels`` that the mask's labels lack.
    TypeError, ValueError
        For a mask that is not boolean, has duplicate labels, other dims, or
        (positional) the wrong length.

    Examples
    --------
    >>> import xarray as xr
    >>> m = xr.DataArray([True, False, True], coords={"neuron": ["c", "b", "a"]})
    >>> aligned_mask(m, np.array(["a", "b"]), "neuron").tolist()
    [True, False]
    >>> aligned_mask(np.array([False, True]), np.array(["a", "b"]), "neuron").tolist()
    [False, True]
    """
    labels = np.asarray(labels)
    keys: np.ndarray | None = None
    if isinstance(mask, xr.DataArray):
        if mask.dims != (dim,):
            raise ValueError(f"{what} has dims {mask.dims}, expected ({dim!r},)")
        if dim in mask.coords:
            keys = np.asarray(mask[dim].values)
        values = np.asarray(mask.values)
    elif isinstance(mask, pd.Series):
        keys, values = np.asarray(mask.index), mask.to_numpy()
    else:
        values = np.asarray(mask.to_numpy() if hasattr(mask, "to_numpy") else mask)
    if values.dtype != bool:
        raise TypeError(f"{what} has dtype {values.dtype}, expected bool")
    if keys is None:
        if values.shape != labels.shape:
            raise ValueError(
                f"{what} has shape {values.shape}, expected ({len(labels)},): an unlabelled "
                f"mask is positional, one entry per {dim}; give it {dim} labels to align by id"
            )
        return values
    index = pd.Index(keys.astype(str) if labels.dtype.kind == "U" else keys)
    if not index.is_unique:
        twice = index[index.duplicated()].unique().tolist()
        raise ValueError(f"{what} has duplicate {dim} labels: {twice[:5]}")
    pos = index.get_indexer(labels)
    if (pos < 0).any():
        missing = labels[pos < 0].tolist()
        raise KeyError(
            f"{what} has no value for {(pos < 0).sum()} {dim}(s) of this Dataset: "
            f"{missing[:5]}; a labelled mask is aligned by {dim} id (use .values for "
            "a positional one)"
        )
    return values[pos]


def _as_mask(value: Any, labels: np.ndarray, dim: str, what: str) -> np.ndarray:
    return aligned_mask(value, labels, dim, f"the mask {what} gave")


def filter_mask(
    ds: xr.Dataset, dim: str, predicates: Sequence[Any], filters: dict[str, Any]
) -> np.ndarray:
    """Bool mask over ``dim`` from positional predicates and keyword filters.

    Parameters
    ----------
    ds : xarray.Dataset
    dim : {'stim', 'neuron'}
    predicates : sequence
        Bool arrays, or callables that receive :func:`axis_table` and return
        one; combined with "and".
    filters : dict
        ``name=value`` on coordinates along ``dim`` (``dim`` itself filters
        by id; ``source=`` also finds ``<dim>_source``): equality, "any of"
        for a list/tuple/set/array (or a DataArray of values, such as
        ``other.neuron``), or a callable that receives the
        coordinate as a Series and returns a bool mask.

    Raises
    ------
    KeyError
        For an unknown coordinate name (the message lists the valid ones).
    TypeError, ValueError
        For a mask that is not bool or not of the axis' length.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=2)
    >>> filter_mask(ds, "stim", (), {"subset": "val"}).tolist()
    [False, False, False, True]
    """
    labels = ids(ds, dim)
    n = len(labels)
    mask = np.ones(n, dtype=bool)
    table = None
    for i, pred in enumerate(predicates):
        if callable(pred):
            if table is None:
                table = axis_table(ds, dim)
            pred = pred(table)
        mask &= _as_mask(pred, labels, dim, f"{dim} predicate #{i}")
    allowed = axis_coords(ds, dim)
    for name, value in filters.items():
        if name != dim and name not in allowed and f"{dim}_{name}" in allowed:
            name = f"{dim}_{name}"  # e.g. source= means stim_source / neuron_source
        if name != dim and name not in allowed:
            names = ", ".join(map(str, [dim, *allowed]))
            raise KeyError(f"no {dim} coordinate named {name!r}; available: {names}")
        values = ids(ds, dim) if name == dim else metadata_values(ds.variables[name])
        if isinstance(value, (xr.DataArray, xr.Variable)):  # e.g. other.neuron: its values
            value = metadata_values(value)
            value = value if value.ndim else value.item()
        if callable(value):
            m = value(pd.Series(values, index=ids(ds, dim), name=name))
        elif isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)):
            wanted = list(value)
            m = np.isin(values, np.asarray(wanted))
            _require_present(values, wanted, dim, name)
        else:
            m = values == value
            if np.ndim(m) == 0:  # numpy gives a scalar when types cannot be compared
                m = np.full(n, bool(m))
            if not m.any():
                _require_present(values, [value], dim, name)
        mask &= _as_mask(m, labels, dim, f"filter {name}=")
    return mask


def _require_present(values: np.ndarray, wanted: list[Any], dim: str, name: str) -> None:
    """Raise when a filter value appears nowhere in the coordinate: a typo, not a selection.

    Every value of a list must exist, as with pandas' ``.loc`` and xarray's
    ``.sel``: one mistyped id among many would otherwise drop its entries
    without a word. ``True``/``False`` on a bool coordinate and the values
    of :data:`_DOMAINS` always exist (a Dataset may hold none of them).
    """
    if values.dtype == bool and all(isinstance(v, (bool, np.bool_)) for v in wanted):
        return
    if all(v in _DOMAINS.get(name, ()) for v in wanted):
        return
    known = pd.unique(pd.Series(values, dtype=object).dropna()) if values.size else []
    try:
        present = set(known)
        missing = [v for v in wanted if v not in present]
    except TypeError:  # unhashable values: compare one by one
        missing = [v for v in wanted if not any(_same(v, k) for k in known)]
    if not missing:
        return
    try:
        existing = sorted(known)
    except TypeError:  # mixed types: keep the coordinate's order
        existing = list(known)
    shown = ", ".join(repr(_plain(v)) for v in existing[:12])
    if len(existing) > 12:
        shown += f", ... ({len(existing)} values in all)"
    where = f"{dim} ids" if name == dim else f"{dim} coordinate {name!r}"
    bad = ", ".join(repr(_plain(v)) for v in missing)
    hint = ""
    close = difflib.get_close_matches(str(missing[0]), [str(v) for v in existing], n=3)
    if close:
        hint = f" Did you mean {', '.join(map(repr, close))}?"
    rule = ""
    if len(wanted) > 1:
        rule = (
            " Every value of a list must exist; to keep those that do, filter with a "
            f"callable: {name}=lambda s: s.isin(your_list)."
        )
    shown = shown or f"no values: the Dataset has no {dim}s"
    verb = "appears" if len(missing) == 1 else "appear"
    raise ValueError(f"{name}={bad} {verb} nowhere in the {where} ({shown}).{hint}{rule}")


def _same(a: Any, b: Any) -> bool:
    """``a == b`` as a filter compares them (False where the types cannot be compared)."""
    try:
        return bool(np.asarray(a == b).all())
    except (TypeError, ValueError):
        return False


def _show(value: Any) -> str:
    """A filter value as the user wrote it (numpy scalars as Python ones)."""
    if callable(value):
        return "<callable>"
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)):
        return repr([_plain(v) for v in value])
    return repr(_plain(value))


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (``'val'``, not ``np.str_('val')``)."""
    return value.item() if isinstance(value, np.generic) else value


# -- positional selection -----------------------------------------------------------------------


def _indexer(idx: np.ndarray, n: int) -> slice | np.ndarray | None:
    """Cheapest equivalent of sorted unique positions: None (all), a slice, or the array."""
    if len(idx) == 0:
        return slice(0, 0)
    if (np.diff(idx) == 1).all():  # one increasing run, nothing repeated or out of order
        return None if len(idx) == n else slice(int(idx[0]), int(idx[-1]) + 1)
    return idx.astype(np.intp, copy=False)


def _take_block(block: Any, positions: np.ndarray, axis: int) -> Any:
    if block.shape[axis] == 0:  # dask probing the block type with an empty array
        positions = positions[:0]
    return block.take(positions, axis=axis)


def _take_one_chunk(data: Any, axis: int, positions: np.ndarray) -> Any:
    """``data[..., positions, ...]`` for a dask array with one chunk along ``axis``.

    dask's fancy indexing plans the gather block by block up front (~7 ms
    for 593 blocks); one blockwise task per block costs O(1) to build.
    """
    import dask.array as da
    from dask.array.utils import meta_from_array

    ind = tuple(range(data.ndim))
    return da.blockwise(
        _take_block,
        ind,
        data,
        ind,
        positions,
        None,
        axis,
        None,
        adjust_chunks={axis: len(positions)},
        dtype=data.dtype,
        meta=meta_from_array(data),
        # named like dask's own gathers ("take-<token>"), so graph readers that
        # know dask's slicing layers recognise this one too
        token="take",
    )


def _gather(var: xr.Variable, indexers: dict[Hashable, slice | np.ndarray]) -> xr.Variable | None:
    """``var.isel(indexers)`` for a dask variable with one chunk along an indexed axis.

    None when plain indexing is as cheap (in-memory or lazily indexed data,
    slices only, or positions along axes of several chunks).
    """
    if not any(d in var.dims and not isinstance(k, slice) for d, k in indexers.items()):
        return None
    chunks = var.chunks  # costs more than the test above: only when it can matter
    if chunks is None:
        return None
    gathers = [
        (dim, key)
        for dim, key in indexers.items()
        if dim in var.dims and not isinstance(key, slice) and len(chunks[var.dims.index(dim)]) == 1
    ]
    if not gathers:
        return None
    rest = {d: k for d, k in indexers.items() if d in var.dims and d not in dict(gathers)}
    part = var.isel(rest) if rest else var
    data = part.data
    for dim, key in gathers:
        data = _take_one_chunk(data, part.dims.index(dim), key)
    return xr.Variable(part.dims, data, part.attrs, part.encoding)


def _isel(
    ds: xr.Dataset,
    indexers: dict[Hashable, slice | np.ndarray],
    ready: dict[Hashable, xr.Variable] | None = None,
) -> xr.Dataset:
    """``ds.isel(indexers)`` (same result) with single-chunk dask gathers built in O(1).

    ``ready``: variables already selected (same values as their ``isel``).
    """
    indexed = ds.xindexes
    gathered = dict(ready or {})
    for name, var in ds.variables.items():
        if name not in indexed and name not in gathered:
            new = _gather(var, indexers)
            if new is not None:
                gathered[name] = new
    if not gathered:
        out = ds.isel(indexers)
        # isel shares these dicts with ds; a new object must not
        out.attrs, out.encoding = dict(ds.attrs), dict(ds.encoding)
        return _drop_stale_encoding(out, ds)
    rest = ds.drop_vars(list(gathered)).isel(indexers)
    variables = rest.variables
    if any(n in gathered for n in ds.coords):
        coords = xr.Coordinates(
            {n: gathered.get(n, variables.get(n)) for n in ds.coords},
            indexes=dict(rest.xindexes),
        )
    else:
        coords = rest.coords
    out = xr.Dataset(
        {n: gathered.get(n, variables.get(n)) for n in ds.data_vars}, coords=coords, attrs=ds.attrs
    )
    out.encoding = dict(ds.encoding)
    out.set_close(rest.close)  # closes ds's file, if any, as ds.isel's result would
    return _drop_stale_encoding(out, ds)


def _drop_stale_encoding(out: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    """Drop the file layout from the encoding of dask variables whose shape changed.

    Lazily indexed file variables keep it: it still describes where their
    values are stored, which readers of the file use.
    """
    for name, var in out.variables.items():
        if any(k in var.encoding for k in _STALE_ENCODING):
            if var.shape != ds.variables[name].shape and var.chunks is not None:
                var.encoding = {k: v for k, v in var.encoding.items() if k not in _STALE_ENCODING}
    return out


def repeats_held(ds: xr.Dataset, stim: np.ndarray | None = None) -> int | None:
    """Length of the ``repeat`` axis that the stims at positions ``stim`` need.

    The largest ``n_repeats`` among them (all stims when ``stim`` is None),
    at least 1 and at most the current length: the repeats past it are NaN
    for every one of these stims. Without stims, or without an ``n_repeats``
    stim coordinate, the current length; None when there is no ``repeat``
    dimension. Reads only ``n_repeats``.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3, seed=1)
    >>> ds.sizes["repeat"], repeats_held(ds, np.array([0, 1, 2]))
    (20, 1)
    >>> repeats_held(ds) == int(ds["n_repeats"].max())
    True
    """
    if "repeat" not in ds.dims:
        return None
    n = ds.sizes["repeat"]
    var = ds.variables.get("n_repeats")
    if var is None or var.dims != ("stim",):
        return n
    reps = metadata_values(var)
    if stim is not None:
        reps = reps[stim]
    if reps.dtype.kind == "f":
        reps = reps[np.isfinite(reps)]
    elif reps.dtype.kind not in "iu":
        return n
    if reps.size == 0:
        return n
    return int(min(n, max(1, reps.max())))


def select(
    ds: xr.Dataset,
    stim: np.ndarray | None = None,
    neuron: np.ndarray | None = None,
    repeat: int | None = None,
) -> xr.Dataset:
    """Positional selection by sorted unique integer positions (None keeps the axis).

    Equivalent to ``ds.isel(stim=stim, neuron=neuron, repeat=slice(0, repeat))``,
    but contiguous positions become slices, and dask arrays with one chunk
    along an indexed axis (``response`` along ``neuron``) are gathered block
    by block, so selecting on a lazy full-scale Dataset takes about a
    millisecond (``benchmarks/selection.py``).

    Parameters
    ----------
    ds : xarray.Dataset
    stim, neuron : array of int, optional
        Sorted unique positions to keep along each axis (None keeps it all).
    repeat : int, optional
        Keep the first ``repeat`` repeats (None keeps them all); see
        :func:`repeats_held` for the length the kept stims need.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=1, n_neurons=3)
    >>> select(ds, stim=np.array([0, 2])).identical(ds.isel(stim=[0, 2]))
    True
    >>> select(ds, stim=np.array([0, 2]), repeat=1).sizes["repeat"]
    1
    """
    indexers: dict[Hashable, slice | np.ndarray] = {}
    for dim, idx in (("stim", stim), ("neuron", neuron)):
        if idx is None:
            continue
        key = _indexer(np.asarray(idx, dtype=np.intp), ds.sizes[dim])
        if key is not None:
            indexers[dim] = key
    if repeat is not None and "repeat" in ds.dims and repeat < ds.sizes["repeat"]:
        indexers["repeat"] = slice(0, max(0, int(repeat)))
    if not indexers:
        return ds.copy(deep=False)
    placed = _placements(ds)
    read, records = _from_file(ds, indexers, placed)
    joint = None
    if "response" not in read and "response" in ds.data_vars:
        # a response built of others (a concat result) may select through them
        pick = provenance.selector(ds.variables["response"])
        joint = None if pick is None else pick(ds.variables["response"], indexers)
        if joint is not None:
            read["response"] = joint
    out = _isel(ds, indexers, read)
    if joint is not None:
        out = _chunked_as_response(out)
    for name, var in ds.data_vars.items():
        if name in records:
            provenance.record(out.variables[name], *records[name])
        elif name in placed:
            # values selected from a file's stay the file's: say where they lie
            hint = var.encoding.get("nat4xr_source")
            provenance.record_selection(var, out.variables[name], indexers, hint)
    return out


def _chunked_as_response(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its other dask variables along ``stim`` chunked as ``response`` is.

    A Dataset's variables keep one chunking along a shared dimension
    (``ds.chunks``); the per-stim ones are small, so rechunking them is cheap.
    """
    axis = ds["response"].dims.index("stim")
    stims = ds["response"].chunks[axis]
    for name in list(ds.data_vars):
        var = ds.variables[name]
        if name != "response" and var.chunks is not None and "stim" in var.dims:
            at = var.dims.index("stim")
            if var.chunks[at] != stims:
                data = var.data.rechunk({at: stims})
                ds[name] = xr.Variable(var.dims, data, var.attrs, var.encoding)
    return ds


def _placements(ds: xr.Dataset) -> dict[Hashable, provenance.Placement]:
    """The dask data variables of ``ds`` that hold exactly a cache file's values, placed."""
    out = {}
    for name, var in ds.data_vars.items():
        if var.chunks is None:
            continue
        entry = provenance.placement(var, var.encoding.get("nat4xr_source"))
        if entry is not None:
            out[name] = entry
    return out


def _from_file(
    ds: xr.Dataset,
    indexers: dict[Hashable, slice | np.ndarray],
    placed: dict[Hashable, provenance.Placement],
) -> tuple[dict[Hashable, xr.Variable], dict[Hashable, tuple]]:
    """The placed variables selected as new dask arrays over the file (see :func:`select`).

    A variable whose values are exactly a cache file's (:mod:`nat4xr.provenance`)
    is the file's variable at known positions, so its selection is the file's
    variable at the selected positions: read so, a task reads only its own
    stims, cells and repeats (:func:`nat4xr.cachefile.reading.selected`),
    where indexing the parent's dask array would compute whole parent chunks
    (every cell and repeat) and copy the kept entries out of them. Chunked
    at the parent's chunk boundaries, mapped through the selection (what
    indexing gives, so loaders that shuffle within chunks keep their order);
    when nat4xr chose the parent's chunks, a chunk along ``stim`` is cut
    further to the selection's size per stim (``SELECTION_CHUNK_BYTES``).

    Returns the variables and, per name, the arguments of
    :func:`nat4xr.provenance.record` for them.
    """
    files = {
        name: entry for name, entry in placed.items() if file_servable(ds.variables[name], entry)
    }
    if not files:
        return {}, {}
    # cut further only when every dask variable along stim is: a Dataset's
    # variables keep one chunking along a shared dimension (``ds.chunks``)
    along_stim = [n for n, v in ds.data_vars.items() if v.chunks is not None and "stim" in v.dims]
    auto = all(entry.auto for entry in files.values()) and set(along_stim) <= set(files)
    per_stim = None
    if auto and "response" in files:
        per_stim = _stims_per_chunk(ds.variables["response"], files["response"], indexers)
    read, records = {}, {}
    for name, entry in files.items():
        read[name], records[name] = _read_from_file(ds.variables[name], entry, indexers, per_stim)
    return read, records


def file_servable(var: xr.Variable, entry: provenance.Placement) -> bool:
    """True when the engine can read ``var``'s placement from its file as ``var`` holds it."""
    from .cachefile import CacheSource

    source = entry.source
    if not isinstance(source, CacheSource) or entry.variable not in source.file.index:
        return False
    if source.file.closed:
        # closed by its Dataset: the values may live on in memory (``persist``), the file
        # may be gone or replaced; dask's own graph serves them as it always did
        return False
    index = source.file.index[entry.variable]
    return (
        tuple(index.dims) == entry.dims == tuple(map(str, var.dims))
        and np.dtype(index.dtype.newbyteorder("=")) == var.dtype
    )


def _read_from_file(
    var: xr.Variable,
    entry: provenance.Placement,
    indexers: dict[Hashable, slice | np.ndarray],
    per_stim: int | None,
) -> tuple[xr.Variable, tuple]:
    """``var.isel(indexers)`` read from the file; with the arguments to record it.

    Chunked at the parent's boundaries (mapped through the selection), a
    chunk along ``stim`` cut to at most ``per_stim`` stims unless that is None.
    """
    from .cachefile import reading

    source = entry.source
    positions = {}
    chunks = {}
    for axis, dim in enumerate(entry.dims):
        key = indexers.get(dim)
        rel = np.arange(var.shape[axis]) if key is None else np.arange(var.shape[axis])[key]
        positions[dim] = entry.positions[dim][rel]
        chunks[dim] = _mapped(var.chunks[axis], rel)
        if per_stim is not None and dim == "stim":
            chunks[dim] = _capped(chunks[dim], per_stim)
    data = reading.selected(source, entry.variable, entry.dims, positions, chunks)
    again = reading.selected_again(source, entry.variable, entry.dims, positions, chunks, data.name)
    new = xr.Variable(var.dims, data, var.attrs, var.encoding)
    return new, (source, entry.variable, positions, again, per_stim is not None)


def selected_part(
    var: xr.Variable, entry: provenance.Placement, indexers: dict[Hashable, slice | np.ndarray]
) -> xr.Variable | None:
    """``var.isel(indexers)`` read from its file and recorded, for a variable placed by ``entry``.

    None when the engine cannot serve it. Chunked as :func:`select` chunks a
    ``response``; for the parts of a concatenation (:mod:`nat4xr.concat`).
    """
    if not file_servable(var, entry):
        return None
    per_stim = _stims_per_chunk(var, entry, indexers) if entry.auto else None
    new, args = _read_from_file(var, entry, indexers, per_stim)
    provenance.record(new, *args)
    return new


def _stims_per_chunk(
    var: xr.Variable, entry: provenance.Placement, indexers: dict[Hashable, slice | np.ndarray]
) -> int:
    """Stims per dask chunk for a selection of ``var`` of about ``SELECTION_CHUNK_BYTES``."""
    from .cachefile.reading import SELECTION_CHUNK_BYTES

    per_stim = var.dtype.itemsize
    for axis, dim in enumerate(entry.dims):
        if dim != "stim":
            key = indexers.get(dim)
            per_stim *= var.shape[axis] if key is None else len(np.arange(var.shape[axis])[key])
    return max(1, SELECTION_CHUNK_BYTES // max(1, per_stim))


def _capped(chunks: tuple[int, ...], per: int) -> tuple[int, ...]:
    """``chunks`` with each chunk longer than ``per`` cut into chunks of ``per`` (and the rest).

    >>> _capped((8, 2, 5), 3)
    (3, 3, 2, 2, 3, 2)
    """
    out: list[int] = []
    for n in chunks:
        out += [per] * (n // per) + ([n % per] if n % per or n == 0 else [])
    return tuple(out)


def _mapped(parent: tuple[int, ...], rel: np.ndarray) -> tuple[int, ...]:
    """Chunks of ``parent[rel]`` (``rel`` sorted): the parent's boundaries, empty chunks dropped."""
    if len(rel) == 0:
        return (0,)
    bounds = np.cumsum(parent)
    counts = np.bincount(np.searchsorted(bounds, rel, side="right"), minlength=len(parent))
    return tuple(int(c) for c in counts if c)


# -- the bidirectional rule ---------------------------------------------------------------------


def select_matching(ds: xr.Dataset, dim: str, *predicates: Any, **filters: Any) -> xr.Dataset:
    """Keep the matching entries of ``dim``, then drop the other axis' entries left without data.

    This is ``ds.nat4.sel_stims`` (``dim="stim"``) and ``ds.nat4.sel_neurons``
    (``dim="neuron"``); predicates and filters as in :func:`filter_mask`.
    The ``repeat`` axis is cut to the largest ``n_repeats`` among the kept
    stims (:func:`repeats_held`): the repeats dropped are NaN for all of them,
    and the cut is a slice, so a lazy ``response`` stays lazy.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=5, n_val=2, n_neurons=8, seed=1)
    >>> aud = select_matching(ds, "neuron", auditory=True)
    >>> bool(aud["auditory"].all())
    True
    """
    if dim not in _OTHER:
        raise ValueError(f"dim must be one of {AXES}, got {dim!r}")
    cov = coverage_array(ds)
    mask = filter_mask(ds, dim, predicates, filters)
    keep = np.flatnonzero(mask)
    # the fastest "any" numpy has for each orientation of the C-ordered coverage
    if dim == "stim":
        rest = np.flatnonzero(cov[keep].any(axis=0))
    else:
        rest = np.flatnonzero(np.dot(cov, mask))  # bool dot = any over kept columns
    if len(rest) == 0 and ds.sizes[dim] and ds.sizes[_OTHER[dim]]:
        _warn_empty(dim, len(keep), predicates, filters)
    picked = {dim: keep, _OTHER[dim]: rest}
    return select(ds, **picked, repeat=repeats_held(ds, picked["stim"]))


def _warn_empty(dim: str, n_kept: int, predicates: Sequence[Any], filters: dict[str, Any]) -> None:
    """Say why a selection whose values all exist came out empty."""
    other = _OTHER[dim]
    asked = [f"{k}={_show(v)}" for k, v in filters.items()]
    asked += [f"{dim} predicate #{i}" for i in range(len(predicates))]
    if n_kept == 0:
        reason = f"no {dim} of this Dataset matches {' and '.join(asked) or 'the selection'}"
        result = "the result is empty"
    else:
        reason = f"none of the {n_kept} matching {dim}s has data for any {other}"
        result = f"the result has {n_kept} {dim}s and no {other}s"
    warnings.warn(
        f"empty selection: {reason}; {result}",
        Nat4Warning,
        stacklevel=4,
    )


def coverage_current(ds: xr.Dataset) -> bool:
    """True when the stored ``coverage`` provably describes ``response``'s values.

    ``coverage`` is derived from the data when a Dataset is built and travels
    with every selection, but a plain xarray edit of the values (``where``,
    ``fillna``, ``roll`` without its coordinates, ``copy(data=...)``) keeps
    the coordinate as it was, and so does a selection of repeats or bins
    (``coverage`` says which pairs hold data in some recorded repeat). It is
    current for values that are still a cache file's and keep every repeat
    the file stores for their stims and every bin: a dask array nat4xr read
    or selected from a file (its dask name, :mod:`nat4xr.provenance`, which
    knows the file positions; the repeats stored are the file's own record,
    whatever ``n_repeats`` now says), or a file's values not read yet (lazy
    indexing, which keeps no positions: only with the file's whole repeat
    and time axes, labels as in the file). Values in memory or computed are
    not known to match it.
    """
    if "response" not in ds.data_vars or "coverage" not in ds.coords:
        return "response" not in ds.data_vars
    var = ds["response"].variable
    source = var.encoding.get("nat4xr_source")
    if var.chunks is not None:
        entry = provenance.placement(var, source)
        return entry is not None and _whole_trials(entry)
    if source is None or not not_read_yet(var):
        return False
    axes = getattr(source, "axes", {})
    for dim in ("repeat", "time"):
        if dim in ds.dims and (
            dim not in axes or not np.array_equal(np.asarray(ds[dim].values), axes[dim])
        ):
            return False
    return True


def _whole_trials(entry: provenance.Placement) -> bool:
    """True when a placement keeps every repeat its file stores for its stims, and every bin."""
    index = getattr(getattr(entry.source, "file", None), "index", {}).get(entry.variable)
    positions = entry.positions
    if index is None or not {"stim", "repeat", "time"} <= set(positions):
        return False
    stored = index.stored_prefix("repeat", "stim")[positions["stim"]]
    need = int(stored.max()) if len(stored) else 0
    repeat = positions["repeat"]
    return (
        len(repeat) >= max(need, 1)
        and np.array_equal(repeat, np.arange(len(repeat)))
        and np.array_equal(positions["time"], np.arange(index.shape[index.dims.index("time")]))
    )


def not_read_yet(var: xr.Variable) -> bool:
    """True for values xarray's lazy indexing has not read from their file yet.

    xarray prints the values of data held in memory, and only ``[N values
    with dtype=...]`` for data its lazy indexing has not read yet (a file
    opened with ``chunks=None`` or ``engine="nat4"``). The repr of a
    one-element corner tells the two apart without reading the file or
    formatting a large array.
    """
    if var.chunks is not None:
        return False
    corner = var.isel({d: slice(0, 1) for d in var.dims})
    return re.search(r"^\[\d+ values with dtype=", repr(corner), re.M) is not None


def storage_kind(var: xr.Variable) -> str:
    """Where the values of ``var`` are: a dask graph, a file read on access (see
    :func:`not_read_yet`), or memory.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> storage_kind(xr.Variable(("x",), np.zeros(3)))
    'loaded (in memory)'
    >>> storage_kind(xr.Variable(("x",), np.zeros(3)).chunk())
    'lazy (dask, 1 chunks)'
    """
    if var.chunks is not None:
        return f"lazy (dask, {int(np.prod([len(c) for c in var.chunks]))} chunks)"
    if not_read_yet(var):
        return "lazy (file-backed, read on access)"
    return "loaded (in memory)"


def prune(ds: xr.Dataset, recompute: bool | None = None) -> xr.Dataset:
    """Drop stims and neurons that have no data at all.

    The ``repeat`` axis is cut as in :func:`select_matching`. The decision
    reads the ``coverage`` coordinate where it provably describes the values
    (:func:`coverage_current`: a cache file's values, never read for this),
    and otherwise derives it again from ``response`` first (one streamed
    pass; ``recompute=None``, the default), so the decision and the returned
    ``coverage`` always agree with the values. ``recompute=True`` always
    derives it; ``False`` always trusts the stored one.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=3, p_missing=1.0)
    >>> dict(prune(ds).sizes)["stim"]
    0
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=3, p_missing=0.0)
    >>> gone = ds.assign(response=ds.response.where(ds.neuron != ds.neuron[0]))
    >>> prune(gone).sizes["neuron"], prune(gone, recompute=False).sizes["neuron"]
    (2, 3)
    """
    if recompute is None:
        recompute = not coverage_current(ds)
    if recompute:
        ds = with_data_coverage(ds)
    cov = coverage_array(ds)
    stim = np.flatnonzero(cov.any(axis=1))
    neuron = np.flatnonzero(cov.any(axis=0))
    return select(ds, stim=stim, neuron=neuron, repeat=repeats_held(ds, stim))


def with_data_coverage(ds: xr.Dataset, block: int = 32) -> xr.Dataset:
    """``ds`` with its ``coverage`` derived again from ``response`` (read once, streamed).

    A dask-backed ``response`` is reduced by dask; any other is read
    ``block`` stims at a time, so it is never held whole.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=3, p_missing=0.0)
    >>> edited = ds.assign(response=ds.response.where(ds.stim != ds.stim[0]))
    >>> with_data_coverage(edited)["coverage"].values[0].tolist()
    [False, False, False]
    """
    resp = ds["response"]
    dims = [d for d in resp.dims if d not in AXES]
    if resp.chunks is not None:
        cov = resp.notnull().any(dims).transpose(*AXES).values
    else:
        n = ds.sizes["stim"]
        cov = np.zeros((n, ds.sizes["neuron"]), dtype=bool)
        for i in range(0, n, block):
            part = resp.isel(stim=slice(i, i + block))
            cov[i : i + block] = part.notnull().any(dims).transpose(*AXES).values
    var = ds["coverage"].variable if "coverage" in ds.variables else None
    attrs = dict(var.attrs) if var is not None else {}
    return ds.assign_coords(coverage=(AXES, cov, attrs))
