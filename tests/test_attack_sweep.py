"""Attacks on scoring a sweep: each test fails on the code it was written against."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from test_evaluation import _traps

import nat4xr
from nat4xr import Nat4Warning, evaluate


def _quiet(*args, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return evaluate(*args, **kwargs)


def _with_sites(observed: xr.DataArray) -> xr.DataArray:
    n = observed.sizes["neuron"]
    return observed.assign_coords(site=("neuron", np.where(np.arange(n) < n // 2, "A", "B")))


def test_an_unlabelled_sweep_dim_named_like_a_cell_coordinate_keeps_its_levels():
    # a sweep over recording sites' models, stacked on a dim called "site" without labels: the
    # scores must not label the levels with the cells' sites (a Dataset whose "site" coordinate
    # lies along neuron while "site" is also a dim), or refuse with an error naming "site"
    observed, prediction = _traps(0)
    observed = _with_sites(observed)
    sweep = xr.concat([prediction, prediction * 2.0 + 1.0, -prediction], dim="site")
    try:
        scores = _quiet(observed, sweep, metrics=["cc_raw", "cc_norm"])
    except ValueError as err:
        assert "site" in str(err)
        return
    assert scores["site"].dims in (("site",), ("neuron",))
    board = nat4xr.leaderboard(scores)
    assert len(board) == 3
    # each row is that level's line, labelled by the level (0, 1, 2), not by a cell's site
    assert board.index.tolist() == [0, 1, 2]
    for k in range(3):
        one = _quiet(observed, sweep.isel(site=k), metrics=["cc_raw", "cc_norm"])
        assert board.iloc[k]["line"] == nat4xr.leaderboard(one)


def test_a_sweep_coordinate_named_like_a_cell_coordinate_does_not_replace_it():
    # the sweep's own coordinate "site" (one per model) silently replaced the cells' "site"
    # coordinate in the scores: the cells lost their sites without a word
    observed, prediction = _traps(1)
    observed = _with_sites(observed)
    sweep = xr.concat([prediction, -prediction], dim="model").assign_coords(
        model=["m0", "m1"], site=("model", ["trained-on-A", "trained-on-B"])
    )
    try:
        scores = _quiet(observed, sweep, metrics="cc_raw")
    except ValueError as err:
        assert "site" in str(err)
        return
    assert scores["site"].dims == ("neuron",)
    np.testing.assert_array_equal(scores["site"].values, observed["site"].values)


def test_a_sweep_coordinate_named_like_a_score_gets_an_error_naming_it():
    # a fraction sweep carrying the training-set size as "n_samples": scoring ran to the end,
    # then xarray's "variables {'n_samples'} are found in both data_vars and coords", which
    # says neither that the prediction's coordinate is the culprit nor what to do
    observed, prediction = _traps(2)
    sweep = xr.concat([prediction, prediction * 0.5], dim="fraction").assign_coords(
        fraction=[1.0, 0.5], n_samples=("fraction", [1000, 500])
    )
    try:
        scores = _quiet(observed, sweep, metrics="cc_raw")
    except ValueError as err:
        assert "prediction" in str(err) and "n_samples" in str(err)
        return
    assert scores["n_samples"].dims == ("fraction", "neuron")


def _grid_scores() -> xr.Dataset:
    """Scores of a seed x fraction grid, stacked on one dim ``cfg`` (a MultiIndex of tuples)."""
    rng = np.random.default_rng(3)
    n = 25
    base = rng.uniform(0.1, 0.7, n)
    values = base + rng.normal(0, 0.05, size=(2, 3, n)) + np.array([0.0, 0.05, 0.1])[:, None]
    scores = xr.Dataset(
        {
            "cc_raw": (("seed", "fraction", "neuron"), values),
            "cc_norm": (("seed", "fraction", "neuron"), values * 1.2),
        },
        coords={
            "seed": [0, 1],
            "fraction": [1.0, 0.5, 0.25],
            "neuron": [f"c{k}" for k in range(n)],
        },
    )
    return scores.stack(cfg=("seed", "fraction")).transpose("cfg", "neuron")


def test_the_leaderboard_of_a_stacked_sweep_has_one_row_per_level():
    # stacking a grid into one dim is how compare's "one sweep dim" is met; the leaderboard then
    # failed inside pandas ("Names should be list-like for a MultiIndex")
    scores = _grid_scores()
    try:
        board = nat4xr.leaderboard(scores)
    except ValueError as err:
        assert "cfg" in str(err)
        return
    assert len(board) == 6
    for k in range(6):
        one = scores.isel(cfg=k, drop=True)
        assert board.iloc[k]["line"] == nat4xr.leaderboard(one)


def test_compare_of_a_stacked_sweep_takes_a_tuple_baseline_or_says_how():
    # a tuple baseline met numpy's "operands could not be broadcast together with shapes (6,) (2,)"
    scores = _grid_scores()
    try:
        table = nat4xr.compare(scores, dim="cfg", baseline=(0, 1.0), metrics=["cc_raw"])
    except ValueError as err:
        assert "baseline" in str(err) and "cfg" in str(err)
        return
    assert len(table) == 5
    base = scores.isel(cfg=0, drop=True)
    for k in range(1, 6):
        two = nat4xr.compare(scores.isel(cfg=k, drop=True), base, metrics=["cc_raw"])
        assert table.iloc[k - 1]["median_a"] == two.loc["cc_raw", "median_a"]


def test_compare_of_a_sweep_dim_named_metric():
    # a sweep over training losses on a dim called "metric": pandas' "The name metric occurs
    # multiple times, use a level number" came out of compare
    scores = _grid_scores().isel(cfg=slice(0, 3))
    scores = scores.drop_vars(["cfg", "seed", "fraction"]).rename(cfg="metric")
    scores = scores.assign_coords(metric=["mse", "poisson", "l1"])
    try:
        table = nat4xr.compare(scores, dim="metric", baseline="mse", metrics=["cc_raw"])
    except ValueError as err:
        assert "metric" in str(err) and "rename" in str(err)
        return
    want = nat4xr.compare(scores.rename(metric="model"), dim="model", baseline="mse")
    np.testing.assert_array_equal(
        table["p_holm"].to_numpy(), want.xs("cc_raw", level="metric")["p_holm"].to_numpy()
    )


def test_plot_scores_refuses_a_level_label_that_names_two_levels():
    # two levels labelled "cnn" (say two seeds stacked without their seed): compare refuses the
    # ambiguous baseline, but plot_scores drew the first "cnn" without a word
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import nat4xr.plot

    values = np.random.default_rng(0).uniform(0, 1, (3, 10))
    scores = xr.Dataset(
        {"r_test": (("model", "neuron"), values)},
        coords={"model": ["cnn", "ln", "cnn"], "neuron": [f"c{k}" for k in range(10)]},
    )
    with pytest.raises(ValueError, match="baseline='cnn'"):
        nat4xr.compare(scores, dim="model", baseline="cnn")
    try:
        with pytest.raises((ValueError, KeyError), match="cnn"):
            nat4xr.plot.plot_scores(scores, levels=["cnn", "ln"])
    finally:
        plt.close("all")


def test_compare_of_a_sweep_dim_named_like_a_column_keeps_the_column():
    # a sweep over the number of cells a population model was trained on, on a dim "n_cells":
    # the table's own n_cells column (the cells compared) was silently replaced by the levels
    values = np.random.default_rng(1).uniform(0, 1, (3, 20))
    values[1, :4] = np.nan  # 16 cells scored in both for the second level
    scores = xr.Dataset(
        {"r_test": (("n_cells", "neuron"), values)},
        coords={"n_cells": [10, 50, 100], "neuron": [f"c{k}" for k in range(20)]},
    )
    try:
        table = nat4xr.compare(scores, dim="n_cells", baseline=10)
    except ValueError as err:
        assert "n_cells" in str(err)
        return
    assert "n_cells" in table.columns
    assert table["n_cells"].tolist() == [16, 20]
