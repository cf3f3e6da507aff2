"""Cross-validation folds and early-stopping holdouts, recorded as stim coordinates.

A split is data: :func:`assign_folds` and :func:`assign_holdout` write it into
the Dataset as a ``fold`` (int) or ``holdout`` (float) stim coordinate, so it
travels with the sounds through selection, concatenation and the cache, and
the same call gives the same split in every process (no global random
state). Only estimation sounds are split; validation sounds are the test set
and belong to no split: ``fold`` 0, ``holdout`` NaN. A validation sound is
never "not held out", so ``sel_stims(holdout=False)`` cannot train on it.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=10, n_val=2, n_neurons=3, seed=0)
>>> ds = assign_folds(ds, 5)
>>> sorted(set(ds["fold"].values.tolist()))
[0, 1, 2, 3, 4, 5]
>>> train = ds.nat4.sel_stims(fold=[1, 2, 3, 4])  # fold 5 held out
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["assign_folds", "assign_holdout"]


def _est_order(ds: xr.Dataset, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the est stims, and their shuffled rank (from the ids, not the order)."""
    if "subset" not in ds.coords:
        raise ValueError("the Dataset has no 'subset' stim coordinate to find estimation sounds")
    est = np.flatnonzero(np.asarray(ds["subset"].values).astype(str) == "est")
    if len(est) == 0:
        raise ValueError("the Dataset has no estimation sounds (subset 'est') to split")
    ids = np.asarray(ds["stim"].values).astype(str)[est]
    by_name = np.argsort(ids, kind="stable")  # independent of the Dataset's order
    perm = np.random.default_rng([int(seed), stream]).permutation(len(est))
    rank = np.empty(len(est), dtype=np.int64)
    rank[by_name[perm]] = np.arange(len(est))
    return est, rank


def assign_folds(ds: xr.Dataset, k: int, seed: int = 0) -> xr.Dataset:
    """``ds`` with a ``fold`` stim coordinate: 1..k on estimation sounds, 0 elsewhere.

    The estimation sounds, sorted by id, are shuffled with
    ``numpy.random.default_rng([seed, 0])`` and dealt to the folds in turn, so
    fold sizes differ by at most one and the split depends only on the ids,
    ``k`` and ``seed``. Assign on the whole Dataset, then select: the
    coordinate travels with the stims.

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset (it is not modified).
    k : int
        Number of folds, at least 2.
    seed : int
        Seed of the shuffle.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=1, n_neurons=2, seed=0)
    >>> a, b = assign_folds(ds, 3), assign_folds(ds.isel(stim=slice(None, None, -1)), 3)
    >>> bool((a.fold == b.fold.sel(stim=a.stim)).all())  # the order does not matter
    True
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer of at least 2 folds, got {k!r}")
    est, rank = _est_order(ds, seed, 0)
    if len(est) < k:
        raise ValueError(f"{len(est)} estimation sounds cannot fill {k} folds")
    fold = np.zeros(ds.sizes["stim"], dtype=np.int64)
    fold[est] = rank % k + 1
    attrs = {
        "long_name": "cross-validation fold (0: not split, validation sounds)",
        "rule": f"estimation sounds sorted by id, shuffled by default_rng([{seed}, 0]), "
        f"dealt to folds 1..{k}",
    }
    return ds.assign_coords(fold=("stim", fold, attrs))


def assign_holdout(ds: xr.Dataset, fraction: float, seed: int = 0) -> xr.Dataset:
    """``ds`` with a ``holdout`` stim coordinate marking ``fraction`` of the est sounds.

    ``holdout`` is float64: 1.0 on the held-out estimation sounds (e.g. for
    early stopping), 0.0 on the estimation sounds left to train on, and NaN on
    every other sound (validation sounds, and after :func:`nat4xr.concat` the
    sounds of an input that had no holdout). The held-out sounds are the first
    ``round(fraction * n_est)`` of the estimation sounds sorted by id and
    shuffled with ``numpy.random.default_rng([seed, 1])``; at least one, and
    at least one left to train on.

    NaN is neither True nor False, so ``sel_stims(holdout=False)`` (training)
    and ``sel_stims(holdout=True)`` (early stopping) both return estimation
    sounds only. Select with those filters, or compare (``holdout == 1``);
    do not cast the coordinate to bool, which turns NaN into True.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=10, n_val=2, n_neurons=2, seed=0)
    >>> ds = assign_holdout(ds, 0.2)
    >>> int(ds["holdout"].sum()), ds.nat4.sel_stims(holdout=False).sizes["stim"]
    (2, 8)
    >>> set(ds.nat4.sel_stims(holdout=False).subset.values.tolist())
    {'est'}
    >>> ds.holdout.sel(stim=ds.stim[ds.subset == "val"]).values.tolist()
    [nan, nan]
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction!r}")
    est, rank = _est_order(ds, seed, 1)
    n_out = min(max(round(fraction * len(est)), 1), len(est) - 1)
    if n_out < 1:
        raise ValueError("one estimation sound cannot be split into training and holdout")
    # NaN off the est sounds: a validation sound is neither training nor early stopping
    holdout = np.full(ds.sizes["stim"], np.nan)
    holdout[est] = (rank < n_out).astype(np.float64)
    attrs = {
        "long_name": "held out of training (e.g. for early stopping)",
        "values": "1: held-out estimation sound, 0: estimation sound to train on, "
        "NaN: not an estimation sound (validation sounds are never split)",
        "rule": f"the first {n_out} estimation sounds sorted by id, shuffled by "
        f"default_rng([{seed}, 1])",
    }
    return ds.assign_coords(holdout=("stim", holdout, attrs))
