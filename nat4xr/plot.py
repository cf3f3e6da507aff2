"""Matplotlib views: the coverage map, one cell's trials, per-cell scores, fitted STRFs.

matplotlib is an optional dependency (``pip install nat4xr[plot]``); it is
imported when a function here is called, not when nat4xr is imported. A
figure made here uses matplotlib's constrained layout, so its labels,
titles and colorbars stay inside it when saved with a plain ``savefig``; an
``ax=`` given by the caller keeps its figure's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .selection import coverage_array, metadata_values

__all__ = ["plot_coverage", "plot_history", "plot_scores", "plot_strf", "plot_trial"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "nat4xr plotting needs matplotlib: pip install nat4xr[plot] "
            '(in a clone of nat4xr: pip install -e ".[plot]")'
        ) from err
    return plt


def plot_coverage(ds: xr.Dataset, ax: Any = None) -> Any:
    """Show which (stim, neuron) pairs have data, as blocks.

    Stims are ordered estimation first, then validation (a red line marks
    the boundary); cells with validation data come first (top).

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset; only its ``coverage`` is read.
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=5)
    >>> ax = plot_coverage(ds)
    >>> ax.get_xlabel()
    'stim (est | val)'
    """
    plt = _pyplot()
    cov = coverage_array(ds)
    subset = (
        metadata_values(ds.variables["subset"]).astype(str)
        if "subset" in ds.variables
        else np.full(cov.shape[0], "est")
    )
    is_val = subset == "val"
    stim_order = np.concatenate([np.flatnonzero(~is_val), np.flatnonzero(is_val)])
    has_val = cov[is_val].any(axis=0)
    cell_order = np.argsort(~has_val, kind="stable")
    grid = cov[stim_order][:, cell_order].T
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    ax.imshow(grid, aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
    n_est = int((~is_val).sum())
    if 0 < n_est < len(is_val):
        ax.axvline(n_est - 0.5, color="red", lw=1.5, label="est | val")
        ax.legend(loc="upper right")
    pct = 100.0 * cov.mean() if cov.size else 0.0
    area = ds.attrs.get("area", "")
    ax.set_title(f"{area} coverage: {int(cov.sum()):,} / {cov.size:,} pairs ({pct:.1f}%)".strip())
    ax.set_xlabel("stim (est | val)")
    ax.set_ylabel("neuron (cells with val data on top)")
    return ax


def plot_trial(
    ds: xr.Dataset,
    stim: Any,
    neuron: Any,
    axes: Any = None,
    prediction: xr.DataArray | None = None,
) -> Any:
    """Spectrogram of a stim over one cell's raster of repeats and its PSTH.

    Only this (stim, neuron) slice of ``response`` is read. A model's
    ``prediction`` is drawn over the PSTH.

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset.
    stim, neuron : str or int
        Ids (labels), or positions when an int is given.
    axes : sequence of 3 matplotlib Axes, optional
        Spectrogram, raster and PSTH panels; a new figure when omitted.
    prediction : xarray.DataArray, optional
        Predicted responses with ``stim``, ``neuron`` and ``time`` dims (as
        :func:`nat4xr.torch.predict` returns; a size-1 ``repeat`` dim is
        dropped), drawn over the PSTH. Selected by the panel's stim and
        neuron ids, so it may hold other stims or neurons or another order.

    Raises
    ------
    KeyError
        When ``stim`` or ``neuron`` is not in ``ds``, or not in ``prediction``.

    Returns
    -------
    numpy.ndarray of matplotlib Axes
        The three panels.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2)
    >>> axes = plot_trial(ds, ds.stim.values[2], 0)
    >>> axes[2].get_ylabel()
    'spikes / bin'
    >>> pred = ds["response"].mean("repeat").rename("mean response")
    >>> axes = plot_trial(ds, ds.stim.values[0], 0, prediction=pred)
    >>> [line.get_label() for line in axes[2].lines]
    ['PSTH', 'mean response']
    """
    plt = _pyplot()

    def pick(dim: str, key: Any) -> dict[str, Any]:
        ids = ds[dim].values
        if isinstance(key, (int, np.integer)) and not np.issubdtype(ids.dtype, np.integer):
            return {dim: int(key)}
        hits = np.flatnonzero(ids == key)
        if not len(hits):
            raise KeyError(f"{dim} {key!r} is not in this Dataset (e.g. {ids[:3].tolist()})")
        return {dim: int(hits[0])}

    at = {**pick("stim", stim), **pick("neuron", neuron)}
    stim_id, cell_id = ds["stim"].values[at["stim"]], ds["neuron"].values[at["neuron"]]
    # Checked before drawing: a wrong label leaves no half-made figure.
    predicted = None if prediction is None else _prediction_trace(prediction, stim_id, cell_id)
    resp = np.asarray(ds["response"].isel(at).transpose("repeat", "time").values)
    spec = np.asarray(ds["spectrogram"].isel(stim=at["stim"]).transpose("freq", "time").values)
    time = ds["time"].values
    kept = ~np.isnan(resp).all(axis=1)
    raster = resp[kept]
    if axes is None:
        _, axes = plt.subplots(
            3,
            1,
            figsize=(7, 6),
            sharex=True,
            gridspec_kw={"height_ratios": [2, 2, 1.2]},
            layout="constrained",
        )
    axes = np.asarray(axes)
    dt = float(ds.attrs.get("dt", time[1] - time[0] if len(time) > 1 else 0.01))
    extent = (time[0], time[-1] + dt, 0, spec.shape[0])
    axes[0].imshow(spec, aspect="auto", origin="lower", extent=extent, cmap="viridis")
    axes[0].set_ylabel("freq band")
    axes[0].set_title(f"{stim_id} / {cell_id}")
    if raster.size:
        axes[1].imshow(
            raster,
            aspect="auto",
            origin="lower",
            extent=(time[0], time[-1] + dt, 0, raster.shape[0]),
            cmap="Greys",
            interpolation="nearest",
        )
        with np.errstate(all="ignore"):
            axes[2].plot(time + dt / 2, np.nanmean(raster, axis=0), color="k", label="PSTH")
    else:
        axes[1].text(0.5, 0.5, "no data", transform=axes[1].transAxes, ha="center")
    if predicted is not None:
        pred_time, values, label = predicted
        if pred_time is None:
            if len(values) != len(time):
                raise ValueError(
                    f"prediction has {len(values)} time bins and no time coordinate; "
                    f"the Dataset has {len(time)}"
                )
            pred_time = time
        axes[2].plot(pred_time + dt / 2, values, color="tab:red", label=label)
        axes[2].legend(loc="upper right")
    axes[1].set_ylabel(f"repeat ({raster.shape[0]})")
    axes[2].set_ylabel("spikes / bin")
    axes[2].set_xlabel("time (s)")
    return axes


def _prediction_trace(
    prediction: Any, stim_id: Any, cell_id: Any
) -> tuple[np.ndarray | None, np.ndarray, str]:
    """Time (None if unlabelled), values and legend label of one (stim, neuron) prediction."""
    if isinstance(prediction, xr.Dataset) and len(prediction.data_vars) == 1:
        prediction = next(iter(prediction.data_vars.values()))
    if not isinstance(prediction, xr.DataArray):
        raise TypeError(
            f"prediction must be an xarray.DataArray (as nat4xr.torch.predict returns), "
            f"got {type(prediction).__name__}"
        )
    from .evaluation import prediction_dims

    pred = prediction_dims(prediction)
    for dim, label in (("stim", stim_id), ("neuron", cell_id)):
        if dim not in pred.indexes:
            raise KeyError(f"prediction has no {dim} ids to find {label!r} by; label its {dim} dim")
        if label not in pred.indexes[dim]:
            some = pred.indexes[dim][:3].tolist()
            raise KeyError(f"{dim} {label!r} is not in the prediction (e.g. {some})")
    trace = pred.sel(stim=stim_id, neuron=cell_id)
    time = np.asarray(trace["time"].values, dtype=float) if "time" in trace.coords else None
    label = str(prediction.name) if prediction.name is not None else "prediction"
    return time, np.asarray(trace.values, dtype=float), label


def plot_scores(
    a: xr.Dataset,
    b: xr.Dataset | None = None,
    metric: str = "r_test",
    *,
    cells: Any = None,
    labels: tuple[str, str] | None = None,
    ax: Any = None,
    dim: str | None = None,
    levels: Sequence[Any] | None = None,
) -> Any:
    """Per-cell scatter of one metric for two sets of scores, with the diagonal.

    With ``b`` omitted, ``a`` is a sweep's scores (a dim besides ``neuron``,
    e.g. ``model``): with two ``levels``, their scatter (``a`` the first);
    else a grid of every pair of ``levels`` (all of them by default, at most
    8), level ``j`` (column) against level ``i`` (row) below the diagonal,
    and the grid's Axes (a 2-D array, unused ones hidden) are returned.

    Cells are matched by neuron id; each point is a cell present in both with
    a finite value in both. Points above the diagonal are cells where ``b``
    scores higher. When ``a`` holds ``r_test``, ``se_test`` and ``r_floor``,
    the cells significant by :func:`nat4xr.significant` (the authors' rule)
    are drawn filled and the others hollow.

    Parameters
    ----------
    a, b : Dataset
        Results of :func:`nat4xr.evaluate`, or a Dataset with ``pub_*``
        neuron coordinates (the release's published table).
    metric : str
        The metric to draw (a variable, or ``pub_`` column, of both).
    cells : bool DataArray over neuron, sequence of ids or bool mask, optional
        Cells to draw, as in :func:`nat4xr.compare`.
    labels : (str, str), optional
        Axis labels of ``a`` and ``b`` (default ``"a"`` and ``"b"``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default (one pair only).
    dim : str, optional
        The sweep dim of ``a`` (with ``b`` omitted); by default its one dim
        besides ``neuron``.
    levels : sequence of labels, optional
        Levels of ``dim`` to draw: two for one scatter, more for a grid (a
        stacked dim's levels are tuples). A label naming several levels is
        refused (``ValueError``): give the levels unique labels.

    Returns
    -------
    matplotlib Axes, or a 2-D array of them for a grid

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import xarray as xr
    >>> ids = {"neuron": ["c1", "c2", "c3"]}
    >>> a = xr.Dataset({"r_test": ("neuron", [0.2, 0.5, 0.6])}, coords=ids)
    >>> b = xr.Dataset({"r_test": ("neuron", [0.3, 0.4, 0.7])}, coords=ids)
    >>> ax = plot_scores(a, b)
    >>> len(ax.collections[0].get_offsets())
    3

    A sweep: a chosen pair of models, or the grid of all pairs.

    >>> sweep = xr.concat([a, b, a * 0.5], dim="model").assign_coords(model=["x", "y", "z"])
    >>> plot_scores(sweep, levels=["x", "z"]).get_xlabel()
    'r_test (x)'
    >>> grid = plot_scores(sweep)
    >>> grid.shape, grid[1, 0].get_ylabel(), grid[1, 0].get_xlabel()
    ((2, 2), 'r_test (z)', 'r_test (x)')
    """
    if b is None:
        return _plot_levels(a, metric, dim=dim, levels=levels, cells=cells, ax=ax)
    return _plot_pair(a, b, metric, cells=cells, labels=labels, ax=ax)


_MAX_GRID = 8  # levels in a grid of pairs: 28 panels


def _plot_levels(
    scores: xr.Dataset, metric: str, *, dim: Any, levels: Any, cells: Any, ax: Any
) -> Any:
    """A chosen pair of a sweep's levels, or the grid of every pair."""
    from .comparison import _level_labels, _level_positions, _plain, _the_sweep_dim

    dim = _the_sweep_dim(scores, dim, "plot_scores(a) needs b")
    labels = _level_labels(scores, dim)[0]
    chosen = labels if levels is None else list(levels)
    where = [_level_positions(labels, lv) for lv in chosen]
    unknown = [lv for lv, pos in zip(chosen, where) if not pos]
    if unknown:
        raise KeyError(
            f"level(s) {unknown} are not in {dim!r} (levels: {[_plain(x) for x in labels[:8]]})"
        )
    if len(chosen) < 2:
        raise ValueError(f"plot_scores draws pairs of levels; {dim!r} gives {chosen}")
    if len(chosen) > 2 and ax is not None:
        raise ValueError("ax= draws one pair: pass two levels, or no ax for the grid")
    if len(chosen) > _MAX_GRID:
        raise ValueError(
            f"{dim!r} has {len(chosen)} levels: a grid of every pair draws at most {_MAX_GRID}; "
            "choose them with levels= (two for one scatter)"
        )
    for lv, pos in zip(chosen, where):
        if len(pos) > 1:  # drawing the first of them would draw a level not asked for
            raise ValueError(
                f"the label {_plain(lv)!r} names {len(pos)} levels of {dim!r} (positions "
                f"{', '.join(map(str, pos))}): give the levels unique labels, e.g. "
                f"scores.assign_coords({dim}=[...]), or select them by position with isel"
            )

    def level(label: Any) -> xr.Dataset:
        return scores.isel({dim: _level_positions(labels, label)[0]}, drop=True)

    if len(chosen) == 2:
        pair = (str(chosen[0]), str(chosen[1]))
        return _plot_pair(
            level(chosen[0]), level(chosen[1]), metric, cells=cells, labels=pair, ax=ax
        )
    plt = _pyplot()
    n = len(chosen) - 1
    _, axes = plt.subplots(n, n, figsize=(2.6 * n, 2.6 * n), layout="constrained", squeeze=False)
    for i in range(n):
        for j in range(n):
            if j > i:
                axes[i, j].set_visible(False)
                continue
            x, y = chosen[j], chosen[i + 1]
            _plot_pair(
                level(x), level(y), metric, cells=cells, labels=(str(x), str(y)), ax=axes[i, j]
            )
    return axes


def _plot_pair(
    a: xr.Dataset,
    b: xr.Dataset,
    metric: str,
    *,
    cells: Any,
    labels: tuple[str, str] | None,
    ax: Any,
) -> Any:
    """One scatter of ``b``'s values of ``metric`` against ``a``'s."""
    from .comparison import paired_values, significant

    plt = _pyplot()
    ids, x, y = paired_values(a, b, metric, cells=cells)
    name_a, name_b = labels or ("a", "b")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    filled = np.ones(len(ids), dtype=bool)
    if {"r_test", "se_test", "r_floor"} <= set(a.data_vars):
        sig = significant(a)
        filled = np.isin(ids, np.asarray(sig["neuron"].values)[sig.values].astype(str))
    ax.scatter(x, y, s=14, c=np.where(filled, "tab:blue", "none"), edgecolors="tab:blue")
    if len(ids):
        lo = float(min(np.min(x), np.min(y), 0.0))
        hi = float(max(np.max(x), np.max(y)))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
        above = float(np.mean(y > x))
        ax.set_title(f"{metric}: {len(ids)} cells, {above:.0%} above the diagonal")
    else:
        ax.set_title(f"{metric}: no cell scored in both")
    ax.set_xlabel(f"{metric} ({name_a})")
    ax.set_ylabel(f"{metric} ({name_b})")
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def plot_strf(strf: Any, neuron: Any, ax: Any = None) -> Any:
    """Draw one cell's spectro-temporal receptive field: lag (ms) by frequency.

    Parameters
    ----------
    strf : DataArray or fitted model
        ``(neuron, lag, freq)`` filters, e.g. ``RidgeSTRF().fit(ds).strf_``,
        or the fitted model itself. The frequency axis is labelled with a
        ``freq_hz`` coordinate when the filters carry one, else by band.
    neuron : str
        The cell id.
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np, xarray as xr
    >>> strf = xr.DataArray(np.zeros((1, 5, 3)), dims=("neuron", "lag", "freq"),
    ...                     coords={"neuron": ["c1"], "lag": np.arange(5) * 0.01})
    >>> ax = plot_strf(strf, "c1")
    >>> ax.get_xlabel()
    'lag (ms)'
    """
    plt = _pyplot()
    filters = getattr(strf, "strf_", strf)
    if not isinstance(filters, xr.DataArray) or set(filters.dims) != {"neuron", "lag", "freq"}:
        raise TypeError("strf must be a (neuron, lag, freq) DataArray or a fitted RidgeSTRF")
    if neuron not in filters.indexes.get("neuron", []):
        raise KeyError(f"neuron {neuron!r} is not among the fitted cells")
    one = filters.sel(neuron=neuron).transpose("freq", "lag")
    lag_ms = 1000 * np.asarray(one["lag"].values, dtype=float)
    step = lag_ms[1] - lag_ms[0] if len(lag_ms) > 1 else 10.0
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.2), layout="constrained")
    limit = float(np.nanmax(np.abs(one.values))) or 1.0
    image = ax.imshow(
        one.values,
        aspect="auto",
        origin="lower",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        extent=(lag_ms[0] - step / 2, lag_ms[-1] + step / 2, -0.5, one.sizes["freq"] - 0.5),
    )
    if "freq_hz" in one.coords:
        hz = np.asarray(one["freq_hz"].values, dtype=float)
        ticks = np.arange(0, len(hz), max(1, len(hz) // 6))
        ax.set_yticks(ticks, [f"{hz[i] / 1000:.1f}" for i in ticks])
        ax.set_ylabel("frequency (kHz)")
    else:
        ax.set_ylabel("frequency band")
    ax.set_xlabel("lag (ms)")
    ax.set_title(str(neuron))
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    return ax


def plot_history(history: xr.Dataset, axes: Any = None) -> Any:
    """Loss curves and holdout correlation of a :func:`nat4xr.torch.fit` history.

    Left: ``train_loss`` and ``holdout_loss`` per epoch; right:
    ``holdout_cc``. A dashed line marks ``best_epoch`` (the weights the model
    holds) and dotted lines the starts of later stages.

    Parameters
    ----------
    history : Dataset
        The Dataset :func:`nat4xr.torch.fit` returns (dim ``epoch``).
    axes : pair of matplotlib Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    array of two matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> h = xr.Dataset(
    ...     {k: ("epoch", v) for k, v in {"train_loss": [3.0, 2.0, 1.5],
    ...      "holdout_loss": [3.1, 2.5, 2.6], "holdout_cc": [0.1, 0.3, 0.28]}.items()},
    ...     coords={"epoch": [0, 1, 2]}, attrs={"best_epoch": 1})
    >>> axes = plot_history(h)
    >>> [line.get_label() for line in axes[0].get_lines()][:2]
    ['train', 'holdout']
    """
    plt = _pyplot()
    missing = {"train_loss", "holdout_loss", "holdout_cc"} - set(history.data_vars)
    if "epoch" not in history.dims or missing:
        raise ValueError(
            f"not a fit history: need dim 'epoch' and variables train_loss, holdout_loss, "
            f"holdout_cc (missing {sorted(missing)}); pass what nat4xr.torch.fit returns"
        )
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    epoch = np.asarray(history["epoch"].values)
    loss_ax, cc_ax = axes[0], axes[1]
    loss_ax.plot(epoch, history["train_loss"].values, label="train")
    loss_ax.plot(epoch, history["holdout_loss"].values, label="holdout")
    cc_ax.plot(epoch, history["holdout_cc"].values, color="tab:green")
    best = history.attrs.get("best_epoch")
    if "stage" in history.coords:
        stage = np.asarray(history["stage"].values)
        for start in epoch[1:][np.diff(stage) != 0]:
            for ax in (loss_ax, cc_ax):
                ax.axvline(start - 0.5, color="0.6", ls=":", lw=1)
    if best is not None and 0 <= int(best) < len(epoch):
        for ax in (loss_ax, cc_ax):
            ax.axvline(epoch[int(best)], color="k", ls="--", lw=1)
    loss_name = history.attrs.get("loss", "")
    loss_ax.set(xlabel="epoch", ylabel=f"{loss_name} loss".strip())
    loss_ax.legend(frameon=False)
    cc_ax.set(xlabel="epoch", ylabel="holdout mean correlation")
    title = history.attrs.get("model")
    if title:
        loss_ax.set_title(str(title))
    return np.asarray(axes)
