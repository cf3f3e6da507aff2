"""References for the noise ceiling: the previous implementation and the SNR's definition.

``ccmax_previous`` is nat4xr's noise ceiling as it was before the block
kernels (whole-array xarray operations: every half-PSTH at once), kept
unchanged for its CCmax part so that the new code can be held to the same
numbers. ``snr_loop`` is Sahani & Linden's (2003) SNR written from the
paper's formula, one (stim, cell) at a time.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def _halves(resp: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = ~np.isnan(resp)
    valid = finite.any(axis=-1)
    n = valid.sum(axis=-1)[..., None, None]
    k = np.where(valid[..., None, :], keys, np.inf)
    rank = np.argsort(np.argsort(k, axis=-1, kind="stable"), axis=-1, kind="stable")
    in_a = rank < n // 2
    in_b = valid[..., None, :] & ~in_a
    x = np.where(finite, resp, 0.0).astype(np.float64)
    f = finite.astype(np.float64)
    out = []
    for w in (in_a.astype(np.float64), in_b.astype(np.float64)):
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((w @ x) / (w @ f))
    return out[0], out[1]


def _corr(a: xr.DataArray, b: xr.DataArray, dims: list[str]) -> xr.DataArray:
    both = a.notnull() & b.notnull()
    a, b = a.where(both), b.where(both)
    da, db = a - a.mean(dims), b - b.mean(dims)
    cov = (da * db).mean(dims)
    var = (da**2).mean(dims) * (db**2).mean(dims)
    return cov / np.sqrt(var.where(var > 0))


def _ccmax(r_half: xr.DataArray) -> xr.DataArray:
    r = r_half.clip(min=0.0)
    return np.sqrt(2 * r / (1 + r))


def ccmax_previous(ds: xr.Dataset, n_splits: int = 16, seed: int = 0) -> xr.Dataset:
    """``ccmax``, ``cc_half``, ``n_valid``, ``ccmax_neuron`` as the previous code computed them."""
    resp = ds["response"].transpose(..., "repeat", "time")
    keys = np.random.default_rng(seed).random((n_splits, resp.sizes["repeat"]))
    ha, hb = xr.apply_ufunc(
        _halves,
        resp,
        kwargs={"keys": keys},
        input_core_dims=[["repeat", "time"]],
        output_core_dims=[["split", "time"], ["split", "time"]],
    )
    valid = resp.notnull().any("time")
    n = valid.sum("repeat")
    enough = n >= 2
    cc_half = _corr(ha, hb, ["time"]).mean("split", skipna=True).where(enough)
    other = [d for d in ha.dims if d not in ("neuron", "split", "time")]
    cc_cell = _corr(ha.where(enough), hb.where(enough), [*other, "time"]).mean("split", skipna=True)
    has = enough.any(other)
    return xr.Dataset(
        {
            "ccmax": _ccmax(cc_half),
            "cc_half": cc_half,
            "n_valid": n.astype(np.int64),
            "ccmax_neuron": _ccmax(cc_cell).where(has),
        }
    )


def _power(trace: np.ndarray) -> float:
    """Sahani & Linden's power of a trace: its variance over time (bins with data)."""
    values = [v for v in trace if np.isfinite(v)]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def snr_loop(resp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (stim, cell) and per cell SNR of ``resp (stim, cell, repeat, time)``.

    Sahani & Linden 2003: with N trials r_n and their average r_bar,
    P_signal = (N P(r_bar) - mean_n P(r_n)) / (N - 1), P_noise = mean_n P(r_n) - P_signal,
    P(x) the variance of x over time. Per cell: the signal and noise powers of
    its stims with 2 or more trials, weighted by the bins of their average, summed.
    """
    resp = resp.astype(np.float64)
    n_stim, n_cell, n_rep, n_time = resp.shape
    snr = np.full((n_stim, n_cell), np.nan)
    snr_cell = np.full(n_cell, np.nan)
    for j in range(n_cell):
        signal = noise = 0.0
        used = False
        for i in range(n_stim):
            trials = [resp[i, j, r] for r in range(n_rep) if np.isfinite(resp[i, j, r]).any()]
            n = len(trials)
            if n < 2:
                continue
            average = np.full(n_time, np.nan)
            for t in range(n_time):
                vals = [tr[t] for tr in trials if np.isfinite(tr[t])]
                if vals:
                    average[t] = sum(vals) / len(vals)
            p_trials = sum(_power(tr) for tr in trials) / n
            p_signal = (n * _power(average) - p_trials) / (n - 1)
            p_noise = p_trials - p_signal
            if p_noise > 0:
                snr[i, j] = p_signal / p_noise
            bins = int(np.isfinite(average).sum())
            signal, noise, used = signal + bins * p_signal, noise + bins * p_noise, True
        if used and noise > 0:
            snr_cell[j] = signal / noise
    return snr, snr_cell
