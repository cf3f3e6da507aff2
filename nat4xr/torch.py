"""Masked batches for PyTorch: a map-style Dataset over stims and a DataLoader factory.

Each batch is read with a single indexing call into the xarray Dataset (the
batch's stims only, up to the largest repeat count among them), so an
estimation-only batch never reads the repeat padding. Batches carry the keys of
deepSTRF's ``neural_collate``: ``stims``, ``responses`` (NaN-padded),
``valid_mask`` and ``stim_meta``, plus the ``stim`` and ``neuron`` ids.

Datasets backed by a netCDF file travel to worker processes as the file path
plus the selection, and each worker opens its own handle.

Examples
--------
>>> import nat4xr
>>> from nat4xr.torch import to_torch
>>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=5, n_time=10)
>>> batch = next(iter(to_torch(ds, batch_size=3)))
>>> tuple(batch["responses"].shape), batch["stim_meta"][0]["subset"]
((3, 5, 1, 10), 'est')
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .batches import (
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
from .schema import RESPONSE_DIMS

try:
    import torch
    from torch.utils.data import DataLoader, Sampler, get_worker_info
    from torch.utils.data import Dataset as _TorchDataset
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "nat4xr.torch needs PyTorch, which is not installed: pip install nat4xr[torch]"
    ) from err

__all__ = [
    "NAT4TorchDataset",
    "StimBatchSampler",
    "collate",
    "masked_mse",
    "masked_poisson_nll",
    "predict",
    "to_torch",
]


def _parallel(task: Callable[[int], None], n: int) -> None:
    """Run ``task(i)`` for ``i < n`` on up to ``torch.get_num_threads()`` threads.

    The work (NumPy copies) releases the GIL. Inside DataLoader worker
    processes (which PyTorch limits to one thread each) it runs inline.
    """
    if get_worker_info() is not None:
        sequential(task, n)
    else:
        threaded(torch.get_num_threads())(task, n)


def _shared_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """In a DataLoader worker, an array in shared memory (sending it copies nothing)."""
    if get_worker_info() is None:
        return None
    torch_dtype = {np.dtype(np.float32): torch.float32, np.dtype(bool): torch.bool}.get(dtype)
    if torch_dtype is None:
        return None
    return torch.empty(shape, dtype=torch_dtype).share_memory_().numpy()


def _buffers() -> Buffers:
    return Buffers(run=_parallel, allocate=_shared_array)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """The tensor over ``array``'s memory (the shared-memory tensor in a worker)."""
    base = array.base
    if isinstance(base, torch.Tensor) and tuple(base.shape) == array.shape:
        return base
    return torch.from_numpy(array)


# --------------------------------------------------------------------------- dataset


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
            stim_dims = ("stim", "freq", "time")
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
        self.storage_groups = storage_groups(ds, file_src)
        self._buffers = _buffers()

    @property
    def file_backed(self) -> bool:
        """True when responses are read from the netCDF file (reopened per process)."""
        return isinstance(self._sources[0], FileSource)

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
        for i, pos in enumerate(positions):
            reps = int(self._n_repeats[pos])
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
            "responses": _tensor(resp).to(self.dtype),
            "valid_mask": _tensor(mask),
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


# --------------------------------------------------------------------------- sampling


class StimBatchSampler(Sampler):
    """Yields lists of stim positions, one list per batch, each sorted.

    Without ``sampler``: sequential, or shuffled when ``shuffle`` is set. A
    shuffle is an exact permutation when the data are in memory; when they are
    lazily backed (``groups`` given), the order of the storage chunks is
    shuffled and stims are shuffled within windows of ``shuffle_buffer``
    chunks, so each read touches few chunks. Every epoch (each ``iter``) gets
    a new order derived from ``seed`` and the epoch number.

    Parameters
    ----------
    n : int
        Number of stims.
    batch_size : int
        Stims per batch.
    shuffle : bool
        Shuffle each epoch.
    seed : int, optional
        Seed of the shuffle; drawn from torch's generator when omitted (so
        ``torch.manual_seed`` makes it reproducible).
    drop_last : bool
        Drop the last, incomplete batch.
    sampler : iterable of int, optional
        Gives the stim order instead (e.g. a ``DistributedSampler``).
    groups : list of ndarray, optional
        Stim positions per storage chunk.
    shuffle_buffer : int or None
        Chunks shuffled together; None for an exact permutation.

    Examples
    --------
    >>> s = StimBatchSampler(5, 2, shuffle=True, seed=0)
    >>> sorted(i for b in s for i in b)
    [0, 1, 2, 3, 4]
    >>> list(StimBatchSampler(5, 2))
    [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self,
        n: int,
        batch_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        sampler: Any = None,
        groups: list[np.ndarray] | None = None,
        shuffle_buffer: int | None = 4,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError(
                "shuffle=True cannot be combined with sampler=: shuffle in the sampler"
            )
        if shuffle_buffer is not None and shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1 or None, got {shuffle_buffer!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.n = int(n)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.sampler = sampler
        self.groups = groups
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (forwarded to ``sampler``)."""
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """Stim positions of one epoch, before batching."""
        if self.sampler is not None:
            return np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        if not self.shuffle:
            return np.arange(self.n)
        seed = self.seed
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        rng = np.random.default_rng([seed, epoch])
        if self.groups is None or self.shuffle_buffer is None:
            return rng.permutation(self.n)
        groups = [self.groups[g] for g in rng.permutation(len(self.groups))]
        parts = []
        for start in range(0, len(groups), self.shuffle_buffer):
            window = np.concatenate(groups[start : start + self.shuffle_buffer])
            parts.append(rng.permutation(window))
        return np.concatenate(parts) if parts else np.arange(0)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        order = self.order(epoch)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield sorted(int(i) for i in chunk)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else self.n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def to_torch(
    ds: xr.Dataset,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    dtype: torch.dtype = torch.float32,
    fill: float = float("nan"),
    sampler: Any = None,
    shuffle_buffer: int | None = 4,
    multiprocessing_context: Any = None,
    waveform: bool | str = "auto",
    preload: bool = False,
    **loader_kwargs: Any,
) -> DataLoader:
    """A ``torch.utils.data.DataLoader`` of masked batches over the stims of ``ds``.

    Each batch is read with one indexing call (see :class:`NAT4TorchDataset`)
    and is a dict with ``stims`` (B, 1, F, T) (or waveforms (B, 1, T_audio)),
    ``responses`` (B, N, R, T) NaN-padded with R the largest repeat count in
    the batch, ``valid_mask`` (B, N, R, T) bool, ``stim_meta`` (B dicts),
    ``stim`` and ``neuron`` (ids).

    Parameters
    ----------
    ds : xarray.Dataset
        A nat4xr Dataset, in memory, dask-backed or lazily backed by netCDF.
    batch_size : int
        Stims per batch.
    shuffle : bool
        Shuffle the stims every epoch (chunk-aware on lazily backed data).
    seed : int, optional
        Seed of the shuffle; each epoch derives its order from seed and epoch.
    drop_last : bool
        Drop the last, incomplete batch.
    num_workers : int
        Worker processes; file-backed data are reopened in each of them.
    pin_memory : bool
        Passed to the DataLoader.
    dtype : torch.dtype
        Floating dtype of ``stims`` and ``responses``.
    fill : float
        Value of responses where there is no data; ``valid_mask`` stays exact.
    sampler : iterable of int, optional
        Stim order, e.g. ``DistributedSampler(range(ds.sizes["stim"]), ...)``.
    shuffle_buffer : int or None
        Storage chunks shuffled together on lazily backed data; None gives an
        exact permutation always.
    multiprocessing_context : str or context, optional
        'fork', 'spawn', ...; used when ``num_workers > 0``.
    waveform : bool or "auto"
        Give waveforms instead of spectrograms (``"auto"``: when present).
    preload : bool
        Read the selection's ``response`` into memory once, before the first
        batch. Worth it for a small selection of compressed (estimation)
        sounds trained over many epochs, or a Dataset whose ``response`` is
        computed by dask on the fly: batches then cost a memory copy. Sounds
        with repeats are stored unfiltered in the cache and read about as fast
        lazily. Off by default, so nothing is read until asked for; the loaded
        size is the selection's padded size.
    **loader_kwargs
        Other DataLoader arguments (``persistent_workers``, ``prefetch_factor``...).

    Returns
    -------
    torch.utils.data.DataLoader
        ``loader.dataset`` is the :class:`NAT4TorchDataset`, ``loader.batch_sampler``
        the :class:`StimBatchSampler` (``set_epoch`` available).

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=4, n_time=6)
    >>> loader = to_torch(ds, batch_size=2, shuffle=True, seed=0)
    >>> sorted(s for b in loader for s in b["stim"]) == sorted(ds.stim.values.tolist())
    True
    """
    for key in ("batch_sampler", "collate_fn", "dataset"):
        if key in loader_kwargs:
            raise TypeError(f"to_torch sets {key} itself; build a DataLoader directly instead")
    if preload:
        # a new in-memory array (the input stays lazy), no longer tied to the file
        ds = ds.assign(response=ds["response"].compute().drop_encoding())
    data = NAT4TorchDataset(ds, waveform=waveform, dtype=dtype, fill=fill)
    batches = StimBatchSampler(
        len(data),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
        sampler=sampler,
        groups=data.storage_groups,
        shuffle_buffer=shuffle_buffer,
    )
    if num_workers > 0 and multiprocessing_context is not None:
        loader_kwargs["multiprocessing_context"] = multiprocessing_context
    return DataLoader(
        data,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        **loader_kwargs,
    )


# --------------------------------------------------------------------------- prediction


def predict(
    model: Callable[[torch.Tensor], torch.Tensor],
    ds: xr.Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    stims: Sequence[Any] | None = None,
    name: str = "prediction",
    **loader_kwargs: Any,
) -> xr.DataArray:
    """Run ``model`` over the stims of ``ds`` and return its output as labelled data.

    The model sees exactly what a training loop over :func:`to_torch` gives
    it: ``batch["stims"]``, (B, 1, F, T) spectrograms (or waveforms when the
    Dataset has them, see ``waveform``). It runs in eval mode under
    ``torch.no_grad()``; the training flags of the model and of every
    submodule are restored afterwards, also when the model raises. Each
    batch's output is written into one preallocated array at its stims'
    positions, so memory holds the output and one batch, whatever the order
    the batches arrive in (workers, ``shuffle``).

    Parameters
    ----------
    model : torch.nn.Module or callable
        Maps ``stims`` (B, 1, F, T) to responses (B, N, T) or (B, N, 1, T),
        with N the Dataset's neurons and T its time bins, as torch tensors on
        any device.
    ds : xarray.Dataset
        A nat4xr Dataset: in memory, dask-backed or lazily backed by a file.
    batch_size : int
        Stims per batch.
    device : str or torch.device, optional
        Where the inputs go; by default the device of the model's first
        parameter (or buffer), the CPU for a model without any.
    num_workers : int
        DataLoader worker processes reading the batches.
    stims : sequence of stim ids, optional
        Predict these stims only, in this order (labels, as ``ds.sel``).
    name : str
        Name of the returned DataArray.
    **loader_kwargs
        Passed to :func:`to_torch` (``multiprocessing_context``, ``waveform``,
        ``dtype``, ``pin_memory``...). ``drop_last`` and ``sampler`` would
        leave stims out and are refused.

    Returns
    -------
    xarray.DataArray
        float32 with dims (stim, neuron, time), the Dataset's ``stim``,
        ``neuron`` and ``time`` coordinates and every other 1-D coordinate
        along them (``subset``, ``n_repeats``, ``area``, ...). NaN where the
        cell has no data for the stim (``coverage`` False), so metrics
        against ``response`` see the same cells. ``attrs`` keep the
        Dataset's and record the model (``model``, ``model_class``,
        ``model_parameters``, ``nat4xr_version``).

    Raises
    ------
    ValueError
        When the model's output is not a tensor of shape (B, N, T) or
        (B, N, 1, T); the message gives the expected and the returned shape.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3, n_time=10)
    >>> # per time bin, the 4 frequency bands -> the 3 neurons
    >>> model = torch.nn.Sequential(torch.nn.Flatten(1, 2), torch.nn.Conv1d(4, 3, 1))
    >>> pred = predict(model, ds, batch_size=4)
    >>> pred.dims, pred.shape, pred.dtype
    (('stim', 'neuron', 'time'), (6, 3, 10), dtype('float32'))
    >>> bool((pred.isnull().all("time") == ~ds.coverage).all())  # NaN where no data
    True
    >>> pred.attrs["model"], model.training
    ('Sequential', True)
    """
    for key in ("drop_last", "sampler"):
        if loader_kwargs.get(key):
            raise TypeError(f"predict reads every stim; {key}= would leave some out")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    if stims is not None:
        wanted = [stims] if isinstance(stims, str) else list(stims)
        if len(set(wanted)) != len(wanted):
            raise ValueError("stims= lists some stim ids more than once")
        missing = [s for s in wanted if s not in ds.indexes["stim"]]
        if missing:
            raise KeyError(f"stims not in this Dataset: {missing[:5]} (of {len(missing)})")
        ds = ds.sel(stim=wanted)
    loader = to_torch(ds, batch_size=batch_size, num_workers=num_workers, **loader_kwargs)
    n_stim, n_neuron, n_time = ds.sizes["stim"], ds.sizes["neuron"], ds.sizes["time"]
    coverage = _coverage(ds)
    where = {stim: i for i, stim in enumerate(loader.dataset.stims)}
    out = np.full((n_stim, n_neuron, n_time), np.nan, dtype=np.float32)
    if device is None:
        device = _model_device(model)
    with _eval_mode(model), torch.no_grad():
        for batch in loader:
            result = model(batch["stims"].to(device))
            values = _prediction_values(result, len(batch["stim"]), n_neuron, n_time)
            rows = np.array([where[stim] for stim in batch["stim"]], dtype=np.intp)
            # Mask by coverage: the model predicts every cell, data exist for some.
            if coverage is not None:
                cov = coverage[rows]
            else:
                cov = batch["valid_mask"].numpy().any(axis=(2, 3))
            out[rows] = np.where(cov[:, :, None], values, np.float32(np.nan))
            # Dropped before the next read, so the adapter can reuse this batch's memory.
            del batch, result, values
    return xr.DataArray(
        out,
        dims=("stim", "neuron", "time"),
        coords=_output_coords(ds),
        name=name,
        attrs={**ds.attrs, **_model_attrs(model)},
    )


def _coverage(ds: xr.Dataset) -> np.ndarray | None:
    """The (stim, neuron) coverage in memory, None if the Dataset has none."""
    if "coverage" not in ds.variables:
        return None  # the batches' valid_mask says it instead
    cov = ds["coverage"].transpose("stim", "neuron")
    if hasattr(cov.data, "dask"):
        return np.asarray(cov.data.compute(scheduler="synchronous"), dtype=bool)
    return np.asarray(cov.values, dtype=bool)


def _output_coords(ds: xr.Dataset) -> dict[str, xr.Variable]:
    """The stim, neuron and time ids and every 1-D coordinate along those dims."""
    coords = {}
    for name in ds.coords:
        var = ds.variables[name]
        if var.dims in (("stim",), ("neuron",), ("time",)):
            data = var.data
            if hasattr(data, "dask"):  # tiny metadata: read it here, not on a cluster
                data = data.compute(scheduler="synchronous")
            coords[name] = xr.Variable(var.dims, np.asarray(data), attrs=var.attrs)
    return coords


def _model_attrs(model: Any) -> dict[str, Any]:
    """Provenance of a prediction: which model made it (netCDF-safe values)."""
    from ._version import __version__

    kind = type(model)
    attrs: dict[str, Any] = {
        "model": kind.__name__,
        "model_class": f"{kind.__module__}.{kind.__qualname__}",
        "nat4xr_version": __version__,
    }
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        attrs["model_parameters"] = int(sum(p.numel() for p in parameters()))
    return attrs


def _model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU without either."""
    for get in ("parameters", "buffers"):
        tensors = getattr(model, get, None)
        first = next(iter(tensors()), None) if callable(tensors) else None
        if first is not None:
            return first.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put a module in eval mode; restore every submodule's training flag on exit."""
    modules = getattr(model, "modules", None)
    if not callable(modules):  # a plain function has no mode
        yield
        return
    flags = [(module, module.training) for module in modules()]
    model.eval()
    try:
        yield
    finally:
        # The model's own train() first (it may do more than set flags), then
        # each flag as it was: a submodule frozen in eval stays in eval.
        model.train(flags[0][1])
        for module, flag in flags:
            if module.training != flag:
                module.training = flag


def _prediction_values(result: Any, n_batch: int, n_neuron: int, n_time: int) -> np.ndarray:
    """The model's output for one batch as a (B, N, T) float32 array on the CPU."""
    expected = (
        f"(B, N, T) = ({n_batch}, {n_neuron}, {n_time}) or "
        f"(B, N, 1, T) = ({n_batch}, {n_neuron}, 1, {n_time}) for a batch of "
        f"{n_batch} stims, {n_neuron} neurons and {n_time} time bins"
    )
    if not isinstance(result, torch.Tensor):
        raise ValueError(
            f"the model returned a {type(result).__name__}; predict expects a "
            f"torch.Tensor of shape {expected}"
        )
    shape = tuple(result.shape)
    if len(shape) == 4 and shape[2] == 1:
        result = result[:, :, 0]
    if tuple(result.shape) != (n_batch, n_neuron, n_time):
        raise ValueError(f"the model returned shape {shape}; predict expects {expected}")
    return result.detach().to(device="cpu", dtype=torch.float32).numpy()


# --------------------------------------------------------------------------- losses


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is True.

    NaN in ``target`` (or anything in ``pred``) where the mask is False
    changes neither the loss nor its gradient. ``pred`` broadcasts against
    ``target`` (e.g. one prediction for all repeats). Zero when nothing is valid.

    Parameters
    ----------
    pred, target : Tensor
        Prediction and observed responses.
    mask : Tensor of bool
        True where ``target`` is valid (``batch["valid_mask"]``).

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> t = torch.tensor([1.0, float("nan"), 3.0])
    >>> masked_mse(torch.tensor([2.0, 0.0, 3.0]), t, ~torch.isnan(t))
    tensor(0.5000)
    """
    pred, target, mask = torch.broadcast_tensors(pred, target, mask)
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    diff = torch.where(mask, pred, zero) - torch.where(mask, target, zero)
    return _masked_mean(diff * diff, mask)


def masked_poisson_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    log_input: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Poisson negative log-likelihood over the entries where ``mask`` is True.

    Same terms as ``torch.nn.functional.poisson_nll_loss`` (without the
    Stirling term): ``exp(pred) - target * pred`` when ``log_input``, else
    ``pred - target * log(pred + eps)``, averaged over valid entries. Invalid
    entries affect neither the loss nor the gradient.

    Parameters
    ----------
    pred : Tensor
        Predicted rate (or log-rate when ``log_input``).
    target : Tensor
        Observed counts; NaN allowed where ``mask`` is False.
    mask : Tensor of bool
        True where ``target`` is valid.
    log_input : bool
        ``pred`` is a log-rate.
    eps : float
        Added inside the log when ``log_input`` is False.

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> t = torch.tensor([2.0, float("nan")])
    >>> masked_poisson_nll(torch.tensor([0.0, 5.0]), t, ~torch.isnan(t), log_input=True)
    tensor(1.)
    """
    pred, target, mask = torch.broadcast_tensors(pred, target, mask)
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    target = torch.where(mask, target, zero)
    if log_input:
        pred = torch.where(mask, pred, zero)
        values = torch.exp(pred) - target * pred
    else:
        pred = torch.where(mask, pred, torch.ones((), dtype=pred.dtype, device=pred.device))
        values = pred - target * torch.log(pred + eps)
    return _masked_mean(values, mask)
