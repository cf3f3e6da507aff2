"""The DataLoader factory: :func:`to_torch` joins the Dataset, the sampler and the collate step."""

from __future__ import annotations

from typing import Any

import torch
import xarray as xr
from torch.utils.data import DataLoader

from .dataset import NAT4TorchDataset, collate
from .sampling import StimBatchSampler

__all__ = ["to_torch"]


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
