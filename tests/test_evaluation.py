"""nat4xr.evaluate against plain per-cell loops of the published definitions."""

from __future__ import annotations

import functools
import json
import threading
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from reference_metrics import (
    deepstrf_cc_norm,
    deepstrf_cc_raw,
    nems_j_corrcoef,
    nems_r_ceiling,
    nems_r_floor,
    schoppe,
)

import nat4xr
from nat4xr import Nat4Warning, evaluate
from nat4xr.evaluation import METRICS


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    """Every test runs on the compiled kernels (numba) and on the numpy code."""
    if request.param == "compiled":
        pytest.importorskip("numba")
    monkeypatch.setenv("NAT4XR_NUMBA", "1" if request.param == "compiled" else "0")
    return request.param


ALL = [
    "r_test",
    "se_test",
    "r_floor",
    "r_ceiling",
    "cc_raw",
    "cc_norm",
    "cc_norm_schoppe",
    "cc_max",
]


def _observed(
    seed: int, n_stims: int = 5, n_cells: int = 14, n_rep: int = 6, n_time: int = 40
) -> tuple[xr.DataArray, xr.DataArray, np.ndarray]:
    """Poisson trials with every trap of real data, the prediction, and the true rate.

    Stims are named out of order (the metrics sort them), stim 1 has fewer
    repeats, and single cells have a missing stim, a missing trial, missing
    bins, no spikes, no data, a silent trial, fewer repeats than the
    others, a constant or partly-NaN prediction.
    """
    rng = np.random.default_rng(seed)
    rate = rng.gamma(2.0, 1.5, size=(n_stims, n_cells, 1, n_time))
    rate *= rng.uniform(0.5, 2.0, size=(n_stims, 1, 1, 1))  # stims differ in mean rate
    obs = rng.poisson(np.broadcast_to(rate, (n_stims, n_cells, n_rep, n_time))).astype(float)
    obs[1, :, n_rep - 2 :] = np.nan  # fewer repeats on one stim
    obs[0, 2] = np.nan  # a cell without one stim
    obs[2, 3, 1] = np.nan  # a missing trial
    obs[3, 4, 2, 5:9] = np.nan  # missing bins in one trial
    obs[:, 5] *= 0.0  # a silent cell (NaN stays NaN)
    obs[:, 6] = np.nan  # a cell without data
    obs[:, 9, 0] = 0.0  # a silent trial
    obs[:, 11, 3:] = np.nan  # a cell with fewer repeats than the others, on every stim
    pred = rate[:, :, 0] + rng.normal(0.0, 1.0, size=(n_stims, n_cells, n_time))
    pred[:, 7] = 2.0  # a constant prediction
    pred[1, 8, :7] = np.nan  # a prediction with holes
    names = [f"stim{k:02d}" for k in rng.permutation(n_stims)]
    cells = [f"cell-{k}" for k in range(n_cells)]
    coords = {"stim": names, "neuron": cells, "time": np.arange(n_time) * 0.01}
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"), coords=coords)
    prediction = xr.DataArray(pred, dims=("stim", "neuron", "time"), coords=coords)
    return observed, prediction, rate[:, :, 0]


def _reference(observed: xr.DataArray, prediction: xr.DataArray, seed: int = 0) -> dict:
    """Every metric, one cell at a time, from the loops in reference_metrics."""
    order = np.argsort(observed.stim.values.astype(str))
    obs = observed.values[order]
    pred = prediction.sel(stim=observed.stim).values[order]
    held = np.isfinite(obs).any(axis=(1, 3))  # (stims, repeats)
    min_reps = int(held.sum(1)[held.any(1)].min())
    out = {m: [] for m in ALL}
    for c in range(obs.shape[1]):
        trials, p = obs[:, c], pred[:, c]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            g = np.nanmean(trials, axis=1)
        r, se = nems_j_corrcoef(p, g)
        np.random.seed(seed)  # noqa: NPY002  (NEMS0 draws from the global generator)
        out["r_test"].append(r)
        out["se_test"].append(se)
        out["r_floor"].append(nems_r_floor(p, g))
        out["r_ceiling"].append(nems_r_ceiling(trials, p, min_reps))
        out["cc_raw"].append(deepstrf_cc_raw(trials, p))
        out["cc_norm"].append(deepstrf_cc_norm(trials, p, obs.shape[2]))
        cc_norm, cc_max = schoppe(trials, p)
        out["cc_norm_schoppe"].append(cc_norm)
        out["cc_max"].append(cc_max)
        if not np.isfinite(trials).any():  # no data: not scored (NaN), not degenerate (0)
            for m in ALL:
                out[m][-1] = np.nan
    return {m: np.array(v, dtype=float) for m, v in out.items()}


@functools.cache
def _expected(seed: int, **kwargs) -> dict:
    observed, prediction, _ = _observed(seed, **kwargs)
    return _reference(observed, prediction, seed=0 if kwargs else seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_the_per_cell_loops(seed):
    observed, prediction, _ = _observed(seed)
    with pytest.warns(Nat4Warning, match="cells have no usable samples"):
        scores = evaluate(observed, prediction, seed=seed)
    expected = _expected(seed)
    for name in ALL:
        np.testing.assert_allclose(
            scores[name].values, expected[name], rtol=0, atol=1e-9, err_msg=name
        )
    assert list(scores.neuron.values) == list(observed.neuron.values)
    # the traps are where the conventions differ: NEMS0 gives 0, the others NaN
    for cell in ("cell-5", "cell-7"):
        assert scores["r_test"].sel(neuron=cell) == 0.0
        assert np.isnan(scores["cc_raw"].sel(neuron=cell))
    # a cell without data is not a degenerate prediction: it is not scored at all
    assert all(np.isnan(scores[m].sel(neuron="cell-6")) for m in ALL)
    assert scores["n_samples"].sel(neuron="cell-6") == 0
    assert scores["n_samples"].sel(neuron="cell-0") == 5 * 40
    assert scores["n_samples"].sel(neuron="cell-2") == 4 * 40
    assert scores["n_samples"].sel(neuron="cell-8") == 5 * 40 - 7


def test_a_larger_population_in_several_blocks_equals_the_loops():
    # more cells than one block, and more than 45 repeats (NEMS0 draws 1000 pairs)
    observed, prediction, _ = _observed(4, n_stims=4, n_cells=70, n_rep=8, n_time=25)
    with pytest.warns(Nat4Warning):
        scores = evaluate(observed, prediction, metrics=["r_test", "r_floor", "cc_norm"])
    expected = _expected(4, n_stims=4, n_cells=70, n_rep=8, n_time=25)
    for name in ("r_test", "se_test", "r_floor", "cc_norm"):
        np.testing.assert_allclose(scores[name].values, expected[name], atol=1e-9, err_msg=name)


def test_r_ceiling_past_45_repeats_averages_1000_pairs_and_is_reproducible():
    rng = np.random.default_rng(0)
    rate = rng.gamma(2.0, 2.0, size=(2, 3, 1, 30))
    obs = rng.poisson(np.broadcast_to(rate, (2, 3, 50, 30))).astype(float)
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"))
    pred = rate[:, :, 0]
    a = evaluate(observed, pred, metrics="r_ceiling", seed=1)["r_ceiling"].values
    b = evaluate(observed, pred, metrics="r_ceiling", seed=1)["r_ceiling"].values
    np.testing.assert_array_equal(a, b)
    # the draw of 1000 of the 1225 pairs stays close to the mean over all of them
    all_pairs = [nems_r_ceiling(obs[:, c], pred[:, c], 50, all_pairs=True) for c in range(3)]
    np.testing.assert_allclose(a, all_pairs, atol=0.01)
    assert not np.allclose(a, all_pairs, atol=1e-12, rtol=0)


def test_r_floor_is_reproducible_for_a_seed_and_changes_with_it():
    observed, prediction, _ = _observed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        a = evaluate(observed, prediction, metrics="r_floor", seed=5)["r_floor"]
        b = evaluate(observed, prediction, metrics="r_floor", seed=5)["r_floor"]
        c = evaluate(observed, prediction, metrics="r_floor", seed=6)["r_floor"]
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a.values[:5], c.values[:5])


# -- known truth ----------------------------------------------------------------------------------


def _known_rate(seed: int = 0, n_cells: int = 20) -> tuple[xr.DataArray, np.ndarray]:
    """Many repeats of a strongly modulated rate: high-SNR cells."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(1.0, 4.0, size=(6, n_cells, 1, 60))
    obs = rng.poisson(np.broadcast_to(rate, (6, n_cells, 20, 60))).astype(float)
    coords = {"stim": [f"s{k}" for k in range(6)], "neuron": [f"n{k}" for k in range(n_cells)]}
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"), coords=coords)
    return observed, rate[:, :, 0]


def test_the_true_rate_scores_near_one_on_the_noise_corrected_metrics():
    observed, rate = _known_rate()
    scores = evaluate(observed, rate)
    assert np.all(np.abs(scores["cc_norm_schoppe"] - 1) < 0.05)
    assert np.all(np.abs(scores["r_ceiling"] - 1) < 0.05)
    # the raw correlations are below 1 (the PSTH is noisy), the ceiling too
    assert np.all(scores["r_test"] < scores["cc_norm_schoppe"])
    np.testing.assert_allclose(
        scores["cc_norm_schoppe"] * scores["cc_max"], scores["cc_raw"], atol=2e-3
    )


def test_an_unrelated_prediction_scores_near_zero_and_below_the_floor():
    observed, _ = _known_rate()
    _, other = _known_rate(seed=1)
    scores = evaluate(observed, other)
    assert np.all(np.abs(scores["r_test"]) < 0.2)
    assert (scores["r_test"] < scores["r_floor"]).mean() >= 0.9
    assert not nat4xr.significant(scores).any()
    # the true rate is significant in every cell
    assert nat4xr.significant(evaluate(observed, _known_rate()[1])).all()


def test_the_leaderboard_cc_norm_runs_high_when_stims_differ_in_mean_rate():
    # deepSTRF's signal power is averaged within stims: the stims' different
    # means count as signal in the covariance but not in the power
    rng = np.random.default_rng(3)
    rate = rng.gamma(1.0, 4.0, size=(6, 10, 1, 60)) + 4.0 * np.arange(6)[:, None, None, None]
    obs = rng.poisson(np.broadcast_to(rate, (6, 10, 20, 60))).astype(float)
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"))
    scores = evaluate(observed, rate[:, :, 0], metrics=["cc_norm", "cc_norm_schoppe"])
    assert np.all(scores["cc_norm"] > 1.5)
    assert np.all(np.abs(scores["cc_norm_schoppe"] - 1) < 0.05)


# -- labels and inputs ----------------------------------------------------------------------------


def _quiet(*args, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return evaluate(*args, **kwargs)


def test_the_prediction_is_aligned_by_labels():
    observed, prediction, _ = _observed(1)
    base = _quiet(observed, prediction)
    shuffled = prediction.isel(
        stim=[3, 0, 4, 2, 1], neuron=np.random.default_rng(0).permutation(14)
    )
    xr.testing.assert_identical(_quiet(observed, shuffled), base)
    # a (stim, neuron, 1, time) prediction, and plain arrays in observed's order
    xr.testing.assert_identical(_quiet(observed, prediction.expand_dims(repeat=1, axis=2)), base)
    xr.testing.assert_identical(_quiet(observed, prediction.values), base)
    xr.testing.assert_identical(_quiet(observed, prediction.values[:, :, None]), base)
    # a Dataset with response, and a transposed observed, are the same input
    ds = xr.Dataset({"response": observed.transpose("neuron", "time", "repeat", "stim")})
    xr.testing.assert_identical(_quiet(ds, prediction), base)


def test_label_mismatches_name_the_labels():
    observed, prediction, _ = _observed(1)
    with pytest.raises(ValueError, match=r"1 neuron\(s\) of observed are missing.*cell-3"):
        evaluate(observed, prediction.drop_sel(neuron="cell-3"))
    with pytest.raises(ValueError, match=r"stim\(s\) of the prediction are not in observed"):
        evaluate(observed.isel(stim=[0, 1]), prediction)
    with pytest.raises(ValueError, match="appear more than once"):
        evaluate(observed, xr.concat([prediction, prediction.isel(neuron=[0])], "neuron"))
    with pytest.raises(ValueError, match="shape"):
        evaluate(observed, prediction.values[:, :3])
    with pytest.raises(ValueError, match="repeats"):
        evaluate(observed, prediction.expand_dims(repeat=2, axis=2))
    with pytest.raises(ValueError, match="time bins"):
        evaluate(observed, prediction.isel(time=slice(0, 10)))
    with pytest.raises(ValueError, match="dims"):
        evaluate(observed.isel(repeat=0), prediction)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(observed, prediction, metrics=["r_test", "ccnorm"])
    with pytest.raises(KeyError, match="stims not in observed"):
        evaluate(observed, prediction, stims=["nope"])


def test_stims_scores_a_subset_and_ignores_the_predictions_other_stims():
    observed, prediction, _ = _observed(2)
    keep = sorted(observed.stim.values[:3])
    sub = _quiet(observed, prediction, stims=keep)
    xr.testing.assert_identical(sub, _quiet(observed.sel(stim=keep), prediction.sel(stim=keep)))
    assert json.loads(sub.attrs["stims"]) == [str(s) for s in keep]
    mask = observed.stim.isin(keep)
    xr.testing.assert_identical(_quiet(observed, prediction, stims=mask), sub)


def test_metrics_subset_and_attrs():
    observed, prediction, _ = _observed(0)
    scores = _quiet(observed, prediction, metrics="cc_raw")
    assert set(scores.data_vars) == {"cc_raw", "n_samples"}
    full = _quiet(observed, prediction)
    assert set(full.data_vars) == set(METRICS)
    xr.testing.assert_identical(scores["cc_raw"], full["cc_raw"])
    for name, var in full.data_vars.items():
        assert var.attrs["source"] and var.attrs["definition"], name
        assert var.dtype == (np.int64 if name == "n_samples" else np.float64)
    assert full.attrs["n_jacks"] == 20 and full.attrs["n_single_trials"] == 4


def test_single_repeat_data_gives_the_raw_correlation_as_cc_norm():
    observed, prediction, _ = _observed(0)
    one = observed.isel(repeat=[0])
    scores = _quiet(one, prediction)
    np.testing.assert_array_equal(scores["cc_norm"].values, scores["cc_raw"].values)
    scored = scores.drop_sel(neuron="cell-6")  # the cell without data: NaN
    assert np.all(scored["r_ceiling"] == 0.0)  # NEMS0: no pairs of trials
    assert np.all(np.isnan(scores["cc_norm_schoppe"]))


def test_float32_input_is_scored_in_float64():
    observed, prediction, _ = _observed(0)
    a = _quiet(observed, prediction)
    b = _quiet(observed.astype(np.float32), prediction)
    expected = _quiet(observed.astype(np.float32).astype(float), prediction)
    xr.testing.assert_identical(b, expected)
    assert b["r_test"].dtype == np.float64
    np.testing.assert_allclose(a["r_test"], b["r_test"])


# -- laziness -------------------------------------------------------------------------------------


class _Recorder:
    """An array that records which stims are read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.read: set[int] = set()
        self._lock = threading.Lock()

    def __getitem__(self, key):
        stims = np.arange(self.shape[0])[key[0]]
        with self._lock:
            self.read.update(np.atleast_1d(stims).tolist())
        return self.data[key]


def test_a_lazy_dataset_reads_only_the_scored_stims():
    ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=3, n_neurons=8, seed=2, p_missing=0.0)
    recorder = _Recorder(ds["response"].values)
    lazy = ds.assign(
        response=ds["response"].copy(data=da.from_array(recorder, chunks=(1, -1, -1, -1)))
    )
    val = np.flatnonzero(ds["subset"].values == "val")
    pred = ds["response"].isel(stim=val).mean("repeat")
    computes = []

    def counting(dsk, keys, **kwargs):
        computes.append(keys)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting), warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        scores = evaluate(lazy, pred, stims="val")
    assert len(computes) == 1
    assert recorder.read == set(val.tolist())
    xr.testing.assert_identical(scores, _quiet(ds, pred, stims="val"))


def test_the_accessor_scores_its_dataset():
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=3, n_neurons=6, seed=4)
    val = ds.nat4.sel_stims(subset="val")
    pred = val["response"].mean("repeat") + 0.1
    xr.testing.assert_identical(
        _quiet_accessor(val, pred), _quiet(val, pred, metrics=["r_test", "cc_raw"])
    )


def _quiet_accessor(ds: xr.Dataset, pred: xr.DataArray) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return ds.nat4.evaluate(pred, metrics=["r_test", "cc_raw"])


def test_the_compiled_kernels_leave_only_irregular_cells_to_numpy(kernels):
    if kernels != "compiled":
        pytest.skip("about the compiled kernels")
    from nat4xr import accelerated

    observed, prediction, _ = _observed(0)
    order = np.argsort(observed.stim.values)
    pred = prediction.values[order]
    out = accelerated.trial_metrics(observed.values, order, pred, n_first=4)
    # a missing trial (cell 3), missing bins (cell 4), holes in the prediction (cell 8)
    assert np.flatnonzero(out["general"]).tolist() == [3, 4, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        psth = np.nanmean(observed.values[order], axis=2).transpose(1, 0, 2)
    np.testing.assert_allclose(out["psth"], psth, rtol=1e-12)


def test_cc_raw_and_cc_norm_equal_deepstrfs_own_functions(kernels):
    """Beside deepSTRF 0.1.0 itself, when installed beside (NAT4XR_DEEPSTRF_PATH)."""
    import os
    import sys

    torch = pytest.importorskip("torch")
    extra = os.environ.get("NAT4XR_DEEPSTRF_PATH")
    if not extra:
        pytest.skip("deepSTRF 0.1.0 is not installed beside (NAT4XR_DEEPSTRF_PATH)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _deepstrf import load_deepstrf_metrics

    perf = load_deepstrf_metrics()
    if perf is None:
        pytest.skip("deepSTRF could not be imported")
    observed, prediction, _ = _observed(1)
    scores = _quiet(observed, prediction)
    resp = torch.from_numpy(observed.values.copy())
    pred = torch.from_numpy(prediction.values[:, :, None].copy())
    raw = perf.corrcoef(pred, resp, reduction="none").numpy()
    norm = perf.normalized_corrcoef(pred, resp, method="schoppe", reduction="none").numpy()
    np.testing.assert_allclose(scores["cc_raw"].values, raw, atol=1e-9)
    np.testing.assert_allclose(scores["cc_norm"].values, norm, atol=1e-9)


# -- Schoppe's conventions and the two paths ----------------------------------------------------


def _traps(
    seed: int, single_repeat_stim: bool = False, n_cells: int = 20, n_rep: int = 5
) -> tuple[xr.DataArray, xr.DataArray]:
    """Poisson trials with the traps of real data and the degenerate signals rounding exposes.

    Cells: 3 a missing trial, 4 missing bins, 5 silent, 6 no data, 7 a silent trial,
    8 pure noise (SP < 0), 9 a constant 0.1 response, 10 a constant 0.7 response;
    predictions: 11 constant 0.1, 12 constant 1/3, 13 constant 0, 14 constant 0.3 with
    a hole. ``single_repeat_stim`` gives stim 1 a single repeat for every cell.
    """
    rng = np.random.default_rng(seed)
    n_stims, n_time = 4, int(rng.integers(13, 47))  # lengths where 0.1 * L / L != 0.1 too
    rate = rng.gamma(2.0, 1.5, size=(n_stims, n_cells, 1, n_time))
    rate[:, 8] = 2.0  # no stimulus-driven signal: SP estimates scatter around 0
    obs = rng.poisson(np.broadcast_to(rate, (n_stims, n_cells, n_rep, n_time))).astype(float)
    if single_repeat_stim:
        obs[1, :, 1:] = np.nan
    obs[2, 3, 1] = np.nan
    obs[3, 4, 2, 5:8] = np.nan
    obs[:, 5] = 0.0
    obs[:, 6] = np.nan
    obs[:, 7, 0] = 0.0
    obs[:, 9] = 0.1
    obs[:, 10] = 0.7
    pred = rate[:, :, 0] + rng.normal(0.0, 1.0, size=(n_stims, n_cells, n_time))
    pred[:, 11] = 0.1
    pred[:, 12] = 1.0 / 3.0
    pred[:, 13] = 0.0
    pred[:, 14] = 0.3
    pred[0, 14, :3] = np.nan
    coords = {
        "stim": [f"s{k}" for k in range(n_stims)],
        "neuron": [f"c{k}" for k in range(n_cells)],
    }
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"), coords=coords)
    prediction = xr.DataArray(pred, dims=("stim", "neuron", "time"), coords=coords)
    return observed, prediction


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_schoppe_cc_max_is_0_where_signal_power_is_not_positive(seed):
    # calc_CCnorm.m: SP <= 0 -> CCnorm NaN, CCmax 0 (silent and constant cells included)
    observed, prediction = _traps(seed)
    scores = _quiet(observed, prediction, metrics=["cc_norm_schoppe", "cc_max"])
    for c in range(observed.sizes["neuron"]):
        cc_norm, cc_max = schoppe(observed.values[:, c], prediction.values[:, c])
        got = scores.isel(neuron=c)
        np.testing.assert_allclose(got["cc_max"], cc_max, rtol=0, atol=1e-9, err_msg=str(c))
        np.testing.assert_allclose(
            got["cc_norm_schoppe"], cc_norm, rtol=0, atol=1e-9, err_msg=str(c)
        )
    for cell in ("c5", "c9", "c10"):  # silent, constant 0.1, constant 0.7
        assert scores["cc_max"].sel(neuron=cell) == 0.0
        assert np.isnan(scores["cc_norm_schoppe"].sel(neuron=cell))
    assert np.isnan(scores["cc_max"].sel(neuron="c6"))  # no data: undefined, not 0


def test_schoppe_pure_noise_has_cc_max_0_and_no_cc_norm():
    rng = np.random.default_rng(5)
    obs = rng.poisson(2.0, size=(4, 30, 6, 25)).astype(float)  # no signal at all
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"))
    pred = rng.normal(size=(4, 30, 25))
    scores = evaluate(observed, pred, metrics=["cc_norm_schoppe", "cc_max"])
    expected = np.array([schoppe(obs[:, c], pred[:, c]) for c in range(30)])
    non_positive = expected[:, 1] == 0.0
    assert 5 < non_positive.sum() < 25  # both signs of the SP estimate occur
    np.testing.assert_array_equal(scores["cc_max"].values[non_positive], 0.0)
    assert np.isnan(scores["cc_norm_schoppe"].values[non_positive]).all()
    np.testing.assert_allclose(scores["cc_max"].values, expected[:, 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("value", [0.1, 1.0 / 3.0, 0.7, 2.2])
@pytest.mark.parametrize("n_time", [13, 23, 37])
def test_a_constant_prediction_gives_no_cc_norm_whatever_the_rounding(value, n_time):
    # Var(yhat) is 0 in the reference's arithmetic; a mean of L copies of 0.1 is not
    # always 0.1 in binary, and the rounding must not turn 0 / 0 into a number
    rng = np.random.default_rng(n_time)
    obs = rng.poisson(rng.gamma(2.0, 1.5, size=(3, 4, 1, n_time)), size=(3, 4, 5, n_time))
    observed = xr.DataArray(obs.astype(float), dims=("stim", "neuron", "repeat", "time"))
    pred = np.full((3, 4, n_time), value)
    scores = _quiet(observed, pred)
    for name in ("cc_norm_schoppe", "cc_raw", "cc_norm"):
        assert np.isnan(scores[name].values).all(), name
    for name in ("r_test", "se_test", "r_ceiling"):  # NEMS0: 0 for a constant prediction
        np.testing.assert_array_equal(scores[name].values, 0.0, err_msg=name)
    assert np.isfinite(scores["cc_max"].values).all()


@pytest.mark.parametrize("single_repeat_stim", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_compiled_and_numpy_paths_agree_in_every_metric(kernels, seed, single_repeat_stim):
    """Bit for bit in NaN pattern, to 1e-9 in value, on data with every trap."""
    if kernels != "compiled":
        pytest.skip("compares the compiled kernels with numpy (run once)")
    observed, prediction = _traps(seed, single_repeat_stim)
    observed[0, 15] = np.round(observed[0, 15] * 0.1, 1)  # non-integer values
    scores = {}
    with pytest.MonkeyPatch.context() as mp:
        for path in ("1", "0"):
            mp.setenv("NAT4XR_NUMBA", path)
            scores[path] = _quiet(observed, prediction, n_resamples=100)
    for name in scores["0"].data_vars:
        compiled, numpy = scores["1"][name].values, scores["0"][name].values
        np.testing.assert_array_equal(np.isnan(compiled), np.isnan(numpy), err_msg=name)
        np.testing.assert_allclose(compiled, numpy, rtol=0, atol=1e-9, err_msg=name)
