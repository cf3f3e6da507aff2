"""compare, significant, leaderboard and plot_scores against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.stats import wilcoxon

import nat4xr
import nat4xr.plot
from nat4xr.comparison import paired_values


def _scores(values: dict[str, list[float]], ids: list[str]) -> xr.Dataset:
    return xr.Dataset(
        {k: ("neuron", np.asarray(v, float)) for k, v in values.items()}, coords={"neuron": ids}
    )


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ids = [f"c{i:02d}" for i in range(30)]
    a = rng.uniform(0.0, 0.8, 30)
    b = a - rng.normal(0.05, 0.1, 30)
    a[3] = np.nan  # one cell without a score in a
    sa = _scores({"r_test": a, "cc_raw": a + 0.01}, ids)
    # b holds its cells in another order, one cell fewer, and one extra cell
    order = rng.permutation(30)[:-1]
    sb = _scores(
        {"r_test": np.append(b[order], 0.9), "cc_raw": np.append(b[order] + 0.02, 0.9)},
        [ids[i] for i in order] + ["extra"],
    )
    return sa, sb, a, b, order


def test_compare_equals_direct_statistics_over_the_shared_cells(pair):
    sa, sb, a, b, order = pair
    table = nat4xr.compare(sa, sb)
    assert list(table.index) == ["r_test", "cc_raw"]
    shared = np.array(sorted(set(order.tolist()) - {3}))
    for name, shift_a, shift_b in (("r_test", 0.0, 0.0), ("cc_raw", 0.01, 0.02)):
        va, vb = a[shared] + shift_a, b[shared] + shift_b
        row = table.loc[name]
        assert row["n_cells"] == len(shared)
        assert row["median_a"] == pytest.approx(np.median(va))
        assert row["median_b"] == pytest.approx(np.median(vb))
        assert row["median_diff"] == pytest.approx(np.median(va - vb))
        assert row["frac_improved"] == pytest.approx(np.mean(va > vb))
        assert row["p_wilcoxon"] == pytest.approx(wilcoxon(va, vb).pvalue)


def test_compare_cells_and_metrics(pair):
    sa, sb, _a, _b, _ = pair
    cells = ["c00", "c01", "c02", "c04", "c05", "c06"]
    present = [c for c in cells if c in set(sb.neuron.values)]
    table = nat4xr.compare(sa, sb, cells=cells, metrics=["cc_raw"])
    assert list(table.index) == ["cc_raw"] and table.loc["cc_raw", "n_cells"] == len(present)
    mask = sa["r_test"] > 0.4
    table = nat4xr.compare(sa, sb, cells=mask)
    kept = [c for c in sa.neuron.values[mask.values] if c in set(sb.neuron.values)]
    assert table.loc["r_test", "n_cells"] == len(kept)
    with pytest.raises(KeyError, match="not in both"):
        nat4xr.compare(sa, sb, metrics=["r_ceiling"])
    with pytest.raises(KeyError, match="cells not in the scores"):
        nat4xr.compare(sa, sb, cells=["nope"])


def test_compare_with_the_published_columns():
    ids = ["x", "y", "z", "w"]
    ds = xr.Dataset(
        coords={
            "neuron": ids,
            "pub_r_test": ("neuron", [0.2, 0.3, np.nan, 0.5]),
            "pub_sig_auditory": ("neuron", [True, True, False, True]),
        }
    )
    mine = _scores({"r_test": [0.3, 0.2, 0.4, 0.7], "cc_raw": [0, 0, 0, 0]}, ids)
    table = nat4xr.compare(mine, ds)
    assert list(table.index) == ["r_test"]  # the flag column is not a score
    assert table.loc["r_test", "n_cells"] == 3
    assert table.loc["r_test", "median_diff"] == pytest.approx(np.median([0.1, -0.1, 0.2]))
    ids_, _va, vb = paired_values(mine, ds, "r_test")
    assert ids_.tolist() == ["x", "y", "w"] and vb.tolist() == [0.2, 0.3, 0.5]


def test_significant_rules_against_their_definitions():
    rng = np.random.default_rng(1)
    r, se, floor = rng.uniform(-0.1, 0.6, 50), rng.uniform(0.0, 0.2, 50), rng.uniform(0, 0.2, 50)
    r[0] = np.nan
    s = _scores({"r_test": r, "se_test": se, "r_floor": floor}, [f"n{i}" for i in range(50)])
    with np.errstate(invalid="ignore"):
        by_se, by_floor = r > 2 * se, r > floor
    np.testing.assert_array_equal(nat4xr.significant(s).values, by_se & by_floor)
    np.testing.assert_array_equal(nat4xr.significant(s, rule="se").values, by_se)
    np.testing.assert_array_equal(nat4xr.significant(s, rule="floor").values, by_floor)
    assert not nat4xr.significant(s).values[0]
    with pytest.raises(ValueError, match="rule must be one of"):
        nat4xr.significant(s, rule="strict")
    with pytest.raises(KeyError, match="lack"):
        nat4xr.significant(s.drop_vars("se_test"))


def test_leaderboard_line_is_the_nan_mean_in_percent():
    s = _scores(
        {"cc_raw": [0.1, 0.4, np.nan, 0.7], "cc_norm": [0.2, 0.5, np.nan, 1.1]},
        ["a", "b", "c", "d"],
    )
    assert nat4xr.leaderboard(s) == (
        "CCraw 40.0 % over 3 cells | CCnorm 60.0 % over 3 cells (of 4)"
    )
    assert nat4xr.leaderboard(s, cells=["a", "b"]) == (
        "CCraw 25.0 % over 2 cells | CCnorm 35.0 % over 2 cells (of 2)"
    )
    with pytest.raises(KeyError, match="cc_norm"):
        nat4xr.leaderboard(s.drop_vars("cc_norm"))


def test_plot_scores_draws_the_shared_cells_and_marks_significance(pair):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    sa, sb, _a, _b, _order = pair
    sa = sa.assign(se_test=("neuron", np.full(30, 0.1)), r_floor=("neuron", np.full(30, 0.3)))
    ax = nat4xr.plot.plot_scores(sa, sb, "r_test", labels=("mine", "theirs"))
    _ids, va, vb = paired_values(sa, sb, "r_test")
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(points, np.c_[va, vb])
    filled = ax.collections[0].get_facecolors()[:, 3] > 0  # alpha 0: hollow
    np.testing.assert_array_equal(filled, (va > 0.2) & (va > 0.3))
    assert ax.get_xlabel() == "r_test (mine)" and ax.get_ylabel() == "r_test (theirs)"
    matplotlib.pyplot.close("all")


def test_the_accessor_plots_against_the_published_values():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=2, n_neurons=4, seed=0)
    ds = ds.assign_coords(pub_cc_raw=("neuron", [0.1, 0.2, np.nan, 0.4]))
    mine = _scores({"cc_raw": [0.3, 0.1, 0.5, 0.2]}, list(ds.neuron.values))
    ax = ds.nat4.plot_scores(mine, metric="cc_raw")
    np.testing.assert_allclose(
        ax.collections[0].get_offsets(), [[0.3, 0.1], [0.1, 0.2], [0.2, 0.4]]
    )
    assert ax.get_ylabel() == "cc_raw (published)"
    with pytest.raises(KeyError, match="'r_test' is not in a"):
        ds.nat4.plot_scores(mine)
    matplotlib.pyplot.close("all")
