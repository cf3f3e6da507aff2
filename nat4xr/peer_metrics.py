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
    gram = np.matmul(xs, xs.transpose(0, 2, 1))
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

    pc = _centered(p, pf)
    mf = m.astype(np.float64)
    s_p = np.matmul(mf, pc[:, :, None])[..., 0]
    s_pp = np.matmul(mf, (pc * pc)[:, :, None])[..., 0]
    s_xp = np.matmul(xs, pc[:, :, None])[..., 0]
    r_trial = _corr_from_sums(n_a, s_x, s_p, ss, s_pp, s_xp)
    zero = (n_a == 0) | (raw_sum == 0) | _flat(n_a, s_p, s_pp)
    # a constant non-zero trial correlates as NaN in NEMS0, and so does the ceiling
    r_trial = np.where(zero, 0.0, r_trial)
    return r_trial.mean(1) / np.sqrt(rac)


# -- deepSTRF -----------------------------------------------------------------------------------


def deepstrf_correlations(
    p: np.ndarray, g: np.ndarray, sp: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """deepSTRF's ``corrcoef`` and ``normalized_corrcoef(method="schoppe")`` per row.

    Both run over the bins where the PSTH ``g`` is finite (NaN in ``p`` there
    propagates); the second divides the covariance by ``sqrt(var(p) sp)``
    with ``sp`` from :func:`deepstrf_signal_power` (None: not computed).
    """
    valid = np.isfinite(g)
    cnt = valid.sum(1).astype(np.float64)
    pc, gc = _centered(p, valid), _centered(g, valid)
    s_pg = np.einsum("ij,ij->i", pc, gc)
    s_pp = np.einsum("ij,ij->i", pc, pc)
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
    qualifies = (n_rep >= 2) & (n_time >= 2)
    sp = np.where(holes, np.nan, sp)
    weight = np.where(qualifies, n_time, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(qualifies, weight * sp, 0.0).sum(1) / weight.sum(1)
    return np.where(weight.sum(1) > 0, out, np.nan)


# -- Schoppe et al. 2016 ------------------------------------------------------------------------


def schoppe(x: np.ndarray, fin: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cc_norm_schoppe and cc_max of trials ``x (cells, stims, repeats, time)`` and ``p``."""
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
    ok = np.isfinite(p) & (fin | ~keep).all(2)  # (cells, stims, time): samples scored
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
        y = total / nt[:, None, None]
        yh = np.where(ok, p, 0.0)
        yc = np.where(ok, y - (s_tot / nt / length)[:, None, None], 0.0)
        yhc = np.where(ok, yh - (yh.sum((1, 2)) / length)[:, None, None], 0.0)
        v_y = (yc * yc).sum((1, 2)) / length
        v_yh = (yhc * yhc).sum((1, 2)) / length
        c_y_yh = (yc * yhc).sum((1, 2)) / length
        cc_norm = c_y_yh / np.sqrt(sp * v_yh)
        cc_max = np.sqrt(sp / v_y)
        # a constant PSTH or prediction has variance 0 in the reference's arithmetic, whatever
        # rounding leaves of it: SP <= 0 then (calc_CCnorm.m: CCnorm NaN, CCmax 0)
        mean_y = s_tot / nt / length + shift
        flat_y = ~(v_y > _CONSTANT * (v_y + mean_y * mean_y))
        mean_yh = yh.sum((1, 2)) / length
        flat_yh = ~(v_yh > _CONSTANT * (v_yh + mean_yh * mean_yh))
    undefined = (n_trials < 2) | (length < 2)
    no_signal = (sp <= 0) | flat_y
    cc_norm = np.where(undefined | no_signal | flat_yh, np.nan, cc_norm)
    cc_max = np.where(undefined, np.nan, np.where(no_signal, 0.0, cc_max))
    return cc_norm, cc_max


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
