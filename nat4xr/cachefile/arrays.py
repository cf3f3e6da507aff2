"""Lazy arrays over a cache file's chunks, and the handle saying where data live.

:class:`CacheArray` is the ``BackendArray`` of the ``nat4`` engine: xarray
wraps it in its lazy indexing, so ``ds.isel(...)`` and the accessor's
selections compose indexers without reading, and indexing reads only the
chunks the selection touches. :class:`CacheSource` is carried in each data
variable's ``encoding["nat4xr_source"]`` (xarray keeps it through selection
and chunking, and drops it from computed results): it names the file and its
version and maps stim and neuron ids to their places in the file, which is
how nat4xr's batch loader reads a selection straight from the file.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from xarray.backends import BackendArray
from xarray.core import indexing

from ..errors import CacheError
from .chunks import ChunkFile, ChunkIndex

__all__ = ["CacheArray", "CacheSource"]


@dataclass(eq=False)
class CacheSource:
    """Where a cache-backed Dataset's data live.

    Attributes
    ----------
    path : str
        The cache file (resolved).
    format : int
        Its cache format.
    stims, neurons : numpy.ndarray
        The ids along ``stim`` and ``neuron`` in file order.
    axes : dict
        The file's other dimension coordinates (``repeat``, ``time``, ...).
    file : nat4xr.cachefile.chunks.ChunkFile
        The memory map serving checked chunks (reopened per process).
    """

    path: str
    format: int
    stims: np.ndarray
    neurons: np.ndarray
    axes: dict[str, np.ndarray]
    file: ChunkFile
    _maps: dict[str, pd.Index] = field(default_factory=dict, repr=False)

    @property
    def identity(self) -> tuple[int, int, int] | None:
        """``(inode, size, mtime_ns)`` of the file when it was opened (its ``ChunkFile``'s)."""
        return self.file.identity

    def positions(self, dim: str, labels: Any) -> np.ndarray | None:
        """File positions of ``labels`` along ``dim`` ('stim' or 'neuron'); None if any is absent.

        Examples
        --------
        >>> src = CacheSource("f.nc", 4, np.array(["a", "b"]), np.array(["x"]), {}, None)
        >>> src.positions("stim", ["b", "a"]).tolist(), src.positions("stim", ["c"])
        ([1, 0], None)
        """
        index = self._maps.get(dim)
        if index is None:
            index = self._maps[dim] = pd.Index(self.stims if dim == "stim" else self.neurons)
        pos = index.get_indexer(np.asarray(labels))
        return None if (pos < 0).any() else pos.astype(np.int64)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


class CacheArray(BackendArray):
    """One data variable of a cache file, read chunk by chunk on indexing.

    Supports xarray's outer indexing (ints, slices with any step, integer
    arrays per dimension); vectorized indexing is composed by xarray on top.
    Values are copied out of the memory map, so results never alias the
    file.
    """

    def __init__(self, source: CacheSource, index: ChunkIndex) -> None:
        self.source = source
        self.index = index
        self.shape = index.shape
        self.dtype = np.dtype(index.dtype.newbyteorder("="))
        split = [c < n for c, n in zip(index.chunks, index.shape)]
        if any(s and c != 1 for s, c in zip(split, index.chunks)):
            raise CacheError(
                f"{source.path}: {index.name} is chunked {index.chunks}, which this reader does "
                "not serve; rebuild it with open_nat4(..., rebuild=True)"
            )
        #: Axes split into chunks of one entry; the others are whole in every chunk.
        self.grid_axes = tuple(a for a, s in enumerate(split) if s)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._getitem
        )

    def _getitem(self, key: tuple) -> np.ndarray:
        positions, squeeze = [], []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                positions.append(np.array([int(k) + n if k < 0 else int(k)]))
                squeeze.append(axis)
            elif isinstance(k, slice):
                positions.append(np.arange(n)[k])
            else:
                k = np.asarray(k, dtype=np.intp).reshape(-1)
                positions.append(np.where(k < 0, k + n, k))
        out = self.read(positions)
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out

    def read(self, positions: list[np.ndarray]) -> np.ndarray:
        """The outer product of ``positions`` (one int array per axis), as a new array."""
        index = self.index
        out = np.empty(tuple(len(p) for p in positions), dtype=self.dtype)
        if out.size == 0:
            return out
        inner_axes = [a for a in range(len(self.shape)) if a not in self.grid_axes]
        inner_shape = [self.shape[a] for a in inner_axes]
        inner = [positions[a] for a in inner_axes]
        whole = [np.array_equal(p, np.arange(self.shape[a])) for p, a in zip(inner, inner_axes)]
        if sum(not w for w in whole) <= 1:  # numpy keeps a single integer array's axis in place
            inner_key: Any = tuple(slice(None) if w else p for p, w in zip(inner, whole))
        else:
            inner_key = np.ix_(*inner)
        grid = [enumerate(positions[a].tolist()) for a in self.grid_axes]
        strides = np.cumprod((1, *index.grid[::-1]))[::-1][1:]
        grid_strides = [int(strides[a]) for a in self.grid_axes]
        for combo in itertools.product(*grid):
            target: list[Any] = [slice(None)] * out.ndim
            flat = 0
            where = []
            for a, (j, p), stride in zip(self.grid_axes, combo, grid_strides):
                target[a] = j
                flat += p * stride
                where.append(f"{index.dims[a]}={p}")
            values = self.source.file.decoded(index, flat, ", ".join(where))
            if values is None:
                out[tuple(target)] = index.fill
                continue
            out[tuple(target)] = values.reshape(inner_shape)[inner_key]
        return out
