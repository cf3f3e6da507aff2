"""Baseline encoding models fitted on a nat4xr Dataset.

:class:`RidgeSTRF` is the classic linear spectro-temporal receptive field:
each cell's response at time ``t`` is a weighted sum of the spectrogram at
``t, t - 1, ..., t - (n_lags - 1)`` plus an intercept, fitted by ridge
regression with the penalty chosen per cell by cross-validation over sounds.
It follows scikit-learn's estimator conventions (``get_params``,
``set_params``, fitted attributes ending in ``_``, works with
``sklearn.base.clone``) without needing scikit-learn.

Examples
--------
>>> import nat4xr
>>> ds = nat4xr.synthetic.random_dataset(n_est=8, n_val=2, n_neurons=3, n_freq=4, seed=0)
>>> model = RidgeSTRF(n_lags=3, alphas=[1.0, 100.0], cv=2).fit(ds)
>>> model.strf_.dims, model.alpha_.dims
(('neuron', 'lag', 'freq'), ('neuron',))
>>> pred = model.predict(ds.nat4.sel_stims(subset="val"))
>>> pred.dims
('stim', 'neuron', 'time')
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .lagged import _check_lags, _stim_mask, lagged, psth_values
from .selection import coverage_array

__all__ = ["RidgeSTRF"]

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 8))


class RidgeSTRF:
    """A population ridge STRF: one linear filter (lag x freq) and intercept per cell.

    Each cell is fitted only on the (stim, time) samples where it has data
    (its trial-averaged response on the sounds it heard). Cells that share
    those samples (a recording site's cells, in NAT4) are solved together: one
    eigendecomposition of the design's Gram matrix per group and fold serves
    every cell and every penalty, with no loop over cells. The penalty of each
    cell is the one of ``alphas`` with the least squared error summed over
    ``cv`` folds of whole sounds (ties go to the first in ``alphas``).

    Parameters
    ----------
    n_lags : int
        Lags of the filter, in time bins (lag 0 is the current bin).
    alphas : sequence of float
        Candidate ridge penalties (scikit-learn's ``alpha``: the penalty on
        the squared norm of the weights, not scaled by the sample count).
    cv : int
        Folds of cross-validation; sounds are dealt to folds at random (with
        ``seed``), or taken from a ``fold`` stim coordinate when the Dataset
        has one (:func:`nat4xr.splits.assign_folds` with ``k = cv``). At
        least 2.
    stims : str, sequence or bool mask
        The sounds to fit on (default ``"est"``, the estimation sounds).
    fit_intercept : bool
        Fit an intercept per cell (the data are centred on the training
        samples' means, as in scikit-learn).
    seed : int
        Seed of the folds when the Dataset has no ``fold`` coordinate.

    Attributes
    ----------
    strf_ : xarray.DataArray
        ``(neuron, lag, freq)`` fitted filters; ``lag`` in seconds.
    intercept_ : xarray.DataArray
        ``(neuron,)``.
    alpha_ : xarray.DataArray
        ``(neuron,)`` the chosen penalty of each cell.
    cv_error_ : xarray.DataArray
        ``(neuron, alpha)`` squared error summed over the folds' held-out samples.
    n_samples_ : xarray.DataArray
        ``(neuron,)`` samples each cell was fitted on.
    """

    def __init__(
        self,
        n_lags: int = 15,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        cv: int = 5,
        stims: Any = "est",
        fit_intercept: bool = True,
        seed: int = 0,
    ) -> None:
        self.n_lags = n_lags
        self.alphas = alphas
        self.cv = cv
        self.stims = stims
        self.fit_intercept = fit_intercept
        self.seed = seed

    # -- scikit-learn's estimator protocol ----------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, by name (scikit-learn's protocol)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> RidgeSTRF:
        """Set constructor parameters by name; returns the estimator."""
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for RidgeSTRF; valid: {sorted(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"RidgeSTRF({shown})"

    # -- fitting ----------------------------------------------------------------------------------

    def _checked(self) -> tuple[int, np.ndarray, int]:
        n_lags = _check_lags(self.n_lags)
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas < 0):
            raise ValueError(f"alphas must be non-negative finite numbers, got {self.alphas!r}")
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise ValueError(f"cv must be an integer of at least 2 folds, got {self.cv!r}")
        return n_lags, alphas, int(self.cv)

    def _folds(self, ds: xr.Dataset, n_folds: int) -> np.ndarray:
        """Fold (0 .. n_folds - 1) of each stim of ``ds``."""
        if "fold" in ds.coords:
            fold = np.asarray(ds["fold"].values).astype(np.int64)
            if fold.min() < 1 or fold.max() > n_folds:
                raise ValueError(
                    f"the 'fold' coordinate holds values {sorted(set(fold.tolist()))}; "
                    f"the fitted stims need folds 1..{n_folds} (cv={n_folds})"
                )
            held = sorted(set(fold.tolist()))
            if len(held) != n_folds:
                # fewer folds than asked would quietly change the cross-validation
                raise ValueError(
                    f"cv={n_folds} but the sounds to fit on hold {len(held)} fold(s) of the "
                    f"Dataset's 'fold' coordinate ({held}); pass cv={len(held)}, or assign "
                    f"{n_folds} folds with ds.nat4.assign_folds({n_folds})"
                )
            return fold - 1
        perm = np.random.default_rng(self.seed).permutation(ds.sizes["stim"])
        fold = np.empty(ds.sizes["stim"], dtype=np.int64)
        fold[perm] = np.arange(ds.sizes["stim"]) % n_folds
        return fold

    def fit(self, ds: xr.Dataset) -> RidgeSTRF:
        """Fit every cell of ``ds`` on the chosen sounds (``stims``, by default ``"est"``).

        Raises
        ------
        ValueError
            For bad parameters, no sounds to fit on, or cells without any
            data on them (named, with how to drop them).
        """
        n_lags, alphas, n_folds = self._checked()
        keep = np.flatnonzero(_stim_mask(ds, self.stims))
        if len(keep) < n_folds:
            raise ValueError(
                f"{len(keep)} sound(s) to fit on (stims={self.stims!r}) but cv={n_folds} folds; "
                "the Dataset needs estimation sounds, at least one per fold"
            )
        contiguous = bool(np.all(np.diff(keep) == 1))  # a slice is a view, not a copy
        train = ds.isel(stim=slice(keep[0], keep[-1] + 1) if contiguous else keep)
        view = lagged(train, n_lags)
        n_stim, n_time, _, n_freq = view.shape
        # the PSTH, chunk by chunk on a lazy Dataset: (stim, time, neuron) as stored
        y = psth_values(train)
        per_stim = np.isfinite(y).sum(1)  # (stim, neuron): bins with data
        neurons = np.asarray(train["neuron"].values)
        empty = per_stim.sum(0) == 0
        if empty.any():
            raise ValueError(_no_data_message(train, neurons, empty, self.stims))
        stim_fold = self._folds(train, n_folds)
        n_feat = n_lags * n_freq
        weights = np.empty((n_feat, len(neurons)))
        intercepts = np.empty(len(neurons))
        chosen = np.empty(len(neurons))
        cv_error = np.empty((len(neurons), len(alphas)))

        def store(cells: np.ndarray, err: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
            best = np.argmin(err, axis=1)
            cv_error[cells], chosen[cells] = err, alphas[best]
            weights[:, cells], intercepts[cells] = (
                w[best, :, np.arange(len(cells))].T,
                b[best, np.arange(len(cells))],
            )

        # cells with data in every bin of the sounds they heard: from per-sound statistics
        whole = ((per_stim == 0) | (per_stim == n_time)).all(0)
        if whole.any():
            stats = _SoundStats(view, y, stim_fold, n_folds)
            heard = per_stim > 0
            _, group_of = np.unique(heard[:, whole], axis=1, return_inverse=True)
            for g in range(int(group_of.max()) + 1):
                cells = np.flatnonzero(whole)[group_of.ravel() == g]
                store(cells, *self._fit_group(stats, heard[:, cells[0]], cells, alphas, neurons))
        # the others (bins missing inside a sound), sample by sample
        if not whole.all():
            x = np.asarray(view.values, dtype=np.float64).reshape(n_stim * n_time, -1)
            y_rows = y.reshape(n_stim * n_time, -1)
            mask = np.isfinite(y_rows)
            rest = np.flatnonzero(~whole)
            _, group_of = np.unique(np.packbits(mask[:, rest], axis=0), axis=1, return_inverse=True)
            sample_fold = np.repeat(stim_fold, n_time)
            for g in range(int(group_of.max()) + 1):
                cells = rest[group_of.ravel() == g]
                rows = np.flatnonzero(mask[:, cells[0]])
                xg = x[rows]
                yg = np.asarray(y_rows[np.ix_(rows, cells)], np.float64)
                self._check_folds(sample_fold[rows], cells, neurons)
                err = self._cv_error(xg, yg, sample_fold[rows], alphas)
                w, b = self._solve(xg, yg, alphas)
                store(cells, err, w, b)
        mask_count = per_stim.sum(0)
        lag = view["lag"]
        coords_n = {"neuron": train["neuron"]}
        self.strf_ = xr.DataArray(
            weights.T.reshape(len(neurons), n_lags, n_freq),
            dims=("neuron", "lag", "freq"),
            coords={
                **coords_n,
                "lag": lag,
                **{k: v for k, v in view.coords.items() if v.dims == ("freq",)},
            },
            name="strf",
            attrs={"dt": float(train.attrs.get("dt", 0.01))},
        )
        self.intercept_ = xr.DataArray(intercepts, dims="neuron", coords=coords_n, name="intercept")
        self.alpha_ = xr.DataArray(chosen, dims="neuron", coords=coords_n, name="alpha")
        self.cv_error_ = xr.DataArray(
            cv_error,
            dims=("neuron", "alpha"),
            coords={**coords_n, "alpha": alphas},
            name="cv_error",
        )
        self.n_samples_ = xr.DataArray(mask_count, dims="neuron", coords=coords_n, name="n_samples")
        return self

    @staticmethod
    def _check_folds(fold: np.ndarray, cells: np.ndarray, neurons: np.ndarray) -> None:
        if len(np.unique(fold)) < 2:
            raise ValueError(
                f"cells {', '.join(map(str, neurons[cells][:5]))} heard sounds of only one "
                "fold; cross-validation needs at least two (lower cv)"
            )

    def _weights(
        self,
        n: float,
        sx: np.ndarray,
        gram: np.ndarray,
        sy: np.ndarray,
        cross: np.ndarray,
        alphas: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ridge weights ``(alphas, features, cells)`` and intercepts from sums over samples.

        ``n`` samples, ``sx`` sums of x, ``gram`` sum of x x^T, ``sy`` sums of y,
        ``cross`` sum of x y^T; with an intercept the data are centred on
        these samples' means (scikit-learn's convention).
        """
        if self.fit_intercept:
            mx, my = sx / n, sy / n
            gram = gram - n * np.outer(mx, mx)
            cross = cross - n * np.outer(mx, my)
        else:
            mx, my = np.zeros_like(sx), np.zeros_like(sy)
        lam, vec = np.linalg.eigh(gram)
        coef = vec.T @ cross
        w = np.stack([vec @ (coef / (lam + a)[:, None]) for a in alphas])
        return w, my - np.einsum("f,afc->ac", mx, w)

    def _fit_group(
        self,
        stats: _SoundStats,
        heard: np.ndarray,
        cells: np.ndarray,
        alphas: np.ndarray,
        neurons: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CV errors, weights and intercepts of cells that heard the same sounds, fully."""
        per_fold = stats.per_fold(heard, cells)  # one tuple of sums per fold
        n_f = np.array([f[0] for f in per_fold])
        self._check_folds(np.flatnonzero(n_f > 0), cells, neurons)
        total = [sum(f[i] for f in per_fold) for i in range(6)]
        err = np.zeros((len(cells), len(alphas)))
        for held in per_fold:
            n_h, sx_h, gram_h, sy_h, cross_h, syy_h = held
            if n_h == 0:
                continue
            train = [t - h for t, h in zip(total, held)]
            w, b = self._weights(train[0], train[1], train[2], train[3], train[4], alphas)
            # squared error on the held-out samples, from their sums
            fit = np.einsum("afc,fc->ac", w, cross_h) + b * sy_h
            quad = np.einsum("afc,fg,agc->ac", w, gram_h, w, optimize=True)
            err += (
                syy_h - 2 * fit + quad + 2 * b * np.einsum("f,afc->ac", sx_h, w) + n_h * b * b
            ).T
        w, b = self._weights(total[0], total[1], total[2], total[3], total[4], alphas)
        return err, w, b

    def _cv_error(
        self, x: np.ndarray, y: np.ndarray, fold: np.ndarray, alphas: np.ndarray
    ) -> np.ndarray:
        """``(cells, alphas)``: held-out squared error summed over the folds, sample by sample."""
        err = np.zeros((y.shape[1], len(alphas)))
        for f in np.unique(fold):
            test = fold == f
            xt, yt = x[~test], y[~test]
            w, b = self._weights(len(xt), xt.sum(0), xt.T @ xt, yt.sum(0), xt.T @ yt, alphas)
            resid = y[test][None] - (np.einsum("tf,afc->atc", x[test], w) + b[:, None, :])
            err += np.einsum("atc,atc->ca", resid, resid)
        return err

    def _solve(
        self, x: np.ndarray, y: np.ndarray, alphas: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weights ``(alphas, features, cells)`` and intercepts on all the samples."""
        return self._weights(len(x), x.sum(0), x.T @ x, y.sum(0), x.T @ y, alphas)

    # -- prediction -------------------------------------------------------------------------------

    def predict(self, ds: xr.Dataset) -> xr.DataArray:
        """The fitted cells' responses to the sounds of ``ds``, as ``(stim, neuron, time)``.

        ``ds`` must hold the fitted cells (same ids; any order, a subset of
        stims) and a spectrogram with the fitted number of frequencies. The
        result carries ``ds``'s stim, neuron and time coordinates and is NaN
        where a cell has no data for a sound (``coverage``), as
        :func:`nat4xr.torch.predict` gives, ready for :func:`nat4xr.evaluate`.
        """
        if not hasattr(self, "strf_"):
            raise ValueError("this RidgeSTRF is not fitted yet; call fit(ds) first")
        fitted = np.asarray(self.strf_["neuron"].values).astype(str)
        ids = np.asarray(ds["neuron"].values).astype(str)
        pos = {s: i for i, s in enumerate(fitted)}
        unknown = [s for s in ids if s not in pos]
        if unknown:
            raise ValueError(
                f"{len(unknown)} neuron(s) of ds were not fitted: {unknown[:5]}; predict a "
                "Dataset with the fitted cells, e.g. ds.sel(neuron=model.strf_.neuron)"
            )
        n_lags, n_freq = self.strf_.sizes["lag"], self.strf_.sizes["freq"]
        if ds.sizes.get("freq") != n_freq:
            raise ValueError(
                f"ds has {ds.sizes.get('freq')} frequencies; the model was fitted on {n_freq}"
            )
        view = lagged(ds, n_lags)
        self._check_axes(ds, view)
        n_stim, n_time = view.shape[:2]
        x = np.asarray(view.values, dtype=np.float64).reshape(n_stim * n_time, -1)
        cols = np.array([pos[s] for s in ids], dtype=np.intp)
        w = self.strf_.values.reshape(len(fitted), -1)[cols]
        out = (x @ w.T + self.intercept_.values[cols]).reshape(n_stim, n_time, len(ids))
        out = out.transpose(0, 2, 1)
        if "coverage" in ds.coords or "coverage" in ds.data_vars:
            cov = np.asarray(ds["coverage"].transpose("stim", "neuron").values, dtype=bool)
            out = np.where(cov[:, :, None], out, np.nan)
        coords = {
            name: c
            for name, c in ds.coords.items()
            if c.dims in (("stim",), ("neuron",), ("time",))
        }
        return xr.DataArray(out, dims=("stim", "neuron", "time"), coords=coords, name="prediction")

    def _check_axes(self, ds: xr.Dataset, view: xr.DataArray) -> None:
        """``ds``'s frequency bands and time step must be those the model was fitted on."""
        for name, fitted in self.strf_.coords.items():
            if fitted.dims != ("freq",) or name not in view.coords:
                continue
            got, want = np.asarray(view[name].values), np.asarray(fitted.values)
            same = (
                np.allclose(got, want, rtol=1e-6, atol=0)
                if got.dtype.kind in "iuf" and want.dtype.kind in "iuf"
                else np.array_equal(got, want)
            )
            if not same:
                raise ValueError(
                    f"ds's {name} coordinate {got.tolist()[:4]}... differs from the one the "
                    f"model was fitted on {want.tolist()[:4]}...: the filters would weigh "
                    "other bands; predict with the frequency axis of the fit (same bands, "
                    "same order)"
                )
        dt_fit = self.strf_.attrs.get("dt")
        if dt_fit is None:
            return
        dt = float(ds.attrs.get("dt", 0.01))
        times = np.asarray(ds["time"].values, dtype=np.float64) if "time" in ds.coords else None
        steps = np.diff(times) if times is not None and times.size > 1 else np.array([dt])
        if not np.allclose([dt, *steps], dt_fit, rtol=1e-6, atol=0):
            raise ValueError(
                f"ds's time step (dt={dt}, time coordinate steps {np.unique(steps)[:3]}) is not "
                f"the model's ({dt_fit} s): its lags would span other delays; predict on data "
                "binned as the fit's"
            )


def _no_data_message(train: xr.Dataset, neurons: np.ndarray, empty: np.ndarray, stims: Any) -> str:
    """Which cells have no data to fit on, and remedies that do drop them."""
    ids = [str(n) for n in neurons[empty]]
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    text = f"{len(ids)} cell(s) have no data on the sounds to fit on ({shown}); "
    chosen = f".nat4.sel_stims(subset={stims!r})" if isinstance(stims, str) else ""
    if "coverage" in train.coords and coverage_array(train)[:, empty].any():
        # selections read coverage, which an edit of the values (ds.where) left behind
        return text + (
            "their coverage coordinate says they have, so the response was edited after it "
            f"was derived (e.g. by where): ds.nat4.prune(recompute=True){chosen} drops them, "
            "as does ds.drop_sel(neuron=[...these ids...])"
        )
    if chosen:
        return text + f"ds{chosen} drops cells without data on those sounds"
    return text + "drop them with ds.drop_sel(neuron=[...these ids...])"


class _SoundStats:
    """Per-sound Gram matrices and per-fold cross products of the lagged design.

    With the design of sound ``s`` as ``X_s`` (time x features) and the PSTH
    as ``Y_s`` (0 where a cell has no data), keeps ``X_s^T X_s`` and the sums
    of ``X_s`` per sound, and per fold the sums of ``X_s^T Y_s``, ``Y_s`` and
    ``Y_s**2`` over its sounds: everything a ridge fit and its
    cross-validation need for cells that heard whole sounds.
    """

    def __init__(self, view: xr.DataArray, y: np.ndarray, fold: np.ndarray, n_folds: int) -> None:
        n_stim, n_time, n_lags, n_freq = view.shape
        n_feat, n_cell = n_lags * n_freq, y.shape[2]
        self.n_time, self.fold, self.n_folds = n_time, fold, n_folds
        self.gram = np.empty((n_stim, n_feat, n_feat))
        self.sx = np.empty((n_stim, n_feat))
        self.cross = np.zeros((n_folds, n_feat, n_cell))
        self.sy = np.zeros((n_folds, n_cell))
        self.syy = np.zeros((n_folds, n_cell))
        lagged_values = view.values
        for s0 in range(0, n_stim, 32):
            sl = slice(s0, min(s0 + 32, n_stim))
            xb = np.asarray(lagged_values[sl], dtype=np.float64).reshape(-1, n_time, n_feat)
            yb = np.nan_to_num(np.asarray(y[sl], dtype=np.float64))
            self.gram[sl] = np.matmul(xb.transpose(0, 2, 1), xb)
            self.sx[sl] = xb.sum(1)
            for f in np.unique(fold[sl]):
                of = fold[sl] == f
                self.cross[f] += xb[of].reshape(-1, n_feat).T @ yb[of].reshape(-1, n_cell)
                self.sy[f] += yb[of].sum((0, 1))
                self.syy[f] += (yb[of] ** 2).sum((0, 1))

    def per_fold(self, heard: np.ndarray, cells: np.ndarray) -> list[tuple]:
        """``(n, sum x, sum x x^T, sum y, sum x y^T, sum y^2)`` of each fold, over heard sounds."""
        out = []
        for f in range(self.n_folds):
            use = heard & (self.fold == f)
            gram = np.tensordot(use.astype(np.float64), self.gram, axes=(0, 0))
            out.append(
                (
                    float(use.sum() * self.n_time),
                    use.astype(np.float64) @ self.sx,
                    gram,
                    self.sy[f, cells],
                    self.cross[f][:, cells],
                    self.syy[f, cells],
                )
            )
        return out
