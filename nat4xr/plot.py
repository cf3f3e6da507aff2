"""Matplotlib views of a nat4xr Dataset: the coverage map and one cell's trials.

matplotlib is an optional dependency (``pip install nat4xr[plot]``); it is
imported when a function here is called, not when nat4xr is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_coverage", "plot_trial"]


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("nat4xr plotting needs matplotlib: pip install nat4xr[plot]") from err
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
    from .accessor import _values, coverage_array

    plt = _pyplot()
    cov = coverage_array(ds)
    subset = (
        _values(ds.variables["subset"]).astype(str)
        if "subset" in ds.variables
        else np.full(cov.shape[0], "est")
    )
    is_val = subset == "val"
    stim_order = np.concatenate([np.flatnonzero(~is_val), np.flatnonzero(is_val)])
    has_val = cov[is_val].any(axis=0)
    cell_order = np.argsort(~has_val, kind="stable")
    grid = cov[stim_order][:, cell_order].T
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
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


def plot_trial(ds: xr.Dataset, stim: Any, neuron: Any, axes: Any = None) -> Any:
    """Spectrogram of a stim over one cell's raster of repeats and its PSTH.

    Only this (stim, neuron) slice of ``response`` is read.

    Parameters
    ----------
    ds : Dataset
        A nat4xr Dataset.
    stim, neuron : str or int
        Ids (labels), or positions when an int is given.
    axes : sequence of 3 matplotlib Axes, optional
        Spectrogram, raster and PSTH panels; a new figure when omitted.

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
    resp = np.asarray(ds["response"].isel(at).transpose("repeat", "time").values)
    spec = np.asarray(ds["spectrogram"].isel(stim=at["stim"]).transpose("freq", "time").values)
    time = ds["time"].values
    kept = ~np.isnan(resp).all(axis=1)
    raster = resp[kept]
    if axes is None:
        _, axes = plt.subplots(
            3, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.2]}
        )
    axes = np.asarray(axes)
    dt = float(ds.attrs.get("dt", time[1] - time[0] if len(time) > 1 else 0.01))
    extent = (time[0], time[-1] + dt, 0, spec.shape[0])
    axes[0].imshow(spec, aspect="auto", origin="lower", extent=extent, cmap="viridis")
    axes[0].set_ylabel("freq band")
    stim_id, cell_id = ds["stim"].values[at["stim"]], ds["neuron"].values[at["neuron"]]
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
            axes[2].plot(time + dt / 2, np.nanmean(raster, axis=0), color="k")
    else:
        axes[1].text(0.5, 0.5, "no data", transform=axes[1].transAxes, ha="center")
    axes[1].set_ylabel(f"repeat ({raster.shape[0]})")
    axes[2].set_ylabel("spikes / bin")
    axes[2].set_xlabel("time (s)")
    return axes
