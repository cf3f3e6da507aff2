"""Epoch tables: where each named epoch lies, in samples.

An epoch table has one row per epoch with columns ``name``, ``start`` and
``end`` (seconds); these turn it into ``[start, end)`` sample bounds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["epoch_index", "epoch_samples"]

_NO_EPOCHS = np.zeros((0, 2), dtype=np.int64)


def epoch_samples(epochs: pd.DataFrame, name: str, fs: float) -> np.ndarray:
    """``(k, 2)`` int array ``[round(start*fs), round(end*fs))`` of epochs named ``name``.

    Examples
    --------
    >>> ep = pd.DataFrame({"name": ["X"], "start": [0.5], "end": [2.0]})
    >>> epoch_samples(ep, "X", 100).tolist()
    [[50, 200]]
    """
    return epoch_index(epochs, fs).get(name, _NO_EPOCHS)


def epoch_index(epochs: pd.DataFrame, fs: float) -> dict[str, np.ndarray]:
    """Every epoch name -> its ``(k, 2)`` sample bounds, in table order.

    Examples
    --------
    >>> ep = pd.DataFrame({"name": ["A", "B", "A"], "start": [0, 1.0, 2.0], "end": [1.0, 2, 3]})
    >>> {k: v.tolist() for k, v in epoch_index(ep, 10).items()}
    {'A': [[0, 10], [20, 30]], 'B': [[10, 20]]}
    """
    names = epochs["name"].to_numpy(dtype=object)
    bounds = np.round(epochs[["start", "end"]].to_numpy(dtype=np.float64) * fs).astype(np.int64)
    unique, inverse = np.unique(names.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1]
    return {
        str(u): b.reshape(-1, 2)
        for u, b in zip(unique, np.split(bounds[order], splits), strict=True)
    }
