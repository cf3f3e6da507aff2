"""Score a model's predictions the way the paper, the leaderboard and the literature do.

Three families of prediction-correlation metrics are in use for NAT4, and
:func:`evaluate` computes all of them per cell, on the same arrays, exactly as
their sources define them:

- **The paper's** (Pennington & David 2023 scored with the NEMS0 toolkit,
  ``nems0/metrics/corrcoef.py``): ``r_test`` and ``se_test`` (jackknifed
  correlation with the trial-averaged response), ``r_floor`` (a chance level
  from resampled pairs of samples), ``r_ceiling`` (the prediction's single-trial
  correlation corrected by the single trials' correlation with each other).
- **The leaderboard's** (deepSTRF 0.1.0, ``deepSTRF/metrics/performance.py``):
  ``cc_raw`` (``corrcoef``) and ``cc_norm`` (``normalized_corrcoef`` with
  ``method="schoppe"``). deepSTRF's ``cc_norm`` divides a covariance over the
  concatenated stims by a signal power averaged *within* stims, so it is not
  Schoppe et al.'s CCnorm and can exceed 1 when stims differ in mean rate.
- **The literature's** (Schoppe et al. 2016, Front. Comput. Neurosci.; their
  reference code ``calc_CCnorm.m``): ``cc_norm_schoppe`` and ``cc_max`` on the
  concatenated stims.

Everything is computed in float64 and vectorized over cells. The stims are
concatenated in ascending order of their names, as NEMS0 lays out its
validation recording (only the jackknife, and so ``r_test`` and ``se_test``,
depends on the order). The definitions are coded in numpy in
:mod:`nat4xr.peer_metrics`; with numba installed (``nat4xr[fast]``) the
kernels of :mod:`nat4xr.accelerated` give the same numbers about 3x faster
(``NAT4XR_NUMBA=0`` turns them off).

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=3, n_neurons=4, seed=1)
>>> val = ds.nat4.sel_stims(subset="val")
>>> pred = val["response"].mean("repeat")  # the PSTH itself: a perfect prediction
>>> scores = evaluate(val, pred)
>>> [float(v) for v in scores["cc_raw"].round(6)]
[1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from . import accelerated, peer_metrics
from .errors import Nat4Warning
from .metrics import _response, stim_positions

__all__ = ["METRICS", "evaluate", "prediction_dims"]

_NEMS = "NEMS0 nems0/metrics/corrcoef.py (Pennington & David 2023)"
_DEEPSTRF = "deepSTRF 0.1.0 deepSTRF/metrics/performance.py (NAT4 leaderboard)"
_SCHOPPE = "Schoppe et al. 2016, Front. Comput. Neurosci. 10:10 (calc_CCnorm.m)"

#: Every metric :func:`evaluate` returns: its long name, definition and source.
METRICS: dict[str, dict[str, str]] = {
    "r_test": {
        "long_name": "prediction correlation (jackknife mean)",
        "definition": "mean of n_jacks leave-one-group-out Pearson correlations between the "
        "prediction and the trial-averaged response over the concatenated stims; samples "
        "non-finite in either are dropped first, then laid in blocks of ceil(L / n_jacks / 10) "
        "samples dealt to the groups in turn; 0 when no sample is left or either signal is "
        "constant (NEMS0 j_corrcoef)",
        "source": _NEMS,
    },
    "se_test": {
        "long_name": "jackknife standard error of r_test",
        "definition": "std (ddof 0) of the n_jacks jackknife correlations x sqrt(n_jacks - 1); "
        "0 where r_test is degenerate (NEMS0 j_corrcoef)",
        "source": _NEMS,
    },
    "r_floor": {
        "long_name": "chance level of r_test",
        "definition": "95th percentile (sorted finite values, index int(0.95 n)) of the "
        "correlations of 1000 resamples: min(500, L) samples of the prediction and, "
        "independently, of the response, drawn with replacement; 0 when none is finite "
        "(NEMS0 r_floor). Draws come from numpy.random.RandomState(seed), drawn as NEMS0 "
        "draws them, so each cell's floor equals NEMS0's for that cell alone after "
        "numpy.random.seed(seed)",
        "source": _NEMS,
    },
    "r_ceiling": {
        "long_name": "noise-corrected prediction correlation",
        "definition": "mean over single trials of corr(trial, prediction) divided by the square "
        "root of the mean correlation between pairs of single trials (floored at 0.01; "
        "samples where the prediction is finite; a pair or trial with zero sum or a constant "
        "signal counts 0); single trials are the first n of each stim, n the smallest "
        "repeat count among the stims of the cell's recording (its site's, when cells carry "
        "a site coordinate; a trial missing inside a recorded repeat stays NaN); 0 with "
        "fewer than 2 repeats (NEMS0 r_ceiling)",
        "source": _NEMS,
    },
    "cc_raw": {
        "long_name": "raw prediction correlation (CCraw)",
        "definition": "Pearson correlation between the prediction and the PSTH (nanmean over "
        "repeats) over every (stim, time) position where the PSTH is not NaN; NaN with "
        "fewer than 2 positions, zero variance, or a NaN prediction there (deepSTRF corrcoef)",
        "source": _DEEPSTRF,
    },
    "cc_norm": {
        "long_name": "normalized prediction correlation, leaderboard form (CCnorm)",
        "definition": "cov(prediction, PSTH) over the concatenated stims (ddof 1) divided by "
        "sqrt(var(prediction) SP), SP the Sahani-Linden signal power computed per stim and "
        "averaged with weights = valid time bins; NaN where SP <= 0 or is undefined (a "
        "constant PSTH has SP <= 0, whatever rounding leaves of it; an SP within 1e-10 of "
        "its terms' size, n var(PSTH) + mean var(trial), counts as 0: a cell with spikes in "
        "one repeat per stim has SP exactly 0); equals cc_raw when the "
        "data hold one repeat (deepSTRF normalized_corrcoef, method 'schoppe')",
        "source": _DEEPSTRF,
    },
    "cc_norm_schoppe": {
        "long_name": "normalized prediction correlation (Schoppe CCnorm)",
        "definition": "Cov(y, yhat) / sqrt(SP Var(yhat)) over the concatenated stims, "
        "SP = (var(sum of trials) - sum of var(trial)) / (N (N - 1)) with the reference "
        "code's normalizations (Cov and Var over T, var over T - 1); trials: the first N of "
        "each stim the cell has data for, N the fewest such repeats; samples where the "
        "prediction or any of these trials is NaN are dropped; NaN where SP <= 0 (as the "
        "reference code sets it), where the prediction is constant (Var(yhat) = 0: 0 / 0), or "
        "N < 2 or T < 2; a variance under 1e-10 of the mean square counts as 0, so rounding "
        "never makes a constant signal vary, and an SP within 1e-10 of its terms' size "
        "(var(sum of trials) + sum of var(trial)) counts as 0 (spikes in one trial only: "
        "SP exactly 0)",
        "source": _SCHOPPE,
    },
    "cc_max": {
        "long_name": "largest attainable correlation (Schoppe CCmax)",
        "definition": "sqrt(SP / Var(y)) with SP and the trials as for cc_norm_schoppe "
        "(cc_norm_schoppe = CCabs / cc_max); 0 where SP <= 0, as the reference code sets it, "
        "silent cells and any other cell with a constant PSTH included (their SP is <= 0); "
        "NaN where undefined (no data, N < 2 or T < 2)",
        "source": _SCHOPPE,
    },
    "n_samples": {
        "long_name": "samples scored",
        "definition": "(stim, time) samples where both the prediction and the trial-averaged "
        "response are finite (the L of the NEMS0 metrics)",
        "source": "nat4xr",
    },
}

_BLOCK = 64  # cells scored together (float64 working set ~30 MB per array for NAT4 val)


# -- inputs -------------------------------------------------------------------------------------


def _observed(observed: xr.Dataset | xr.DataArray) -> xr.DataArray:
    resp = _response(observed)
    if set(resp.dims) != {"stim", "neuron", "repeat", "time"}:
        raise ValueError(
            f"observed has dims {resp.dims}; expected exactly (stim, neuron, repeat, time)"
        )
    for dim in ("stim", "neuron"):
        labels = _labels(resp, dim)
        if labels is None:
            continue
        uniq, counts = np.unique(labels.astype(str), return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                _mismatch("appear more than once in observed", dim, uniq[counts > 1])
                + f" (each would be scored as often); select each {dim} once"
            )
    return resp.transpose("stim", "neuron", "repeat", "time")


def prediction_dims(prediction: xr.DataArray) -> xr.DataArray:
    """``prediction`` with dims ``(stim, neuron, time)``: a size-1 ``repeat`` dim is dropped.

    Raises ``ValueError`` for other dims, or several repeats.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> pred = xr.DataArray(np.zeros((2, 3, 1, 4)), dims=("stim", "neuron", "repeat", "time"))
    >>> prediction_dims(pred).dims
    ('stim', 'neuron', 'time')
    """
    pred = prediction
    if "repeat" in pred.dims:
        if pred.sizes["repeat"] != 1:
            raise ValueError(
                f"prediction has {pred.sizes['repeat']} repeats; give one prediction per "
                "(stim, neuron, time bin), e.g. prediction.mean('repeat') (a size-1 repeat "
                "dim is dropped)"
            )
        pred = pred.isel(repeat=0, drop=True)
    if set(pred.dims) != {"stim", "neuron", "time"}:
        raise ValueError(f"prediction has dims {pred.dims}; expected (stim, neuron, time)")
    return pred.transpose("stim", "neuron", "time")


def _labels(obj: xr.DataArray, dim: str) -> np.ndarray | None:
    return np.asarray(obj[dim].values) if dim in obj.coords else None


def _mismatch(what: str, dim: str, only: Sequence[Any]) -> str:
    shown = ", ".join(map(str, list(only)[:5])) + (" ..." if len(only) > 5 else "")
    return f"{len(only)} {dim}(s) {what}: {shown}"


def _sweep_dims(prediction: Any) -> tuple[str, ...]:
    """The dims of a DataArray ``prediction`` beyond ``(stim, neuron, time, repeat)``: a sweep's."""
    if not isinstance(prediction, xr.DataArray):
        return ()
    core = ("stim", "neuron", "time", "repeat")
    return tuple(str(d) for d in prediction.dims if d not in core)


def _check_sweep_names(prediction: Any, resp: xr.DataArray) -> None:
    """Refuse a sweep's dim or coordinate named like a name the scores already give.

    The scores hold ``observed``'s cell coordinates, ``n_single_trials`` and
    one variable per metric: a sweep dim or coordinate of the same name
    would replace one of them, or label the levels with the cells' values.
    """
    extra = _sweep_dims(prediction)
    if not extra:
        return
    scores = {name: f"the score variable {name!r}" for name in METRICS}
    scores["n_single_trials"] = "the scores' coordinate 'n_single_trials'"
    observed = {
        str(name): f"observed's coordinate {str(name)!r}"
        + (f" (along {', '.join(map(str, var.dims))})" if var.dims else "")
        for name, var in resp.coords.items()
    }
    observed.update({str(dim): f"observed's dim {str(dim)!r}" for dim in resp.dims})
    cells = {name: what for name, what in observed.items() if resp[name].dims == ("neuron",)}
    for dim in extra:
        what = {**scores, **observed}.get(dim)
        if what is not None:
            raise ValueError(
                f"the prediction's sweep dim {dim!r} is named like {what}: the scores would "
                f"confuse the two; rename the dim, e.g. prediction.rename({dim}="
                f"{dim + '_level'!r})"
            )
    for name, var in prediction.coords.items():
        name = str(name)
        if name in extra or not var.dims or not set(var.dims) <= set(extra):
            continue
        what = {**scores, **cells}.get(name)
        if what is not None:
            raise ValueError(
                f"the prediction's coordinate {name!r} (along {', '.join(map(str, var.dims))}) "
                f"is named like {what}: the scores would lose one of them; rename it, e.g. "
                f"prediction.rename({name}={name + '_level'!r})"
            )


def _aligned_prediction(prediction: Any, resp: xr.DataArray, subset_given: bool) -> np.ndarray:
    """The prediction as float64 ``(*sweep, stim, neuron, time)`` in ``resp``'s order."""
    shape = (resp.sizes["stim"], resp.sizes["neuron"], resp.sizes["time"])
    if not isinstance(prediction, xr.DataArray):
        arr = np.asarray(prediction, dtype=np.float64)
        if arr.ndim == 4 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.shape != shape:
            raise ValueError(
                f"prediction has shape {arr.shape}; an unlabelled prediction must have shape "
                f"(stim, neuron, time) = {shape}, in observed's order (or pass a DataArray; "
                "a sweep's predictions need a DataArray with a named dim, e.g. 'model')"
            )
        return arr
    extra = _sweep_dims(prediction)
    full = prediction
    empty = [d for d in extra if prediction.sizes[d] == 0]
    if empty:
        raise ValueError(f"the prediction's {empty[0]!r} has no levels: nothing to score")
    if extra:  # the labels and dims are checked on one level, then applied to all
        first = {d: 0 for d in extra}
        pred = prediction_dims(prediction.isel(first, drop=True))
        if "repeat" in full.dims:
            full = full.isel(repeat=0, drop=True)
        full = full.transpose(*extra, "stim", "neuron", "time")
    else:
        pred = full = prediction_dims(prediction)
    index: dict[str, np.ndarray] = {}
    for dim in ("stim", "neuron"):
        want, have = _labels(resp, dim), _labels(pred, dim)
        if want is None or have is None:
            if pred.sizes[dim] != resp.sizes[dim]:
                raise ValueError(
                    f"prediction has {pred.sizes[dim]} {dim}s, observed {resp.sizes[dim]}"
                )
            continue
        want_s, have_s = want.astype(str), have.astype(str)
        uniq, counts = np.unique(have_s, return_counts=True)
        if (counts > 1).any():
            raise ValueError(
                _mismatch("appear more than once in the prediction", dim, uniq[counts > 1])
            )
        pos = {s: i for i, s in enumerate(have_s)}
        absent = [s for s in want_s if s not in pos]
        if absent:
            raise ValueError(
                _mismatch("of observed are missing from the prediction", dim, absent)
                + "; predict every scored one or select observed to match"
            )
        extra = sorted(set(have_s) - set(want_s))
        if extra and not (dim == "stim" and subset_given):
            raise ValueError(
                _mismatch("of the prediction are not in observed", dim, extra)
                + (
                    "; pass stims= to score a subset of observed"
                    if dim == "stim"
                    else "; select the same neurons in both"
                )
            )
        index[dim] = np.array([pos[s] for s in want_s], dtype=np.intp)
    if pred.sizes["time"] != resp.sizes["time"]:
        raise ValueError(
            f"prediction has {pred.sizes['time']} time bins, observed {resp.sizes['time']}"
        )
    t_obs, t_pred = _labels(resp, "time"), _labels(pred, "time")
    if t_obs is not None and t_pred is not None and not np.allclose(t_obs, t_pred):
        raise ValueError("prediction and observed have different time coordinates")
    # labels already in observed's order select nothing: no copy of a large sweep
    index = {
        dim: pos
        for dim, pos in index.items()
        if len(pos) != pred.sizes[dim] or (pos != np.arange(len(pos))).any()
    }
    if index:
        full = full.isel(index)
    return np.asarray(full.values, dtype=np.float64)


# -- the public function --------------------------------------------------------------------------


def _single_trial_metrics(
    obs: np.ndarray,
    order: np.ndarray,
    recorded: np.ndarray,
    pred: np.ndarray,
    names: set[str],
    n_first: np.ndarray,
    seed: int,
) -> dict[str, np.ndarray]:
    """The PSTH ``(cells, stims, time)`` and the single-trial metrics, per cell.

    ``n_first`` holds each cell's single trials per stim for ``r_ceiling``.

    The compiled kernels (when numba is installed) score the cells whose data
    are rectangular; numpy scores the rest, and every cell without numba, in
    blocks of cells on two threads.
    """
    n_stims, n_cells, n_rep, n_time = len(order), obs.shape[1], obs.shape[2], obs.shape[3]
    names = {"r_ceiling", "cc_norm_schoppe", "cc_max"} & set(names) | (
        {"signal_power"} if "cc_norm" in names else set()
    )
    if accelerated.available() and len(recorded) == n_rep:
        fast = accelerated.trial_metrics(obs, order, pred, n_first)
        todo = np.flatnonzero(fast["general"])
        out = {k: fast[k] for k in ("psth", *names)}
    else:
        todo = np.arange(n_cells)
        out = {
            "psth": np.full((n_cells, n_stims, n_time), np.nan),
            **{k: np.full(n_cells, np.nan) for k in names},
        }

    def block(c0: int) -> None:
        cells = todo[c0 : c0 + _BLOCK]
        x = obs[:, cells][order][:, :, recorded].transpose(1, 0, 2, 3)
        x = np.ascontiguousarray(x, dtype=np.float64)
        p = np.ascontiguousarray(pred[:, cells].transpose(1, 0, 2))
        trials = peer_metrics.trial_metrics(x, p, names, n_first[cells], seed)
        for key, values in trials.items():
            if key in out:
                out[key][cells] = values.reshape(out[key][cells].shape)

    accelerated.run_on_two_threads(block, range(0, len(todo), _BLOCK))
    return out


def _score(
    obs: np.ndarray,
    order: np.ndarray,
    recorded: np.ndarray,
    pred: np.ndarray,
    names: Sequence[str],
    n_first: np.ndarray,
    seed: int,
    n_jacks: int,
    draws: peer_metrics.FloorDraws,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every metric of one prediction ``(stims, cells, time)`` in scoring order, per cell.

    Returns the metrics, L and the degenerate flag of every cell of ``obs``
    (cells without data included: the caller sets them to NaN).
    """
    n_stims, n_cells, _, n_time = obs.shape
    trial_names = {"r_ceiling", "cc_norm", "cc_norm_schoppe", "cc_max"}.intersection(names)
    trial = _single_trial_metrics(obs, order, recorded, pred, trial_names, n_first, seed)

    # the metrics of the trial-averaged response, over all cells at once
    p2 = pred.transpose(1, 0, 2).reshape(n_cells, n_stims * n_time)
    g2 = trial.pop("psth").reshape(n_cells, n_stims * n_time)
    r_test, se_test, length, degenerate = peer_metrics.nems_jackknife(p2, g2, n_jacks)
    out: dict[str, np.ndarray] = {"r_test": r_test, "se_test": se_test, **trial}
    if "r_floor" in names:
        out["r_floor"] = peer_metrics.nems_floor(p2, g2, draws)
    if "cc_raw" in names or "cc_norm" in names:
        # deepSTRF: no noise correction with a single trial
        sp = out.pop("signal_power") if "cc_norm" in names and len(recorded) > 1 else None
        out["cc_raw"], cc_norm = peer_metrics.deepstrf_correlations(p2, g2, sp)
        out["cc_norm"] = out["cc_raw"] if cc_norm is None else cc_norm
    return out, length, degenerate


def _score_sweep(
    obs: np.ndarray,
    order: np.ndarray,
    recorded: np.ndarray,
    pred: np.ndarray,
    names: Sequence[str],
    n_first: np.ndarray,
    seed: int,
    n_jacks: int,
    draws: peer_metrics.FloorDraws,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every metric of many predictions ``(levels, stims, cells, time)``, in ``obs``'s stim order.

    Blocks of cells are scored for every level at once
    (:func:`nat4xr.peer_metrics.sweep_metrics`): each block of the response is
    read and reduced once. A (level, cell) whose prediction is NaN where the
    cell has data scores other samples than the rest, and is scored alone
    with :func:`_score`, as it would be without the sweep. Returns
    ``(levels, cells)`` arrays.
    """
    n_levels, n_cells = pred.shape[0], obs.shape[1]
    out = {name: np.full((n_levels, n_cells), np.nan) for name in names}
    length = np.zeros((n_levels, n_cells), dtype=np.int64)
    degenerate = np.zeros((n_levels, n_cells), dtype=bool)
    alone = np.zeros((n_levels, n_cells), dtype=bool)
    floor = draws if "r_floor" in names else None
    # one prediction's scoring takes the PSTH and the response's side of the trial metrics from
    # the compiled kernels where they apply: so does the sweep, to give the same numbers
    compiled = accelerated.available() and len(recorded) == obs.shape[2]
    # a block's predictions take about as much memory as a one-level block of trials
    step = max(4, min(_BLOCK, _BLOCK * len(recorded) // max(n_levels, 1)))

    def block(c0: int) -> None:
        cells = np.arange(c0, min(c0 + step, n_cells))
        x = obs[:, cells][order][:, :, recorded].transpose(1, 0, 2, 3)
        x = np.ascontiguousarray(x, dtype=np.float64)
        p = pred[:, order[None, :], cells[:, None]]  # (levels, cells, stims, time): one copy
        fast = None
        if compiled:  # the response's side only: any finite prediction will do
            dummy = np.zeros((len(order), len(cells), obs.shape[3]))
            fast = accelerated.trial_metrics(obs[:, cells], order, dummy, n_first[cells])
        got = peer_metrics.sweep_metrics(
            x, p, names, n_first[cells], seed, n_jacks, floor, compiled=fast
        )
        for name in names:
            out[name][:, cells] = got[name]
        length[:, cells] = got["length"]
        degenerate[:, cells] = got["degenerate"]
        alone[:, cells] = ~got["covering"]

    accelerated.run_on_two_threads(block, range(0, n_cells, step))
    for level in np.flatnonzero(alone.any(1)):
        cells = np.flatnonzero(alone[level])
        got, n, deg = _score(
            obs[:, cells],
            order,
            recorded,
            pred[level][order][:, cells],
            names,
            n_first[cells],
            seed,
            n_jacks,
            draws,
        )
        for name in names:
            out[name][level, cells] = got[name]
        length[level, cells] = n
        degenerate[level, cells] = deg
    return out, length, degenerate


def _recordings(resp: xr.DataArray) -> tuple[np.ndarray, str]:
    """Recording index of each cell (its ``site``; one recording without a site coordinate)."""
    if "site" in resp.coords and resp["site"].dims == ("neuron",):
        sites = np.asarray(resp["site"].values).astype(str)
        return np.unique(sites, return_inverse=True)[1].reshape(-1), "site"
    return np.zeros(resp.sizes["neuron"], dtype=np.intp), "recording"


def _single_trials(trial_held: np.ndarray, recording: np.ndarray) -> np.ndarray:
    """Per cell: NEMS0 r_ceiling's trial count, the fewest repeats among its recording's stims.

    ``trial_held`` is ``(stims, cells, repeats)``: True where the cell has a
    value in the trial. NEMS0 counts the epochs of the cell's recording, so a
    repeat counts for every cell of the site when any of them holds it, and a
    stim counts when the site holds any trial of it.
    """
    out = np.zeros(len(recording), dtype=np.int64)
    for k in np.unique(recording):
        cells = recording == k
        per_stim = trial_held[:, cells].any(1).sum(-1)  # (stims,) repeats the site recorded
        out[cells] = int(per_stim[per_stim > 0].min()) if per_stim.any() else 0
    return out


def _smoothing(observed: xr.Dataset | xr.DataArray) -> str:
    """The ``smoothing`` record of the observed data ("none" when there is none)."""
    value = observed.attrs.get("smoothing", "none")
    if isinstance(observed, xr.Dataset) and value in ("none", None) and "response" in observed:
        value = observed["response"].attrs.get("smoothing", "none")
    return "none" if value in (None, "") else str(value)


def _chosen_metrics(metrics: Sequence[str] | str | None) -> list[str]:
    names = [m for m in METRICS if m != "n_samples"]
    if metrics is None:
        return names
    chosen = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in chosen if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {names}")
    return [m for m in names if m in chosen]


def evaluate(
    observed: xr.Dataset | xr.DataArray,
    prediction: Any,
    *,
    metrics: Sequence[str] | str | None = None,
    stims: Any = None,
    n_jacks: int = 20,
    seed: int = 0,
    n_resamples: int = 1000,
) -> xr.Dataset:
    """Score a prediction per cell with the paper's, the leaderboard's and Schoppe's metrics.

    The stims of ``observed`` (or those chosen by ``stims``) are concatenated
    in time, in ascending order of stim name as NEMS0 does, and every metric of
    :data:`METRICS` is computed per neuron exactly as its source defines it (see
    the module docstring, and each result variable's ``definition`` and
    ``source`` attributes). Only the scored stims of ``response`` are read.

    A cell with no data at all in the scored stims is not scored: every
    metric is NaN for it (``n_samples`` 0), and a :class:`~nat4xr.Nat4Warning`
    counts these cells (select cells with data, e.g. ``sel_stims(subset="val")``,
    to leave them out). Degenerate cells never raise: a cell with data but no
    usable samples (the prediction NaN wherever it has data), or whose
    prediction or response is constant, scores 0 on the NEMS0 metrics (NEMS0's
    convention) and NaN on deepSTRF's and Schoppe's (theirs; ``cc_max`` is 0
    where the signal power is not positive, silent cells included); a
    :class:`~nat4xr.Nat4Warning` counts them.

    ``r_ceiling`` takes its single trials per recording, as NEMS0 does: when
    the cells carry a ``site`` coordinate, each site's count is the fewest
    repeats among the stims that site recorded, so a site whose sounds were
    repeated fewer times does not truncate the trials of another.

    Smoothed responses raise every score (and the noise-corrected ones most),
    while the published values were computed on unsmoothed data: when
    ``observed`` carries a ``smoothing`` record other than ``"none"``, a
    warning says so, and the scores' ``smoothing`` attribute records it (as it
    records ``"none"`` otherwise).

    Parameters
    ----------
    observed : Dataset or DataArray
        A Dataset with ``response``, or a DataArray with dims ``(stim, neuron,
        repeat, time)`` (any source), NaN where there is no data.
    prediction : DataArray or array-like
        ``(stim, neuron, time)`` (a size-1 ``repeat`` dim is dropped). A
        DataArray is aligned to ``observed`` by its stim and neuron labels;
        stims or neurons in one and not the other raise ``ValueError`` naming
        them (with ``stims=``, extra stims of the prediction are ignored). A
        plain array must already be in ``observed``'s order. A DataArray may
        have more dims, in any order (``model``, ``seed``, ``fraction`` ...):
        a sweep, whose every level is scored (see below). The sweep's dims
        and coordinates must not be named like a coordinate of ``observed``
        (a dim too, for a sweep dim), ``n_single_trials`` or a metric: the
        scores hold those, so a ``ValueError`` naming the clash comes before
        any scoring (rename, e.g. ``prediction.rename(site="site_level")``).
    metrics : str or sequence of str, optional
        Subset of :data:`METRICS` to compute (all by default; ``r_floor`` is
        the slowest).
    stims : str, sequence of ids or bool mask, optional
        Score only these stims of ``observed``: a ``subset`` value such as
        ``"val"``, stim ids, or a mask over ``stim``.
    n_jacks : int
        Jackknife groups of ``r_test``/``se_test`` (NEMS0: 20).
    seed : int
        Seed of ``r_floor``'s resamples (and of NEMS0's pair draw past 45 repeats).
    n_resamples : int
        Resamples of ``r_floor`` (NEMS0: 1000).

    Returns
    -------
    xarray.Dataset
        One float64 variable per metric over ``neuron`` (``n_samples``
        int64), with ``observed``'s neuron coordinates and, in each variable's
        attrs, its definition and source. For a sweep, over the prediction's
        other dims first, then ``neuron``, with the coordinates of those dims.
        It is an ordinary Dataset: ``to_dataframe()`` gives one row per cell
        (and level), ``to_netcdf()`` writes it (its attrs are numbers and
        strings, ``stims`` a JSON list) and ``xr.open_dataset`` reads it back.

    Notes
    -----
    **Sweeps.** A prediction with dims beyond ``(stim, neuron, time)`` is
    scored in one call, every level exactly as if scored alone (to rounding;
    the same NaN), with the response read once: each block of cells is read,
    and the response's side of every metric (PSTH, trials, signal powers,
    single-trial pair correlations, jackknife groups, the response's sums
    over ``r_floor``'s resamples, whose draws depend only on ``seed`` and
    the sample count) computed once for all the levels; only the
    prediction's side is computed per level, vectorized over the levels. A
    level whose prediction is NaN where a cell has data scores fewer
    samples for that cell, and that (level, cell) is scored alone.

    Examples
    --------
    >>> import numpy as np, nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=3, n_neurons=4, seed=1)
    >>> val = ds.nat4.sel_stims(subset="val")
    >>> noise = np.random.default_rng(0).normal(size=(3, 4, ds.sizes["time"]))
    >>> scores = evaluate(val, val["response"].mean("repeat") + noise, metrics=["r_test", "cc_raw"])
    >>> sorted(scores.data_vars)
    ['cc_raw', 'n_samples', 'r_test', 'se_test']
    >>> scores["r_test"].attrs["source"]
    'NEMS0 nems0/metrics/corrcoef.py (Pennington & David 2023)'

    A sweep of three models, scored in one call; each level is what scoring
    that model alone gives:

    >>> import xarray as xr
    >>> psth = val["response"].mean("repeat")
    >>> sweep = xr.concat([psth, psth + noise, psth + 3 * noise], dim="model")
    >>> sweep = sweep.assign_coords(model=["perfect", "noisy", "noisier"])
    >>> scores = evaluate(val, sweep, metrics=["r_test", "r_floor"])
    >>> scores["r_test"].dims
    ('model', 'neuron')
    >>> alone = evaluate(val, psth + noise, metrics=["r_test", "r_floor"])
    >>> bool(np.allclose(scores["r_test"].sel(model="noisy"), alone["r_test"], atol=1e-12))
    True
    >>> scores["r_test"].median("neuron").round(2).values.tolist()
    [1.0, 0.0, -0.11]
    """
    if n_jacks < 2:
        raise ValueError(f"n_jacks must be at least 2, got {n_jacks}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    resp = _observed(observed)
    if stims is not None:
        resp = resp.isel(stim=stim_positions(resp, stims, "observed"))
    if resp.sizes["stim"] == 0 or resp.sizes["neuron"] == 0:
        raise ValueError("nothing to score: observed has no stims or no neurons left")
    _check_sweep_names(prediction, resp)
    pred = _aligned_prediction(prediction, resp, subset_given=stims is not None)
    names = _chosen_metrics(metrics)
    if "r_test" in names or "se_test" in names:
        names = [m for m in names if m not in ("r_test", "se_test")]
        names = ["r_test", "se_test", *names]

    extra = _sweep_dims(prediction)
    obs = np.asarray(resp.values)  # the scored stims only
    stim_ids = _labels(resp, "stim")
    order = (
        np.argsort(stim_ids.astype(str), kind="stable")
        if stim_ids is not None
        else np.arange(resp.sizes["stim"])
    )
    trial_held = np.isfinite(obs).any(axis=3)[order]  # (stims, cells, repeats)
    recorded = np.flatnonzero(trial_held.any((0, 1)))  # drop repeats nobody has
    recording, per = _recordings(resp)
    n_first = _single_trials(trial_held[:, :, recorded], recording)
    no_data = ~trial_held.any((0, 2))  # cells with no value in the scored stims
    n_cells = obs.shape[1]
    draws = peer_metrics.FloorDraws(n_resamples, seed)
    if extra:
        levels = pred.shape[: len(extra)]
        pred = pred.reshape(-1, *pred.shape[len(extra) :])
        out, length, degenerate = _score_sweep(
            obs, order, recorded, pred, names, n_first, seed, n_jacks, draws
        )
    else:
        out, length, degenerate = _score(
            obs, order, recorded, pred[order], names, n_first, seed, n_jacks, draws
        )
    # a cell without data is not scored (NaN), unlike NEMS0's degenerate predictions (0)
    out = {name: np.where(no_data, np.nan, out[name]) for name in names}
    out["n_samples"] = length
    degenerate &= ~no_data

    ids = _labels(resp, "neuron")

    def shown(mask: np.ndarray) -> str:
        listed = ", ".join(map(str, ids[mask][:5])) if ids is not None else ""
        return listed + (" ..." if mask.sum() > 5 else "")

    if no_data.any():
        warnings.warn(
            f"{int(no_data.sum())} of {n_cells} cells have no data in the scored stims "
            f"({shown(no_data)}): every metric is NaN for them (they are not scored); select "
            "the cells with data, e.g. with ds.nat4.sel_stims(subset='val'), to leave them out",
            Nat4Warning,
            stacklevel=2,
        )
    if degenerate.any():
        some = f" for some {' x '.join(extra)}" if extra else ""
        cells = degenerate.reshape(-1, n_cells).any(0)
        warnings.warn(
            f"{int(cells.sum())} of {n_cells} cells have{some} no usable samples, or a "
            f"constant prediction or response, on the scored stims ({shown(cells)}): the NEMS0 "
            "metrics give 0 for them, deepSTRF's and Schoppe's NaN",
            Nat4Warning,
            stacklevel=2,
        )
    smoothing = _smoothing(observed)
    if smoothing != "none":
        warnings.warn(
            f"the observed responses are smoothed ({smoothing}): smoothing raises every score, "
            "the noise-corrected ones most, and the published values were computed on "
            "unsmoothed data; score unsmoothed responses to compare with them",
            Nat4Warning,
            stacklevel=2,
        )
    coords = {
        name: var.variable
        for name, var in resp.coords.items()
        if var.dims == ("neuron",) or name == "neuron"
    }
    data_vars = {}
    for name, values in out.items():
        data = values.astype(np.int64) if name == "n_samples" else values
        if extra:
            data = data.reshape(*levels, n_cells)
        data_vars[name] = xr.Variable((*extra, "neuron"), data, attrs=dict(METRICS[name]))
    if extra:  # the sweep's levels keep the prediction's labels
        coords.update(
            {
                name: var.variable
                for name, var in prediction.coords.items()
                if var.dims and set(var.dims) <= set(extra)
            }
        )
    coords["n_single_trials"] = xr.Variable(
        ("neuron",),
        n_first,
        attrs={
            "long_name": "single trials per stim of r_ceiling",
            "definition": f"the fewest repeats among the stims of the cell's {per} "
            "(NEMS0 counts its recording's epochs)",
        },
    )
    scores = xr.Dataset(data_vars, coords=coords)
    scored = stim_ids[order].astype(str).tolist() if stim_ids is not None else []
    has_data = n_first[~no_data]
    scores.attrs.update(
        n_jacks=n_jacks,
        seed=seed,
        n_resamples=n_resamples,
        stim_order="ascending stim name (NEMS0's concatenation order)",
        stims=json.dumps(scored),
        n_single_trials=int(has_data.min()) if len(has_data) else 0,
        single_trials_per=per,
        n_cells_without_data=int(no_data.sum()),
        smoothing=smoothing,
    )
    return scores
