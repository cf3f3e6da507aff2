"""Compiled kernels of :func:`nat4xr.evaluate`, used when numba is installed.

The numpy code in :mod:`nat4xr.peer_metrics` handles every case; the kernels
here compute the same numbers (to rounding) in one pass per cell for the cases
that dominate in practice, and say which cells they left to the numpy code.
numba is an optional dependency (``pip install nat4xr[fast]``); it is imported
on the first call that needs it, never by ``import nat4xr``, and compiled
kernels are cached on disk by numba.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "available",
    "group_sums_models",
    "resampled_sums",
    "resampled_sums_models",
    "run_on_two_threads",
    "trial_metrics",
    "trial_sums_models",
]

#: Relative variance under which a signal counts as constant (as in peer_metrics).
CONSTANT = 1e-10
#: NEMS0 r_ceiling: floor of the single-trial correlation, and the most pairs it averages.
RAC_LIMIT, MAX_PAIRS = 0.01, 1000


def run_on_two_threads(task: Any, starts: range) -> None:
    """``task(start)`` for every start, on two threads when there is more than one."""
    if len(starts) > 1 and (os.cpu_count() or 1) > 1:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(task, starts))  # numpy releases the GIL in the heavy parts
    else:
        for start in starts:
            task(start)


def available() -> bool:
    """True when the kernels can run: numba importable and ``NAT4XR_NUMBA`` not ``"0"``."""
    return os.environ.get("NAT4XR_NUMBA", "1") != "0" and _kernels() is not None


@functools.cache
def _kernels() -> Any:
    try:
        import numba
    except ImportError:
        return None
    return _compile(numba)


def resampled_sums(x: Any, y: Any, i_x: Any, i_y: Any, out: Any) -> None:
    """``out (5, K, C)``: sums of x, y, x², y² and x·y over each resample ``(i_x[k], i_y[k])``.

    ``x`` and ``y`` are ``(L, C)`` float64, C-contiguous; ``i_x``, ``i_y``
    ``(K, n)`` integer indices into their first axis.
    """
    kernel = _kernels().resampled_sums
    run_on_two_threads(lambda c0: kernel(x, y, i_x, i_y, c0, out), range(0, x.shape[1], 64))


def resampled_sums_models(x: Any, y: Any, i_x: Any, i_y: Any, s_x: Any, s_y: Any) -> None:
    """Resampled sums of many predictions of each cell, with the draws shared by them.

    ``x (cells, L, models)`` and ``y (cells, L)`` float64, C-contiguous;
    ``i_x``, ``i_y`` ``(K, n)`` indices. Fills ``s_x (cells, 3, K, models)``
    (sums of x, x², x·y) and ``s_y (cells, 2, K)`` (sums of y, y²). Each drawn
    index reads one contiguous row of the models, so the models are summed in
    SIMD, and y's sums are made once per cell.
    """
    _kernels().resampled_models(x, y, i_x, i_y, s_x, s_y)


def group_sums_models(pt: Any, rc: Any, group: Any, out: Any) -> None:
    """Per jackknife group of each cell: sums of p, p² and p·r for every model.

    ``pt (cells, L, models)`` and ``rc (cells, L)`` float64, ``group (cells,
    L)`` int64 (-1: not scored); fills ``out (cells, 3, groups, models)``.
    """
    _kernels().group_sums_models(pt, rc, group, out)


def trial_sums_models(xs: Any, mf: Any, pt: Any, shared: Any, out: Any) -> None:
    """Per single trial of each cell: sums of x·p, and of p and p² where the trial has values.

    ``xs``, ``mf (cells, n, L)`` float64 (the centred trials, 0 where they
    have no value, and that mask as 0/1), ``pt (cells, L, models)`` (0 where
    the prediction is not finite), ``shared (cells,)`` bool: every trial has
    the same values (their sums of p and p² are those of the first). Fills
    ``out (cells, 3, n, models)``.
    """
    _kernels().trial_sums_models(xs, mf, pt, shared, out)


def trial_metrics(obs: Any, order: Any, pred: Any, n_first: Any) -> dict[str, Any]:
    """The PSTH and the single-trial metrics of every cell whose data are rectangular.

    A cell is rectangular when, on every scored stim, its recorded repeats
    are the first ones and hold a value in every time bin, and its prediction
    is finite wherever it has data (for ``r_ceiling`` also: as many of the
    first ``n_first`` repeats on every stim it heard, and at most 45
    repeats). The others are flagged in ``"general"`` and get NaN here;
    their PSTH is computed all the same. ``"schoppe_signal"`` is Schoppe's
    SP, which does not depend on the prediction (a sweep's levels share it).

    Parameters
    ----------
    obs : ndarray
        ``(stim, neuron, repeat, time)`` as stored (float32 or float64 read as
        is, other types converted; sums in float64).
    order : ndarray
        Positions along ``obs``'s stim axis of the scored stims, in scoring order.
    pred : ndarray
        ``(stim, neuron, time)`` float64 in scoring order.
    n_first : int or ndarray
        Single trials per stim of ``r_ceiling`` (the fewest recorded among the
        stims of the cell's recording): one for every cell, or one per cell.
    """
    if obs.dtype not in (np.float32, np.float64):
        obs = obs.astype(np.float64)
    obs = np.ascontiguousarray(obs)  # one compiled version per float type, not per layout
    pred = np.ascontiguousarray(pred, dtype=np.float64)
    n_cells, n_stims, n_time = obs.shape[1], len(order), obs.shape[3]
    out = {
        "psth": np.empty((n_cells, n_stims, n_time)),
        "signal_power": np.empty(n_cells),
        "cc_norm_schoppe": np.empty(n_cells),
        "cc_max": np.empty(n_cells),
        "r_ceiling": np.empty(n_cells),
        "schoppe_signal": np.empty(n_cells),
        "general": np.zeros(n_cells, dtype=np.bool_),
    }
    order = np.asarray(order, dtype=np.int64)
    n_first = np.ascontiguousarray(np.broadcast_to(np.asarray(n_first, dtype=np.int64), n_cells))
    kernel = _kernels().trial_metrics
    names = (
        "psth",
        "signal_power",
        "cc_norm_schoppe",
        "cc_max",
        "r_ceiling",
        "schoppe_signal",
        "general",
    )

    def cells(c0: int) -> None:  # the kernel releases the GIL: two threads, two cores
        kernel(obs, order, pred, n_first, c0, min(c0 + 64, n_cells), *(out[k] for k in names))

    run_on_two_threads(cells, range(0, n_cells, 64))
    return out


def _compile(numba: Any) -> Any:  # pragma: no cover - the bodies run compiled
    """The kernels, compiled on first call (and cached on disk by numba)."""
    import types

    @numba.njit(nogil=True, cache=True)
    def resampled(x, y, i_x, i_y, c0, out):
        # a tile of 64 cells stays in cache while every resample reads it
        n_res, n = i_x.shape
        w = min(64, x.shape[1] - c0)
        if w > 0:
            xt = np.ascontiguousarray(x[:, c0 : c0 + w])
            yt = np.ascontiguousarray(y[:, c0 : c0 + w])
            acc = np.empty((5, w))
            for k in range(n_res):
                acc[:] = 0.0
                for j in range(n):
                    ra = i_x[k, j]
                    rb = i_y[k, j]
                    for c in range(w):
                        a = xt[ra, c]
                        b = yt[rb, c]
                        acc[0, c] += a
                        acc[1, c] += b
                        acc[2, c] += a * a
                        acc[3, c] += b * b
                        acc[4, c] += a * b
                for q in range(5):
                    for c in range(w):
                        out[q, k, c0 + c] = acc[q, c]

    @numba.njit(nogil=True, cache=True)
    def resampled_models(x, y, i_x, i_y, s_x, s_y):
        # the models of a drawn sample are one contiguous row, summed in SIMD; four draws are
        # added together before they reach the sums, which halves the traffic to the sums (the
        # order of the additions changes the sums by rounding only). Tiling the models to keep
        # a cell's samples in L2, or sorting the draws, measured slower or no faster.
        n_cells, _, n_models = x.shape
        n_res, n = i_x.shape
        for c in range(n_cells):
            xc = x[c]
            yc = y[c]
            for k in range(n_res):
                ax = s_x[c, 0, k]  # views: one row of models each
                axx = s_x[c, 1, k]
                axy = s_x[c, 2, k]
                ax[:] = 0.0
                axx[:] = 0.0
                axy[:] = 0.0
                sy = 0.0
                syy = 0.0
                for j in range(n):  # the response's sums, in draw order as for one prediction
                    b = yc[i_y[k, j]]
                    sy += b
                    syy += b * b
                s_y[c, 0, k] = sy
                s_y[c, 1, k] = syy
                j = 0
                while j + 4 <= n:
                    b1 = yc[i_y[k, j]]
                    b2 = yc[i_y[k, j + 1]]
                    b3 = yc[i_y[k, j + 2]]
                    b4 = yc[i_y[k, j + 3]]
                    r1 = xc[i_x[k, j]]
                    r2 = xc[i_x[k, j + 1]]
                    r3 = xc[i_x[k, j + 2]]
                    r4 = xc[i_x[k, j + 3]]
                    for m in range(n_models):
                        a1 = r1[m]
                        a2 = r2[m]
                        a3 = r3[m]
                        a4 = r4[m]
                        ax[m] += (a1 + a2) + (a3 + a4)
                        axx[m] += (a1 * a1 + a2 * a2) + (a3 * a3 + a4 * a4)
                        axy[m] += (a1 * b1 + a2 * b2) + (a3 * b3 + a4 * b4)
                    j += 4
                while j < n:
                    b = yc[i_y[k, j]]
                    row = xc[i_x[k, j]]
                    for m in range(n_models):
                        a = row[m]
                        ax[m] += a
                        axx[m] += a * a
                        axy[m] += a * b
                    j += 1

    @numba.njit(nogil=True, cache=True)
    def group_sums_models(pt, rc, group, out):
        n_cells, length, n_models = pt.shape
        out[:] = 0.0
        for c in range(n_cells):
            for s in range(length):
                g = group[c, s]
                if g < 0:
                    continue
                r = rc[c, s]
                row = pt[c, s]
                a1 = out[c, 0, g]
                a2 = out[c, 1, g]
                a3 = out[c, 2, g]
                for m in range(n_models):
                    v = row[m]
                    a1[m] += v
                    a2[m] += v * v
                    a3[m] += v * r

    @numba.njit(nogil=True, cache=True)
    def trial_sums_models(xs, mf, pt, shared, out):
        n_cells, n_trials, length = xs.shape
        n_models = pt.shape[2]
        out[:] = 0.0
        for c in range(n_cells):
            for a in range(n_trials):
                sxp = out[c, 0, a]
                sp = out[c, 1, a]
                spp = out[c, 2, a]
                own = a == 0 or not shared[c]
                for s in range(length):
                    w = xs[c, a, s]
                    h = mf[c, a, s] != 0.0
                    if w == 0.0 and not (own and h):
                        continue  # adds nothing: the prediction is finite (0 where it is not)
                    row = pt[c, s]
                    if own and h:
                        for m in range(n_models):
                            v = row[m]
                            sxp[m] += w * v
                            sp[m] += v
                            spp[m] += v * v
                    else:
                        for m in range(n_models):
                            sxp[m] += w * row[m]
                if not own:
                    sp[:] = out[c, 1, 0]
                    spp[:] = out[c, 2, 0]

    @numba.njit(nogil=True, cache=True)
    def trials(
        obs,
        order,
        pred,
        n_first,
        c0,
        c1,
        psth,
        sp_out,
        ccn_out,
        ccm_out,
        ceil_out,
        ssp_out,
        general,
    ):
        n_stims = order.shape[0]
        n_rep, n_time = obs.shape[2], obs.shape[3]
        nan = np.nan
        for c in range(c0, c1):
            k = np.zeros(n_stims, np.int64)  # recorded repeats per stim (a prefix)
            s1 = np.zeros((n_stims, n_rep))  # sum of each recorded trial
            rect = True
            for si in range(n_stims):
                s = order[si]
                for t in range(n_time):
                    acc = 0.0
                    cnt = 0
                    for r in range(n_rep):
                        v = obs[s, c, r, t]
                        if np.isfinite(v):
                            acc += v
                            cnt += 1
                    psth[c, si, t] = acc / cnt if cnt > 0 else nan
                for r in range(n_rep):
                    nf = 0
                    acc = 0.0
                    for t in range(n_time):
                        v = obs[s, c, r, t]
                        if np.isfinite(v):
                            nf += 1
                            acc += v
                    if nf == n_time:
                        if k[si] != r:
                            rect = False  # a recorded trial after a missing one
                        k[si] += 1
                        s1[si, r] = acc
                    elif nf != 0:
                        rect = False  # missing bins inside a trial
                if k[si] > 0:
                    for t in range(n_time):
                        if not np.isfinite(pred[si, c, t]):
                            rect = False
            if not rect:
                general[c] = True
                sp_out[c] = ccn_out[c] = ccm_out[c] = ceil_out[c] = ssp_out[c] = nan
                continue

            # -- deepSTRF signal power: per stim, weighted by its time bins
            num = 0.0
            den = 0.0
            size = 0.0
            for si in range(n_stims):
                kk = k[si]
                if kk < 2 or n_time < 2:
                    continue
                s = order[si]
                total = 0.0
                grand = 0.0
                for r in range(kk):
                    m = s1[si, r] / n_time
                    grand += s1[si, r]
                    acc = 0.0
                    for t in range(n_time):
                        d = obs[s, c, r, t] - m
                        acc += d * d
                    total += acc / (n_time - 1)
                total /= kk
                mean_psth = grand / (kk * n_time)
                acc = 0.0
                for t in range(n_time):
                    d = psth[c, si, t] - mean_psth
                    acc += d * d
                var_psth = acc / (n_time - 1)
                num += n_time * (kk * var_psth - total) / (kk - 1)
                size += n_time * (kk * var_psth + total) / (kk - 1)
                den += n_time
            if abs(num) <= CONSTANT * abs(size):
                num = 0.0  # 0 but for rounding (as peer_metrics._exact_zero)
            sp_out[c] = num / den if den > 0 else nan

            # -- samples: the stims the cell heard, every bin
            n_heard = 0
            n_min = n_rep + 1
            for si in range(n_stims):
                if k[si] > 0:
                    n_heard += 1
                    n_min = min(n_min, k[si])
            length = n_heard * n_time
            n_tr = n_min if n_heard > 0 else 0

            # -- Schoppe et al.: the first n_tr trials of each stim heard
            if n_tr < 2 or length < 2:
                ccn_out[c] = ccm_out[c] = ssp_out[c] = nan
            else:
                mean_a = np.zeros(n_tr)
                mp = 0.0
                for si in range(n_stims):
                    if k[si] == 0:
                        continue
                    for a in range(n_tr):
                        mean_a[a] += s1[si, a]
                    for t in range(n_time):
                        mp += pred[si, c, t]
                mean_a /= length
                mp /= length
                m_tot = mean_a.sum()
                var_a = np.zeros(n_tr)
                v_tot = 0.0
                v_y = 0.0
                v_p = 0.0
                c_yp = 0.0
                for si in range(n_stims):
                    if k[si] == 0:
                        continue
                    s = order[si]
                    for t in range(n_time):
                        tot = 0.0
                        for a in range(n_tr):
                            v = obs[s, c, a, t]
                            tot += v
                            d = v - mean_a[a]
                            var_a[a] += d * d
                        d = tot - m_tot
                        v_tot += d * d
                        yc = d / n_tr
                        pc = pred[si, c, t] - mp
                        v_y += yc * yc
                        v_p += pc * pc
                        c_yp += yc * pc
                sp = (v_tot - var_a.sum()) / (length - 1) / (n_tr * (n_tr - 1))
                if abs(v_tot - var_a.sum()) <= CONSTANT * (v_tot + var_a.sum()):
                    sp = 0.0  # 0 but for rounding (as peer_metrics._exact_zero)
                v_y /= length
                v_p /= length
                c_yp /= length
                # constant PSTH or prediction: variance 0 whatever the rounding (as in numpy)
                m_y = m_tot / n_tr
                flat_y = not v_y > CONSTANT * (v_y + m_y * m_y)
                flat_p = not v_p > CONSTANT * (v_p + mp * mp)
                no_signal = sp <= 0 or flat_y
                ccn_out[c] = nan if (no_signal or flat_p) else c_yp / np.sqrt(sp * v_p)
                ccm_out[c] = 0.0 if no_signal else np.sqrt(sp / v_y)
                ssp_out[c] = sp

            # -- NEMS0 r_ceiling: the first n_first trials of every stim (the cell's recording's)
            n = n_first[c]
            if n <= 1:
                ceil_out[c] = 0.0
                continue
            # trials 0..m-1 hold every sample, m..n-1 none; else their samples differ
            m = min(n, n_min) if n_heard > 0 else 0
            uniform = True
            for si in range(n_stims):
                if k[si] > 0 and min(k[si], n) != m:
                    uniform = False
            if n * (n - 1) // 2 > MAX_PAIRS or not uniform:
                general[c] = True  # drawn pairs, or trials with different samples
                sp_out[c] = ccn_out[c] = ccm_out[c] = ceil_out[c] = ssp_out[c] = nan
                continue
            raw = np.zeros(n)
            for si in range(n_stims):
                if k[si] > 0:
                    for a in range(m):
                        raw[a] += s1[si, a]
            m_all = 0.0  # the prediction's mean over all its finite values
            n_all = 0
            for si in range(n_stims):
                for t in range(n_time):
                    v = pred[si, c, t]
                    if np.isfinite(v):
                        m_all += v
                        n_all += 1
            m_all = m_all / n_all if n_all > 0 else 0.0
            mean_x = raw / max(length, 1)
            shift = raw.sum() / max(m * length, 1)
            mp = 0.0
            for si in range(n_stims):
                if k[si] > 0:
                    for t in range(n_time):
                        mp += pred[si, c, t]
            mp /= max(length, 1)
            css = np.zeros(n)
            # one-pass sums about the shift decide constancy, as in numpy: a constant trial
            # deviates from it by one value, so they cancel whatever the rounding
            s_sh = np.zeros(n)
            q_sh = np.zeros(n)
            for si in range(n_stims):
                if k[si] == 0:
                    continue
                s = order[si]
                for a in range(m):
                    acc = 0.0
                    for t in range(n_time):
                        d = obs[s, c, a, t] - mean_x[a]
                        acc += d * d
                        e = obs[s, c, a, t] - shift
                        s_sh[a] += e
                        q_sh[a] += e * e
                    css[a] += acc
            varied = np.zeros(n, np.bool_)
            for a in range(n):
                varied[a] = q_sh[a] - s_sh[a] * s_sh[a] / max(length, 1) > CONSTANT * q_sh[a]
            z = np.zeros(n)
            for a in range(n):
                if raw[a] != 0 and length >= 2 and varied[a]:
                    z[a] = 1.0 / np.sqrt(css[a])
            q = 0.0
            cp = 0.0
            cov = np.zeros(n)
            for si in range(n_stims):
                if k[si] == 0:
                    continue
                s = order[si]
                for t in range(n_time):
                    pc = pred[si, c, t] - mp
                    cp += pc * pc
                    acc = 0.0
                    for a in range(m):
                        d = obs[s, c, a, t] - mean_x[a]
                        acc += z[a] * d
                        cov[a] += d * pc
                    q += acc * acc
            diag = 0.0
            for a in range(n):
                diag += z[a] * z[a] * css[a]
            rac = max((q - diag) / (n * (n - 1)), RAC_LIMIT)
            s1p = 0.0  # one-pass about the mean of all its values (numpy's centring)
            s2p = 0.0
            for si in range(n_stims):
                if k[si] > 0:
                    for t in range(n_time):
                        e = pred[si, c, t] - m_all
                        s1p += e
                        s2p += e * e
            flat_p = length < 2 or s2p - s1p * s1p / length <= CONSTANT * s2p
            r_sum = 0.0
            for a in range(n):
                if length == 0 or raw[a] == 0 or flat_p:
                    continue  # NEMS0: 0
                if not varied[a]:
                    r_sum = nan  # a constant non-zero trial: NaN, as in NEMS0
                    break
                r = cov[a] / np.sqrt(css[a] * cp)
                r_sum += min(1.0, max(-1.0, r))
            ceil_out[c] = r_sum / n / np.sqrt(rac)

    return types.SimpleNamespace(
        resampled_sums=resampled,
        resampled_models=resampled_models,
        group_sums_models=group_sums_models,
        trial_sums_models=trial_sums_models,
        trial_metrics=trials,
    )
