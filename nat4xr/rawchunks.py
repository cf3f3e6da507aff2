"""Memory-mapped reads of the unfiltered ``response`` chunks of a cache file.

A cache file (:mod:`nat4xr.store`) stores ``response`` in chunks of one
(stim, repeat) pair, ``(1, neuron, 1, time)``. The chunks of sounds with
more than one recorded repeat (the validation sounds) are stored unfiltered:
HDF5 marks them with a per-chunk filter mask, and their bytes are the
little-endian float32 values in C order at a fixed place in the file.
:class:`RawChunks` finds those places once (through h5py's chunk query) and
then copies values straight from a read-only memory map of the file into
the caller's array: no decompression and no HDF5 call per read. Anything it
cannot serve this way (compressed chunks, another layout) is left to the
normal netCDF path.

Examples
--------
>>> import tempfile, nat4xr
>>> from pathlib import Path
>>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=3, n_time=4)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = nat4xr.store.write_cache(ds, Path(tmp) / "c.nc")
...     chunks = RawChunks(path)
...     out = np.empty((1, 3, 2, 4), np.float32)
...     served = chunks.servable(np.array([3]), 2)
...     chunks.read_into(out, np.array([3]), np.arange(3))
...     chunks.close()
>>> bool(served[0]), np.array_equal(out[0], ds.response[3, :, :2].values, equal_nan=True)
(True, True)
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["RawChunks"]

#: Chunk table codes for chunks that are not served from the memory map.
UNALLOCATED = -1
FILTERED = -2
# States of one (repeat, neuron) row of values.
_ALL_NAN, _ALL_VALID, _MIXED, _UNKNOWN = 0, 1, 2, 3


class RawChunks:
    """Where the unfiltered chunks of ``response`` lie in a cache file, and a map of it.

    Parameters
    ----------
    path : path-like
        A cache file written by :func:`nat4xr.store.write_cache`.
    variable : str
        The variable, chunked ``(1, neuron, 1, time)``.

    Raises
    ------
    ValueError
        The variable is not stored in a layout this reader understands (not
        chunked one (stim, repeat) pair per chunk, not little-endian
        float32, or the file has a user block); callers fall back to the
        netCDF path.

    Attributes
    ----------
    table : numpy.ndarray
        ``(stim, repeat)`` int64: the byte offset of each unfiltered chunk,
        ``UNALLOCATED`` (-1) where no chunk was written (the fill value is
        read) and ``FILTERED`` (-2) where the chunk is compressed.
    fill : float
        The variable's fill value.
    """

    def __init__(self, path: str | os.PathLike, variable: str = "response") -> None:
        import h5py

        self.path = os.fspath(path)
        with h5py.File(self.path, "r") as f:
            if f.userblock_size:
                raise ValueError(f"{self.path}: has a user block")
            dset = f[variable]
            n_stim, n_neuron, n_rep, n_time = dset.shape
            if dset.chunks != (1, max(1, n_neuron), 1, max(1, n_time)):
                raise ValueError(f"{self.path}: {variable} chunks are {dset.chunks}")
            if dset.dtype != np.dtype("<f4"):
                raise ValueError(f"{self.path}: {variable} is {dset.dtype}, not <f4")
            n_filters = dset.id.get_create_plist().get_nfilters()
            skipped_all = (1 << n_filters) - 1
            chunk_bytes = n_neuron * n_time * 4
            table = np.full((n_stim, n_rep), UNALLOCATED, dtype=np.int64)

            def visit(info: Any) -> None:
                s, _, r, _ = info.chunk_offset
                raw = (info.filter_mask & skipped_all) == skipped_all
                ok = raw and info.size == chunk_bytes and info.byte_offset is not None
                table[s, r] = info.byte_offset if ok else FILTERED

            _each_chunk(dset, visit)
            self.fill = float(dset.fillvalue)
        self.shape = (n_stim, n_neuron, n_rep, n_time)
        self.table = table
        self._rows: dict[int, np.ndarray] = {}
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._bytes = (
            np.frombuffer(self._map, dtype=np.uint8)
            if self._map is not None
            else np.zeros(0, np.uint8)
        )
        if (table >= 0).any() and int(table.max()) + chunk_bytes > self._bytes.size:
            raise ValueError(f"{self.path}: a chunk lies past the end of the file")

    def servable(self, stims: np.ndarray, n_rep: int) -> np.ndarray:
        """Which of ``stims`` have every chunk of repeats ``< n_rep`` unfiltered or unwritten."""
        codes = self.table[np.asarray(stims, dtype=np.int64), :n_rep]
        return (codes != FILTERED).all(axis=1)

    def read_into(
        self,
        out: np.ndarray,
        stims: np.ndarray,
        neurons: np.ndarray,
        rows: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        run: Callable[[Callable[[int], None], int], None] | None = None,
    ) -> None:
        """Copy ``response[stims[i], neurons, :R, :]`` into ``out[rows[i]]`` for every ``i``.

        Parameters
        ----------
        out : numpy.ndarray
            ``(n, len(neurons), R, time)`` float32 with ``R`` at most the
            file's repeats; rows ``rows`` are written in place.
        stims : numpy.ndarray
            Stim positions in the file, all :meth:`servable` for ``R`` repeats.
        neurons : numpy.ndarray
            Neuron positions in the file (any order, repeats allowed).
        rows : numpy.ndarray, optional
            Row of ``out`` for each stim; ``arange(len(stims))`` by default.
        mask : numpy.ndarray, optional
            Bool, shaped like ``out``: its rows ``rows`` get ``~isnan`` of
            the values written. Rows (cell, repeat) that hold only values or
            only NaN are known from the first read of each chunk, so the mask
            is mostly a broadcast and the values are not read a second time.
        run : callable, optional
            ``run(task, n)`` calls ``task(i)`` for ``i < n``, possibly in
            threads (the copies release the GIL). Sequential by default.
        """
        stims = np.asarray(stims, dtype=np.int64)
        neurons = np.asarray(neurons, dtype=np.intp)
        _, n_neuron, n_rep_file, n_time = self.shape
        if (
            out.dtype != np.float32
            or out.ndim != 4
            or out.shape[1] != neurons.size
            or out.shape[2] > n_rep_file
            or out.shape[3] != n_time
        ):
            raise ValueError(
                f"out must be float32 (n, {neurons.size}, <= {n_rep_file}, {n_time}), "
                f"got {out.dtype} {out.shape}"
            )
        n_rep = out.shape[2]
        if neurons.size and (neurons.min() < 0 or neurons.max() >= n_neuron):
            raise IndexError(f"neuron positions out of range for {n_neuron} neurons")
        codes = self.table[stims, :n_rep]
        if (codes == FILTERED).any():
            raise ValueError("read_into got a stim with compressed chunks; check servable()")
        rows = np.arange(len(stims)) if rows is None else np.asarray(rows, dtype=np.intp)
        if rows.shape != stims.shape:
            raise ValueError(f"rows has shape {rows.shape}, stims {stims.shape}")
        if mask is not None and (mask.dtype != bool or mask.shape[1:] != out.shape[1:]):
            raise ValueError(
                f"mask must be bool {out.shape[1:]} per row, got {mask.dtype} {mask.shape}"
            )

        chunk_bytes = n_neuron * n_time * 4
        # The writer lays a sound's chunks out one after the other: the sound
        # is then one (repeat, neuron, time) array in the file.
        steps = np.arange(n_rep, dtype=np.int64) * chunk_bytes
        adjacent = (codes >= 0).all(axis=1) & (codes == codes[:, :1] + steps).all(axis=1)
        runs = _runs(neurons)
        # Few runs of consecutive neurons (selections by cell properties keep
        # most cells): plain strided copies, each value read and written
        # once. Scattered neurons: a gather per chunk.
        by_runs = len(runs) * 8 <= max(1, neurons.size)

        def chunks(offset: int, count: int) -> np.ndarray:
            values = self._bytes[offset : offset + count * chunk_bytes].view("<f4")
            return values.reshape(count, n_neuron, n_time)

        def copy(source: np.ndarray, target: np.ndarray) -> None:
            """``target[k] = source[neurons[k]]`` along the first axis."""
            for lo, hi, first in runs:
                target[lo:hi] = source[first : first + hi - lo]

        def task(i: int) -> None:
            fill(i)
            if mask is not None:
                self._mask_row(int(stims[i]), neurons, out[rows[i]], mask[rows[i]])

        def fill(i: int) -> None:
            target = out[rows[i]]  # (neuron, repeat, time)
            if by_runs and adjacent[i]:
                copy(chunks(int(codes[i, 0]), n_rep).transpose(1, 0, 2), target)
                return
            for r in range(n_rep):
                offset = int(codes[i, r])
                if offset < 0:
                    target[:, r, :] = self.fill
                elif by_runs:
                    copy(chunks(offset, 1)[0], target[:, r, :])
                else:
                    np.take(chunks(offset, 1)[0], neurons, axis=0, out=target[:, r, :], mode="clip")

        (run or _sequential)(task, len(stims))

    def _mask_row(
        self, stim: int, neurons: np.ndarray, values: np.ndarray, mask: np.ndarray
    ) -> None:
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
            _, n_neuron, n_rep, n_time = self.shape
            state = np.empty((n_rep, n_neuron), np.int8)
            for r, offset in enumerate(self.table[stim].tolist()):
                if offset == FILTERED:
                    state[r] = _UNKNOWN
                    continue
                if offset < 0:
                    state[r] = _ALL_VALID if self.fill == self.fill else _ALL_NAN
                    continue
                values = self._bytes[offset : offset + n_neuron * n_time * 4].view("<f4")
                valid = np.equal(values, values).reshape(n_neuron, n_time)
                count = valid.sum(axis=1)
                state[r] = np.where(
                    count == n_time, _ALL_VALID, np.where(count == 0, _ALL_NAN, _MIXED)
                )
            self._rows[stim] = state  # threads racing here store equal arrays
        return state

    def close(self) -> None:
        """Drop the memory map (it is unmapped once no array refers to it)."""
        self._bytes = np.zeros(0, np.uint8)
        self._map = None


def _runs(neurons: np.ndarray) -> list[tuple[int, int, int]]:
    """``(lo, hi, first)``: ``neurons[lo:hi] == arange(first, first + hi - lo)``, covering all."""
    if neurons.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(neurons) != 1) + 1
    lows = np.r_[0, breaks]
    highs = np.r_[breaks, neurons.size]
    return list(zip(lows.tolist(), highs.tolist(), neurons[lows].tolist()))


def _sequential(task: Callable[[int], None], n: int) -> None:
    for i in range(n):
        task(i)


def _each_chunk(dset: Any, visit: Callable[[Any], None]) -> None:
    """Call ``visit(StoreInfo)`` for every written chunk of an h5py dataset."""
    try:
        dset.id.chunk_iter(visit)  # one pass over the chunk index (HDF5 >= 1.14)
    except (AttributeError, NotImplementedError):  # pragma: no cover - older HDF5
        for i in range(dset.id.get_num_chunks()):
            visit(dset.id.get_chunk_info(i))
