"""Compare per-cell scores: paired statistics, significance rules, the leaderboard's line.

Scores are what :func:`nat4xr.evaluate` returns (variables over ``neuron``),
or a nat4xr Dataset carrying the release's own per-cell table as ``pub_*``
neuron coordinates, so a model can be put beside the published values
directly. Cells are matched by their neuron labels.

Examples
--------
>>> import numpy as np, xarray as xr
>>> a = xr.Dataset({"r_test": ("neuron", [0.5, 0.6, 0.7])}, coords={"neuron": ["c1", "c2", "c3"]})
>>> b = xr.Dataset({"r_test": ("neuron", [0.4, 0.65, 0.5])}, coords={"neuron": ["c1", "c2", "c3"]})
>>> table = compare(a, b)
>>> float(table.loc["r_test", "frac_improved"])
0.6666666666666666
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import Nat4Warning
from .selection import aligned_mask

__all__ = [
    "RULES",
    "compare",
    "holm",
    "leaderboard",
    "paired_values",
    "score_table",
    "significant",
    "sweep_dims",
]

#: Metrics where higher is better, compared by default.
PERFORMANCE = ("r_test", "r_ceiling", "cc_raw", "cc_norm", "cc_norm_schoppe")

#: Significance rules of :func:`significant`.
RULES = {
    "both": "r_test > 2 se_test and r_test > r_floor (the authors' analysis code)",
    "se": "r_test > 2 se_test",
    "floor": "r_test > r_floor",
}


def score_table(scores: xr.Dataset) -> dict[str, xr.DataArray]:
    """Per-cell numeric scores by name: data variables over ``neuron``, else ``pub_*`` coordinates.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset(coords={"neuron": ["c1"], "pub_r_test": ("neuron", [0.3])})
    >>> list(score_table(ds))
    ['r_test']
    """
    if not isinstance(scores, xr.Dataset):
        raise TypeError(f"scores must be an xarray Dataset, got {type(scores).__name__}")
    if "neuron" not in scores.dims:
        raise ValueError(f"scores have no 'neuron' dimension (dims: {list(scores.dims)})")
    own = {
        str(name): var
        for name, var in scores.data_vars.items()
        if var.dims == ("neuron",) and np.issubdtype(var.dtype, np.number)
    }
    if own:
        return own
    published = {
        str(name)[len("pub_") :]: scores[name]
        for name in scores.coords
        if str(name).startswith("pub_")
        and scores[name].dims == ("neuron",)
        and np.issubdtype(scores[name].dtype, np.number)
        and not np.issubdtype(scores[name].dtype, np.bool_)
    }
    levels = sweep_dims(scores)
    if levels and not published:
        raise ValueError(
            f"these scores have dims {levels} besides neuron (a sweep): compare its levels with "
            f"compare(scores, dim={levels[0]!r}, baseline=...), summarize them with "
            f"leaderboard(scores), or select one level, e.g. scores.isel({levels[0]}=0)"
        )
    if not published:
        raise ValueError(
            "these scores hold no per-cell numbers: pass the result of nat4xr.evaluate, or a "
            "Dataset built from a release (its pub_* coordinates hold the published table)"
        )
    return published


def sweep_dims(scores: xr.Dataset) -> tuple[str, ...]:
    """The dims of per-cell scores beyond ``neuron``: a sweep's levels, in the variables' order.

    Scores are the numeric variables whose last dim is ``neuron``, as
    :func:`nat4xr.evaluate` gives them, or that have ``neuron`` among dims
    none of which is a Dataset's own (``stim``, ``repeat``, ``time``,
    ``freq``): a grid stacked by ``Dataset.stack`` puts its dim last. A
    Dataset's ``response`` is not one.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> s = xr.Dataset({"r_test": (("model", "neuron"), np.zeros((2, 3)))})
    >>> sweep_dims(s)
    ('model',)
    """
    out: list[str] = []
    for var in scores.data_vars.values():
        if not np.issubdtype(var.dtype, np.number) or "neuron" not in var.dims:
            continue
        if var.dims[-1] == "neuron" or not set(var.dims) & _DATASET_DIMS:
            out += [str(d) for d in var.dims if d != "neuron" and d not in out]
    return tuple(out)


#: A nat4xr Dataset's own dims besides ``neuron``: never a sweep's.
_DATASET_DIMS = {"stim", "repeat", "time", "freq"}


def _the_sweep_dim(scores: xr.Dataset, dim: str | None, without: str) -> str:
    """``dim``, or the scores' one sweep dim; an error for anything else (``without``: why)."""
    levels = sweep_dims(scores)
    if dim is None:
        if len(levels) != 1:
            raise ValueError(
                f"{without}, or dim= naming the sweep dim to use "
                f"(the scores' dims besides neuron: {list(levels)})"
            )
        dim = levels[0]
    if dim not in levels:
        raise ValueError(f"the scores have no sweep dim {dim!r} (dims besides neuron: {levels})")
    others = [d for d in levels if d != dim]
    if others:
        raise ValueError(
            f"the scores have dims {others} besides {dim!r} and neuron: select or average them "
            f"first, e.g. scores.isel({others[0]}=0) or scores.mean({others[0]!r})"
        )
    return dim


def _level_labels(scores: xr.Dataset, dim: str) -> tuple[list[Any], list[str], bool]:
    """The labels of ``dim``'s levels, the names they go by, and whether ``dim`` is stacked.

    A stacked dim (a MultiIndex, from ``scores.stack(cfg=("seed", "fraction"))``)
    is labelled by tuples named by its index's levels; a dim without its own
    coordinate (one named like a coordinate along ``neuron`` included) by position.
    """
    index = scores.indexes.get(dim)
    if isinstance(index, pd.MultiIndex):
        return list(index), [str(name) for name in index.names], True
    if dim in scores.coords and scores[dim].dims == (dim,):
        return list(scores[dim].values), [dim], False
    return list(range(scores.sizes[dim])), [dim], False


def _level_positions(labels: Sequence[Any], label: Any) -> list[int]:
    """Positions of the levels labelled ``label`` (a tuple matches only a tuple, whole)."""
    out = []
    for pos, have in enumerate(labels):
        if isinstance(have, tuple) != isinstance(label, tuple):
            continue
        try:
            same = have == label
        except (TypeError, ValueError):
            continue
        if isinstance(same, (bool, np.bool_)) and same:
            out.append(pos)
    return out


def _plain(label: Any) -> Any:
    """A numpy scalar label as Python's (its repr in a message is the label's own)."""
    if isinstance(label, np.generic) and label.dtype.kind not in "mM":
        return label.item()
    return label


def holm(p: Any) -> np.ndarray:
    """Holm's step-down adjustment of p-values (NaN ones are left out, and stay NaN).

    With the m finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted
    value of ``p_(i)`` is ``max over j <= i of min(1, (m - j + 1) p_(j))``
    (Holm 1979): rejecting where it is below alpha controls the family-wise
    error rate at alpha.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, float("nan")]).round(6).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled) if m else scaled
    return out


def _smoothing_of(scores: xr.Dataset) -> str:
    """How the responses behind ``scores`` were smoothed ("none" for the published table)."""
    own = any(
        var.dims == ("neuron",) and np.issubdtype(var.dtype, np.number)
        for var in scores.data_vars.values()
    )
    if not own:  # the release's table: the authors scored unsmoothed responses
        return "none"
    value = scores.attrs.get("smoothing", "none")
    return "none" if value in (None, "") else str(value)


def _neuron_ids(obj: xr.Dataset | xr.DataArray) -> np.ndarray:
    if "neuron" in obj.coords:
        return np.asarray(obj["neuron"].values).astype(str)
    return np.arange(obj.sizes["neuron"]).astype(str)


def _cell_mask(ids: np.ndarray, cells: Any) -> np.ndarray:
    """Bool over ``ids`` from ``cells``: None, a bool DataArray over neuron, ids, or a bool mask."""
    if cells is None:
        return np.ones(len(ids), dtype=bool)
    if np.asarray(cells).dtype.kind == "b":
        # by neuron id when the mask has them, else by position
        return aligned_mask(cells, ids, "neuron", "cells")
    arr = np.asarray(cells)
    wanted = set(arr.astype(str).tolist())
    unknown = sorted(wanted - set(ids.tolist()))
    if unknown:
        raise KeyError(f"cells not in the scores: {unknown[:5]}")
    return np.isin(ids, list(wanted))


def _paired(
    va: xr.DataArray, vb: xr.DataArray, a: xr.Dataset, b: xr.Dataset, cells: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids and values of the cells in both (and in ``cells``) with a finite value in both."""
    ids_a, ids_b = _neuron_ids(a), _neuron_ids(b)
    pos_b = {s: i for i, s in enumerate(ids_b)}
    rows_a = np.flatnonzero(_cell_mask(ids_a, cells) & np.isin(ids_a, ids_b))
    rows_b = np.array([pos_b[s] for s in ids_a[rows_a]], dtype=np.intp)
    xa = np.asarray(va.values, dtype=np.float64)[rows_a]
    xb = np.asarray(vb.values, dtype=np.float64)[rows_b]
    ok = np.isfinite(xa) & np.isfinite(xb)
    return ids_a[rows_a][ok], xa[ok], xb[ok]


def paired_values(
    a: xr.Dataset, b: xr.Dataset, metric: str, *, cells: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One metric of two sets of scores, cell by cell: ``(ids, values_a, values_b)``.

    The cells are those of ``a`` (in its order) that ``b`` also holds and
    ``cells`` chooses, with a finite value in both; what :func:`compare`
    tests and :func:`nat4xr.plot.plot_scores` draws.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.Dataset({"cc_raw": ("neuron", [0.5, 0.6, 0.7])}, coords={"neuron": ["x", "y", "z"]})
    >>> b = xr.Dataset({"cc_raw": ("neuron", [float("nan"), 0.1])}, coords={"neuron": ["y", "x"]})
    >>> ids, va, vb = paired_values(a, b, "cc_raw")
    >>> ids.tolist(), va.tolist(), vb.tolist()
    (['x'], [0.5], [0.1])
    """
    ta, tb = score_table(a), score_table(b)
    for name, table in (("a", ta), ("b", tb)):
        if metric not in table:
            raise KeyError(f"{metric!r} is not in {name}; it holds {list(table)}")
    return _paired(ta[metric], tb[metric], a, b, cells)


def compare(
    a: xr.Dataset,
    b: xr.Dataset | None = None,
    *,
    dim: str | None = None,
    baseline: Any = None,
    cells: Any = None,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Paired per-cell comparison of two sets of scores, or of a sweep's levels with a baseline.

    ``compare(a, b)`` compares two sets of scores (below);
    ``compare(scores, dim="model", baseline="ln")`` compares every level of
    a sweep's dim (the scores :func:`nat4xr.evaluate` gives for a prediction
    with that dim) with the ``baseline`` level: each row is what
    ``compare(level, baseline)`` gives, and ``p_holm`` adjusts the Wilcoxon
    p-values for the number of levels compared, per metric (Holm's
    step-down, :func:`holm`). The sweep may have no other dim than ``dim``
    (select or average the others first); a grid stacked into one dim
    (``scores.stack(cfg=("seed", "fraction"))``) is one dim, whose
    ``baseline`` is a tuple, e.g. ``(0, 1.0)``. The dim (or a stacked
    level) may not be named ``metric`` or like a column of the table: a
    ``ValueError`` says to rename it, e.g. ``scores.rename(n_cells="n_cells_level")``.

    For each metric both hold, over the cells present in both (and chosen by
    ``cells``) with a finite value in both: the median of each, the median of
    the paired difference ``a - b``, the fraction of cells where ``a > b``, and
    the two-sided Wilcoxon signed-rank p-value of the differences
    (``scipy.stats.wilcoxon``; NaN with no non-zero difference).

    Smoothing raises every score, so scores of responses smoothed differently
    (the ``smoothing`` attribute :func:`nat4xr.evaluate` records; the published
    table counts as unsmoothed) are not comparable: a
    :class:`~nat4xr.Nat4Warning` says so.

    Parameters
    ----------
    a, b : Dataset
        Results of :func:`nat4xr.evaluate`, or Datasets with ``pub_*``
        neuron coordinates (the published table, e.g. ``val`` itself).
    cells : bool DataArray over neuron, sequence of ids or bool mask, optional
        Cells to compare (a mask is over ``a``'s neurons), e.g. ``val.auditory``.
    metrics : sequence of str, optional
        Metrics to compare; by default the performance metrics both hold
        (``r_test``, ``r_ceiling``, ``cc_raw``, ``cc_norm``, ``cc_norm_schoppe``),
        or every shared one when none of those is shared.

    dim : str, optional
        The sweep dim whose levels are compared (with ``b`` omitted); by
        default the scores' one dim besides ``neuron``.
    baseline : label
        The level of ``dim`` every other level is compared with.

    Returns
    -------
    pandas.DataFrame
        Indexed by metric; columns ``n_cells``, ``median_a``, ``median_b``,
        ``median_diff``, ``frac_improved``, ``p_wilcoxon``. For a sweep,
        indexed by ``(level, metric)`` (the index named ``dim`` and
        ``"metric"``; a stacked dim's index levels in place of ``dim``),
        ``median_a`` the level's, ``median_b`` the baseline's, and a
        column ``p_holm``.

    Examples
    --------
    >>> import xarray as xr
    >>> cells = {"neuron": list("wxyz")}
    >>> a = xr.Dataset({"cc_raw": ("neuron", [0.5, 0.6, 0.7, 0.2])}, coords=cells)
    >>> b = xr.Dataset({"cc_raw": ("neuron", [0.4, 0.5, 0.6, 0.3])}, coords=cells)
    >>> row = compare(a, b).loc["cc_raw"]
    >>> int(row["n_cells"]), round(float(row["median_diff"]), 6), float(row["frac_improved"])
    (4, 0.1, 0.75)

    A sweep's levels against a baseline:

    >>> import numpy as np
    >>> s = xr.Dataset(
    ...     {"cc_raw": (("model", "neuron"), [[0.4, 0.5, 0.6, 0.3], [0.5, 0.6, 0.7, 0.2],
    ...                                      [0.3, 0.4, 0.5, 0.1]])},
    ...     coords={"model": ["ln", "cnn", "small"], **cells})
    >>> table = compare(s, dim="model", baseline="ln")
    >>> table.index.tolist()
    [('cnn', 'cc_raw'), ('small', 'cc_raw')]
    >>> table["frac_improved"].tolist(), table["median_b"].round(6).tolist()
    ([0.75, 0.0], [0.45, 0.45])
    """
    if b is None:
        return _compare_levels(a, dim, baseline, cells=cells, metrics=metrics)
    if dim is not None or baseline is not None:
        raise TypeError(
            "compare(a, b) compares two sets of scores; dim= and baseline= are for one sweep "
            "(compare(scores, dim=..., baseline=...))"
        )
    from scipy.stats import wilcoxon

    ta, tb = score_table(a), score_table(b)
    shared = [m for m in ta if m in tb]
    if metrics is None:
        chosen = [m for m in PERFORMANCE if m in shared] or shared
    else:
        chosen = list(metrics)
        missing = [m for m in chosen if m not in shared]
        if missing:
            raise KeyError(f"metric(s) {missing} are not in both scores; shared: {shared}")
    if not chosen:
        raise ValueError(f"the scores share no metric (a: {list(ta)}, b: {list(tb)})")
    smooth_a, smooth_b = _smoothing_of(a), _smoothing_of(b)
    if smooth_a != smooth_b:
        warnings.warn(
            f"the smoothing differs between the scores (a: {smooth_a}; b: {smooth_b}): "
            "smoothing raises every score, so the difference is partly the smoothing; score "
            "responses smoothed alike (the published values are of unsmoothed responses)",
            Nat4Warning,
            stacklevel=2,
        )
    out = []
    for name in chosen:
        _, va, vb = _paired(ta[name], tb[name], a, b, cells)
        diff = va - vb
        p = np.nan
        if (diff != 0).any():
            p = float(wilcoxon(va, vb).pvalue)
        n = len(diff)
        out.append(
            {
                "metric": name,
                "n_cells": n,
                "median_a": float(np.median(va)) if n else np.nan,
                "median_b": float(np.median(vb)) if n else np.nan,
                "median_diff": float(np.median(diff)) if n else np.nan,
                "frac_improved": float((diff > 0).mean()) if n else np.nan,
                "p_wilcoxon": p,
            }
        )
    return pd.DataFrame(out).set_index("metric")


#: The names in :func:`compare`'s table of a sweep: its index level and its columns.
_TABLE_NAMES = (
    "metric",
    "n_cells",
    "median_a",
    "median_b",
    "median_diff",
    "frac_improved",
    "p_wilcoxon",
    "p_holm",
)


def _compare_levels(
    scores: xr.Dataset, dim: str | None, baseline: Any, **kwargs: Any
) -> pd.DataFrame:
    """Every level of ``dim`` against ``baseline``: :func:`compare` rows, Holm per metric."""
    if not isinstance(scores, xr.Dataset):
        raise TypeError(f"scores must be an xarray Dataset, got {type(scores).__name__}")
    dim = _the_sweep_dim(scores, dim, "compare(scores) needs b")
    labels, names, stacked = _level_labels(scores, dim)
    for name in names:  # the table's index and columns keep their own names
        if name in _TABLE_NAMES:
            part = "index level" if name == "metric" else "column"
            of = f"the sweep dim {dim!r}"
            if name != dim:
                of = f"the level {name!r} of the stacked sweep dim {dim!r}"
            raise ValueError(
                f"{of} is named like the table's {part} {name!r}: the table would hold both "
                f"under one name; rename it, e.g. scores.rename({name}={name + '_level'!r})"
            )
    where = _level_positions(labels, baseline) if baseline is not None else []
    if len(where) != 1:
        shown = ", ".join(repr(_plain(label)) for label in labels[:8])
        raise ValueError(
            f"baseline={baseline!r} is not one level of {dim!r}: pass one of {shown}"
            + (" ..." if len(labels) > 8 else "")
            + (f" (a level of the stacked {dim!r} is a tuple {tuple(names)})" if stacked else "")
        )
    base = scores.isel({dim: where[0]}, drop=True)
    rows = []
    for pos, label in enumerate(labels):
        if pos == where[0]:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Nat4Warning)  # one smoothing for the whole sweep
            table = compare(scores.isel({dim: pos}, drop=True), base, **kwargs)
        key = tuple(label) if stacked else (label,)
        table.index = pd.MultiIndex.from_tuples(
            [(*key, metric) for metric in table.index], names=[*names, "metric"]
        )
        rows.append(table)
    if not rows:
        raise ValueError(f"{dim!r} has only the baseline level {baseline!r}: nothing to compare")
    out = pd.concat(rows)
    adjusted = out.groupby(level="metric", sort=False)["p_wilcoxon"].transform(
        lambda p: pd.Series(holm(p.to_numpy()), index=p.index)
    )
    return out.assign(p_holm=adjusted)


def _significant_one(scores: xr.Dataset, rule: str) -> xr.DataArray:
    table = score_table(scores)
    need = {"both": ["r_test", "se_test", "r_floor"], "se": ["r_test", "se_test"]}.get(
        rule, ["r_test", "r_floor"]
    )
    missing = [m for m in need if m not in table]
    if missing:
        raise KeyError(f"rule {rule!r} needs {need}; the scores lack {missing}")
    r = table["r_test"]
    out = xr.ones_like(r, dtype=bool)
    if rule in ("both", "se"):
        out = out & (r > 2 * table["se_test"])
    if rule in ("both", "floor"):
        out = out & (r > table["r_floor"])
    return out


def significant(scores: Any, *more: xr.Dataset, rule: str = "both") -> xr.DataArray:
    """Cells whose prediction beats chance, by the rule of the authors' analysis code.

    With several sets of scores (one per model compared), a cell is
    significant only when it is significant for every one of them, and a cell
    missing from any of them is not: the selection of the NAT4 paper's
    figures (nems_db ``pop_model_utils.get_significant_cells``, over its
    ``SIG_TEST_MODELS``). The paper then plots ``r_ceiling`` of those cells.

    Parameters
    ----------
    scores : Dataset, or a sequence of Datasets
        Results of :func:`nat4xr.evaluate`, or Datasets with the published
        ``pub_r_test``, ``pub_se_test``, ``pub_r_floor`` coordinates.
    *more : Dataset
        More sets of scores, all required.
    rule : {'both', 'se', 'floor'}
        ``'both'`` (default): ``r_test > 2 se_test`` and ``r_test > r_floor``;
        ``'se'``: the first half only; ``'floor'``: the second half only.

    Returns
    -------
    xarray.DataArray
        Bool over the first set's ``neuron`` (False where a needed value is
        NaN, or the cell is missing from another set); ``attrs["n_sets"]``
        counts the sets required.

    Examples
    --------
    >>> import xarray as xr
    >>> s = xr.Dataset(
    ...     {"r_test": ("neuron", [0.3, 0.3, 0.02]), "se_test": ("neuron", [0.05, 0.2, 0.01]),
    ...      "r_floor": ("neuron", [0.1, 0.1, 0.05])}, coords={"neuron": ["a", "b", "c"]})
    >>> significant(s).values.tolist()
    [True, False, False]
    >>> significant(s, rule="se").values.tolist()
    [True, False, False]
    >>> weak = s.assign(r_test=("neuron", [0.05, 0.3, 0.3]))  # a second model
    >>> significant(s, weak).values.tolist()  # both models must beat chance
    [False, False, False]
    """
    if more and isinstance(more[-1], str):  # the older call form significant(scores, "se")
        more, rule = more[:-1], more[-1]
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    sets = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    sets += list(more)
    if not sets:
        raise ValueError("significant() needs at least one set of scores")
    out = _significant_one(sets[0], rule)
    ids = _neuron_ids(out)
    for other in sets[1:]:
        sig = _significant_one(other, rule)
        chosen = set(_neuron_ids(sig)[np.asarray(sig.values, dtype=bool)].tolist())
        out = out & xr.DataArray(np.isin(ids, list(chosen)), dims=("neuron",))
    out.attrs = {"rule": RULES[rule], "n_sets": len(sets)}
    if len(sets) > 1:
        out.attrs["rule"] += f", for every one of {len(sets)} sets of scores"
    return out.rename("significant")


def leaderboard(scores: xr.Dataset, cells: Any = None) -> str | pd.DataFrame:
    """The leaderboard's summary line: mean CCraw and CCnorm in percent over the chosen cells.

    Means skip NaN cells, as deepSTRF's ``reduction="mean"`` does, so each
    mean states its own count of cells, then the number of cells chosen.

    For one set of scores, the line is a str. For a sweep's scores (dims
    beyond ``neuron``, as :func:`nat4xr.evaluate` gives for a prediction with
    a ``model`` dim, say), a DataFrame with one row per level (a MultiIndex
    for several dims, or a stacked dim's levels; a dim without its own
    coordinate labels its levels by position): ``cc_raw`` and ``cc_norm`` (mean, percent), the cells
    each mean is over (``n_cc_raw``, ``n_cc_norm``), the cells chosen
    (``n_cells``) and the ``line`` itself.

    Parameters
    ----------
    scores : Dataset
        Result of :func:`nat4xr.evaluate` (``cc_raw`` and ``cc_norm``).
    cells : bool DataArray over neuron, sequence of ids or bool mask, optional
        Cells to summarize, as in :func:`compare` (a mask with neuron labels
        is aligned by id, one without is positional).

    Examples
    --------
    >>> import xarray as xr
    >>> s = xr.Dataset({"cc_raw": ("neuron", [0.4, 0.5, 0.3]),
    ...                 "cc_norm": ("neuron", [0.6, 0.7, float("nan")])},
    ...                coords={"neuron": ["a", "b", "c"]})
    >>> leaderboard(s)
    'CCraw 40.0 % over 3 cells | CCnorm 65.0 % over 2 cells (of 3)'

    A sweep gives one row per level:

    >>> sweep = xr.concat([s, s * 0.5], dim="model").assign_coords(model=["big", "half"])
    >>> board = leaderboard(sweep)
    >>> board.index.tolist(), board["cc_norm"].round(6).tolist()
    (['big', 'half'], [65.0, 32.5])
    >>> board.loc["half", "line"]
    'CCraw 20.0 % over 3 cells | CCnorm 32.5 % over 2 cells (of 3)'
    """
    levels = sweep_dims(scores) if isinstance(scores, xr.Dataset) else ()
    if levels:
        return _leaderboard_levels(scores, levels, cells)
    table = score_table(scores)
    missing = [m for m in ("cc_raw", "cc_norm") if m not in table]
    if missing:
        raise KeyError(f"the leaderboard line needs cc_raw and cc_norm; the scores lack {missing}")
    keep = _cell_mask(_neuron_ids(scores), cells)
    return _line(table, keep)[0]


def _line(table: dict[str, xr.DataArray], keep: np.ndarray) -> tuple[str, dict[str, Any]]:
    """The leaderboard line of per-cell scores, and its numbers."""
    parts, numbers = [], {}
    for label, name in (("CCraw", "cc_raw"), ("CCnorm", "cc_norm")):
        values = np.asarray(table[name].values, dtype=np.float64)[keep]
        finite = values[np.isfinite(values)]
        mean = finite.mean() if finite.size else np.nan
        parts.append(f"{label} {100 * mean:.1f} % over {finite.size} cells")
        numbers[name], numbers[f"n_{name}"] = 100 * mean, int(finite.size)
    numbers["n_cells"] = int(keep.sum())
    return f"{' | '.join(parts)} (of {int(keep.sum())})", numbers


def _leaderboard_levels(scores: xr.Dataset, levels: tuple[str, ...], cells: Any) -> pd.DataFrame:
    """One leaderboard row per level of a sweep's scores."""
    missing = [m for m in ("cc_raw", "cc_norm") if m not in scores.data_vars]
    if missing:
        raise KeyError(f"the leaderboard line needs cc_raw and cc_norm; the scores lack {missing}")
    keep = _cell_mask(_neuron_ids(scores), cells)
    per_dim = [_level_labels(scores, d) for d in levels]
    names = [name for _, dim_names, _ in per_dim for name in dim_names]
    rows, index = [], []
    for pos in np.ndindex(*(scores.sizes[d] for d in levels)):
        one = scores.isel(dict(zip(levels, pos)), drop=True)
        table = {name: one[name] for name in ("cc_raw", "cc_norm")}
        line, numbers = _line(table, keep)
        rows.append({**numbers, "line": line})
        key: tuple[Any, ...] = ()
        for (labels, _, stacked), k in zip(per_dim, pos):
            key += tuple(labels[k]) if stacked else (labels[k],)
        index.append(key)
    idx = (
        pd.Index([i[0] for i in index], name=names[0], tupleize_cols=False)
        if len(names) == 1
        else pd.MultiIndex.from_tuples(index, names=names)
    )
    columns = ["cc_raw", "cc_norm", "n_cc_raw", "n_cc_norm", "n_cells", "line"]
    return pd.DataFrame(rows, index=idx)[columns]
