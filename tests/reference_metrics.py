"""Plain per-cell loops of the published metric definitions, for checking nat4xr.evaluation.

Each function scores ONE cell, written step by step from its source's
definition (NEMS0 ``nems0/metrics/corrcoef.py``; deepSTRF 0.1.0
``deepSTRF/metrics/performance.py``; Schoppe et al. 2016 ``calc_CCnorm.m``),
with ``np.corrcoef`` and Python loops, nothing vectorized over cells. The
benchmark times them too, as the peers' per-cell loops.

Inputs of one cell: ``trials`` ``(stims, repeats, time)`` and ``pred``
``(stims, time)``, stims already in the scoring order.
"""

from __future__ import annotations

import itertools

import numpy as np


def psth(trials: np.ndarray) -> np.ndarray:
    out = np.full(trials.shape[::2], np.nan)
    for s in range(trials.shape[0]):
        for t in range(trials.shape[2]):
            vals = trials[s, :, t][np.isfinite(trials[s, :, t])]
            if len(vals):
                out[s, t] = vals.mean()
    return out


# -- NEMS0 ----------------------------------------------------------------------------------------


def nems_j_corrcoef(pred: np.ndarray, resp: np.ndarray, njacks: int = 20) -> tuple[float, float]:
    pred, resp = pred.ravel(), resp.ravel()
    ff = np.isfinite(pred) & np.isfinite(resp)
    if (
        ff.sum() == 0
        or np.std(pred[ff]) == 0
        or len(np.unique(pred[ff])) == 1
        or len(np.unique(resp[ff])) == 1
    ):
        return 0.0, 0.0
    pred, resp = pred[ff], resp[ff]
    size = int(np.ceil(len(pred) / njacks / 10))
    groups = []
    while len(groups) < len(pred):
        for jj in range(njacks):
            groups.extend([jj] * size)
    groups = np.array(groups[: len(pred)])
    jc = np.zeros(njacks)
    for jj in range(njacks):
        keep = groups != jj
        with np.errstate(invalid="ignore", divide="ignore"):
            jc[jj] = np.corrcoef(pred[keep], resp[keep])[0, 1]
    return float(np.nanmean(jc)), float(np.nanstd(jc) * np.sqrt(njacks - 1))


def nems_r_floor(pred: np.ndarray, resp: np.ndarray) -> float:
    """Uses numpy's global legacy generator, as NEMS0 does: seed it before calling."""
    x1, x2 = pred.ravel(), resp.ravel()
    ff = np.isfinite(x1) & np.isfinite(x2)
    x1, x2 = x1[ff], x2[ff]
    n = min(500, len(x1))
    rf = np.zeros(1000)
    for rr in range(1000):
        # NEMS0 draws from numpy's legacy global generator, in this order
        n1 = (np.random.rand(n) * len(x1)).astype(int)  # noqa: NPY002
        n2 = (np.random.rand(n) * len(x2)).astype(int)  # noqa: NPY002
        with np.errstate(invalid="ignore", divide="ignore"):
            rf[rr] = np.corrcoef(x1[n1], x2[n2])[0, 1] if n > 1 else np.nan
    rf = np.sort(rf[np.isfinite(rf)])
    return float(rf[int(len(rf) * 0.95)]) if len(rf) else 0.0


def _nonzero_varied(x: np.ndarray) -> bool:
    return np.sum(x) != 0 and len(np.unique(x)) > 1


def nems_r_ceiling(
    trials: np.ndarray, pred: np.ndarray, min_reps: int, all_pairs: bool = False
) -> float:
    """``min_reps``: the smallest repeat count among the stims (NEMS0 counts epochs).

    NEMS0 averages every pair of trials up to 45 repeats (1000 pairs) and a
    random 1000 beyond; ``all_pairs=True`` averages all of them regardless.
    """
    if min_reps <= 1:
        return 0.0
    x = np.concatenate([trials[s, :min_reps] for s in range(trials.shape[0])], axis=1)
    p = pred.ravel()
    cols = np.isfinite(p)
    xs = x[:, cols]
    racs = []
    for a, b in itertools.combinations(range(min_reps), 2):
        x1, x2 = xs[a], xs[b]
        ff = np.isfinite(x1) & np.isfinite(x2)
        x1, x2 = x1[ff], x2[ff]
        if not (_nonzero_varied(x1) and _nonzero_varied(x2)):
            racs.append(0.0)
        else:
            racs.append(np.corrcoef(x1, x2)[0, 1])
    assert all_pairs or len(racs) <= 1000, "the reference covers up to 45 repeats"
    rac = max(float(np.mean(racs)), 0.01)
    rs = []
    for a in range(min_reps):
        x1, x2 = x[a], p
        ff = np.isfinite(x1) & np.isfinite(x2)
        x1, x2 = x1[ff], x2[ff]
        if ff.sum() == 0 or np.sum(x1) == 0 or len(np.unique(x2)) == 1:
            rs.append(0.0)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                rs.append(np.corrcoef(x1, x2)[0, 1])
    return float(np.mean(rs) / np.sqrt(rac))


# -- deepSTRF 0.1.0 -------------------------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    if den < 1e-12:
        return np.nan
    return float((xc * yc).sum() / den)


def deepstrf_cc_raw(trials: np.ndarray, pred: np.ndarray) -> float:
    g = psth(trials)
    valid = ~np.isnan(g)
    if valid.sum() < 2:
        return np.nan
    return _pearson(pred[valid], g[valid])


def deepstrf_signal_power(trials: np.ndarray) -> float:
    num = den = 0.0
    contributed = False
    for s in range(trials.shape[0]):
        valid = ~np.isnan(trials[s])
        rows, cols = valid.any(1), valid.any(0)
        r_v, t_v = int(rows.sum()), int(cols.sum())
        if r_v < 2 or t_v < 2:
            continue
        sub = trials[s][rows][:, cols]
        sp = (r_v * sub.mean(0).var(ddof=1) - sub.var(axis=1, ddof=1).mean()) / (r_v - 1)
        num += t_v * sp
        den += t_v
        contributed = True
    return num / den if contributed else np.nan


def deepstrf_cc_norm(trials: np.ndarray, pred: np.ndarray, n_repeat_axis: int) -> float:
    if n_repeat_axis == 1:
        return deepstrf_cc_raw(trials, pred)
    sp = deepstrf_signal_power(trials)
    g = psth(trials)
    valid = ~np.isnan(g)
    if valid.sum() < 2:
        return np.nan
    p, y = pred[valid], g[valid]
    cov = ((p - p.mean()) * (y - y.mean())).sum() / max(len(p) - 1, 1)
    var_p = p.var(ddof=1)
    if not np.isfinite(sp) or sp <= 0 or var_p < 1e-12:
        return np.nan
    return float(cov / np.sqrt(var_p * sp))


# -- Schoppe et al. 2016 --------------------------------------------------------------------------


def _variance_over_t(x: np.ndarray) -> float:
    """sum((x - E[x])^2) / T, exactly 0 for a constant signal (as in exact arithmetic)."""
    return 0.0 if np.all(x == x[0]) else float(((x - x.mean()) ** 2).sum() / len(x))


def schoppe(trials: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(cc_norm, cc_max) with nat4xr's documented rule for missing trials and bins.

    calc_CCnorm.m (Schoppe et al. 2016, the version returning CCmax): when
    SP <= 0 it sets CCnorm = NaN and CCmax = 0, silent cells included; a
    constant prediction gives Var(yhat) = 0 and CCnorm = 0/0 = NaN.
    """
    kept_stims, counts = [], []
    for s in range(trials.shape[0]):
        reps = [r for r in range(trials.shape[1]) if np.isfinite(trials[s, r]).any()]
        if reps:
            kept_stims.append((s, reps))
            counts.append(len(reps))
    if not counts or min(counts) < 2:
        return np.nan, np.nan
    n = min(counts)
    rows = np.concatenate([trials[s, reps[:n]] for s, reps in kept_stims], axis=1)  # (n, L)
    yhat = np.concatenate([pred[s] for s, _ in kept_stims])
    ok = np.isfinite(yhat) & np.isfinite(rows).all(0)
    r, yhat = rows[:, ok], yhat[ok]
    t = r.shape[1]
    if t < 2:
        return np.nan, np.nan
    y = r.mean(0)
    v_y = _variance_over_t(y)
    v_yhat = _variance_over_t(yhat)
    c = ((y - y.mean()) * (yhat - yhat.mean())).sum() / t
    # var(sum of trials) is 0 when the PSTH is constant: then SP <= 0
    var_sum = 0.0 if v_y == 0 else np.var(r.sum(0), ddof=1)
    sp = (var_sum - np.var(r, axis=1, ddof=1).sum()) / (n * (n - 1))
    if sp <= 0:
        return np.nan, 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cc_norm = c / np.sqrt(sp * v_yhat)  # NaN for a constant prediction (0 / 0)
    return float(cc_norm) if v_yhat > 0 else np.nan, float(np.sqrt(sp / v_y))
