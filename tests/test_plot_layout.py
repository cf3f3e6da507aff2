"""Every figure a plot function makes keeps its labels inside the saved picture."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import xarray as xr

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt

import nat4xr
from nat4xr import plot


def _ds() -> xr.Dataset:
    return nat4xr.synthetic.random_dataset(n_est=8, n_val=3, n_neurons=6, seed=2)


def _scores() -> tuple[xr.Dataset, xr.Dataset]:
    ids = {"neuron": [f"cell-with-a-long-id-{i}" for i in range(5)]}
    rng = np.random.default_rng(0)
    a = xr.Dataset({"r_test": ("neuron", rng.uniform(0, 1, 5))}, coords=ids)
    b = xr.Dataset({"r_test": ("neuron", rng.uniform(0, 1, 5))}, coords=ids)
    return a, b


def _strf() -> xr.DataArray:
    hz = np.geomspace(200, 20000, 18)
    return xr.DataArray(
        np.random.default_rng(1).normal(size=(1, 15, 18)),
        dims=("neuron", "lag", "freq"),
        coords={"neuron": ["ARM029b-06-1"], "lag": np.arange(15) * 0.01, "freq_hz": ("freq", hz)},
    )


#: One call per public plot function, drawing a new figure.
DRAW = {
    "plot_coverage": lambda: plot.plot_coverage(_ds()),
    "plot_trial": lambda: plot.plot_trial(_ds(), 8, 0),
    "plot_scores": lambda: plot.plot_scores(*_scores(), labels=("linear model", "CNN")),
    "plot_strf": lambda: plot.plot_strf(_strf(), "ARM029b-06-1"),
    "plot_history": lambda: plot.plot_history(_history()),
}


def _history() -> xr.Dataset:
    epochs = np.arange(1, 9)
    return xr.Dataset(
        {
            "train_loss": ("epoch", 1.0 / epochs),
            "holdout_loss": ("epoch", 1.2 / epochs + 0.01 * epochs),
            "holdout_cc": ("epoch", 0.5 - 0.4 / epochs),
            "seconds": ("epoch", np.full(8, 0.5)),
        },
        coords={"epoch": epochs},
        attrs={"best_epoch": 5},
    )


def test_every_plot_function_is_checked():
    missing = sorted(set(plot.__all__) - set(DRAW))
    assert not missing, f"add a case for {missing} to DRAW in {__file__}"


@pytest.mark.parametrize("name", sorted(DRAW))
def test_labels_lie_inside_the_saved_figure(name, tmp_path):
    out = DRAW[name]()
    fig = np.ravel(out)[0].figure
    path = tmp_path / f"{name}.png"
    fig.savefig(path)  # plain savefig: no bbox_inches="tight" to rescue it
    height, width = matplotlib.image.imread(path).shape[:2]
    renderer = fig.canvas.get_renderer()
    # the picture is the whole figure (nothing cropped or added)
    assert (width, height) == (round(fig.bbox.width), round(fig.bbox.height))
    # each Axes' tight box holds what it draws: labels, title, the tick labels
    # shown, its legend (a colorbar is an Axes of its own)
    boxes = [(ax, ax.get_tightbbox(renderer)) for ax in fig.axes]
    boxes += [(t, t.get_window_extent(renderer)) for t in fig.texts if t.get_text()]
    assert len(boxes) >= 1
    labelled = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()]
    assert labelled, "the figure has no axis labels to check"
    outside = [
        (getattr(owner, "get_label", lambda: "")(), box.bounds)
        for owner, box in boxes
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5
    ]
    plt.close(fig)
    assert not outside, f"{name}: drawn past the figure's edge: {outside}"
