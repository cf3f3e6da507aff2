"""Conventions that would move a reported score: unscored cells, smoothing, trials per site."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from reference_metrics import nems_r_ceiling

import nat4xr
from nat4xr import Nat4Warning, evaluate


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    """Every test runs on the compiled kernels (numba) and on the numpy code."""
    if request.param == "compiled":
        pytest.importorskip("numba")
    monkeypatch.setenv("NAT4XR_NUMBA", "1" if request.param == "compiled" else "0")
    return request.param


def _quiet(*args, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Nat4Warning)
        return evaluate(*args, **kwargs)


def _two_sites(seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    """Cells of two sites: site A heard stims 0, 1, 3 8 times; site B those and stim 2 (3 times).

    Traps: a cell of A misses one trial that the rest of A holds (a NaN trial,
    not a shorter recording), and a cell of B misses stim 2 entirely.
    """
    rng = np.random.default_rng(seed)
    n_stims, n_rep, n_time = 4, 8, 30
    sites = ["A"] * 4 + ["B"] * 4
    rate = rng.gamma(2.0, 1.0, size=(n_stims, len(sites), 1, n_time))
    obs = rng.poisson(np.broadcast_to(rate, (n_stims, len(sites), n_rep, n_time))).astype(float)
    obs[2, 4:, 3:] = np.nan  # site B recorded stim 2 three times
    obs[2, :4] = np.nan  # site A never heard stim 2
    obs[1, 1, 5] = np.nan  # one trial of one cell of A: a NaN trial inside a recorded repeat
    obs[2, 6] = np.nan  # a cell of B without stim 2
    pred = rate[:, :, 0] + rng.normal(0.0, 0.5, size=(n_stims, len(sites), n_time))
    coords = {
        "stim": [f"s{k}" for k in range(n_stims)],
        "neuron": [f"{s}-{k}" for k, s in enumerate(sites)],
        "time": np.arange(n_time) * 0.01,
    }
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"), coords=coords)
    observed = observed.assign_coords(site=("neuron", sites))
    prediction = xr.DataArray(pred, dims=("stim", "neuron", "time"), coords=coords)
    return observed, prediction


def test_r_ceiling_takes_its_trial_count_per_site():
    observed, prediction = _two_sites()
    scores = _quiet(observed, prediction, metrics="r_ceiling")
    obs, pred = observed.values, prediction.values
    expected = []
    for c, site in enumerate(observed.site.values):
        cells = observed.site.values == site
        held = np.isfinite(obs[:, cells]).any(axis=(1, 3))  # (stims, repeats) the site holds
        per_stim = held.sum(1)
        min_reps = int(per_stim[per_stim > 0].min())  # NEMS0: the recording's epochs
        expected.append(nems_r_ceiling(obs[:, c], pred[:, c], min_reps))
    np.testing.assert_allclose(scores["r_ceiling"].values, expected, rtol=0, atol=1e-9)
    assert scores["n_single_trials"].values.tolist() == [8] * 4 + [3] * 4
    assert scores.attrs["single_trials_per"] == "site"
    # the two sites alone give the same numbers: one does not truncate the other
    for site in ("A", "B"):
        cells = observed.neuron[observed.site == site]
        alone = _quiet(
            observed.sel(neuron=cells), prediction.sel(neuron=cells), metrics="r_ceiling"
        )
        xr.testing.assert_allclose(alone["r_ceiling"], scores["r_ceiling"].sel(neuron=cells))
    # without a site coordinate the cells are one recording, as in NEMS0: the fewest repeats
    one = _quiet(observed.drop_vars("site"), prediction, metrics="r_ceiling")
    assert set(one["n_single_trials"].values.tolist()) == {3}
    assert one.attrs["single_trials_per"] == "recording"
    a_cells = observed.neuron[observed.site == "A"]
    truncated = one["r_ceiling"].sel(neuron=a_cells).values
    assert not np.allclose(truncated, scores["r_ceiling"].sel(neuron=a_cells).values)


def test_a_cell_without_data_in_the_scored_stims_is_nan_not_zero():
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=3, n_neurons=5, p_missing=0.0, seed=4)
    resp = ds["response"].values.copy()
    val = np.flatnonzero(ds.subset.values == "val")
    resp[val[:, None], 1] = np.nan  # cell 1 has estimation data only
    ds = ds.assign(response=(ds["response"].dims, resp))
    pred = ds["response"].mean("repeat") + 0.1
    with pytest.warns(Nat4Warning, match="1 of 5 cells have no data in the scored stims"):
        scores = evaluate(ds, pred, stims="val")
    cell = str(ds.neuron.values[1])
    for name in ("r_test", "se_test", "r_floor", "r_ceiling", "cc_raw", "cc_norm"):
        assert np.isnan(scores[name].sel(neuron=cell)), name
    assert scores["n_samples"].sel(neuron=cell) == 0
    assert scores.attrs["n_cells_without_data"] == 1
    # the mean over scored cells is the mean over the cells with data, not pulled to 0
    others = scores.drop_sel(neuron=cell)
    assert float(scores["r_test"].mean()) == pytest.approx(float(others["r_test"].mean()))
    assert nat4xr.compare(scores, scores).loc["r_test", "n_cells"] == 4
    assert not bool(nat4xr.significant(scores).sel(neuron=cell))
    # a prediction that is NaN wherever the cell has data is NEMS0's degenerate case: 0
    pred2 = pred.copy()
    pred2.loc[{"neuron": cell}] = np.nan
    other = str(ds.neuron.values[2])
    pred2.loc[{"neuron": other}] = np.nan
    with pytest.warns(Nat4Warning, match="1 of 5 cells have no usable samples"):
        both = evaluate(ds, pred2, stims="val", metrics=["r_test"])
    assert both["r_test"].sel(neuron=other) == 0.0
    assert np.isnan(both["r_test"].sel(neuron=cell))


def test_smoothed_responses_are_flagged_in_the_scores_and_in_compare():
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=3, n_neurons=4, p_missing=0.0, seed=1)
    val = ds.nat4.sel_stims(subset="val")
    pred = val["response"].mean("repeat") + 0.05
    plain = _quiet(val, pred)
    assert plain.attrs["smoothing"] == "none"
    smoothed = val.nat4.smooth(20)
    with pytest.warns(Nat4Warning, match="smoothed .*published values were computed on unsmoothed"):
        scores = evaluate(smoothed, pred)
    assert "hanning" in scores.attrs["smoothing"]
    # the response DataArray alone carries the record too
    with pytest.warns(Nat4Warning, match="smoothed"):
        alone = evaluate(smoothed["response"], pred)
    assert alone.attrs["smoothing"] == scores.attrs["smoothing"]
    # compare: against the published values (unsmoothed) or differently smoothed scores
    published = val.assign_coords(pub_r_test=("neuron", np.linspace(0.1, 0.4, 4)))
    with pytest.warns(Nat4Warning, match="smoothing differs"):
        nat4xr.compare(scores, published, metrics=["r_test"])
    with pytest.warns(Nat4Warning, match="smoothing differs"):
        nat4xr.compare(plain, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Nat4Warning)
        nat4xr.compare(scores, scores)  # same smoothing on both sides: comparable
        nat4xr.compare(plain, published, metrics=["r_test"])


def _one_trial_each(seed: int = 0, n_cells: int = 60) -> tuple[xr.DataArray, xr.DataArray]:
    """Sparse cells whose signal power is exactly 0 in exact arithmetic.

    Cells ``0..n/2``: in each stim only one repeat (a different one per stim)
    holds spikes, the others are silent. Then ``n var(PSTH) = mean var(trial)``
    within every stim, so the leaderboard's SP (per stim, averaged) is 0, and
    rounding leaves values of either sign around it. Cells ``n/2..n``: only
    repeat 0 ever holds spikes, so Schoppe's SP (twice the summed covariances
    between trials) is 0 as well.
    """
    rng = np.random.default_rng(seed)
    n_stims, n_rep, n_time = 5, 6, 40
    obs = np.zeros((n_stims, n_cells, n_rep, n_time))
    half = n_cells // 2
    for s in range(n_stims):
        obs[s, :half, s % n_rep] = rng.poisson(0.7, size=(half, n_time))
    obs[:, half:, 0] = rng.poisson(0.7, size=(n_stims, n_cells - half, n_time))
    pred = rng.gamma(2.0, 1.0, size=(n_stims, n_cells, n_time))
    coords = {
        "stim": [f"s{k}" for k in range(n_stims)],
        "neuron": [f"c{k:02d}" for k in range(n_cells)],
        "time": np.arange(n_time) * 0.01,
    }
    observed = xr.DataArray(obs, dims=("stim", "neuron", "repeat", "time"), coords=coords)
    return observed, xr.DataArray(pred, dims=("stim", "neuron", "time"), coords=coords)


def test_a_signal_power_zero_but_for_rounding_is_not_positive_on_both_paths():
    # SP is 0 in exact arithmetic for these cells: the sign rounding leaves must not decide
    # between NaN and a huge CCnorm (one path gave NaN where the other gave 1.7e6)
    observed, prediction = _one_trial_each()
    half = observed.sizes["neuron"] // 2
    scores = _quiet(observed, prediction, metrics=["cc_norm", "cc_norm_schoppe", "cc_max"])
    assert np.isnan(scores.cc_norm.values[:half]).all(), scores.cc_norm.values[:half]
    assert np.isnan(scores.cc_norm_schoppe.values[half:]).all(), scores.cc_norm_schoppe.values
    np.testing.assert_array_equal(scores.cc_max.values[half:], 0.0)
    # a weak signal well above rounding still counts: a second trial sharing a quarter of the
    # first one's bins
    weak = observed.copy()
    weak[:, half:, 1, :10] = observed[:, half:, 0, :10]
    scores = _quiet(weak, prediction, metrics=["cc_norm_schoppe", "cc_max"])
    assert np.isfinite(scores.cc_norm_schoppe.values[half:]).all()
    assert (scores.cc_max.values[half:] > 0).all()
