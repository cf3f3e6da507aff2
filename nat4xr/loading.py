"""Eager loading into one preallocated array per variable.

``Dataset.load()`` on dask arrays computes every chunk, keeps them all, then
concatenates them into the result: the peak is twice what it returns, and
glibc keeps the freed chunks afterwards. :func:`load` allocates each
variable's result once and fills it block by block (dask), or lets the
``nat4`` engine's lazily indexed arrays (``chunks=None``) read straight into
it, then hands the freed memory back to the operating system.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["load", "return_freed_memory"]


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _local_threads(data: Any) -> bool:
    """True when ``data`` would be computed by threads of this process (dask's default)."""
    import dask
    import dask.local
    import dask.threaded
    from dask.base import get_scheduler

    return get_scheduler(collections=[data]) in (None, dask.threaded.get, dask.local.get_sync)


def _filled(data: Any) -> np.ndarray:
    """A dask array computed into one new numpy array.

    With the threads of this process (dask's default), ``dask.array.store``
    writes each block into place as soon as it is computed; otherwise (a
    distributed client, processes: their results come back to this process)
    one block at a time is computed and copied. Either way nothing holds all
    the blocks at once: the peak is the result plus the blocks in flight.
    """
    import dask.array as da

    if any(np.isnan(n) for c in data.chunks for n in c):
        return np.asarray(data.compute())  # unknown block sizes: no places to fill
    out = np.empty(data.shape, dtype=data.dtype)
    if out.size == 0:
        return out
    if _local_threads(data):
        da.store(data, out, lock=False)
        return out
    starts = [np.cumsum((0, *c))[:-1].tolist() for c in data.chunks]
    for index in np.ndindex(*data.numblocks):
        block = np.asarray(data.blocks[index].compute())
        out[tuple(slice(s[i], s[i] + n) for s, i, n in zip(starts, index, block.shape))] = block
        del block
    return out


def _from_file(da: xr.DataArray) -> np.ndarray | None:
    """``da``'s values read by the engine straight into one array, when they are a file's.

    A dask array that holds exactly a cache file's values at known positions
    (:mod:`nat4xr.provenance`) is read as ``chunks=None`` reads: one array of
    the result's size, filled from the stored chunks the selection touches,
    with no dask block in between. None for any other array.
    """
    from . import provenance
    from .cachefile.reading import file_selection
    from .selection import file_servable

    entry = provenance.placement(da, da.encoding.get("nat4xr_source"))
    if entry is None or not file_servable(da.variable, entry):
        return None
    values = file_selection(entry.source, entry.variable, entry.dims, entry.positions).values
    return values if values.dtype == da.dtype and values.shape == da.shape else None


def load(ds: xr.Dataset) -> xr.Dataset:
    """A new Dataset with every variable in memory, each read into one preallocated array.

    Variables backed by dask are computed block by block into their result,
    except those whose values are exactly a cache file's (opened or selected
    by nat4xr, :mod:`nat4xr.provenance`): those, like the ones opened with
    ``chunks=None``, are read by the engine straight into it. The input is
    unchanged (it stays lazy). Select first: the result holds the whole
    ``response``, padding included.

    Parameters
    ----------
    ds : Dataset
        Any Dataset (nat4xr's or not).

    Returns
    -------
    xarray.Dataset
        Same variables, coordinates and attributes, all numpy-backed.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4).chunk({"stim": 2})
    >>> eager = load(ds)
    >>> eager["response"].chunks is None, ds["response"].chunks is not None
    (True, True)
    >>> bool(eager["response"].equals(ds["response"]))
    True
    """
    out = ds.copy(deep=False)
    for name, var in ds.variables.items():
        read = _from_file(ds[name]) if name in ds.data_vars and var.chunks is not None else None
        if read is not None:
            new = var.copy(deep=False, data=read)
        elif var.chunks is not None:
            new = var.copy(deep=False, data=_filled(var.data))
        else:
            new = var.copy(deep=False)
            new.load()  # lazily indexed (chunks=None): read into one array; numpy: nothing
        if name in ds.indexes:
            continue  # index variables are in memory already
        if name in ds.data_vars:
            out[name] = new
        else:
            out = out.assign_coords({name: new})
    return_freed_memory()
    return out
