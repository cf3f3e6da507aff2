"""Reductions over the repeats of ``response``, one block of stims and cells at a time.

:func:`nat4xr.metrics.psth` and :func:`nat4xr.metrics.noise_ceiling` reduce
the ``repeat`` (and ``time``) axes of ``response``. Done with whole-array
xarray operations, each step makes a full-size temporary (a NaN mask, a
float64 copy, half-PSTHs for every split); here every statistic is computed
from one block of the input while it is in memory, into small per-(stim, cell)
results:

- the PSTH of a block is summed in float64 straight from the stored float32
  values, stim by stim;
- the noise ceiling needs, per (stim, cell), six numbers per split-half
  (bins, means and centred sums of squares and products of the two
  half-PSTHs) and four for the powers of Sahani & Linden's SNR. When every
  trial with data has data in the same time bins (the common case), all of
  them follow from the cell's Gram matrix of centred trials (repeat x
  repeat): one batched matrix product per 128 cells instead of one product per
  split and the half-PSTHs. The other cells (trials with different missing
  bins) go through :func:`_direct_stats`, the definition applied literally.
  Sums are float64 throughout: the split-half correlation of nearly constant
  responses is a difference of large sums, and float32 would change it in
  the sixth digit.

:func:`over_blocks` runs a kernel over a ``(stim, neuron, repeat, time)``
array whatever its storage: dask (lazy, one task per chunk), numpy, or the
``nat4`` engine's lazily indexed arrays (``chunks=None``: each block read
when reduced, never the whole array).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "N_MOMENTS",
    "N_POWER",
    "N_SPLIT",
    "ceiling_from_stats",
    "ceiling_stats",
    "moments_block",
    "over_blocks",
    "pooled_moments",
    "psth_block",
    "split_weights",
]

#: Per (stim, cell): valid repeats ``n``, PSTH bins, power of the PSTH, mean power of the trials.
N_POWER = 4
#: Per split: bins where both halves have data, their means, centred sums a², b², ab.
N_SPLIT = 6
#: Cells per Gram block: the float64 work buffers stay in the CPU cache.
CELLS = 128
#: Bytes of input per block when the input is not dask (numpy or lazily indexed).
BLOCK_BYTES = 32 * 2**20


# -- running a kernel over blocks ------------------------------------------------------------------


def over_blocks(
    resp: xr.DataArray,
    kernel: Callable[[np.ndarray], np.ndarray],
    tail: tuple[int, ...],
    drop: int,
    dtype: Any = np.float64,
) -> Any:
    """``kernel`` over stim blocks of ``resp (stim, neuron, repeat, time)``.

    ``kernel(block)`` maps an input block ``(s, c, repeat, time)`` to
    ``(s, c, *tail)``, for any ``s`` and ``c``; the result has ``dtype``.
    ``drop`` is how many trailing input axes the kernel consumes (2: repeat
    and time; 1: repeat, then ``tail`` is ``(time,)``).

    Returns a dask array when ``resp`` is dask-backed (nothing computed), a
    numpy array otherwise, filled block by block: in-memory input is reduced
    in place (blocks are views), a lazily indexed one is read block by block.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=3)
    >>> out = over_blocks(ds["response"], lambda x: np.nansum(x, axis=(2, 3))[..., None], (1,), 2)
    >>> out.shape
    (4, 3, 1)
    """
    n_stim, n_cell = resp.shape[:2]
    if resp.chunks is not None:
        import dask.array as da

        data = resp.data.rechunk({2: -1, 3: -1})
        return da.map_blocks(
            lambda block: kernel(block).astype(dtype, copy=False),
            data,
            dtype=dtype,
            drop_axis=[2, 3] if drop == 2 else [2],
            new_axis=list(range(2, 2 + len(tail))) if drop == 2 else None,
            chunks=(*data.chunks[:2], *((n,) for n in tail)),
            meta=np.empty((0,) * (2 + len(tail)), dtype=dtype),
        )
    out = np.empty((n_stim, n_cell, *tail), dtype=dtype)
    per_stim = max(1, resp.dtype.itemsize * int(np.prod(resp.shape[1:])))
    step = max(1, BLOCK_BYTES // per_stim)
    starts = range(0, n_stim, step)

    def task(i: int) -> None:
        block = resp.isel(stim=slice(i, i + step)).values  # a view when in memory
        out[i : i + block.shape[0]] = kernel(block)

    if len(starts) > 1 and (os.cpu_count() or 1) > 1:
        with ThreadPoolExecutor(2) as pool:  # numpy releases the GIL in the heavy parts
            list(pool.map(task, starts))
    else:
        for i in starts:
            task(i)
    from .loading import return_freed_memory

    return_freed_memory()  # the blocks read from a file are freed; glibc would keep them
    return out


# -- PSTH ------------------------------------------------------------------------------------------


def psth_block(x: np.ndarray) -> np.ndarray:
    """Mean over repeats ignoring NaN: ``(s, c, repeat, time) -> (s, c, time)`` float64.

    Summed in float64 one stim at a time, so the only temporaries are one
    stim's NaN mask and its sums.

    Examples
    --------
    >>> x = np.array([[[[1.0, np.nan], [3.0, np.nan]]]], dtype=np.float32)
    >>> psth_block(x).tolist()
    [[[2.0, nan]]]
    """
    out = np.empty((*x.shape[:2], x.shape[3]), dtype=np.float64)
    for s in range(x.shape[0]):
        xs = x[s]
        total = xs.sum(axis=1, dtype=np.float64)
        if not np.isnan(total).any():  # NaN-free: every repeat counts
            np.divide(total, xs.shape[1], out=out[s])
            continue
        missing = np.isnan(xs)
        total = np.where(missing, 0.0, xs).sum(axis=1, dtype=np.float64)
        count = xs.shape[1] - np.count_nonzero(missing, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(total, count, out=out[s])
    return out


# -- moments (normalization statistics) ---------------------------------------------------------

#: Per (stim, cell): values with data, their mean, centred sum of squares, min and max.
N_MOMENTS = 5


def moments_block(x: np.ndarray) -> np.ndarray:
    """Moments over repeats and time, ignoring NaN: ``(s, c, R, T) -> (s, c, 5)`` float64.

    Columns ``count``, ``mean``, ``m2`` (sum of squares about the mean),
    ``min``, ``max``; ``count`` 0 and the rest NaN where a pair has no data.
    One stim at a time, so the only temporaries are one stim's float64
    deviations and NaN mask.

    Examples
    --------
    >>> x = np.array([[[[1.0, 3.0], [np.nan, 5.0]]]], dtype=np.float32)
    >>> moments_block(x)[0, 0].tolist()
    [3.0, 3.0, 8.0, 1.0, 5.0]
    """
    out = np.empty((*x.shape[:2], N_MOMENTS), dtype=np.float64)
    for s in range(x.shape[0]):
        xs = x[s].reshape(x.shape[1], -1)
        total = xs.sum(axis=1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if not np.isnan(total).any():
                count = np.full(xs.shape[0], xs.shape[1])
                mean = total / count
                dev = xs - mean[:, None]
                lo, hi = xs.min(axis=1, initial=np.inf), xs.max(axis=1, initial=-np.inf)
            else:
                missing = np.isnan(xs)
                count = xs.shape[1] - np.count_nonzero(missing, axis=1)
                mean = np.where(missing, 0.0, xs).sum(axis=1, dtype=np.float64) / count
                dev = np.where(missing, 0.0, xs - mean[:, None])
                lo = np.where(missing, np.inf, xs).min(axis=1)
                hi = np.where(missing, -np.inf, xs).max(axis=1)
            out[s, :, 0] = count
            out[s, :, 1] = mean
            out[s, :, 2] = np.einsum("ij,ij->i", dev, dev, dtype=np.float64)
            out[s, :, 3] = np.where(count > 0, lo, np.nan)
            out[s, :, 4] = np.where(count > 0, hi, np.nan)
    return out


def pooled_moments(stats: Any) -> dict[str, Any]:
    """Per cell ``mean``, ``std`` (population), ``min``, ``max`` over the stims of ``stats``.

    ``stats (S, C, 5)`` from :func:`moments_block` (numpy or dask); the
    stims are pooled with Chan et al.'s update. NaN for a cell without data.

    Examples
    --------
    >>> x = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    >>> out = pooled_moments(moments_block(x))
    >>> float(out["mean"][0]), float(out["std"][0]) == float(np.arange(8).std())
    (3.5, True)
    """
    count, mean, m2, lo, hi = (stats[..., i] for i in range(N_MOMENTS))
    has = count > 0
    total = count.sum(axis=0)
    total = np.where(total > 0, total, np.nan)
    grand = np.where(has, count * np.where(has, mean, 0.0), 0.0).sum(axis=0) / total
    dev = np.where(has, mean - grand, 0.0)
    pooled = (np.where(has, m2, 0.0) + count * dev * dev).sum(axis=0)
    defined = ~np.isnan(total)
    return {
        "mean": grand,
        "std": np.sqrt(pooled / total),
        "min": np.where(defined, np.where(has, lo, np.inf).min(axis=0), np.nan),
        "max": np.where(defined, np.where(has, hi, -np.inf).max(axis=0), np.nan),
    }


# -- noise ceiling ---------------------------------------------------------------------------------


def split_weights(valid: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Members of each split's halves, ``(..., K, R)`` float64 0/1, for ``valid (..., R)``.

    In split ``k`` the ``n // 2`` valid repeats with the smallest
    ``keys[k]`` form half A, the other valid repeats half B (``n`` valid
    repeats; invalid ones are in neither).

    Examples
    --------
    >>> a, b = split_weights(np.array([True, True, False, True]), np.array([[0.3, 0.1, 0.0, 0.2]]))
    >>> a.tolist(), b.tolist()
    ([[0.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 1.0]])
    """
    n = valid.sum(axis=-1)[..., None, None]
    k = np.where(valid[..., None, :], keys, np.inf)  # invalid repeats sort last
    rank = np.argsort(np.argsort(k, axis=-1, kind="stable"), axis=-1, kind="stable")
    in_a = rank < n // 2
    in_b = valid[..., None, :] & ~in_a
    return in_a.astype(np.float64), in_b.astype(np.float64)


def ceiling_stats(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per (stim, cell) statistics of the noise ceiling: ``(s, c, R, T) -> (s, c, 4 + 6 K)``.

    Columns: ``n`` (repeats with data), ``bins`` (time bins where the PSTH
    has data), ``p_avg`` (variance over time of the PSTH), ``p_tot`` (mean
    over the ``n`` trials of each trial's variance over time, about its own
    mean); then for each split ``k`` of ``keys (K, R)``: ``count`` (bins where
    both half-PSTHs have data), ``mean_a``, ``mean_b`` (their means there),
    ``ss_a``, ``ss_b``, ``ss_ab`` (centred sums of squares and products
    there). All zero for a split with no bins.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.poisson(2.0, (1, 2, 4, 10)).astype(np.float32)
    >>> st = ceiling_stats(x, rng.random((3, 4)))
    >>> st.shape, st[0, 0, :2].tolist()
    ((1, 2, 22), [4.0, 10.0])
    """
    s_n, c_n, r_n, t_n = x.shape
    keys = np.asarray(keys, dtype=np.float64)
    out = np.zeros((s_n, c_n, N_POWER + N_SPLIT * keys.shape[0]), dtype=np.float64)
    work = np.empty((min(CELLS, c_n), r_n, t_n), dtype=np.float64)
    gram = np.empty((min(CELLS, c_n), r_n, r_n), dtype=np.float64)
    weights: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # per pattern of valid repeats
    for s in range(s_n):
        for c0 in range(0, c_n, CELLS):
            block = x[s, c0 : c0 + CELLS]
            m = block.shape[0]
            _gram_stats(block, keys, out[s, c0 : c0 + m], work[:m], gram[:m], weights)
    return out


def _gram_stats(
    x: np.ndarray,
    keys: np.ndarray,
    out: np.ndarray,
    v: np.ndarray,
    gram: np.ndarray,
    weights: dict[bytes, tuple[np.ndarray, np.ndarray]],
) -> None:
    """:func:`ceiling_stats` of one block of cells ``x (B, R, T)`` into ``out (B, ...)``."""
    b_n, r_n, t_n = v.shape
    np.copyto(v, x)
    # a sum is NaN if any value is: one read, no mask, in the usual case without gaps
    if np.isnan(np.add.reduce(v, axis=None)):
        missing = np.isnan(v)
        finite = ~missing
        valid = finite.any(axis=2)
        bins = finite.any(axis=1)  # (B, T): bins where some trial has data
        # the Gram route needs every trial with data to have it in the same bins
        regular = ((finite == bins[:, None, :]) | ~valid[:, :, None]).all(axis=(1, 2))
        v[missing] = 0.0
        n_bins = bins.sum(axis=1)
    else:
        valid = np.ones((b_n, r_n), dtype=bool)
        bins = None
        regular = np.ones(b_n, dtype=bool)
        n_bins = np.full(b_n, t_n)
    n = valid.sum(axis=1)
    row_mean = v.sum(axis=2)
    row_mean /= np.maximum(n_bins, 1)[:, None]  # 0 for trials without data
    v -= row_mean[:, :, None]
    if bins is not None:
        v *= bins[:, None, :]  # back to 0 in the bins without data
    np.matmul(v, v.transpose(0, 2, 1), out=gram)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 0] = n
        out[:, 1] = n_bins
        # centred trials: the PSTH about its mean is their mean (rows without data are 0)
        out[:, 2] = gram.sum(axis=(1, 2)) / (n * n * n_bins)
        out[:, 3] = np.einsum("brr->b", gram) / (n * n_bins)
    split = out[:, N_POWER:].reshape(b_n, keys.shape[0], N_SPLIT)
    use = np.flatnonzero(regular & (n >= 2))
    if use.size == 0:
        pass
    elif (valid[use] == valid[use[0]]).all():
        _split_sums(split, use, valid[use[0]], keys, gram, row_mean, n_bins, weights)
    else:
        patterns, which = np.unique(valid[use], axis=0, return_inverse=True)
        for p, pattern in enumerate(patterns):
            sel = use[which.reshape(-1) == p]
            _split_sums(split, sel, pattern, keys, gram, row_mean, n_bins, weights)
    odd = np.flatnonzero(~regular)
    if odd.size:
        out[odd] = _direct_stats(x[odd], keys)


def _split_sums(
    split: np.ndarray,
    sel: np.ndarray,
    pattern: np.ndarray,
    keys: np.ndarray,
    gram: np.ndarray,
    row_mean: np.ndarray,
    n_bins: np.ndarray,
    weights: dict[bytes, tuple[np.ndarray, np.ndarray]],
) -> None:
    """Split-half statistics of the cells ``sel``, which share the valid repeats ``pattern``."""
    key = pattern.tobytes()
    if key not in weights:
        weights[key] = split_weights(pattern, keys)  # (K, R) each
    w_a, w_b = weights[key]
    n_a = float(pattern.sum() // 2)
    n_b = float(pattern.sum()) - n_a
    g = gram[sel] if sel.size < gram.shape[0] else gram
    g_a, g_b = g @ w_a.T, g @ w_b.T  # (P, R, K)
    st = np.empty((sel.size, keys.shape[0], N_SPLIT))
    st[..., 0] = n_bins[sel, None]
    st[..., 1] = row_mean[sel] @ w_a.T / n_a
    st[..., 2] = row_mean[sel] @ w_b.T / n_b
    st[..., 3] = np.einsum("kr,prk->pk", w_a, g_a) / (n_a * n_a)
    st[..., 4] = np.einsum("kr,prk->pk", w_b, g_b) / (n_b * n_b)
    st[..., 5] = np.einsum("kr,prk->pk", w_b, g_a) / (n_a * n_b)
    split[sel] = st


def _direct_stats(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """:func:`ceiling_stats` of cells ``x (P, R, T)`` from the half-PSTHs themselves.

    The general path: any pattern of missing trials and bins.
    """
    p_n = x.shape[0]
    out = np.zeros((p_n, N_POWER + N_SPLIT * keys.shape[0]), dtype=np.float64)
    finite = ~np.isnan(x)
    valid = finite.any(axis=2)
    n = valid.sum(axis=1)
    x0 = np.where(finite, x, 0.0).astype(np.float64)
    f = finite.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # powers: each trial about its own mean over its bins, the PSTH about its own
        t_bins = f.sum(axis=2)
        t_mean = x0.sum(axis=2) / t_bins
        t_var = (f * (x0 - t_mean[..., None]) ** 2).sum(axis=2) / t_bins
        p_tot = np.where(valid, t_var, 0.0).sum(axis=1) / n
        psth = x0.sum(axis=1) / f.sum(axis=1)
        has = np.isfinite(psth)
        bins = has.sum(axis=1)
        p_mean = np.where(has, psth, 0.0).sum(axis=1) / bins
        p_avg = np.where(has, (psth - p_mean[:, None]) ** 2, 0.0).sum(axis=1) / bins
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = n, bins, p_avg, p_tot
        w_a, w_b = split_weights(valid, keys)  # (P, K, R)
        a = (w_a @ x0) / (w_a @ f)  # (P, K, T)
        b = (w_b @ x0) / (w_b @ f)
        both = np.isfinite(a) & np.isfinite(b)
        count = both.sum(axis=2)
        m_a = np.where(both, a, 0.0).sum(axis=2) / count
        m_b = np.where(both, b, 0.0).sum(axis=2) / count
        d_a = np.where(both, a - m_a[..., None], 0.0)
        d_b = np.where(both, b - m_b[..., None], 0.0)
        stats = np.stack(
            [
                count,
                m_a,
                m_b,
                (d_a * d_a).sum(axis=2),
                (d_b * d_b).sum(axis=2),
                (d_a * d_b).sum(axis=2),
            ],
            axis=-1,
        )
    stats[count == 0] = 0.0
    stats[n < 2] = 0.0
    out[:, N_POWER:] = stats.reshape(p_n, -1)
    return out


def _nan_where_not_positive(den: Any) -> Any:
    return np.where(den > 0, den, np.nan)


def _mean_skipna(x: Any, axis: int) -> Any:
    """Mean over ``axis`` of the values that are not NaN (NaN if none), without warnings."""
    defined = ~np.isnan(x)
    total = np.where(defined, x, 0.0).sum(axis=axis)
    count = defined.sum(axis=axis)
    return total / np.where(count > 0, count, np.nan)


def _ccmax(cc: Any) -> Any:
    """Spearman-Brown to the full set of repeats, then the square root (NaN stays NaN)."""
    r = np.maximum(cc, 0.0)  # NaN propagates through np.maximum
    return np.sqrt(2 * r / (1 + r))


def ceiling_from_stats(stats: Any, n_splits: int) -> dict[str, Any]:
    """The noise-ceiling variables from the statistics of :func:`ceiling_stats`.

    ``stats (S, C, 4 + 6 K)`` (numpy, or dask: everything stays lazy) gives
    ``ccmax``, ``cc_half``, ``snr``, ``n_valid`` ``(S, C)`` and
    ``ccmax_neuron``, ``snr_neuron`` ``(C,)``; see
    :func:`nat4xr.metrics.noise_ceiling` for the definitions. Per cell, the
    split-half sums of the stims are pooled with Chan et al.'s pairwise
    update (per-stim means and centred sums give the centred sums over every
    stim's bins exactly).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rate = rng.gamma(2.0, 1.0, (3, 2, 1, 40))
    >>> x = rng.poisson(np.broadcast_to(rate, (3, 2, 8, 40))).astype(np.float32)
    >>> out = ceiling_from_stats(ceiling_stats(x, rng.random((4, 8))), 4)
    >>> out["ccmax"].shape, out["ccmax_neuron"].shape
    ((3, 2), (2,))
    >>> bool((out["ccmax_neuron"] > 0.5).all())
    True
    """
    n, bins, p_avg, p_tot = (stats[..., i] for i in range(N_POWER))
    shape = (*stats.shape[:2], n_splits, N_SPLIT)
    split = stats[..., N_POWER:].reshape(shape)
    count, mean_a, mean_b, ss_a, ss_b, ss_ab = (split[..., i] for i in range(N_SPLIT))
    enough = n >= 2
    has = enough.any(axis=0)

    r_pair = ss_ab / np.sqrt(_nan_where_not_positive(ss_a * ss_b))
    cc_half = np.where(enough, _mean_skipna(r_pair, axis=2), np.nan)
    weight = np.where(enough[..., None], count, 0.0)
    used = weight > 0
    total = _nan_where_not_positive(weight.sum(axis=0))
    d_a = np.where(used, mean_a - (weight * np.where(used, mean_a, 0.0)).sum(axis=0) / total, 0.0)
    d_b = np.where(used, mean_b - (weight * np.where(used, mean_b, 0.0)).sum(axis=0) / total, 0.0)
    pooled_a = (np.where(used, ss_a, 0.0) + weight * d_a * d_a).sum(axis=0)
    pooled_b = (np.where(used, ss_b, 0.0) + weight * d_b * d_b).sum(axis=0)
    pooled_ab = (np.where(used, ss_ab, 0.0) + weight * d_a * d_b).sum(axis=0)
    r_cell = pooled_ab / np.sqrt(_nan_where_not_positive(pooled_a * pooled_b))
    cc_cell = _mean_skipna(r_cell, axis=1)

    # Sahani & Linden's signal and noise powers
    p_sig = (n * p_avg - p_tot) / np.where(enough, n - 1, np.nan)
    p_noise = p_tot - p_sig
    w_bins = np.where(enough, bins, 0.0)
    sig_cell = np.where(enough, w_bins * p_sig, 0.0).sum(axis=0)
    noise_cell = np.where(enough, w_bins * p_noise, 0.0).sum(axis=0)
    return {
        "ccmax": _ccmax(cc_half),
        "cc_half": cc_half,
        "snr": p_sig / _nan_where_not_positive(p_noise),
        "n_valid": n.astype(np.int64),
        "ccmax_neuron": np.where(has, _ccmax(cc_cell), np.nan),
        "snr_neuron": np.where(has, sig_cell / _nan_where_not_positive(noise_cell), np.nan),
    }
