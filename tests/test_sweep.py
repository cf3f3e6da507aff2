"""Scoring a sweep in one call: each level equals scoring it alone; the sweep's table and plots."""

from __future__ import annotations

import threading
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy.stats import wilcoxon
from test_evaluation import _observed, _traps

import nat4xr
from nat4xr import Nat4Warning, evaluate
from nat4xr.comparison import holm


@pytest.fixture(params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    """The sweep runs on the compiled kernels (numba) and on the numpy code."""
    if request.param == "compiled":
        pytest.importorskip("numba")
    monkeypatch.setenv("NAT4XR_NUMBA", "1" if request.param == "compiled" else "0")
    return request.param


def _quiet(*args, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return evaluate(*args, **kwargs)


def _sweep(prediction: xr.DataArray, seed: int) -> tuple[list[xr.DataArray], xr.DataArray]:
    """Five models of the same cells, with the traps of real predictions, stacked on ``model``.

    Model 0 is the given prediction (constant and partly-NaN cells included),
    1 a noisier one, 2 constant 0.1 everywhere (not exact in binary), 3 NaN
    where some cells have data (those cells score other samples), 4 the
    first with its sign flipped. The stacked sweep holds its stims and
    neurons in another order than the observed data.
    """
    rng = np.random.default_rng(seed)
    noisy = prediction + rng.normal(0.0, 2.0, size=prediction.shape)
    holes = noisy.copy()
    holes[0, 2:5, :7] = np.nan
    holes[:, 1, 3] = np.nan
    models = [prediction, noisy, xr.full_like(prediction, 0.1), holes, -prediction]
    sweep = xr.concat(models, dim="model").assign_coords(
        model=["m0", "m1", "m2", "m3", "m4"], family=("model", ["a", "a", "b", "b", "c"])
    )
    sweep = sweep.isel(
        stim=rng.permutation(sweep.sizes["stim"]), neuron=rng.permutation(sweep.sizes["neuron"])
    )
    return models, sweep


def _assert_level_equals_alone(level: xr.Dataset, alone: xr.Dataset, what: str) -> None:
    assert set(level.data_vars) == set(alone.data_vars)
    for name in alone.data_vars:
        got, want = level[name].values, alone[name].values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what} {name}")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{what} {name}")
        assert level[name].attrs == alone[name].attrs


def _with_sites(observed: xr.DataArray) -> xr.DataArray:
    """Two recordings, the second without the last repeats: r_ceiling's trials per site."""
    n = observed.sizes["neuron"]
    sites = np.where(np.arange(n) < n // 2, "siteA", "siteB")
    observed = observed.assign_coords(site=("neuron", sites)).copy()
    observed[:, n // 2 :, -2:] = np.nan
    return observed


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "data", ["traps", "traps-single-repeat", "observed", "observed-sites", "many-repeats"]
)
def test_every_metric_of_every_model_equals_scoring_it_alone(kernels, seed, data):
    if data.startswith("traps"):
        observed, prediction = _traps(seed, single_repeat_stim=data.endswith("repeat"))
        observed[0, 15] = np.round(observed[0, 15] * 0.1, 1)  # non-integer values
    elif data == "many-repeats":  # more than 45 repeats: r_ceiling averages drawn pairs
        observed, prediction = _traps(seed, n_cells=16, n_rep=48)
    else:
        observed, prediction, _ = _observed(seed)
        if data == "observed-sites":
            observed = _with_sites(observed)
    models, sweep = _sweep(prediction, seed)
    scores = _quiet(observed, sweep, n_resamples=150, seed=seed)
    assert scores["r_test"].dims == ("model", "neuron")
    for k, model in enumerate(models):
        alone = _quiet(observed, model, n_resamples=150, seed=seed)
        _assert_level_equals_alone(scores.isel(model=k, drop=True), alone, k)


def test_cells_with_hardly_any_signal_equal_scoring_alone(kernels):
    # a signal power near 0 amplifies rounding (cc_norm_schoppe far above 1): the sweep takes
    # the response's side from the same code as one prediction's scoring, so it still agrees
    rng = np.random.default_rng(0)
    n_stims, n_cells, n_rep, n_time = 6, 60, 20, 60
    rate = 0.3 + 0.02 * rng.random((n_stims, n_cells, 1, n_time))
    obs = rng.poisson(np.broadcast_to(rate, (n_stims, n_cells, n_rep, n_time)))
    observed = xr.DataArray(obs.astype(np.float32), dims=("stim", "neuron", "repeat", "time"))
    preds = rate[None, :, :, 0] + rng.normal(0, 0.1, size=(3, n_stims, n_cells, n_time))
    sweep = xr.DataArray(preds, dims=("model", "stim", "neuron", "time"))
    scores = _quiet(observed, sweep, n_resamples=20)
    assert float(np.abs(scores["cc_norm_schoppe"]).max()) > 1.0  # ill-conditioned cells
    for k in range(3):
        alone = _quiet(observed, sweep.isel(model=k), n_resamples=20)
        _assert_level_equals_alone(scores.isel(model=k), alone, k)


def test_several_sweep_dims_and_a_size_one_repeat(kernels):
    observed, prediction = _traps(4)
    rng = np.random.default_rng(4)
    values = prediction.values[None, None] + rng.normal(0, 1.0, size=(2, 3, *prediction.shape))
    sweep = xr.DataArray(
        values[:, :, :, :, None],
        dims=("seed", "fraction", "stim", "neuron", "repeat", "time"),
        coords={**prediction.coords, "seed": [0, 1], "fraction": [1.0, 0.5, 0.25]},
    )
    scores = _quiet(observed, sweep, metrics=["r_test", "r_floor", "cc_max"], n_resamples=100)
    assert scores["r_test"].dims == ("seed", "fraction", "neuron")
    np.testing.assert_array_equal(scores["fraction"].values, [1.0, 0.5, 0.25])
    for s in range(2):
        for f in range(3):
            one = sweep.isel(seed=s, fraction=f, repeat=0, drop=True)
            alone = _quiet(observed, one, metrics=["r_test", "r_floor", "cc_max"], n_resamples=100)
            level = scores.isel(seed=s, fraction=f, drop=True)
            _assert_level_equals_alone(level, alone, f"{s}, {f}")


def test_the_compiled_and_numpy_sweeps_agree():
    pytest.importorskip("numba")
    observed, prediction = _traps(5, single_repeat_stim=True)
    _, sweep = _sweep(prediction, 5)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for path in ("1", "0"):
            mp.setenv("NAT4XR_NUMBA", path)
            out[path] = _quiet(observed, sweep, n_resamples=200)
    for name in out["0"].data_vars:
        compiled, numpy = out["1"][name].values, out["0"][name].values
        np.testing.assert_array_equal(np.isnan(compiled), np.isnan(numpy), err_msg=name)
        np.testing.assert_allclose(compiled, numpy, rtol=0, atol=1e-12, err_msg=name)


def test_the_scores_keep_the_levels_labels_and_the_cells_coordinates():
    observed, prediction = _traps(6)
    observed = observed.assign_coords(area=("neuron", ["A1"] * observed.sizes["neuron"]))
    _, sweep = _sweep(prediction, 6)
    scores = _quiet(observed, sweep.assign_attrs(units="spikes"), metrics="cc_raw")
    assert list(scores["model"].values) == ["m0", "m1", "m2", "m3", "m4"]
    assert list(scores["family"].values) == ["a", "a", "b", "b", "c"]
    assert scores["family"].dims == ("model",)
    np.testing.assert_array_equal(scores["neuron"].values, observed["neuron"].values)
    assert scores["area"].dims == ("neuron",)
    assert scores["n_single_trials"].dims == ("neuron",)
    assert scores["n_samples"].dims == ("model", "neuron")
    assert scores["n_samples"].dtype == np.int64
    one = _quiet(observed, prediction, metrics="cc_raw")
    assert scores.attrs == one.attrs
    # model m3 has NaN where cells have data: fewer samples there
    assert (scores["n_samples"].sel(model="m3") <= scores["n_samples"].sel(model="m0")).all()
    assert (scores["n_samples"].sel(model="m3") < scores["n_samples"].sel(model="m0")).any()


class _Recorder:
    """An array that records which stims are read from it, and how often."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[int] = []
        self._lock = threading.Lock()

    def __getitem__(self, key):
        stims = np.arange(self.shape[0])[key[0]]
        with self._lock:
            self.reads += np.atleast_1d(stims).tolist()
        return self.data[key]


def test_a_lazy_sweep_reads_each_scored_stim_once():
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=8, seed=2, p_missing=0.0)
    recorder = _Recorder(ds["response"].values)
    lazy = ds.assign(
        response=ds["response"].copy(data=da.from_array(recorder, chunks=(1, -1, -1, -1)))
    )
    val = np.flatnonzero(ds["subset"].values == "val")
    psth = ds["response"].isel(stim=val).mean("repeat")
    eager = xr.concat([psth, psth * 2.0 + 1.0, psth**2], dim="model")
    sweep = eager.chunk({"model": 1})  # a lazy prediction too
    computes = []

    def counting(dsk, keys, **kwargs):
        computes.append(keys)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting), warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        scores = evaluate(lazy, sweep, stims="val")
    assert len(computes) == 2  # the response once, the prediction once
    assert sorted(recorder.reads) == sorted(val.tolist())  # each scored stim read once
    xr.testing.assert_identical(scores, _quiet(ds, eager, stims="val"))


def test_sweep_input_errors_name_the_problem():
    observed, prediction = _traps(0)
    empty = xr.concat([prediction], dim="model").isel(model=slice(0, 0))
    with pytest.raises(ValueError, match="'model' has no levels"):
        evaluate(observed, empty)
    _, sweep = _sweep(prediction, 0)
    replaced = str(sweep.neuron.values[0])
    with pytest.raises(ValueError, match=f"missing from the prediction: {replaced}"):
        evaluate(observed, sweep.assign_coords(neuron=["cell-x", *sweep.neuron.values[1:]]))
    with pytest.raises(ValueError, match="repeats"):
        evaluate(observed, sweep.expand_dims(repeat=2))


# -- the paired table of levels, Holm's correction, the leaderboard, the file round trip --------


def _holm_loop(p: list[float]) -> list[float]:
    """Holm 1979 from its definition: step down the sorted p-values, each times its multiplier."""
    finite = [(v, i) for i, v in enumerate(p) if np.isfinite(v)]
    finite.sort()
    m = len(finite)
    out = [np.nan] * len(p)
    running = 0.0
    for j, (v, i) in enumerate(finite):
        running = max(running, min(1.0, (m - j) * v))
        out[i] = running
    return out


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_its_definition(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, size=int(rng.integers(1, 12))).tolist()
    p[0:0] = [p[-1]]  # a tie
    if seed % 2:
        p.append(np.nan)
    np.testing.assert_allclose(holm(p), _holm_loop(p), rtol=0, atol=1e-15)
    assert np.isnan(holm([np.nan])).all()
    assert holm([]).shape == (0,)


def _sweep_scores(n_cells: int = 40) -> xr.Dataset:
    rng = np.random.default_rng(7)
    base = rng.uniform(0.1, 0.7, n_cells)
    values = np.stack(
        [
            base,
            base + 0.05 + rng.normal(0, 0.05, n_cells),
            base - rng.uniform(0, 0.02, n_cells),
            base + rng.normal(0, 0.1, n_cells),
        ]
    )
    values[1, 3] = np.nan  # a cell without a score in one model
    return xr.Dataset(
        {
            "r_test": (("model", "neuron"), values),
            "cc_raw": (("model", "neuron"), values * 0.9),
            "cc_norm": (("model", "neuron"), values * 1.2),
        },
        coords={
            "model": ["ln", "cnn", "small", "noisy"],
            "neuron": [f"c{k}" for k in range(n_cells)],
        },
    )


def test_compare_levels_equals_a_hand_computation():
    scores = _sweep_scores()
    table = nat4xr.compare(scores, dim="model", baseline="ln", metrics=["r_test", "cc_raw"])
    assert table.index.names == ["model", "metric"]
    assert table.index.tolist() == [
        (m, k) for m in ("cnn", "small", "noisy") for k in ("r_test", "cc_raw")
    ]
    raw_p = {}
    for model in ("cnn", "small", "noisy"):
        for metric in ("r_test", "cc_raw"):
            a = scores[metric].sel(model=model).values
            b = scores[metric].sel(model="ln").values
            ok = np.isfinite(a) & np.isfinite(b)
            row = table.loc[(model, metric)]
            assert row["n_cells"] == ok.sum()
            assert row["median_a"] == np.median(a[ok])
            assert row["median_b"] == np.median(b[ok])
            assert row["median_diff"] == np.median(a[ok] - b[ok])
            assert row["frac_improved"] == np.mean(a[ok] > b[ok])
            raw_p[model, metric] = wilcoxon(a[ok], b[ok]).pvalue
            assert row["p_wilcoxon"] == pytest.approx(raw_p[model, metric], rel=1e-12)
    for metric in ("r_test", "cc_raw"):  # Holm over the three levels, per metric
        ps = [raw_p[m, metric] for m in ("cnn", "small", "noisy")]
        got = table.xs(metric, level="metric")["p_holm"].to_numpy()
        np.testing.assert_allclose(got, _holm_loop(ps), rtol=1e-12)
    # each row is the two-set comparison of that level with the baseline
    two = nat4xr.compare(scores.sel(model="cnn", drop=True), scores.sel(model="ln", drop=True))
    for metric in ("r_test", "cc_raw"):
        for col in two.columns:
            assert table.loc[("cnn", metric), col] == two.loc[metric, col]


def test_compare_levels_errors_name_the_remedy():
    scores = _sweep_scores()
    with pytest.raises(ValueError, match="baseline='rnn' is not one level of 'model'"):
        nat4xr.compare(scores, dim="model", baseline="rnn")
    with pytest.raises(ValueError, match="no sweep dim 'seed'"):
        nat4xr.compare(scores, dim="seed", baseline="ln")
    two = xr.concat([scores, scores], dim="seed")
    with pytest.raises(ValueError, match=r"dims \['seed'\] besides 'model'"):
        nat4xr.compare(two, dim="model", baseline="ln")
    with pytest.raises(ValueError, match="compare\\(scores, dim='model'"):
        nat4xr.compare(scores, scores)  # the two-set form names the sweep form
    with pytest.raises(TypeError, match="dim= and baseline="):
        nat4xr.compare(scores.isel(model=0), scores.isel(model=1), baseline="ln")
    # dim defaults to the one sweep dim
    assert nat4xr.compare(scores, baseline="ln").equals(
        nat4xr.compare(scores, dim="model", baseline="ln")
    )


def test_leaderboard_gives_one_row_per_level():
    scores = _sweep_scores()
    board = nat4xr.leaderboard(scores)
    assert board.index.name == "model"
    assert board.index.tolist() == ["ln", "cnn", "small", "noisy"]
    for model in board.index:
        one = scores.sel(model=model, drop=True)
        line = nat4xr.leaderboard(one)
        assert isinstance(line, str)
        assert board.loc[model, "line"] == line
        raw = one["cc_raw"].values
        assert board.loc[model, "cc_raw"] == pytest.approx(100 * np.nanmean(raw), rel=1e-12)
        assert board.loc[model, "n_cc_raw"] == np.isfinite(raw).sum()
    grid = nat4xr.leaderboard(xr.concat([scores, scores], dim="seed"))
    assert grid.index.names == ["seed", "model"] and len(grid) == 8


def test_the_scores_are_an_ordinary_dataset(tmp_path):
    observed, prediction = _traps(1)
    _, sweep = _sweep(prediction, 1)
    scores = _quiet(observed, sweep, n_resamples=50)
    table = scores.to_dataframe()
    assert table.index.names == ["model", "neuron"]
    assert len(table) == 5 * observed.sizes["neuron"]
    assert table.loc[("m1", "c0"), "r_test"] == scores["r_test"].sel(model="m1", neuron="c0")
    path = tmp_path / "scores.nc"
    scores.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back.load(), scores)


def test_plot_scores_draws_a_pair_or_the_grid_of_levels():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import nat4xr.plot

    scores = _sweep_scores()
    ax = nat4xr.plot.plot_scores(scores, levels=["ln", "cnn"])
    x, y = np.asarray(ax.collections[0].get_offsets()).T
    ln, cnn = scores["r_test"].sel(model="ln").values, scores["r_test"].sel(model="cnn").values
    ok = np.isfinite(ln) & np.isfinite(cnn)
    np.testing.assert_array_equal(x, ln[ok])
    np.testing.assert_array_equal(y, cnn[ok])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("r_test (ln)", "r_test (cnn)")
    plt.close(ax.figure)
    grid = nat4xr.plot.plot_scores(scores, metric="cc_raw", levels=["ln", "cnn", "noisy"])
    assert grid.shape == (2, 2) and not grid[0, 1].get_visible()
    panel = np.asarray(grid[1, 1].collections[0].get_offsets())  # noisy against cnn
    noisy = scores["cc_raw"].sel(model="noisy").values
    cc_cnn = scores["cc_raw"].sel(model="cnn").values
    ok = np.isfinite(noisy) & np.isfinite(cc_cnn)
    np.testing.assert_array_equal(panel, np.column_stack([cc_cnn[ok], noisy[ok]]))
    plt.close(grid[0, 0].figure)
    with pytest.raises(ValueError, match="at most 8"):
        nat4xr.plot.plot_scores(xr.concat([scores] * 3, dim="model"))
    with pytest.raises(KeyError, match="'rnn'"):
        nat4xr.plot.plot_scores(scores, levels=["ln", "rnn"])


# -- names and labels: a sweep's names never clash with the scores' own --------------------------


def _with_two_sites(observed: xr.DataArray) -> xr.DataArray:
    """Two recording sites as a cell coordinate, and a stim coordinate ``subset``."""
    n = observed.sizes["neuron"]
    return observed.assign_coords(
        site=("neuron", np.where(np.arange(n) < n // 2, "A", "B")),
        subset=("stim", ["est", "est", "val", "val"]),
    )


def _lazy(array: xr.DataArray) -> xr.DataArray:
    return array.chunk({d: 1 for d in array.dims if d in ("stim", "model")})


@pytest.mark.parametrize(
    "dim", ["site", "subset", "n_single_trials", "n_samples", "cc_raw", "r_floor"]
)
def test_a_sweep_dim_named_like_a_name_of_the_scores_is_refused_before_scoring(dim):
    # a cell coordinate, a stim coordinate, the scores' coordinate, a score variable: the scores
    # would label the levels with the cells' values, or lose a variable
    observed, prediction = _traps(0)
    observed = _with_two_sites(observed)
    sweep = xr.concat([prediction, prediction * 2.0 + 1.0, -prediction], dim=dim)
    with nat4xr.testing.raise_if_dask_computes():  # refused before anything is read
        with pytest.raises(ValueError, match=f"sweep dim '{dim}' is named like") as err:
            evaluate(_lazy(observed), _lazy(sweep), metrics=["cc_raw", "cc_norm"])
    assert f"prediction.rename({dim}='{dim}_level')" in str(err.value)
    # the remedy works: the renamed sweep scores each level as scoring it alone does
    scores = _quiet(observed, sweep.rename({dim: f"{dim}_level"}), metrics=["cc_raw"])
    assert scores["cc_raw"].dims == (f"{dim}_level", "neuron")
    np.testing.assert_array_equal(scores["site"].values, observed["site"].values)
    alone = _quiet(observed, sweep.isel({dim: 2}), metrics=["cc_raw"])
    np.testing.assert_allclose(
        scores["cc_raw"][2].values, alone["cc_raw"].values, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("name", ["site", "n_single_trials", "n_samples", "cc_norm"])
def test_a_sweep_coordinate_named_like_a_name_of_the_scores_is_refused_before_scoring(name):
    # the sweep's own "site" (one per model) replaced the cells' sites; its "n_samples" (the
    # training-set size) met xarray's "found in both data_vars and coords" after all the work
    observed, prediction = _traps(1)
    observed = _with_two_sites(observed)
    sweep = xr.concat([prediction, -prediction], dim="model").assign_coords(
        model=["m0", "m1"], **{name: ("model", [10, 20])}
    )
    with nat4xr.testing.raise_if_dask_computes():
        with pytest.raises(ValueError, match=f"prediction's coordinate '{name}' \\(along model"):
            evaluate(_lazy(observed), _lazy(sweep), metrics=["cc_raw", "cc_norm"])
    renamed = sweep.rename({name: f"{name}_level"})
    scores = _quiet(observed, renamed, metrics=["cc_raw", "cc_norm"])
    assert scores[f"{name}_level"].values.tolist() == [10, 20]
    assert scores["site"].dims == ("neuron",)
    np.testing.assert_array_equal(scores["site"].values, observed["site"].values)


def test_a_sweep_coordinate_named_like_a_stim_coordinate_is_kept():
    # only the names the scores hold are taken: observed's stim coordinates are not among them
    observed, prediction = _traps(1)
    observed = _with_two_sites(observed)
    sweep = xr.concat([prediction, -prediction], dim="model").assign_coords(
        model=["m0", "m1"], subset=("model", ["x", "y"])
    )
    scores = _quiet(observed, sweep, metrics="cc_raw")
    assert scores["subset"].dims == ("model",)
    assert scores["subset"].values.tolist() == ["x", "y"]


def test_the_leaderboard_labels_levels_by_position_when_their_dim_has_no_coordinate():
    # scores whose sweep dim "site" has no labels of its own, beside the cells' "site": the
    # leaderboard labelled every level with the first cell's site
    n = 6
    values = np.random.default_rng(0).uniform(0, 1, (3, n))
    scores = xr.Dataset(
        {"cc_raw": (("site", "neuron"), values), "cc_norm": (("site", "neuron"), values * 1.2)},
        coords={"neuron": [f"c{k}" for k in range(n)], "site": ("neuron", list("AAABBB"))},
    )
    board = nat4xr.leaderboard(scores)
    assert board.index.name == "site"
    assert board.index.tolist() == [0, 1, 2]
    for k in range(3):
        assert board.iloc[k]["line"] == nat4xr.leaderboard(scores.isel(site=k))


def _grid_scores() -> xr.Dataset:
    """Scores of a seed x fraction grid, stacked on one dim ``cfg`` (a MultiIndex of tuples)."""
    rng = np.random.default_rng(3)
    n = 25
    base = rng.uniform(0.1, 0.7, n)
    values = base + rng.normal(0, 0.05, size=(2, 3, n)) + np.array([0.0, 0.05, 0.1])[:, None]
    values[1, 2, :3] = np.nan  # fewer cells scored in one level
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


_GRID = [(s, f) for s in (0, 1) for f in (1.0, 0.5, 0.25)]


def test_the_leaderboard_of_a_stacked_sweep_has_one_row_per_level():
    # it failed inside pandas ("Names should be list-like for a MultiIndex")
    scores = _grid_scores()
    board = nat4xr.leaderboard(scores)
    assert board.index.names == ["seed", "fraction"]
    assert board.index.tolist() == _GRID
    for k, (s, f) in enumerate(_GRID):
        one = scores.isel(cfg=k, drop=True)
        assert board.loc[(s, f), "line"] == nat4xr.leaderboard(one)
        assert board.loc[(s, f), "n_cc_raw"] == np.isfinite(one["cc_raw"].values).sum()
    # beside another dim: the stacked dim's levels, then the other's
    two = xr.concat([scores, scores * 0.5], dim="model").assign_coords(model=["x", "y"])
    board = nat4xr.leaderboard(two)
    assert board.index.names == ["model", "seed", "fraction"]
    assert board.index.tolist() == [(m, s, f) for m in ("x", "y") for s, f in _GRID]
    assert board.loc[("y", 1, 0.25), "line"] == nat4xr.leaderboard(
        two.sel(model="y").isel(cfg=5, drop=True)
    )


def test_a_stacked_prediction_is_scored_and_summarized_by_its_levels():
    observed, prediction = _traps(2)
    grid = xr.concat(
        [xr.concat([prediction * (1 + s) + f for f in (0.0, 1.0)], dim="fraction") for s in (0, 1)],
        dim="seed",
    ).assign_coords(seed=[0, 1], fraction=[1.0, 0.5])
    scores = _quiet(observed, grid.stack(cfg=("seed", "fraction")), metrics=["cc_raw", "cc_norm"])
    board = nat4xr.leaderboard(scores)
    assert board.index.tolist() == [(0, 1.0), (0, 0.5), (1, 1.0), (1, 0.5)]
    alone = _quiet(observed, grid.sel(seed=1, fraction=1.0), metrics=["cc_raw", "cc_norm"])
    assert board.loc[(1, 1.0), "line"] == nat4xr.leaderboard(alone)


def test_compare_of_a_stacked_sweep_takes_a_tuple_baseline():
    # a tuple baseline met numpy's "operands could not be broadcast together"
    scores = _grid_scores()
    table = nat4xr.compare(scores, dim="cfg", baseline=(0, 1.0), metrics=["cc_raw", "cc_norm"])
    assert table.index.names == ["seed", "fraction", "metric"]
    assert table.index.tolist() == [(*g, m) for g in _GRID[1:] for m in ("cc_raw", "cc_norm")]
    base = scores.isel(cfg=0, drop=True)
    for k, (s, f) in enumerate(_GRID[1:], start=1):
        two = nat4xr.compare(scores.isel(cfg=k, drop=True), base, metrics=["cc_raw", "cc_norm"])
        for metric in ("cc_raw", "cc_norm"):
            for col in two.columns:
                assert table.loc[(s, f, metric), col] == two.loc[metric, col]
    assert table.loc[(1, 0.25, "cc_raw"), "n_cells"] == 22
    for metric in ("cc_raw", "cc_norm"):
        got = table.xs(metric, level="metric")
        np.testing.assert_allclose(got["p_holm"], _holm_loop(got["p_wilcoxon"].tolist()))
    for wrong in (0, (0, 2.0), [0, 1.0], (0,)):
        with pytest.raises(ValueError, match=r"is a tuple \('seed', 'fraction'\)"):
            nat4xr.compare(scores, dim="cfg", baseline=wrong)


def test_a_tuple_baseline_of_a_plain_dim_is_no_level():
    # numpy compared the labels with the tuple element by element: ("ln", "x") chose "ln"
    scores = _sweep_scores().isel(model=[0, 1])
    with pytest.raises(ValueError, match=r"baseline=\('ln', 'x'\) is not one level of 'model'"):
        nat4xr.compare(scores, dim="model", baseline=("ln", "x"))
    with pytest.raises(ValueError, match="pass one of 'ln', 'cnn'"):
        nat4xr.compare(scores, dim="model", baseline=["ln"])


@pytest.mark.parametrize(
    "name", ["metric", "n_cells", "median_a", "median_diff", "frac_improved", "p_holm"]
)
def test_compare_refuses_a_sweep_dim_named_like_its_table(name):
    # "metric": pandas' "The name metric occurs multiple times"; "n_cells": the table's column
    # (the cells compared) was silently replaced by the levels
    values = np.random.default_rng(1).uniform(0, 1, (3, 20))
    scores = xr.Dataset(
        {"r_test": ((name, "neuron"), values)},
        coords={name: [10, 50, 100], "neuron": [f"c{k}" for k in range(20)]},
    )
    with pytest.raises(ValueError, match=f"sweep dim '{name}' is named like the table's") as err:
        nat4xr.compare(scores, dim=name, baseline=10)
    assert f"scores.rename({name}='{name}_level')" in str(err.value)
    table = nat4xr.compare(scores.rename({name: f"{name}_level"}), baseline=10)
    assert table.index.names == [f"{name}_level", "metric"]
    assert table["n_cells"].tolist() == [20, 20]
    # a level of a stacked dim is checked too
    stacked = _grid_scores().rename(seed=name)
    with pytest.raises(ValueError, match=f"level '{name}' of the stacked sweep dim 'cfg'"):
        nat4xr.compare(stacked, dim="cfg", baseline=(0, 1.0))


def test_plot_scores_refuses_a_level_label_that_names_two_levels():
    # two levels labelled "cnn" (two seeds stacked without their seed): compare refused the
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
    before = plt.get_fignums()
    try:
        for levels in (["cnn", "ln"], ["ln", "cnn"], None):  # a pair, and the grid of all
            with pytest.raises(ValueError, match="'cnn' names 2 levels of 'model'"):
                nat4xr.plot.plot_scores(scores, levels=levels)
        assert plt.get_fignums() == before  # refused before drawing
        # a stacked dim's levels are drawn by their tuples
        ax = nat4xr.plot.plot_scores(_grid_scores(), metric="cc_raw", levels=[(0, 1.0), (1, 0.25)])
        x, y = np.asarray(ax.collections[0].get_offsets()).T
        a, b = (_grid_scores()["cc_raw"].isel(cfg=k).values for k in (0, 5))
        ok = np.isfinite(a) & np.isfinite(b)
        np.testing.assert_array_equal(x, a[ok])
        np.testing.assert_array_equal(y, b[ok])
        assert ax.get_xlabel() == "cc_raw ((0, 1.0))"
    finally:
        plt.close("all")
