"""The batch sampler: one sorted list of stim positions per batch, chunk-aware shuffles."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["StimBatchSampler"]


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
