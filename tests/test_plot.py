"""Plots render (Agg) to non-trivial PNGs and read only what they show."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nat4xr import plot


def _save(fig, path) -> int:
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path.stat().st_size


def test_plot_coverage_png(random_ds, tmp_path):
    ax = random_ds.nat4.plot_coverage()
    assert isinstance(ax, matplotlib.axes.Axes)
    image = ax.get_images()[0].get_array()
    n_stim, n_cell = random_ds.sizes["stim"], random_ds.sizes["neuron"]
    assert image.shape == (n_cell, n_stim)
    # est first, then val: the boundary line sits between them
    n_est = int((random_ds["subset"].values == "est").sum())
    assert ax.lines[0].get_xdata()[0] == n_est - 0.5
    # cells with val data on top (first rows)
    has_val = np.asarray(image[:, n_est:]).any(axis=1)
    assert (np.diff(has_val.astype(int)) <= 0).all()
    assert int(np.asarray(image).sum()) == int(random_ds["coverage"].values.sum())
    assert _save(ax.figure, tmp_path / "coverage.png") > 2000


def test_plot_trial_png(random_ds, tmp_path):
    cov = random_ds["coverage"].values
    val = np.flatnonzero(random_ds["subset"].values == "val")
    s, n = next((i, j) for i in val for j in range(cov.shape[1]) if cov[i, j])
    stim, cell = random_ds["stim"].values[s], random_ds["neuron"].values[n]
    axes = random_ds.nat4.plot_trial(stim, cell)
    assert len(axes) == 3
    raster = axes[1].get_images()[0].get_array()
    assert raster.shape == (int(random_ds["n_repeats"].values[s]), random_ds.sizes["time"])
    psth = axes[2].lines[0].get_ydata()
    expected = np.nanmean(random_ds["response"].values[s, n], axis=0)
    np.testing.assert_allclose(psth, expected, rtol=1e-6)
    assert _save(axes[0].figure, tmp_path / "trial.png") > 2000
    # positions work too; unknown ids say so
    assert len(plot.plot_trial(random_ds, s, n)) == 3
    plt.close("all")
    with pytest.raises(KeyError, match="not in this Dataset"):
        plot.plot_trial(random_ds, "STIM_nope", cell)


def test_missing_matplotlib_names_the_extra(random_ds, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install nat4xr\[plot\]"):
        plot.plot_coverage(random_ds)
