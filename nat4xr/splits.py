"""Cross-validation folds and early-stopping holdouts, recorded as stim coordinates.

A split is data: :func:`assign_folds` and :func:`assign_holdout` write it into
the Dataset as a ``fold`` (int) or ``holdout`` (float) stim coordinate, so it
travels with the sounds through selection, concatenation and the cache, and
the same call gives the same split in every process (no global random
state). Only estimation sounds are split; validation sounds are the test set
and belong to no split: ``fold`` 0, ``holdout`` NaN. A validation sound is
never "not held out", so ``sel_stims(holdout=False)`` cannot train on it.

The paper's other experiments are splits too: :func:`assign_heldout_site`
marks the cells a population model is pre-trained on (a bool ``pretrain``
neuron coordinate, held-out site or matched control), and
:func:`subsample_est` keeps a nested fraction of the estimation sounds.

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

import json
import zlib

import numpy as np
import xarray as xr

from .selection import metadata_values

__all__ = ["assign_folds", "assign_heldout_site", "assign_holdout", "subsample_est"]


def _est_order(ds: xr.Dataset, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the est stims, and their shuffled rank (from the ids, not the order)."""
    if "subset" not in ds.coords:
        raise ValueError("the Dataset has no 'subset' stim coordinate to find estimation sounds")
    est = np.flatnonzero(metadata_values(ds["subset"]).astype(str) == "est")
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


# -- neuron splits: a held-out recording site ----------------------------------------------------


def _site_cells(ds: xr.Dataset, site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neuron ids, the held-out site's cells and the other sites' cells (bool, Dataset order)."""
    if "site" not in ds.coords or ds["site"].dims != ("neuron",):
        raise ValueError("the Dataset has no 'site' neuron coordinate to hold a site out by")
    sites = metadata_values(ds["site"]).astype(str)
    if not isinstance(site, str) or site == "" or site not in set(sites.tolist()):
        known, counts = np.unique(sites[sites != ""], return_counts=True)
        listed = ", ".join(f"{k} ({n})" for k, n in zip(known.tolist(), counts.tolist()))
        raise ValueError(
            f"site {site!r} is not in the Dataset; its sites (cells) are: {listed or 'none'}"
        )
    ids = np.asarray(ds["neuron"].values).astype(str)
    return ids, sites == site, (sites != site) & (sites != "")


def _matched_draw(
    ds: xr.Dataset,
    ids: np.ndarray,
    held: np.ndarray,
    others: np.ndarray,
    site: str,
    seed: int,
    match_on: str | None,
) -> np.ndarray:
    """Positions of the other sites' cells left out in the matched condition."""
    n_held = int(held.sum())
    cand = np.flatnonzero(others)
    cand = cand[np.argsort(ids[cand], kind="stable")]  # independent of the Dataset's order
    rng = np.random.default_rng([int(seed), 2, zlib.crc32(site.encode())])
    cand = cand[rng.permutation(len(cand))]
    if match_on is None:
        if len(cand) < n_held:
            raise ValueError(
                f"site {site!r} has {n_held} cells but only {len(cand)} cells of other sites "
                "remain to leave out in its place; a matched split is impossible here"
            )
        return cand[:n_held]
    if match_on not in ds.coords or ds[match_on].dims != ("neuron",):
        raise ValueError(f"match_on={match_on!r} is not a neuron coordinate of the Dataset")
    value = metadata_values(ds[match_on])
    if value.dtype.kind not in "iuf":
        raise ValueError(f"match_on={match_on!r} must be numeric, it holds {value.dtype}")
    value = value.astype(np.float64)
    mine = np.flatnonzero(held)
    mine = mine[np.argsort(ids[mine], kind="stable")]
    missing = ids[mine][~np.isfinite(value[mine])]
    if len(missing):
        raise ValueError(
            f"{len(missing)} cell(s) of site {site!r} have no {match_on} value to match on: "
            + ", ".join(missing[:5].tolist())
        )
    cand = cand[np.isfinite(value[cand])]
    if len(cand) < n_held:
        raise ValueError(
            f"site {site!r} has {n_held} cells but only {len(cand)} cells of other sites with "
            f"a {match_on} value remain to leave out in its place; a matched split is "
            "impossible here"
        )
    left = np.ones(len(cand), dtype=bool)
    out = np.empty(n_held, dtype=np.intp)
    for i, cell in enumerate(mine):  # nems_db's greedy rule: the nearest cell not yet taken
        dist = np.where(left, np.abs(value[cand] - value[cell]), np.inf)
        pick = int(np.argmin(dist))  # ties: the first in the seeded order
        out[i] = cand[pick]
        left[pick] = False
    return out


def assign_heldout_site(
    ds: xr.Dataset,
    site: str,
    matched: bool = False,
    seed: int = 0,
    match_on: str | None = None,
) -> xr.Dataset:
    """``ds`` with a bool ``pretrain`` neuron coordinate: the cells a model is pre-fitted on.

    The two conditions of the paper's generalization test (LBHB nems_db's
    ``loadpop.hs`` and ``loadpop.hm`` population fits):

    - ``matched=False`` (held-out site, "hs"): every cell except those of
      ``site`` pre-trains; the site's cells are left for a readout refit.
    - ``matched=True`` (matched control, "hm"): the site's cells stay in, and
      as many cells of the *other* sites are left out instead, so both
      conditions pre-train on the same number of cells.

    The matched cells are drawn without reference to the Dataset's order: the
    other sites' cells (cells of unknown site ``""`` never count) are sorted
    by id and shuffled with ``numpy.random.default_rng([seed, 2,
    crc32(site)])``; by default the first ``n`` of them are left out (``n``
    the site's cell count). With ``match_on`` (a numeric neuron coordinate,
    e.g. a ``pub_*`` per-cell r_test) nems_db's rule is followed instead:
    for each cell of the site, in id order, the not yet chosen cell with the
    nearest value (ties: the first in the shuffled order; cells without a
    value are never chosen).

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset with a ``site`` neuron coordinate (it is not modified).
    site : str
        The recording site to hold out, a value of ``ds.site``.
    matched : bool
        The matched control instead of the held-out condition.
    seed : int
        Seed of the matched draw (the held-out condition draws nothing).
    match_on : str, optional
        Neuron coordinate whose values the matched cells are chosen to be
        nearest to (nems_db matches on a reference model's per-cell r_test).

    Raises
    ------
    ValueError
        No ``site`` coordinate; a site the Dataset does not hold (the message
        lists its sites); a matched draw without enough cells of other sites.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=1, n_neurons=12, seed=1)
    >>> held = assign_heldout_site(ds, "ARM010a")
    >>> int((~held.pretrain).sum()), bool((held.site[~held.pretrain] == "ARM010a").all())
    (5, True)
    >>> matched = assign_heldout_site(ds, "ARM010a", matched=True)
    >>> int(matched.pretrain.sum()) == int(held.pretrain.sum())
    True
    >>> bool((matched.site[~matched.pretrain] != "ARM010a").all())
    True
    """
    site = str(site) if isinstance(site, str) else site  # np.str_ reads as plain text
    ids, held, others = _site_cells(ds, site)
    if matched:
        pretrain = np.ones(ds.sizes["neuron"], dtype=bool)
        pretrain[_matched_draw(ds, ids, held, others, site, seed, match_on)] = False
        rule = (
            f"all cells; {int(held.sum())} cells of other sites left out instead of site "
            f"{site}'s, "
            + (
                f"nearest in {match_on} to its cells (nems_db's greedy rule), ties by "
                if match_on
                else "the first of them sorted by id and shuffled by "
            )
            + f"default_rng([{seed}, 2, crc32({site!r})])"
        )
    else:
        pretrain = ~held
        rule = f"every cell except site {site}'s"
    attrs = {
        "long_name": "pre-trained on (held-out site test)",
        "heldout_site": site,
        "condition": "matched" if matched else "heldout",
        "rule": rule,
    }
    return ds.assign_coords(pretrain=("neuron", pretrain, attrs))


# -- reduced training sets -----------------------------------------------------------------------


def _n_kept(fraction: float, n_est: int) -> int:
    """round(fraction * n_est), halves up, at least 1 (0.15 * 20 is 3, not 4)."""
    return max(1, int(np.floor(float(fraction) * n_est + 0.5)))


def subsample_est(ds: xr.Dataset, fraction: float, seed: int = 0) -> xr.Dataset:
    """``ds`` with only ``fraction`` of its estimation sounds; validation sounds untouched.

    The estimation sounds, sorted by id, are shuffled with
    ``numpy.random.default_rng([seed, 3])`` and the first
    ``round(fraction * n_est)`` (halves up, at least one) are kept, so for one
    seed the selections are nested: the 0.25 selection lies inside the 0.5
    one, whatever the Dataset's order. Stims keep their order; no neuron is
    dropped (a cell left without est data keeps its NaN, so a sweep over
    fractions scores the same cells). Subsample the whole Dataset, then
    select: the draw depends on the est sounds present.

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset with a ``subset`` stim coordinate (not modified).
    fraction : float
        In (0, 1]; the paper's reduced-data conditions used 1, 0.5, 0.25,
        0.15 and 0.1.
    seed : int
        Seed of the shuffle.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=20, n_val=2, n_neurons=2, seed=0)
    >>> half, quarter = subsample_est(ds, 0.5), subsample_est(ds, 0.25)
    >>> (half.subset == "est").sum().item(), (quarter.subset == "est").sum().item()
    (10, 5)
    >>> set(quarter.stim.values) <= set(half.stim.values)
    True
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(
            f"fraction must be in (0, 1] (a share of the est sounds), got {fraction!r}"
        )
    est, rank = _est_order(ds, seed, 3)
    n_keep = _n_kept(fraction, len(est))
    keep = np.ones(ds.sizes["stim"], dtype=bool)
    keep[est] = rank < n_keep
    out = ds.isel(stim=np.flatnonzero(keep))
    record = {"fraction": float(fraction), "seed": int(seed), "n_est": len(est), "kept": n_keep}
    return out.assign_attrs(subsample_est=json.dumps(record))
