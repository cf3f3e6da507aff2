"""Read batches of stims into NumPy arrays, torch-free: the engine under :mod:`nat4xr.torch`.

Two sources serve a batch:

- :class:`FileSource`, when the Dataset's data still come unchanged from a
  cache file: it asks the data where they live (the
  :class:`~nat4xr.cachefile.CacheSource` handle the ``nat4`` engine puts in
  each data variable's encoding), and copies the batch's chunks straight from
  the file's memory map (:class:`ResponseReader`), checked by CRC-32.
  Pickles as the handle plus the selection's positions in the file, so
  worker processes map the file themselves.
- :class:`MemorySource`, for everything else (in-memory, computed or
  dask-backed data), through ordinary xarray indexing.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=1, n_neurons=4, n_time=5)
>>> dims = {"response": ("stim", "neuron", "repeat", "time")}
>>> arrays = MemorySource(ds, dims).read(np.array([0, 3]), int(ds.n_repeats[3]), Buffers())
>>> arrays["response"].shape == (2, 4, int(ds.n_repeats[3]), 5)
True
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

from . import provenance
from .cachefile.arrays import CacheArray, CacheSource
from .cachefile.chunks import ChunkFile, ChunkIndex

__all__ = [
    "MASK",
    "MASKED_ROWS",
    "Buffers",
    "FileSource",
    "MemorySource",
    "ResponseReader",
    "file_source",
    "storage_groups",
]

# Keys a source may add to its arrays: the validity mask of the rows it knows.
MASK, MASKED_ROWS = "_valid_mask", "_valid_rows"
# States of one (repeat, neuron) row of values.
_ALL_NAN, _ALL_VALID, _MIXED = 0, 1, 2

Run = Callable[[Callable[[int], None], int], None]


def sequential(task: Callable[[int], None], n: int) -> None:
    """Call ``task(i)`` for ``i < n`` in this thread."""
    for i in range(n):
        task(i)


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def threaded(threads: int) -> Run:
    """A runner calling ``task(i)`` on up to ``threads`` threads of this process's pool."""

    def run(task: Callable[[int], None], n: int) -> None:
        k = min(n, threads, os.cpu_count() or 1)
        if k < 2:
            sequential(task, n)
            return
        key = (os.getpid(), k)  # a forked child never uses its parent's pool
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(k, thread_name_prefix="nat4xr-batch")
        for future in [_POOLS[key].submit(task, i) for i in range(n)]:
            future.result()

    return run


class Buffers:
    """Batch arrays for one process, recycled once nothing refers to them.

    Freshly allocated memory costs a page fault per 4 KiB page on first write
    (about a third of the time of a large batch), so arrays of at least
    ``min_bytes`` are kept (``keep`` per shape and dtype) and reused once the
    only references left are this pool's: no tensor, view or array made from
    a batch can still see its memory when it is reused.

    Parameters
    ----------
    keep, min_bytes : int
        Arrays kept per shape and dtype, and the smallest array kept.
    run : callable, optional
        ``run(task, n)`` runs the copies (threads); sequential by default.
    """

    def __init__(
        self,
        keep: int = 2,
        min_bytes: int = 1 << 20,
        run: Run | None = None,
    ) -> None:
        self.keep = keep
        self.min_bytes = min_bytes
        self.run = run or sequential
        self._pool: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"keep": self.keep, "min_bytes": self.min_bytes, "run": self.run}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialized array of ``shape`` and ``dtype``."""
        if self._pid != os.getpid():
            self.__init__(self.keep, self.min_bytes, self.run)
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        if math.prod(shape) * dtype.itemsize < self.min_bytes:
            return np.empty(shape, dtype)
        pool = self._pool.setdefault((shape, dtype.str), [])
        for array in pool:
            # the pool's list, this loop's name and getrefcount's argument
            if sys.getrefcount(array) <= 3:
                return array
        array = np.empty(shape, dtype)
        if len(pool) < self.keep:
            pool.append(array)
        return array


class MemorySource:
    """Reads batches from the Dataset itself (numpy, lazily indexed or dask; pickled whole)."""

    def __init__(self, ds: xr.Dataset, dims: dict[str, tuple[str, ...]]) -> None:
        self.ds = ds[list(dims)]
        self.dims = dims

    def read(
        self, positions: np.ndarray, n_rep: int, buffers: Buffers, scheduler: str | None = None
    ) -> dict[str, np.ndarray]:
        """``{name: values}`` of stims ``positions`` and the first ``n_rep`` repeats."""
        arrays: dict[str, Any] = {}
        n_read = n_rep
        if "response" in self.dims:
            response = self.ds["response"].transpose(*self.dims["response"])
            # Where the Dataset holds more repeats than the batch's stims recorded,
            # read them all: a transform may have moved values past a stim's
            # n_repeats (reordered or rolled repeats, stims rolled without their
            # coordinates, NaN filled), and a batch must not drop them.
            n_read = max(n_rep, int(response.sizes.get("repeat", n_rep)))
            if _in_memory(response):
                # In memory: copy each stim's rows straight into a (recycled) batch array.
                values = response.values[:, :, :n_read]
                out = buffers.empty((len(positions), *values.shape[1:]), np.float32)
                buffers.run(lambda i: np.copyto(out[i], values[positions[i]]), len(positions))
                arrays["response"] = out
        rest = [name for name in self.dims if name not in arrays]
        sub = self.ds[rest].isel(stim=positions, repeat=slice(0, n_read), missing_dims="ignore")
        lazy = {}
        for name in rest:
            var = sub[name].transpose(*self.dims[name])
            if var.chunks is not None:
                lazy[name] = var.data
            else:
                arrays[name] = var.values
        if lazy:
            import dask

            arrays.update(zip(lazy, dask.compute(*lazy.values(), scheduler=scheduler)))
        if n_read > n_rep:
            arrays["response"] = _trim_repeats(np.asarray(arrays["response"]), n_rep)
        return {k: np.asarray(v) for k, v in arrays.items()}


def _trim_repeats(response: np.ndarray, n_rep: int) -> np.ndarray:
    """The first ``n_rep`` repeats, and any later one up to the last that holds a value.

    A stim's trials are its first ``n_repeats`` with NaN after, so nothing past
    the batch's largest ``n_repeats`` holds a value and the batch keeps
    ``n_rep`` repeats; values a transform moved past them are kept too.
    """
    tail = response[:, :, n_rep:]
    held = np.flatnonzero(~np.isnan(tail).all(axis=(0, 1, 3))) if tail.size else []
    keep = n_rep + (int(held[-1]) + 1 if len(held) else 0)
    return response[:, :, :keep]


def _in_memory(var: xr.DataArray) -> bool:
    """True when ``var`` holds in-memory values, not a file's lazily indexed ones.

    Variables read from files carry where they came from in their encoding
    (``source``, or the ``nat4xr_source`` handle); :func:`to_torch`'s
    ``preload`` drops it along with the file. Unsure cases take the general path.
    """
    encoding = var.variable.encoding
    return var.chunks is None and "source" not in encoding and "nat4xr_source" not in encoding


class FileSource:
    """Reads batches straight from a cache file's chunks.

    Parameters
    ----------
    source : CacheSource
        The file's handle.
    dims : dict
        Variables to read and the dim order of each.
    stim_pos, neuron_pos : numpy.ndarray
        Positions in the file of the Dataset's stims and neurons.
    """

    def __init__(
        self,
        source: CacheSource,
        dims: dict[str, tuple[str, ...]],
        stim_pos: np.ndarray,
        neuron_pos: np.ndarray,
    ) -> None:
        self.source = source
        self.dims = dict(dims)
        self.stim_pos = np.asarray(stim_pos, dtype=np.int64)
        self.neuron_pos = np.asarray(neuron_pos, dtype=np.int64)
        self._reader: ResponseReader | None = None

    def stored_repeats(self) -> np.ndarray:
        """Per stim of the selection, the repeats the file stores (last stored + 1)."""
        return self.source.file.index["response"].stored_prefix("repeat", "stim")[self.stim_pos]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None
        return state

    def close(self) -> None:
        """Unmap the file (it is mapped again on the next read)."""
        self.source.file.close()
        self._reader = None

    def read(
        self, positions: np.ndarray, n_rep: int, buffers: Buffers, scheduler: str | None = None
    ) -> dict[str, np.ndarray]:
        """``{name: values}`` of stims ``positions``, plus the response's validity mask."""
        file_pos = self.stim_pos[positions]
        out: dict[str, np.ndarray] = {}
        if "response" in self.dims:
            if self._reader is None:
                self._reader = ResponseReader(self.source.file, self.source.file.index["response"])
            n_time = self._reader.index.shape[3]
            shape = (len(file_pos), len(self.neuron_pos), n_rep, n_time)
            resp = buffers.empty(shape, np.float32)
            mask = buffers.empty(shape, bool)
            self._reader.read_into(resp, file_pos, self.neuron_pos, mask=mask, run=buffers.run)
            out["response"] = resp
            out[MASK] = mask
            out[MASKED_ROWS] = np.arange(len(file_pos))
        for name, dims in self.dims.items():
            if name == "response":
                continue
            index = self.source.file.index[name]
            array = CacheArray(self.source, index)
            stored = index.dims
            keys = [
                file_pos
                if d == "stim"
                else self.neuron_pos
                if d == "neuron"
                else np.arange(n_rep)
                if d == "repeat"
                else np.arange(n)
                for d, n in zip(stored, index.shape)
            ]
            values = array.read(keys)
            out[name] = values.transpose([stored.index(d) for d in dims])
        return out


class ResponseReader:
    """Copies ``response`` chunks of a cache file into batch arrays, with their validity mask.

    Unfiltered chunks are copied from the memory map (runs of consecutive
    cells as strided copies, a sound whose repeats lie back to back in one
    go), compressed ones are decoded first, unwritten ones are the fill
    value. The mask comes from each (repeat, cell) row's state (all values,
    all NaN or mixed), learned on the first read of each chunk, so values
    are not read a second time.
    """

    def __init__(self, file: ChunkFile, index: ChunkIndex) -> None:
        self.file = file
        self.index = index
        n_stim, _, n_rep, _ = index.shape
        #: (stim, repeat) views of the chunk index (the grid is (stim, 1, repeat, 1)).
        self.offsets = index.offset.reshape(n_stim, n_rep)
        self.compressed = index.compressed.reshape(n_stim, n_rep)
        self._rows: dict[int, np.ndarray] = {}
        self._generation = -1  # the file's check generation the row states belong to

    def read_into(
        self,
        out: np.ndarray,
        stims: np.ndarray,
        neurons: np.ndarray,
        mask: np.ndarray | None = None,
        run: Run | None = None,
    ) -> None:
        """``out[i] = response[stims[i], neurons, :R, :]``; ``mask[i]`` its ``~isnan``.

        Parameters
        ----------
        out : numpy.ndarray
            ``(n, len(neurons), R, time)`` float32, ``R`` at most the file's repeats.
        stims, neurons : numpy.ndarray
            Positions in the file (neurons in any order, repeats allowed).
        mask : numpy.ndarray, optional
            Bool, shaped like ``out``.
        run : callable, optional
            ``run(task, n)``, possibly on threads (the copies release the GIL).
        """
        stims = np.asarray(stims, dtype=np.int64)
        neurons = np.asarray(neurons, dtype=np.intp)
        _, n_neuron, n_rep_file, n_time = self.index.shape
        if (
            out.dtype != np.float32
            or out.ndim != 4
            or out.shape[0] != stims.size
            or out.shape[1] != neurons.size
            or out.shape[2] > n_rep_file
            or out.shape[3] != n_time
        ):
            raise ValueError(
                f"out must be float32 ({stims.size}, {neurons.size}, <= {n_rep_file}, "
                f"{n_time}), got {out.dtype} {out.shape}"
            )
        if neurons.size and (neurons.min() < 0 or neurons.max() >= n_neuron):
            raise IndexError(f"neuron positions out of range for {n_neuron} neurons")
        if mask is not None and (mask.dtype != bool or mask.shape != out.shape):
            raise ValueError(f"mask must be bool {out.shape}, got {mask.dtype} {mask.shape}")
        _ = self.file.bytes  # sees a file changed since it was mapped (ChunkFile._unchanged)
        if self._generation != self.file.generation:
            self._rows = {}  # states learned (and chunks checked) before no longer count
            self._generation = self.file.generation
        n_rep = out.shape[2]
        index = self.index
        offsets = self.offsets[stims, :n_rep]
        chunk_bytes = index.chunk_bytes
        steps = np.arange(n_rep, dtype=np.int64) * chunk_bytes
        raw = (offsets >= 0) & ~self.compressed[stims, :n_rep]
        adjacent = raw.all(axis=1) & (offsets == offsets[:, :1] + steps).all(axis=1)
        runs = _runs(neurons)
        # Few runs of consecutive neurons (selections by cell properties keep
        # most cells): plain strided copies. Scattered neurons: a gather per chunk.
        by_runs = len(runs) * 8 <= max(1, neurons.size)

        def copy(source: np.ndarray, target: np.ndarray) -> None:
            """``target[k] = source[neurons[k]]`` along the first axis."""
            if by_runs:
                for lo, hi, first in runs:
                    target[lo:hi] = source[first : first + hi - lo]
            else:
                np.take(source, neurons, axis=0, out=target, mode="clip")

        def task(i: int) -> None:
            s = int(stims[i])
            target = out[i]  # (neuron, repeat, time)
            if adjacent[i] and by_runs:
                self._row_state(s)  # the first read of a sound checks each of its chunks
                start = int(offsets[i, 0])
                whole = self.file.bytes[start : start + n_rep * chunk_bytes].view("<f4")
                copy(whole.reshape(n_rep, n_neuron, n_time).transpose(1, 0, 2), target)
            else:
                chunks = [self._chunk(s, r) for r in range(n_rep)]  # checked before any copy
                for r, values in enumerate(chunks):
                    if values is None:
                        target[:, r, :] = index.fill
                    else:
                        copy(values, target[:, r, :])
            if mask is not None:
                self._mask(s, neurons, target, mask[i])

        (run or sequential)(task, len(stims))

    def _chunk(self, stim: int, rep: int) -> np.ndarray | None:
        _, n_neuron, n_rep, n_time = self.index.shape
        values = self.file.decoded(self.index, stim * n_rep + rep, f"stim={stim}, repeat={rep}")
        return None if values is None else values.reshape(n_neuron, n_time)

    def _mask(self, stim: int, neurons: np.ndarray, values: np.ndarray, mask: np.ndarray) -> None:
        """``mask[...] = ~isnan(values)`` for one sound, from its rows' known state."""
        n_rep = values.shape[1]
        state = self._row_state(stim)[:n_rep, neurons].T  # (neuron, repeat)
        np.copyto(mask, (state == _ALL_VALID)[:, :, None])
        for n, r in np.argwhere(state == _MIXED).tolist():
            np.equal(values[n, r], values[n, r], out=mask[n, r])

    def _row_state(self, stim: int) -> np.ndarray:
        """``(repeat, neuron)`` int8 of one sound: all valid, all NaN or mixed (cached)."""
        state = self._rows.get(stim)
        if state is None:
            _, n_neuron, n_rep, n_time = self.index.shape
            state = np.empty((n_rep, n_neuron), np.int8)
            fill_valid = self.index.fill == self.index.fill
            for r in range(n_rep):
                values = self._chunk(stim, r)
                if values is None:
                    state[r] = _ALL_VALID if fill_valid else _ALL_NAN
                    continue
                count = np.equal(values, values).reshape(n_neuron, n_time).sum(axis=1)
                state[r] = np.where(
                    count == n_time, _ALL_VALID, np.where(count == 0, _ALL_NAN, _MIXED)
                )
            self._rows[stim] = state  # threads racing here store equal arrays
        return state


def _runs(neurons: np.ndarray) -> list[tuple[int, int, int]]:
    """``(lo, hi, first)``: ``neurons[lo:hi] == arange(first, first + hi - lo)``, covering all."""
    if neurons.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(neurons) != 1) + 1
    lows = np.r_[0, breaks]
    highs = np.r_[breaks, neurons.size]
    return list(zip(lows.tolist(), highs.tolist(), neurons[lows].tolist()))


def file_source(ds: xr.Dataset, dims: dict[str, tuple[str, ...]]) -> FileSource | None:
    """A :class:`FileSource` for the variables whose values are exactly a cache file's.

    Whether they are is decided from the data themselves, never from the
    encoding (which xarray keeps through ``shift``, ``roll``, ``copy(data=)``,
    arithmetic...): a variable qualifies when its dask array is one that
    nat4xr made by opening the file or selecting from it, or plain xarray
    selections of such an array (:func:`nat4xr.provenance.placement`), so the
    file positions of its values are known, whatever labels they carry now.
    The ``repeat`` axis may be a prefix of the file's; every other
    non-selection axis must be the file's, whole and in order. None unless
    ``response`` qualifies; the others qualify only on the same stims of the
    same file.
    """
    placed = _placed(ds["response"])
    if placed is None:
        return None
    source = placed.source
    stim_pos, neuron_pos = placed.positions["stim"], placed.positions["neuron"]
    if len(stim_pos) == 0 or len(neuron_pos) == 0:
        return None
    names = ["response"]
    for name in dims:
        if name == "response":
            continue
        other = _placed(ds[name])
        if (
            other is not None
            and provenance.same_file(other.source, source)
            and np.array_equal(other.positions["stim"], stim_pos)
        ):
            names.append(name)
    return FileSource(source, {n: dims[n] for n in names}, stim_pos, neuron_pos)


def _placed(da: xr.DataArray) -> provenance.Placement | None:
    """``da``'s placement in a cache file, when the batch reader can serve it from there."""
    if da.chunks is None:
        # Not dask: maybe loaded, and then maybe changed in memory; xarray's
        # own lazy indexing reads it from the file just as well.
        return None
    placed = provenance.placement(da, da.encoding.get("nat4xr_source"))
    if placed is None:
        return None
    source = placed.source
    if (
        not isinstance(source, CacheSource)
        or not os.path.isfile(source.path)
        or placed.variable != da.name
        or placed.variable not in source.file.index
    ):
        return None
    index = source.file.index[placed.variable]
    if placed.dims != tuple(index.dims) or not {"stim"} <= set(placed.dims):
        return None
    for dim, n in zip(index.dims, index.shape):
        if dim in ("stim", "neuron"):
            continue
        size = len(placed.positions[dim])
        if not placed.whole(dim, size) or (dim != "repeat" and size != n):
            return None
    return placed


def storage_groups(ds: xr.Dataset) -> list[np.ndarray] | None:
    """Stim positions grouped by dask chunk, or None when ``response`` is not dask-backed."""
    resp = ds["response"]
    if resp.chunks is None:
        return None
    bounds = np.cumsum((0, *resp.chunks[resp.dims.index("stim")]))
    return [np.arange(a, b) for a, b in itertools.pairwise(bounds) if b > a]
