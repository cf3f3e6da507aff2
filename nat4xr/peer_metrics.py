"""Per-cell metrics as NEMS0, deepSTRF 0.1.0 and Schoppe et al. 2016 define them, over many cells.

These are the kernels of :func:`nat4xr.evaluate`, which documents each
definition (:data:`nat4xr.evaluation.METRICS`) and handles labels and
laziness. Every function here takes plain float64 arrays with cells on the
first axis and treats all the cells at once; the sources compute the same
numbers one cell at a time.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from . import accelerated
from .accelerated import run_on_two_threads

__all__ = [
    "FloorDraws",
    "deepstrf_correlations",
    "deepstrf_signal_power",
    "nems_ceiling",
    "nems_floor",
    "nems_jackknife",
    "schoppe",
    "trial_metrics",
]

_N_FLOOR_SAMPLES = 500  # NEMS0 r_floor: samples per resample
_MAX_PAIRS = 1000  # NEMS0 r_ceiling: single-trial pairs averaged
_RAC_LIMIT = 0.01  # NEMS0 r_ceiling: floor of the single-trial correlation
_EPS = 1e-12  # deepSTRF: zero-variance threshold
_CONSTANT = 1e-10  # relative variance under which a signal counts as constant


# -- correlation from sums ------------------------------------------------------------------------


def _corr_from_sums(n, sx, sy, sxx, syy, sxy) -> np.ndarray:
    """Pearson r from sums over the same samples; NaN where fewer than 2 or either is constant.

    The values should be centered near their mean beforehand, so that the
    one-pass formulas lose nothing to cancellation; a variance under
    ``_CONSTANT`` times the sum of squares counts as zero (what
    ``np.corrcoef`` gives for a constant signal).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        cxx = sxx - sx * sx / n
        cyy = syy - sy * sy / n
        cxy = sxy - sx * sy / n
        bad = (n < 2) | (cxx <= _CONSTANT * sxx) | (cyy <= _CONSTANT * syy)
        r = cxy / np.sqrt(np.where(bad, 1.0, cxx * cyy))
    return np.where(bad, np.nan, np.clip(r, -1.0, 1.0))


def _centered(x: np.ndarray, ok: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` minus its mean over ``ok`` along ``axis``; 0 outside ``ok``."""
    cnt = np.maximum(ok.sum(axis, keepdims=True), 1)
    mean = np.sum(x, axis=axis, where=ok, keepdims=True) / cnt
    return np.subtract(x, mean, out=np.zeros(np.broadcast_shapes(x.shape, ok.shape)), where=ok)


def _constant(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """True per row where ``x`` takes one value (or none) on ``ok`` (exact, like np.unique)."""
    hi = np.max(x, axis=-1, where=ok, initial=-np.inf)
    lo = np.min(x, axis=-1, where=ok, initial=np.inf)
    return ~(hi > lo)


# -- NEMS0 --------------------------------------------------------------------------------------


def nems_jackknife(
    p: np.ndarray, r: np.ndarray, n_jacks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """r_test, se_test, L and the degenerate flag for ``p``, ``r`` of shape ``(cells, samples)``."""
    ok = np.isfinite(p) & np.isfinite(r)
    n_cells = p.shape[0]
    length = ok.sum(1)
    degenerate = (length == 0) | _constant(p, ok) | _constant(r, ok)
    chunk = np.maximum(np.ceil(length / n_jacks / 10).astype(np.int64), 1)
    pc, rc = _centered(p, ok), _centered(r, ok)
    sums = np.zeros((6, n_cells, n_jacks))
    # cells with every sample share one grouping: sums per group by a product with its one-hot
    full = np.flatnonzero(ok.all(1))
    if len(full):
        n_samples = p.shape[1]
        one_hot = np.zeros((n_samples, n_jacks))
        one_hot[np.arange(n_samples), (np.arange(n_samples) // chunk[full[0]]) % n_jacks] = 1.0
        every = len(full) == n_cells
        pf, rf = (pc, rc) if every else (pc[full], rc[full])
        sums[0, full] = one_hot.sum(0)
        for q, w in enumerate((pf, rf), start=1):
            sums[q, full] = w @ one_hot
        for q, (a, b) in enumerate(((pf, pf), (rf, rf), (pf, rf)), start=3):
            prod = np.multiply(a, b, out=np.empty_like(a))
            sums[q, full] = prod @ one_hot
    rest = np.flatnonzero(~ok.all(1))
    if len(rest):
        ok_r = ok[rest]
        group = ((np.cumsum(ok_r, axis=1) - 1) // chunk[rest, None]) % n_jacks
        flat = (np.arange(len(rest))[:, None] * n_jacks + group)[ok_r]
        pr, rr = pc[rest][ok_r], rc[rest][ok_r]
        for q, w in enumerate((None, pr, rr, pr * pr, rr * rr, pr * rr)):
            counts = np.bincount(flat, weights=w, minlength=len(rest) * n_jacks)
            sums[q, rest] = counts.reshape(len(rest), n_jacks)
    loo = [s.sum(1, keepdims=True) - s for s in sums]  # every sample but one group's
    jc = _corr_from_sums(*loo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: NaN, as in NEMS0
        r_test = np.nanmean(jc, axis=1)
        se_test = np.nanstd(jc, axis=1) * np.sqrt(n_jacks - 1)
    r_test = np.where(degenerate, 0.0, r_test)
    se_test = np.where(degenerate, 0.0, se_test)
    return r_test, se_test, length, degenerate


class FloorDraws:
    """NEMS0 r_floor's resample indices, drawn once per sample count and shared by cells.

    NEMS0 draws, for each of its 1000 resamples, ``n`` uniforms for the
    prediction's indices and then ``n`` for the response's, from numpy's
    legacy global generator; ``RandomState(seed)`` replays that stream.
    """

    def __init__(self, n_resamples: int, seed: int) -> None:
        self.n_resamples, self.seed = n_resamples, seed
        self._uniform: dict[int, np.ndarray] = {}
        self._index: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def indices(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(i_pred, i_resp)``, each (resamples, n), for cells with ``length`` samples."""
        with self._lock:
            if length not in self._index:
                n = min(_N_FLOOR_SAMPLES, length)
                if n not in self._uniform:
                    rs = np.random.RandomState(self.seed)
                    self._uniform[n] = rs.random_sample((self.n_resamples, 2, n))
                u = self._uniform[n]
                i_pred = (u[:, 0] * length).astype(np.intp)
                i_resp = (u[:, 1] * length).astype(np.intp)
                self._index[length] = (i_pred, i_resp)
            return self._index[length]


def _counts(i: np.ndarray, length: int) -> np.ndarray:
    """``(resamples, length)``: how often each sample is drawn in each resample."""
    n_res = len(i)
    flat = (np.arange(n_res)[:, None] * length + i).ravel()
    return np.bincount(flat, minlength=n_res * length).reshape(n_res, length).astype(np.float64)


def _resampled_sums(x: np.ndarray, y: np.ndarray, i_x: np.ndarray, i_y: np.ndarray) -> np.ndarray:
    """``(5, resamples, C)``: sums of x, y, x**2, y**2 and x*y over each resample of (L, C) data."""
    out = np.empty((5, *i_x.shape[:1], x.shape[1]))
    if accelerated.available():
        accelerated.resampled_sums(np.ascontiguousarray(x), np.ascontiguousarray(y), i_x, i_y, out)
        return out
    length, k = x.shape
    s_x = _counts(i_x, length) @ np.concatenate([x, x * x], axis=1)
    s_y = _counts(i_y, length) @ np.concatenate([y, y * y], axis=1)
    out[0], out[2] = s_x[:, :k], s_x[:, k:]
    out[1], out[3] = s_y[:, :k], s_y[:, k:]
    out[4] = _resampled_cross(x, y, i_x, i_y)
    return out


def _resampled_cross(x: np.ndarray, y: np.ndarray, i_x: np.ndarray, i_y: np.ndarray) -> np.ndarray:
    """``out[k, c] = sum_j x[i_x[k, j], c] * y[i_y[k, j], c]`` for ``x, y`` of shape (L, C).

    Tiled over cells and resamples so that each gathered block stays in cache;
    the tiles of cells run on two threads (numpy releases the GIL here).
    """
    n_res, n = i_x.shape
    out = np.empty((n_res, x.shape[1]))
    step = max(1, 2048 // n)

    def tile(c0: int) -> None:
        xb = np.ascontiguousarray(x[:, c0 : c0 + 64])
        yb = np.ascontiguousarray(y[:, c0 : c0 + 64])
        for k0 in range(0, n_res, step):
            a = np.take(xb, i_x[k0 : k0 + step], axis=0)  # (resamples, n, cells)
            b = np.take(yb, i_y[k0 : k0 + step], axis=0)
            out[k0 : k0 + step, c0 : c0 + 64] = np.einsum("knc,knc->kc", a, b)

    run_on_two_threads(tile, range(0, x.shape[1], 64))
    return out


def nems_floor(p: np.ndarray, r: np.ndarray, draws: FloorDraws) -> np.ndarray:
    """NEMS0's ``r_floor`` per row of ``p`` and ``r`` (cells, samples).

    Each cell's finite samples, in order, are resampled with ``draws``'
    indices for their count; cells with the same count share one set of
    draws and are scored together. 0 where no resample gives a finite
    correlation.
    """
    ok = np.isfinite(p) & np.isfinite(r)
    length = ok.sum(1)
    out = np.zeros(p.shape[0])
    pc, rc = _centered(p, ok), _centered(r, ok)
    for size in np.unique(length):
        if size < 2:
            continue  # no finite correlation: NEMS0 gives 0
        cells = np.flatnonzero(length == size)
        # each cell's finite samples, in order, as the columns of (L, cells)
        if size == p.shape[1]:  # every sample: no gather
            x, y = (pc, rc) if len(cells) == len(p) else (pc[cells], rc[cells])
            x, y = x.T, y.T
        elif (ok[cells] == ok[cells[0]]).all():
            x, y = pc[cells][:, ok[cells[0]]].T, rc[cells][:, ok[cells[0]]].T
        else:
            order = np.argsort(~ok[cells], axis=1, kind="stable")[:, :size]
            x = np.take_along_axis(pc[cells], order, axis=1).T
            y = np.take_along_axis(rc[cells], order, axis=1).T
        i_x, i_y = draws.indices(int(size))
        s = _resampled_sums(x, y, i_x, i_y)
        rf = _corr_from_sums(np.float64(i_x.shape[1]), *s)  # (resamples, cells)
        finite = np.isfinite(rf)
        n_fin = finite.sum(0)
        ranked = np.sort(np.where(finite, rf, np.inf), axis=0)
        at = np.minimum((n_fin * 0.95).astype(np.intp), rf.shape[0] - 1)
        picked = np.take_along_axis(ranked, at[None, :], axis=0)[0]
        out[cells] = np.where(n_fin > 0, picked, 0.0)
    return out


def _pair_subset(n_trials: int, seed: int) -> np.ndarray | None:
    """Pairs (upper triangle, row-major) NEMS0 averages: all of them up to 1000, else a draw."""
    n_pairs = n_trials * (n_trials - 1) // 2
    if n_pairs <= _MAX_PAIRS:
        return None
    rs = np.random.RandomState(seed)
    return np.sort(np.argsort(rs.random_sample(n_pairs))[:_MAX_PAIRS])


def _flat(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """True where values with count ``n``, sum ``s`` and sum of squares ``ss`` are all equal."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n < 2) | (ss - s * s / n <= _CONSTANT * ss)


def _pair_mean_general(trials: np.ndarray, m: np.ndarray, chosen: np.ndarray | None) -> float:
    """Mean single-trial pair correlation of one cell whose trials have different masks."""
    mf = m.astype(np.float64)
    raw = np.where(m, trials, 0.0)
    xc = _centered(trials, m)
    count, raw_sum = mf @ mf.T, raw @ mf.T
    sx, sxx, sxy = xc @ mf.T, (xc * xc) @ mf.T, xc @ xc.T
    r = _corr_from_sums(count, sx, sx.T, sxx, sxx.T, sxy)
    r = np.where((raw_sum == 0) | (raw_sum.T == 0) | np.isnan(r), 0.0, r)
    a, b = np.triu_indices(len(trials), 1)
    pairs = r[a, b]
    return float((pairs if chosen is None else pairs[chosen]).mean())


def nems_ceiling(trials: np.ndarray, held: np.ndarray, p: np.ndarray, seed: int) -> np.ndarray:
    """r_ceiling for ``trials (cells, n, samples)`` (the first n repeats of each stim).

    ``held`` marks the recorded values of ``trials``, which is the caller's
    own copy and is overwritten. Pair correlations come from each cell's Gram
    matrix of single trials (one batched matrix product); a cell whose trials
    differ in which samples they hold, or with more pairs than NEMS0 averages,
    takes the per-pair path.
    """
    n_cells, n_trials, _ = trials.shape
    if n_trials <= 1:
        return np.zeros(n_cells)
    pf = np.isfinite(p)
    m = held & pf[:, None, :]  # only where the prediction is finite
    return _ceiling_scores(_ceiling_trials(trials, m, seed), p, pf)


def _ceiling_trials(trials: np.ndarray, m: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The trials' side of r_ceiling on the values ``m``: centred trials, their sums, the pairs."""
    n_cells, n_trials, _ = trials.shape
    chosen = _pair_subset(n_trials, seed)
    uniform = (m == m[:, :1]).all(axis=(1, 2))
    general = np.flatnonzero(~uniform if chosen is None else np.ones(n_cells, bool))
    rac_general = [_pair_mean_general(trials[c], m[c], chosen) for c in general]

    xs = trials  # from here on: the trials on m, centred on each cell's mean, 0 elsewhere
    np.copyto(xs, 0.0, where=~m)
    raw_sum = xs.sum(-1)
    n_a = m.sum(-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = raw_sum.sum(1) / np.maximum(n_a.sum(1), 1)
    xs -= shift[:, None, None]
    xs *= m
    s_x = xs.sum(-1)
    # einsum, not a BLAS product: for these small products BLAS's threads cost more than they
    # save, and on a busy machine far more
    gram = np.einsum("cas,cbs->cab", xs, xs)
    ss = np.diagonal(gram, axis1=1, axis2=2)
    # a pair counts 0 when either trial is empty, silent or constant on the pair's samples
    n_safe = np.maximum(n_a, 1.0)
    css = ss - s_x * s_x / n_safe
    usable = ~((raw_sum == 0) | (n_a < 2) | (css <= _CONSTANT * ss))
    z = np.where(usable, 1.0 / np.sqrt(np.where(usable, css, 1.0)), 0.0)
    pair_r = (gram - s_x[:, :, None] * s_x[:, None, :] / n_safe[:, :, None]) * z[:, :, None]
    pair_r *= z[:, None, :]
    a, b = np.triu_indices(n_trials, 1)
    rac = np.clip(pair_r[:, a, b], -1.0, 1.0).mean(1)
    rac[general] = rac_general
    rac = np.maximum(rac, _RAC_LIMIT)
    return {"xs": xs, "m": m, "raw_sum": raw_sum, "n_a": n_a, "s_x": s_x, "ss": ss, "rac": rac}


def _ceiling_scores(trials: dict[str, np.ndarray], p: np.ndarray, pf: np.ndarray) -> np.ndarray:
    """r_ceiling of predictions ``p (..., cells, samples)`` from :func:`_ceiling_trials`."""
    n_a, s_x, raw_sum = trials["n_a"], trials["s_x"], trials["raw_sum"]
    pc = _centered(p, pf)
    mf = trials["m"].astype(np.float64)
    if p.ndim == 2:
        s_p = np.matmul(mf, pc[..., None])[..., 0]
        s_pp = np.matmul(mf, (pc * pc)[..., None])[..., 0]
        s_xp = np.matmul(trials["xs"], pc[..., None])[..., 0]
    else:  # many predictions: per cell, (trials, samples) @ (samples, models)
        pt = np.ascontiguousarray(np.moveaxis(pc, 0, -1))  # (cells, samples, models)
        if accelerated.available():
            shared = (trials["m"] == trials["m"][:, :1]).all(axis=(1, 2))
            sums = np.empty((pt.shape[0], 3, mf.shape[1], pt.shape[2]))
            accelerated.trial_sums_models(trials["xs"], mf, pt, shared, sums)
            s_xp, s_p, s_pp = (np.moveaxis(sums[:, q], -1, 0) for q in range(3))
        else:
            s_p = np.moveaxis(np.matmul(mf, pt), -1, 0)
            s_pp = np.moveaxis(np.matmul(mf, pt * pt), -1, 0)
            s_xp = np.moveaxis(np.matmul(trials["xs"], pt), -1, 0)
    r_trial = _corr_from_sums(n_a, s_x, s_p, trials["ss"], s_pp, s_xp)
    zero = (n_a == 0) | (raw_sum == 0) | _flat(n_a, s_p, s_pp)
    # a constant non-zero trial correlates as NaN in NEMS0, and so does the ceiling
    r_trial = np.where(zero, 0.0, r_trial)
    return r_trial.mean(-1) / np.sqrt(trials["rac"])


# -- deepSTRF -----------------------------------------------------------------------------------


def deepstrf_correlations(
    p: np.ndarray, g: np.ndarray, sp: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """deepSTRF's ``corrcoef`` and ``normalized_corrcoef(method="schoppe")`` per row.

    ``p`` is ``(..., cells, samples)``: leading dims hold several predictions
    of the same cells, scored against the one PSTH ``g (cells, samples)``.

    Both run over the bins where the PSTH ``g`` is finite (NaN in ``p`` there
    propagates); the second divides the covariance by ``sqrt(var(p) sp)``
    with ``sp`` from :func:`deepstrf_signal_power` (None: not computed).
    """
    valid = np.isfinite(g)
    cnt = valid.sum(1).astype(np.float64)
    pc, gc = _centered(p, valid), _centered(g, valid)
    s_pg = np.einsum("...j,...j->...", pc, gc)
    s_pp = np.einsum("...j,...j->...", pc, pc)
    s_gg = np.einsum("ij,ij->i", gc, gc)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt(s_pp * s_gg)
        cc_raw = np.where((cnt < 2) | (den < _EPS), np.nan, s_pg / den)
        if sp is None:
            return cc_raw, None
        var_p = s_pp / (cnt - 1)
        cc_norm = s_pg / np.maximum(cnt - 1, 1) / np.sqrt(var_p * sp)
        # a constant PSTH makes SP <= 0 in deepSTRF's arithmetic, whatever rounding leaves of it
        mean_g = np.sum(g, axis=1, where=valid) / cnt
        flat_g = ~(s_gg > _CONSTANT * (s_gg + cnt * mean_g * mean_g))
    bad = (cnt < 2) | ~np.isfinite(sp) | (sp <= 0) | (var_p < _EPS) | flat_g
    return cc_raw, np.where(bad, np.nan, cc_norm)


def deepstrf_signal_power(x: np.ndarray, fin: np.ndarray) -> np.ndarray:
    """Sahani-Linden SP per cell of ``x (cells, stims, repeats, time)``, deepSTRF's weighting.

    Per stim: the repeats and time bins holding any value form a block (NaN
    inside it propagates, as in deepSTRF); SP is computed on it with unbiased
    variances, and averaged over the stims with at least 2 of each, weighted
    by their time bins.
    """
    v_rep = fin.any(-1)  # (cells, stims, repeats)
    v_time = fin.any(-2)  # (cells, stims, time)
    n_rep = v_rep.sum(-1).astype(np.float64)
    n_time = v_time.sum(-1).astype(np.float64)
    block = v_rep[..., :, None] & v_time[..., None, :]
    holes = (block & ~fin).any((-2, -1))
    xs = np.where(fin, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        s_t = xs.sum(-1)  # (cells, stims, repeats)
        s_tt = (xs * xs).sum(-1)
        var_trial = (s_tt - s_t * s_t / n_time[..., None]) / (n_time[..., None] - 1)
        total = np.where(v_rep, var_trial, 0.0).sum(-1) / n_rep
        psth = xs.sum(-2) / n_rep[..., None]  # (cells, stims, time)
        mean_psth = s_t.sum(-1) / (n_rep * n_time)
        dev = np.where(v_time, psth - mean_psth[..., None], 0.0)
        var_psth = (dev * dev).sum(-1) / (n_time - 1)
        sp = (n_rep * var_psth - total) / (n_rep - 1)
        size = (n_rep * var_psth + total) / (n_rep - 1)  # of the terms SP is the difference of
    qualifies = (n_rep >= 2) & (n_time >= 2)
    sp = np.where(holes, np.nan, sp)
    weight = np.where(qualifies, n_time, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(qualifies, weight * sp, 0.0).sum(1) / weight.sum(1)
        size = np.where(qualifies, weight * size, 0.0).sum(1) / weight.sum(1)
    return np.where(weight.sum(1) > 0, _exact_zero(out, size), np.nan)


def _exact_zero(sp: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``sp`` with values within rounding of 0 (relative to the ``size`` of its terms) set to 0.

    A signal power is a difference of two variances; for a sparse cell the two
    are equal in exact arithmetic (spikes in one repeat only), and rounding
    leaves a value of either sign whose size says nothing. Counted as 0 (not
    positive) on every path, so the sign of a rounding error never decides
    between NaN and a huge normalized correlation.
    """
    return np.where(np.abs(sp) <= _CONSTANT * np.abs(size), 0.0, sp)


# -- Schoppe et al. 2016 ------------------------------------------------------------------------


def _schoppe_trials(
    x: np.ndarray, fin: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Schoppe's trials of ``x (cells, stims, repeats, time)``: the first N of each stim heard.

    Returns ``x`` with each stim's recorded repeats first, N per cell, the
    mask of kept repeats and the samples where every kept trial has a value.
    """
    n_rep = x.shape[2]
    has_rep = fin.any(-1)  # (cells, stims, repeats)
    k = has_rep.sum(-1)
    has_stim = k > 0
    n_trials = np.where(has_stim, k, n_rep + 1).min(1)  # fewest repeats among the cell's stims
    n_trials = np.where(has_stim.any(1), n_trials, 0)
    if not (has_rep == (np.arange(n_rep) < k[..., None])).all():
        order = np.argsort(~has_rep, axis=-1, kind="stable")  # repeats with data first
        x = np.take_along_axis(x, order[..., None], axis=2)
        fin = np.take_along_axis(fin, order[..., None], axis=2)
    keep = (np.arange(n_rep) < n_trials[:, None])[:, None, :, None]  # (cells, 1, repeats, 1)
    return x, n_trials, keep, (fin | ~keep).all(2)


def _schoppe_signal(
    x: np.ndarray, n_trials: np.ndarray, keep: np.ndarray, ok: np.ndarray
) -> dict[str, np.ndarray]:
    """The response's side of Schoppe's metrics on the samples ``ok (cells, stims, time)``."""
    use = keep & ok[:, :, None, :]
    length = ok.sum((1, 2)).astype(np.float64)
    nt = np.maximum(n_trials, 1).astype(np.float64)
    tr = np.where(use, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # centred on the cell's mean value: variances do not change, cancellation does
        shift = tr.sum((1, 2, 3)) / (nt * length)
        tr = np.where(use, tr - shift[:, None, None, None], 0.0)
        total = tr.sum(2)  # (cells, stims, time): sum of the trials
        s_tot = total.sum((1, 2))
        var_total = ((total * total).sum((1, 2)) - s_tot * s_tot / length) / (length - 1)
        s_r = tr.sum((1, 3))  # (cells, repeats)
        var_each = ((tr * tr).sum((1, 3)) - s_r * s_r / length[:, None]) / (length[:, None] - 1)
        sp = (var_total - var_each.sum(1)) / (nt * (nt - 1))
        sp = _exact_zero(sp, (var_total + var_each.sum(1)) / (nt * (nt - 1)))
        y = total / nt[:, None, None]
        yc = np.where(ok, y - (s_tot / nt / length)[:, None, None], 0.0)
        v_y = (yc * yc).sum((1, 2)) / length
        cc_max = np.sqrt(sp / v_y)
        # a constant PSTH has variance 0 in the reference's arithmetic, whatever rounding
        # leaves of it: SP <= 0 then (calc_CCnorm.m: CCnorm NaN, CCmax 0)
        mean_y = s_tot / nt / length + shift
        flat_y = ~(v_y > _CONSTANT * (v_y + mean_y * mean_y))
    undefined = (n_trials < 2) | (length < 2)
    no_signal = (sp <= 0) | flat_y
    cc_max = np.where(undefined, np.nan, np.where(no_signal, 0.0, cc_max))
    return {"sp": sp, "yc": yc, "length": length, "bad": undefined | no_signal, "cc_max": cc_max}


def _schoppe_norm(signal: dict[str, np.ndarray], p: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """cc_norm_schoppe of predictions ``p (..., cells, stims, time)`` on the samples ``ok``."""
    length = signal["length"]
    with np.errstate(invalid="ignore", divide="ignore"):
        yh = np.where(ok, p, 0.0)
        mean_yh = yh.sum((-2, -1)) / length
        yhc = np.where(ok, yh - mean_yh[..., None, None], 0.0)
        v_yh = (yhc * yhc).sum((-2, -1)) / length
        c_y_yh = (signal["yc"] * yhc).sum((-2, -1)) / length
        cc_norm = c_y_yh / np.sqrt(signal["sp"] * v_yh)
        # a constant prediction has variance 0 in the reference's arithmetic (0 / 0: NaN)
        flat_yh = ~(v_yh > _CONSTANT * (v_yh + mean_yh * mean_yh))
    return np.where(signal["bad"] | flat_yh, np.nan, cc_norm)


def schoppe(x: np.ndarray, fin: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cc_norm_schoppe and cc_max of trials ``x (cells, stims, repeats, time)`` and ``p``."""
    x, n_trials, keep, covered = _schoppe_trials(x, fin)
    ok = np.isfinite(p) & covered  # (cells, stims, time): samples scored
    signal = _schoppe_signal(x, n_trials, keep, ok)
    return _schoppe_norm(signal, p, ok), signal["cc_max"]


def trial_metrics(
    x: np.ndarray, p: np.ndarray, names: Any, n_first: Any, seed: int
) -> dict[str, np.ndarray]:
    """The PSTH and the metrics that need single trials, for ``x (cells, stims, repeats, time)``.

    ``x`` is the block's own float64 copy: its NaN are set to 0 here, and
    the metrics take the recorded values from ``np.isfinite(x)``. ``n_first``
    is ``r_ceiling``'s single trials per stim: one int for every cell, or one
    per cell (cells of different recordings).
    """
    nc, ns, nr, nt = x.shape
    fin = np.isfinite(x)
    np.copyto(x, 0.0, where=~fin)
    with np.errstate(invalid="ignore", divide="ignore"):
        psth = x.sum(2) / fin.sum(2)
    out: dict[str, np.ndarray] = {"psth": psth.reshape(nc, ns * nt)}
    if "signal_power" in names and nr > 1:
        out["signal_power"] = deepstrf_signal_power(x, fin)
    if "cc_norm_schoppe" in names or "cc_max" in names:
        out["cc_norm_schoppe"], out["cc_max"] = schoppe(x, fin, p)
    if "r_ceiling" in names:  # last: nems_ceiling overwrites x where the reshape is a view
        per_cell = np.broadcast_to(np.asarray(n_first, dtype=np.int64), (nc,))
        p_flat = p.reshape(nc, ns * nt)
        out["r_ceiling"] = np.empty(nc)
        for n in np.unique(per_cell):  # cells of recordings with the same trial count
            cells = per_cell == n
            every = bool(cells.all())  # one recording: no copy of the block
            xs, fs, pc = (x, fin, p_flat) if every else (x[cells], fin[cells], p_flat[cells])
            k = int(n)
            xs = xs[:, :, :k].transpose(0, 2, 1, 3).reshape(len(xs), k, ns * nt)
            fs = fs[:, :, :k].transpose(0, 2, 1, 3).reshape(len(fs), k, ns * nt)
            out["r_ceiling"][cells] = nems_ceiling(xs, fs, pc, seed)
    return out


# -- sweeps: many predictions of the same cells ---------------------------------------------------
#
# A sweep's predictions ``p (models, cells, ...)`` share each cell's response. Where a prediction
# is finite wherever the cell's PSTH is (``covering``), every metric scores the same samples for
# every model, so the response's side (PSTH, trials, signal power, pair correlations, the
# jackknife groups, r_floor's resampled response sums) is computed once per cell and only the
# prediction's side per model. The caller scores the other (model, cell) pairs one at a time.


def covering(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``(models, cells)``: True where ``p (models, cells, samples)`` is finite where ``g`` is."""
    finite = np.isfinite(p).all(-1)
    if finite.all():  # the usual case: one pass
        return finite
    return finite | (np.isfinite(p) | ~np.isfinite(g)).all(-1)


def nems_jackknife_models(
    p: np.ndarray, r: np.ndarray, n_jacks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`nems_jackknife` of ``p (models, cells, samples)``, each covering ``r (cells, L)``.

    Returns r_test, se_test and the degenerate flag ``(models, cells)`` and L ``(cells,)``.
    """
    ok = np.isfinite(r)
    length = ok.sum(1)
    degenerate = (length == 0) | _constant(p, ok) | _constant(r, ok)
    chunk = np.maximum(np.ceil(length / n_jacks / 10).astype(np.int64), 1)
    pc, rc = _centered(p, ok), _centered(r, ok)
    # each cell's groups (NEMS0's blocks over its finite samples) as a one-hot (cells, L, groups)
    group = ((np.cumsum(ok, axis=1) - 1) // chunk[:, None]) % n_jacks
    one_hot = ((group[..., None] == np.arange(n_jacks)) & ok[..., None]).astype(np.float64)
    n = one_hot.sum(1)  # (cells, groups)
    s_r = np.einsum("cs,csj->cj", rc, one_hot)
    s_rr = np.einsum("cs,csj->cj", rc * rc, one_hot)
    if accelerated.available():  # one pass, the models of a sample contiguous
        pt = np.ascontiguousarray(pc.transpose(1, 2, 0))  # (cells, samples, models)
        sums = np.empty((pt.shape[0], 3, n_jacks, pt.shape[2]))
        accelerated.group_sums_models(pt, rc, np.where(ok, group, -1), sums)
        s_p, s_pp, s_pr = (sums[:, q].transpose(2, 0, 1) for q in range(3))
    else:
        pt = np.ascontiguousarray(pc.transpose(1, 0, 2))  # (cells, models, samples): BLAS
        s_p = np.matmul(pt, one_hot).transpose(1, 0, 2)
        s_pp = np.matmul(pt * pt, one_hot).transpose(1, 0, 2)
        s_pr = np.matmul(pt * rc[:, None, :], one_hot).transpose(1, 0, 2)
    loo = [s.sum(-1, keepdims=True) - s for s in (n, s_p, s_r, s_pp, s_rr, s_pr)]
    jc = _corr_from_sums(*loo)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: NaN, as in NEMS0
        r_test = np.nanmean(jc, axis=-1)
        se_test = np.nanstd(jc, axis=-1) * np.sqrt(n_jacks - 1)
    r_test = np.where(degenerate, 0.0, r_test)
    se_test = np.where(degenerate, 0.0, se_test)
    return r_test, se_test, length, degenerate


def _resampled_sums_models(
    x: np.ndarray, y: np.ndarray, i_x: np.ndarray, i_y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Resampled sums of ``x (cells, L, models)`` and ``y (cells, L)`` with shared indices.

    Returns ``(cells, 3, resamples, models)`` (sums of x, x² and x·y) and
    ``(cells, 2, resamples)`` (sums of y and y²).
    """
    n_cells, length, n_models = x.shape
    n_res = len(i_x)
    s_x = np.empty((n_cells, 3, n_res, n_models))
    s_y = np.empty((n_cells, 2, n_res))
    if accelerated.available():
        accelerated.resampled_sums_models(x, y, i_x, i_y, s_x, s_y)
        return s_x, s_y
    counts_x, counts_y = _counts(i_x, length), _counts(i_y, length)
    rows = (np.arange(n_res)[:, None] * length + i_x).ravel()
    for c in range(n_cells):
        s_x[c, 0] = counts_x @ x[c]
        s_x[c, 1] = counts_x @ (x[c] * x[c])
        # sum_j x[i_x[k, j]] y[i_y[k, j]]: the y drawn beside each x, summed per (resample, x)
        weight = np.bincount(rows, weights=y[c][i_y].ravel(), minlength=n_res * length)
        s_x[c, 2] = weight.reshape(n_res, length) @ x[c]
        s_y[c, 0] = counts_y @ y[c]
        s_y[c, 1] = counts_y @ (y[c] * y[c])
    return s_x, s_y


def nems_floor_models(p: np.ndarray, r: np.ndarray, draws: FloorDraws) -> np.ndarray:
    """:func:`nems_floor` of ``p (models, cells, samples)``, each covering ``r (cells, samples)``.

    A cell's draws depend only on its sample count, so they are shared by
    its models, and the response's resampled sums are computed once.
    """
    ok = np.isfinite(r)
    length = ok.sum(1)
    n_models = p.shape[0]
    out = np.zeros((n_models, p.shape[1]))
    pc, rc = _centered(p, ok), _centered(r, ok)
    for size in np.unique(length):
        if size < 2:
            continue  # no finite correlation: NEMS0 gives 0
        cells = np.flatnonzero(length == size)
        # each cell's finite samples, in order: x (cells, L, models), models contiguous
        if (ok[cells] == ok[cells[0]]).all():
            keep = ok[cells[0]]
            x = np.ascontiguousarray(pc[:, cells][:, :, keep].transpose(1, 2, 0))
            y = np.ascontiguousarray(rc[cells][:, keep])
        else:
            x = np.stack([pc[:, c, ok[c]].T for c in cells])
            y = np.stack([rc[c, ok[c]] for c in cells])
        i_x, i_y = draws.indices(int(size))
        s_x, s_y = _resampled_sums_models(x, y, i_x, i_y)
        n = np.float64(i_x.shape[1])
        rf = _corr_from_sums(
            n, s_x[:, 0], s_y[:, 0, :, None], s_x[:, 1], s_y[:, 1, :, None], s_x[:, 2]
        )  # (cells, resamples, models)
        finite = np.isfinite(rf)
        n_fin = finite.sum(1)
        ranked = np.sort(np.where(finite, rf, np.inf), axis=1)
        at = np.minimum((n_fin * 0.95).astype(np.intp), rf.shape[1] - 1)
        picked = np.take_along_axis(ranked, at[:, None, :], axis=1)[:, 0]
        out[:, cells] = np.where(n_fin > 0, picked, 0.0).T
    return out


def sweep_metrics(
    x: np.ndarray,
    p: np.ndarray,
    names: Any,
    n_first: np.ndarray,
    seed: int,
    n_jacks: int,
    draws: FloorDraws | None,
    compiled: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Every metric of predictions ``p (models, cells, stims, time)`` of trials ``x``.

    ``x (cells, stims, repeats, time)`` is the block's own float64 copy (its
    NaN are set to 0). Returns ``(models, cells)`` arrays, ``"length"``
    ``(cells,)`` and ``"covering"`` ``(models, cells)``: the values are those
    of :func:`trial_metrics`, :func:`nems_jackknife`, :func:`nems_floor` and
    :func:`deepstrf_correlations` where ``covering`` holds (the caller scores
    the other pairs alone). ``compiled`` is what
    :func:`nat4xr.accelerated.trial_metrics` gives for these cells: where it
    scored a cell, its PSTH and the response's side of the trial metrics are
    taken from it, as one prediction's scoring takes them.
    """
    nm, nc, ns, nt = p.shape
    nr = x.shape[2]
    fin = np.isfinite(x)
    np.copyto(x, 0.0, where=~fin)
    with np.errstate(invalid="ignore", divide="ignore"):
        psth = x.sum(2) / fin.sum(2)
    rect = np.zeros(nc, dtype=bool) if compiled is None else ~compiled["general"]
    if rect.any():
        psth[rect] = compiled["psth"][rect]
    g = psth.reshape(nc, ns * nt)
    p_flat = p.reshape(nm, nc, ns * nt)
    out: dict[str, np.ndarray] = {"covering": covering(p_flat, g)}
    out["r_test"], out["se_test"], out["length"], out["degenerate"] = nems_jackknife_models(
        p_flat, g, n_jacks
    )
    if draws is not None:
        out["r_floor"] = nems_floor_models(p_flat, g, draws)
    if "cc_raw" in names or "cc_norm" in names:
        sp = deepstrf_signal_power(x, fin) if "cc_norm" in names and nr > 1 else None
        if sp is not None and rect.any():
            sp[rect] = compiled["signal_power"][rect]
        out["cc_raw"], cc_norm = deepstrf_correlations(p_flat, g, sp)
        out["cc_norm"] = out["cc_raw"] if cc_norm is None else cc_norm
    if "cc_norm_schoppe" in names or "cc_max" in names:
        xs, n_trials, keep, ok = _schoppe_trials(x, fin)
        signal = _schoppe_signal(xs, n_trials, keep, ok)
        if rect.any():  # the compiled SP and its verdicts (cc_max NaN: undefined, 0: no signal)
            cc_max = compiled["cc_max"][rect]
            signal["sp"][rect] = compiled["schoppe_signal"][rect]
            signal["bad"][rect] = np.isnan(cc_max) | (cc_max == 0.0)
            signal["cc_max"][rect] = cc_max
        out["cc_norm_schoppe"] = _schoppe_norm(signal, p, ok)
        out["cc_max"] = np.broadcast_to(signal["cc_max"], (nm, nc))
    if "r_ceiling" in names:  # last: the trials are overwritten
        per_cell = np.broadcast_to(np.asarray(n_first, dtype=np.int64), (nc,))
        out["r_ceiling"] = np.empty((nm, nc))
        for n in np.unique(per_cell):  # cells of recordings with the same trial count
            cells = per_cell == n
            k = int(n)
            if k <= 1:
                out["r_ceiling"][:, cells] = 0.0
                continue
            xs = x[cells][:, :, :k].transpose(0, 2, 1, 3).reshape(-1, k, ns * nt)
            fs = fin[cells][:, :, :k].transpose(0, 2, 1, 3).reshape(-1, k, ns * nt)
            pc = p_flat[:, cells]
            # covering: the prediction is finite wherever a trial holds a value
            trials = _ceiling_trials(xs, fs, seed)
            out["r_ceiling"][:, cells] = _ceiling_scores(trials, pc, np.isfinite(pc))
    return out
