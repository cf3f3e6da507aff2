"""The map-style Dataset over stims and the assembly of its batches.

:class:`NAT4TorchDataset` reads a whole batch with one call to the sources of
:mod:`nat4xr.batches` (a cache file's chunks, or xarray indexing) and turns it
into tensors; :func:`collate` hands that batch to the DataLoader, or stacks
single items. The per-process helpers below run the batch copies on torch's
threads in the main process and inline in DataLoader workers. A worker's
batch arrays come from its own recycled pool; PyTorch copies each batch into
shared memory as it sends it (allocating the arrays in shared memory instead
measured no faster with PyTorch's public ``share_memory_``, which copies too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset as _TorchDataset
from torch.utils.data import get_worker_info

from ..batches import (
    MASK,
    MASKED_ROWS,
    Buffers,
    FileSource,
    MemorySource,
    file_source,
    sequential,
    storage_groups,
    threaded,
)
from ..schema import RESPONSE_DIMS, spectrogram_dims

__all__ = ["NAT4TorchDataset", "collate"]


def _parallel(task: Callable[[int], None], n: int) -> None:
    """Run ``task(i)`` for ``i < n`` on up to ``torch.get_num_threads()`` threads.

    The work (NumPy copies) releases the GIL. Inside DataLoader worker
    processes (which PyTorch limits to one thread each) it runs inline.
    """
    if get_worker_info() is not None:
        sequential(task, n)
    else:
        threaded(torch.get_num_threads())(task, n)


def _buffers() -> Buffers:
    return Buffers(run=_parallel)


class _Batch(list):
    """Per-item dicts of one batch, plus the assembled batch for :func:`collate`."""

    batch: dict[str, Any]


class NAT4TorchDataset(_TorchDataset):
    """Map-style PyTorch Dataset over the stims of a nat4xr Dataset.

    Works on any Dataset of the contract: eager, dask-backed or lazily backed
    by a netCDF file, selected or concatenated. Nothing is read until items are
    asked for, and :meth:`__getitems__` reads a whole batch with one indexing
    call (the batch's stims, repeats up to the largest ``n_repeats`` among them).

    Parameters
    ----------
    ds : xarray.Dataset
        A nat4xr Dataset.
    waveform : bool or "auto"
        Give waveforms ``(1, T_audio)`` as ``stims`` instead of spectrograms.
        ``"auto"`` uses the ``waveform`` variable when the Dataset has one.
    dtype : torch.dtype
        Floating dtype of ``stims`` and ``responses``.
    fill : float
        Value of responses where there is no data (NaN by default);
        ``valid_mask`` is exact either way.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4, n_time=6)
    >>> data = NAT4TorchDataset(ds)
    >>> len(data), tuple(data[4]["responses"].shape) == (4, int(ds.n_repeats[4]), 6)
    (5, True)
    >>> batch = collate(data.__getitems__([0, 3]))
    >>> batch["stim"] == [str(ds.stim[0].values), str(ds.stim[3].values)]
    True
    """

    def __init__(
        self,
        ds: xr.Dataset,
        *,
        waveform: bool | str = "auto",
        dtype: torch.dtype = torch.float32,
        fill: float = float("nan"),
    ) -> None:
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
        if "response" not in ds.data_vars or set(ds["response"].dims) != set(RESPONSE_DIMS):
            raise ValueError(
                "not a nat4xr Dataset: need response (stim, neuron, repeat, time); "
                "open it with nat4xr.open_nat4"
            )
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype, got {dtype}")
        if waveform not in (True, False, "auto"):
            raise ValueError(f"waveform must be True, False or 'auto', got {waveform!r}")
        use_wave = "waveform" in ds.data_vars if waveform == "auto" else bool(waveform)
        self.stim_var = "waveform" if use_wave else "spectrogram"
        if self.stim_var not in ds.data_vars:
            remedy = (
                "build the Dataset with waveform=True"
                if use_wave
                else "the Dataset needs a spectrogram (stim, freq, time) variable"
            )
            raise ValueError(f"Dataset has no {self.stim_var!r} variable: {remedy}")
        self.dtype = dtype
        self.fill = float(fill)
        stim_dims = ds[self.stim_var].dims
        if "stim" not in stim_dims:
            raise ValueError(f"{self.stim_var} has dims {stim_dims}, expected a 'stim' dim")
        if self.stim_var == "spectrogram":
            stim_dims = spectrogram_dims(ds).dims
        else:
            stim_dims = ("stim", *(d for d in stim_dims if d != "stim"))
        dims = {"response": RESPONSE_DIMS, self.stim_var: stim_dims}
        self.stims: list[str] = [str(s) for s in ds["stim"].values]
        self.neurons: list[str] = [str(n) for n in ds["neuron"].values]
        n_rep = ds.sizes["repeat"]
        if "n_repeats" in ds.coords:
            reps = np.asarray(ds["n_repeats"].values, dtype=np.int64)
            self._n_repeats = np.clip(reps, 1, n_rep)
        else:
            self._n_repeats = np.full(len(self.stims), n_rep, dtype=np.int64)
        self.stim_meta = _stim_meta(ds)
        file_src = file_source(ds, dims)
        rest = {k: v for k, v in dims.items() if file_src is None or k not in file_src.dims}
        self._sources: list[FileSource | MemorySource] = [file_src] if file_src else []
        if rest:
            self._sources.append(MemorySource(ds, rest))
        # The arrays the file serves, by the dask names they had: an assignment
        # into one (``ds.response[...] = x``) renames that very object, and from
        # then on the Dataset itself is read instead (see _follow_edits).
        self._file_vars = list(file_src.dims) if file_src else []
        self._file_arrays = [(ds[name].data, ds[name].data.name) for name in self._file_vars]
        # the Dataset's variables as they are now (replacing one in ``ds`` later is not
        # seen, as the in-memory source does not see it; changing one in place is)
        self._general = (ds[list(dims)], dims) if file_src else None
        if file_src is not None:
            # A stim's repeats as the file stores them, if the coordinate says fewer.
            stored = file_src.stored_repeats()
            self._n_repeats = np.clip(np.maximum(self._n_repeats, stored), 1, n_rep)
        self.storage_groups = storage_groups(ds)
        self._buffers = _buffers()

    @property
    def file_backed(self) -> bool:
        """True when responses are read from the netCDF file (reopened per process)."""
        self._follow_edits()
        return isinstance(self._sources[0], FileSource)

    def _follow_edits(self) -> None:
        """Read the Dataset itself from now on if the values the file serves changed in it.

        An assignment into the dask array renames that very object; loading
        in place (``ds.load()``) or setting a variable's ``.data`` leaves the
        variable holding another object. A variable replaced in the Dataset
        (``ds["response"] = ...``) is another variable: the loader keeps the
        one it was made with, as it does for values in memory.
        """
        if not self._file_arrays:
            return
        ds, dims = self._general
        changed = any(
            a.name != name or ds.variables[var].data is not a
            for var, (a, name) in zip(self._file_vars, self._file_arrays)
        )
        if changed:
            for source in self._sources:
                if isinstance(source, FileSource):
                    source.close()
            self._sources = [MemorySource(ds, dims)]
            self._file_arrays, self._general = [], None

    def __getstate__(self) -> dict[str, Any]:
        self._follow_edits()  # decided here, in this process, before workers get a copy
        state = self.__dict__.copy()
        # the file's handle is what travels
        state["_file_arrays"], state["_file_vars"], state["_general"] = [], [], None
        return state

    def __len__(self) -> int:
        return len(self.stims)

    def close(self) -> None:
        """Close the file handle this process opened, if any (reopened on next read)."""
        for source in self._sources:
            if isinstance(source, FileSource):
                source.close()

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        """Read the stims ``indices`` with one indexing call; see :func:`collate`."""
        batch, positions = self._read(indices)
        items = _Batch()
        n_rep = batch["responses"].shape[2]
        for i, pos in enumerate(positions):
            reps = int(self._n_repeats[pos])
            if reps < n_rep:  # keep any later repeat that holds values (moved there)
                tail = batch["valid_mask"][i, :, reps:]
                if bool(tail.any()):
                    held = torch.nonzero(tail.any(dim=0).any(dim=-1)).flatten()
                    reps += int(held[-1]) + 1
            items.append(
                {
                    "stims": batch["stims"][i],
                    "responses": batch["responses"][i, :, :reps],
                    "valid_mask": batch["valid_mask"][i, :, :reps],
                    "stim_meta": batch["stim_meta"][i],
                    "stim": batch["stim"][i],
                    "neuron": batch["neuron"],
                }
            )
        items.batch = batch
        return items

    def read_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The batch of stims ``indices`` as a dict of tensors (one read).

        Parameters
        ----------
        indices : sequence of int
            Stim positions; the batch keeps this order.

        Returns
        -------
        dict
            ``stims``, ``responses``, ``valid_mask``, ``stim_meta``, ``stim``,
            ``neuron``.

        Examples
        --------
        >>> import nat4xr
        >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=5)
        >>> b = NAT4TorchDataset(ds).read_batch([2, 0])
        >>> b["responses"].shape[2] == int(ds.n_repeats[2]), b["stim_meta"][0]["subset"]
        (True, 'val')
        """
        return self._read(indices)[0]

    def _read(self, indices: Sequence[int]) -> tuple[dict[str, Any], np.ndarray]:
        self._follow_edits()
        n = len(self.stims)
        idx = np.asarray(list(indices), dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise IndexError("empty batch: no stim index given")
        if (idx >= n).any() or (idx < -n).any():
            raise IndexError(f"stim index out of range for {n} stims: {idx.tolist()}")
        idx = np.where(idx < 0, idx + n, idx)
        uniq, inverse = np.unique(idx, return_inverse=True)
        n_rep = int(self._n_repeats[uniq].max())
        arrays = {}
        # A forked worker must not reach the parent's thread pool or dask cluster.
        scheduler = "synchronous" if get_worker_info() is not None else None
        for source in self._sources:
            arrays.update(source.read(uniq, n_rep, self._buffers, scheduler))
        mask = arrays.pop(MASK, None)
        known = np.zeros(len(uniq), bool)  # rows whose mask a source filled
        known[np.asarray(arrays.pop(MASKED_ROWS, ()), dtype=np.intp)] = True
        if not np.array_equal(uniq, idx):
            arrays = {k: v[inverse] for k, v in arrays.items()}
            mask = mask[inverse] if mask is not None else None
            known = known[inverse]
        resp = _writable(arrays["response"])
        if mask is None:
            mask = self._buffers.empty(resp.shape, bool)

        def valid(i: int) -> None:  # False exactly at NaN
            if not known[i]:
                np.equal(resp[i], resp[i], out=mask[i])
            if not math.isnan(self.fill):
                np.copyto(resp[i], np.float32(self.fill), where=~mask[i])

        _parallel(valid, len(resp))
        stims = torch.from_numpy(_writable(arrays[self.stim_var])).to(self.dtype).unsqueeze(1)
        return {
            "stims": stims,
            "responses": torch.from_numpy(resp).to(self.dtype),
            "valid_mask": torch.from_numpy(mask),
            "stim_meta": [dict(self.stim_meta[i]) for i in idx],
            "stim": [self.stims[i] for i in idx],
            "neuron": list(self.neurons),
        }, idx


def _writable(array: np.ndarray) -> np.ndarray:
    """C-contiguous, writable float32 (torch shares its memory); ``array`` itself if it is."""
    if (
        isinstance(array, np.ndarray)
        and array.dtype == np.float32
        and array.flags.c_contiguous
        and array.flags.writeable
    ):
        return array
    out = np.ascontiguousarray(array, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def _stim_meta(ds: xr.Dataset) -> list[dict[str, Any]]:
    """One dict per stim: ``name``, ``subset`` and every other stim coordinate."""
    names = [c for c in ds.coords if ds[c].dims == ("stim",) and c != "stim"]
    names.sort(key=lambda c: (c != "subset", list(ds.coords).index(c)))
    columns = {c: np.asarray(ds[c].values) for c in names}
    meta = []
    for i, stim in enumerate(ds["stim"].values):
        entry: dict[str, Any] = {"name": str(stim)}
        for c, values in columns.items():
            value = values[i]
            entry[c] = value.item() if hasattr(value, "item") else value
        meta.append(entry)
    return meta


def collate(data: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Assemble a batch dict from :meth:`NAT4TorchDataset.__getitems__` output or items.

    A list returned by ``__getitems__`` already holds its batch (read in one
    call) and is passed through. A plain list of items (from ``dataset[i]``)
    is stacked, with responses NaN-padded to the largest repeat count.

    Parameters
    ----------
    data : sequence of dict
        Items, or the result of ``__getitems__``.

    Returns
    -------
    dict
        ``stims`` (B, 1, F, T), ``responses`` (B, N, R, T), ``valid_mask``
        (B, N, R, T), ``stim_meta``, ``stim``, ``neuron``.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=3, n_time=5)
    >>> data = NAT4TorchDataset(ds)
    >>> b = collate([data[0], data[2]])
    >>> b["responses"].shape[2] == int(ds.n_repeats[2]), bool(b["valid_mask"][0, :, 1:].any())
    (True, False)
    """
    batch = getattr(data, "batch", None)
    if batch is not None:
        return batch
    if not data:
        raise ValueError("collate got an empty batch")
    n_rep = max(item["responses"].shape[1] for item in data)
    responses, masks = [], []
    for item in data:
        resp, mask = item["responses"], item["valid_mask"]
        pad = n_rep - resp.shape[1]
        if pad:
            shape = (resp.shape[0], pad, resp.shape[2])
            resp = torch.cat([resp, torch.full(shape, float("nan"), dtype=resp.dtype)], 1)
            mask = torch.cat([mask, torch.zeros(shape, dtype=torch.bool)], 1)
        responses.append(resp)
        masks.append(mask)
    return {
        "stims": torch.stack([item["stims"] for item in data]),
        "responses": torch.stack(responses),
        "valid_mask": torch.stack(masks),
        "stim_meta": [dict(item["stim_meta"]) for item in data],
        "stim": [item["stim"] for item in data],
        "neuron": list(data[0]["neuron"]),
    }
