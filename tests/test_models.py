"""Lagged designs, the ridge STRF and recorded splits, against direct computations."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

import nat4xr
from nat4xr.lagged import design, lagged
from nat4xr.models import RidgeSTRF
from nat4xr.splits import assign_folds, assign_holdout


def _planted(seed: int = 0, noise: float = 0.05, n_lags: int = 4, n_est: int = 40):
    """A Dataset whose responses are a known linear STRF of its spectrogram, plus noise.

    The coverage pattern of ``random_dataset`` is kept (cells miss some
    sounds), so cells of the same Dataset are fitted on different sounds.
    """
    ds = nat4xr.synthetic.random_dataset(
        n_est=n_est, n_val=4, n_neurons=10, n_time=30, n_freq=5, p_missing=0.3, seed=seed
    )
    rng = np.random.default_rng(seed)
    spec = rng.gamma(1.0, 1.0, size=ds["spectrogram"].shape)  # (stim, freq, time)
    n_neuron, n_freq = ds.sizes["neuron"], ds.sizes["freq"]
    strf = rng.normal(size=(n_neuron, n_lags, n_freq)) * np.exp(-np.arange(n_lags))[:, None]
    intercept = rng.normal(size=n_neuron)
    rate = np.zeros((ds.sizes["stim"], n_neuron, ds.sizes["time"]))
    for k in range(n_lags):
        shifted = np.zeros_like(spec)
        shifted[:, :, k:] = spec[:, :, : spec.shape[2] - k]
        rate += np.einsum("sft,nf->snt", shifted, strf[:, k])
    rate += intercept[None, :, None]
    resp = ds["response"].values
    noisy = rate[:, :, None, :] + noise * rng.normal(size=resp.shape)
    ds = ds.assign(
        spectrogram=(ds["spectrogram"].dims, spec),
        response=(ds["response"].dims, np.where(np.isnan(resp), np.nan, noisy)),
    )
    return ds, strf, intercept


# -- lagged views and designs -----------------------------------------------------------------


@pytest.mark.parametrize("n_lags", [1, 3, 17])
def test_lagged_equals_a_loop_with_zeros_before_each_onset(n_lags):
    ds = nat4xr.synthetic.random_dataset(n_est=3, n_val=2, n_neurons=2, n_freq=4, seed=1)
    spec = ds["spectrogram"].values  # (stim, freq, time); 15 bins, fewer than 17 lags
    view = lagged(ds, n_lags)
    expected = np.zeros((spec.shape[0], spec.shape[2], n_lags, spec.shape[1]))
    for s in range(spec.shape[0]):
        for t in range(spec.shape[2]):
            for k in range(n_lags):
                if t - k >= 0:
                    expected[s, t, k] = spec[s, :, t - k]
    np.testing.assert_array_equal(view.values, expected)
    assert not view.values.flags.owndata  # a view of one padded copy, not the full design
    np.testing.assert_allclose(view["lag"].values, np.arange(n_lags) * ds.attrs["dt"])
    assert list(view["stim"].values) == list(ds["stim"].values)
    xr.testing.assert_equal(ds.nat4.lagged(n_lags), view)


def test_design_rows_line_up_with_the_responses_and_the_mask():
    ds, _, _ = _planted()
    d = design(ds, 3, stims="est")
    est = np.flatnonzero(ds["subset"].values == "est")
    assert list(d.stims) == list(ds["stim"].values[est])
    n_time, n_freq = ds.sizes["time"], ds.sizes["freq"]
    view = lagged(ds, 3).values
    resp = ds["response"].values
    for row in (0, 7, n_time + 2, len(d.X) - 1):
        s, t = divmod(row, n_time)
        np.testing.assert_array_equal(d.X[row].reshape(3, n_freq), view[est[s], t])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmean(resp[est[s], :, :, t], axis=-1)
        np.testing.assert_allclose(d.Y[row], expected)
        np.testing.assert_array_equal(d.mask[row], np.isfinite(expected))
    cov = ds["coverage"].values[est]  # (stim, neuron)
    np.testing.assert_array_equal(d.mask.reshape(len(est), n_time, -1).all(1), cov)
    same = design(ds, 3, stims=ds["subset"] == "est")
    np.testing.assert_array_equal(same.X, d.X)
    np.testing.assert_array_equal(same.Y, d.Y)


# -- the ridge STRF ---------------------------------------------------------------------------


def _val(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(stim=np.flatnonzero(ds["subset"].values == "val"))


@pytest.mark.parametrize("holes", [False, True])
def test_fit_and_predict_equal_sklearn_ridge_per_neuron_on_the_sounds_it_heard(holes):
    sklearn = pytest.importorskip("sklearn.linear_model")
    ds, _, _ = _planted(noise=1.0)
    if holes:  # bins missing inside heard sounds: those cells are fitted sample by sample
        resp = ds["response"].values.copy()
        resp[:5, 1, :, 3:7] = np.nan
        resp[2:9, 4, :, :2] = np.nan
        ds = ds.assign(response=(ds["response"].dims, resp))
    model = RidgeSTRF(n_lags=4, alphas=[0.01, 10.0, 1e4], cv=4).fit(ds)
    d, dv = design(ds, 4, stims="est"), design(ds, 4, stims="val")
    pred = model.predict(_val(ds))
    heard = ds["coverage"].values[ds["subset"].values == "est"].sum(0)
    for i, cell in enumerate(d.neurons):
        rows = d.mask[:, i]
        assert int(model.n_samples_.sel(neuron=cell)) == rows.sum()
        if not holes or i not in (1, 4):
            assert rows.sum() == heard[i] * d.n_time
        alpha = float(model.alpha_.sel(neuron=cell))
        ref = sklearn.Ridge(alpha=alpha).fit(d.X[rows], d.Y[rows, i])
        np.testing.assert_allclose(
            model.strf_.sel(neuron=cell).values.ravel(), ref.coef_, atol=1e-8
        )
        assert float(model.intercept_.sel(neuron=cell)) == pytest.approx(ref.intercept_, abs=1e-8)
        expected = ref.predict(dv.X).reshape(len(dv.stims), dv.n_time)
        got = pred.sel(neuron=cell).values
        covered = ds["coverage"].sel(neuron=cell).values[ds["subset"].values == "val"]
        np.testing.assert_allclose(got[covered], expected[covered], atol=1e-5)
        assert np.isnan(got[~covered]).all()
    assert len(set(map(tuple, ds["coverage"].values.T))) > 1  # cells heard different sounds


def test_each_cells_alpha_is_the_least_cross_validated_error():
    sklearn = pytest.importorskip("sklearn.linear_model")
    ds, _, _ = _planted(noise=2.0, n_est=24)
    ds = assign_folds(ds, 3, seed=2)
    alphas = [0.1, 30.0, 3000.0]
    model = RidgeSTRF(n_lags=3, alphas=alphas, cv=3).fit(ds)
    d = design(ds, 3, stims="est")
    fold = np.repeat(ds["fold"].values[ds["subset"].values == "est"], d.n_time)
    for i, cell in enumerate(d.neurons):
        err = np.zeros(len(alphas))
        for f in (1, 2, 3):
            train, test = d.mask[:, i] & (fold != f), d.mask[:, i] & (fold == f)
            if not test.any():
                continue
            for j, a in enumerate(alphas):
                ref = sklearn.Ridge(alpha=a).fit(d.X[train], d.Y[train, i])
                err[j] += ((ref.predict(d.X[test]) - d.Y[test, i]) ** 2).sum()
        np.testing.assert_allclose(model.cv_error_.sel(neuron=cell).values, err, rtol=1e-8)
        assert float(model.alpha_.sel(neuron=cell)) == alphas[int(np.argmin(err))]


def test_planted_strfs_are_recovered():
    ds, strf, intercept = _planted(noise=0.05)
    model = RidgeSTRF(n_lags=4, alphas=[1e-3, 1e-1, 10.0], cv=4).fit(ds)
    for i in range(ds.sizes["neuron"]):
        r = np.corrcoef(model.strf_.values[i].ravel(), strf[i].ravel())[0, 1]
        assert r >= 0.95, (i, r)
    np.testing.assert_allclose(model.intercept_.values, intercept, atol=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat4xr.Nat4Warning)  # a cell without val data
        scores = nat4xr.evaluate(_val(ds), model.predict(_val(ds)), metrics="cc_raw")
    assert float(scores["cc_raw"].median()) > 0.95


def test_the_estimator_protocol():
    model = RidgeSTRF(n_lags=3, alphas=[1.0, 2.0], cv=3)
    assert model.get_params() == {
        "n_lags": 3,
        "alphas": [1.0, 2.0],
        "cv": 3,
        "stims": "est",
        "fit_intercept": True,
        "seed": 0,
    }
    assert model.set_params(cv=4, seed=1) is model and model.cv == 4
    with pytest.raises(ValueError, match="invalid parameter 'lags'"):
        model.set_params(lags=3)
    assert repr(model).startswith("RidgeSTRF(n_lags=3")
    base = pytest.importorskip("sklearn.base")
    twin = base.clone(model)
    assert twin is not model and twin.get_params() == model.get_params()


def test_bad_input_names_the_problem():
    ds, _, _ = _planted()
    with pytest.raises(ValueError, match="n_lags must be a positive integer"):
        RidgeSTRF(n_lags=0).fit(ds)
    with pytest.raises(ValueError, match="n_lags must be a positive integer"):
        lagged(ds, 2.5)
    with pytest.raises(ValueError, match="cv must be an integer of at least 2"):
        RidgeSTRF(cv=1).fit(ds)
    with pytest.raises(ValueError, match="alphas must be non-negative"):
        RidgeSTRF(alphas=[-1.0]).fit(ds)
    with pytest.raises(ValueError, match="no stims with subset 'est'"):
        RidgeSTRF(n_lags=2).fit(_val(ds))  # a Dataset without estimation sounds
    with pytest.raises(ValueError, match=r"3 sound\(s\) to fit on .* cv=5"):
        RidgeSTRF(n_lags=2, cv=5).fit(ds.isel(stim=[0, 1, 2, -1]))
    silent = ds.copy(deep=True)
    silent["response"][:, 0] = np.nan
    with pytest.raises(
        ValueError, match=f"no data on the sounds to fit on \\({ds.neuron.values[0]}"
    ):
        RidgeSTRF(n_lags=2).fit(silent)
    with pytest.raises(ValueError, match="not fitted yet"):
        RidgeSTRF().predict(ds)
    model = RidgeSTRF(n_lags=2, alphas=[1.0], cv=2).fit(ds.isel(neuron=[0, 1, 2]))
    with pytest.raises(ValueError, match="were not fitted"):
        model.predict(ds)
    with pytest.raises(ValueError, match="frequencies"):
        model.predict(ds.isel(neuron=[0, 1, 2], freq=[0, 1]))
    assert np.isfinite(model.strf_.values).all()  # NaN never reached the solver


# -- splits -----------------------------------------------------------------------------------


def test_folds_deal_only_est_sounds_evenly_and_ignore_order():
    ds = nat4xr.synthetic.random_dataset(n_est=11, n_val=3, n_neurons=2, seed=0)
    out = assign_folds(ds, 4, seed=3)
    fold = out["fold"].values
    is_val = ds["subset"].values == "val"
    assert (fold[is_val] == 0).all()
    counts = np.bincount(fold[~is_val], minlength=5)[1:]
    assert counts.max() - counts.min() <= 1 and counts.sum() == 11
    shuffled = assign_folds(ds.isel(stim=np.random.default_rng(0).permutation(14)), 4, seed=3)
    xr.testing.assert_equal(shuffled["fold"].sel(stim=out.stim), out["fold"])
    assert not np.array_equal(assign_folds(ds, 4, seed=4)["fold"].values, fold)
    hold = assign_holdout(ds, 0.25, seed=1)["holdout"].values
    assert np.nansum(hold) == 3 and np.isnan(hold[is_val]).all()  # val: no part of the split
    assert set(hold[~is_val].tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="k must be an integer"):
        assign_folds(ds, 1)
    with pytest.raises(ValueError, match="fraction must be between"):
        assign_holdout(ds, 1.5)
    with pytest.raises(ValueError, match="no estimation sounds"):
        assign_folds(_val(ds), 2)


_FOLDS_IN_A_NEW_PROCESS = """
import nat4xr
ds = nat4xr.synthetic.random_dataset(n_est=20, n_val=3, n_neurons=2, seed=0)
print(ds.nat4.assign_folds(5, seed=7)["fold"].values.tolist())
print(ds.nat4.assign_holdout(0.2, seed=7)["holdout"].values.tolist())
"""


def test_splits_are_identical_in_another_process():
    ds = nat4xr.synthetic.random_dataset(n_est=20, n_val=3, n_neurons=2, seed=0)
    here = [
        str(ds.nat4.assign_folds(5, seed=7)["fold"].values.tolist()),
        str(ds.nat4.assign_holdout(0.2, seed=7)["holdout"].values.tolist()),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _FOLDS_IN_A_NEW_PROCESS], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == here


def test_splits_survive_selection_concat_and_the_cache(tmp_path):
    pytest.importorskip("nat4xr.cachefile")
    ds = nat4xr.synthetic.random_dataset(n_est=8, n_val=2, n_neurons=4, seed=5)
    ds = assign_holdout(assign_folds(ds, 4), 0.25)
    sel = ds.nat4.sel_stims(holdout=False)
    xr.testing.assert_equal(sel["fold"], ds["fold"].sel(stim=sel.stim))
    joint = nat4xr.concat([ds, ds.assign_attrs(area="PEG")], names=["A1", "PEG"])
    np.testing.assert_array_equal(joint["fold"].values, np.tile(ds["fold"].values, 2))
    path = nat4xr.cachefile.write_cache(ds, tmp_path / "cache.nc")
    back = nat4xr.cachefile.open_cache(path)
    np.testing.assert_array_equal(back["fold"].values, ds["fold"].values)
    np.testing.assert_array_equal(back["holdout"].values, ds["holdout"].values)
    assert back["holdout"].dtype == np.float64 and back["fold"].dtype == np.int64
    # concat fills the holdout of an input without one with NaN: never "not held out"
    other = ds.drop_vars("holdout").assign_attrs(area="PEG")
    joint = nat4xr.concat([ds, other], names=["A1", "PEG"])
    train = joint.nat4.sel_stims(holdout=False)
    assert set(train["stim_source"].values.tolist()) == {"A1"}
    assert set(train["subset"].values.tolist()) == {"est"}
    back.close()
    # a fit reads its folds from the coordinate
    planted, _, _ = _planted()
    planted = assign_folds(planted, 4, seed=9)
    a = RidgeSTRF(n_lags=2, alphas=[0.1, 100.0], cv=4, seed=1).fit(planted)
    b = RidgeSTRF(n_lags=2, alphas=[0.1, 100.0], cv=4, seed=2).fit(planted)
    xr.testing.assert_identical(a.cv_error_, b.cv_error_)


def test_plot_strf_draws_the_fitted_filter():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import nat4xr.plot

    ds, _, _ = _planted()
    model = RidgeSTRF(n_lags=4, alphas=[1.0], cv=2).fit(ds)
    cell = str(ds.neuron.values[2])
    ax = nat4xr.plot.plot_strf(model, cell)
    drawn = ax.images[0].get_array()
    np.testing.assert_allclose(drawn, model.strf_.sel(neuron=cell).values.T)  # (freq, lag)
    assert ax.get_xlabel() == "lag (ms)" and ax.get_title() == cell
    with pytest.raises(KeyError, match="not among the fitted cells"):
        nat4xr.plot.plot_strf(model, "nope")
    # the accessor: the model, or the Dataset's own strf variable; freq_hz labels the axis
    ax = ds.nat4.plot_strf(cell, strf=model)
    np.testing.assert_allclose(ax.images[0].get_array(), drawn)
    ax = ds.assign(strf=model.strf_).nat4.plot_strf(cell)
    np.testing.assert_allclose(ax.images[0].get_array(), drawn)
    assert ax.get_ylabel() == "frequency (kHz)"
    hz = ds["freq_hz"].values
    assert ax.get_yticklabels()[0].get_text() == f"{hz[0] / 1000:.1f}"
    with pytest.raises(ValueError, match="no STRF to draw"):
        ds.nat4.plot_strf(cell)
    matplotlib.pyplot.close("all")


def test_the_synthetic_release_keeps_the_filters_its_rates_are_made_from(tmp_path):
    from nat4xr.build import build_dataset

    rel = nat4xr.synthetic.write_release(
        tmp_path, "A1", scale="tiny", n_est=150, n_cells=12, seed=3, drive=20.0
    )
    assert rel.strf.shape == (len(rel.cells), 4, 18) and rel.intercept.shape == (len(rel.cells),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat4xr.Nat4Warning)
        ds = build_dataset(tmp_path, "A1")
    model = RidgeSTRF(n_lags=4, alphas=np.logspace(-2, 4, 7), cv=5).fit(ds)
    driven = rel.strf.any(axis=(1, 2))
    assert driven.sum() >= 4 and (~driven).sum() >= 2
    r = [
        np.corrcoef(model.strf_.sel(neuron=cell).values.ravel(), rel.strf[i].ravel())[0, 1]
        for i, cell in enumerate(rel.cells)
        if driven[i]
    ]
    # with the default sounds, smooth in time like natural ones, neighbouring lags are
    # nearly collinear: the estimate blurs across lags, well short of exact but far from
    # chance (white sounds leave it above 0.95, next test)
    assert np.median(r) > 0.75
    silent = model.intercept_.sel(neuron=np.asarray(rel.cells)[~driven]).values
    np.testing.assert_allclose(silent, rel.intercept[~driven], atol=0.02)


def test_planted_strfs_are_recovered_from_a_written_release(tmp_path):
    """Every driven cell's filter, fitted on the built Dataset, correlates >= 0.95 with the truth.

    Sounds white in time and frequency and ``drive=50`` make every driven
    cell (planted filter not all zero) a high signal-to-noise one: here the
    weakest has a driven-rate variance about equal to its mean rate (the
    Poisson variance) over its 146 estimation sounds. Cells with traps
    (padded and odd ids, no site file) are among them.
    """
    from nat4xr.build import build_dataset

    rel = nat4xr.synthetic.write_release(
        tmp_path, "A1", scale="tiny", n_est=150, n_cells=12, seed=3, drive=50.0,
        spectrogram="white",
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nat4xr.Nat4Warning)
        ds = build_dataset(tmp_path, "A1")
    model = RidgeSTRF(n_lags=4, alphas=np.logspace(-2, 4, 7), cv=5).fit(ds)
    cells = np.asarray(rel.cells)
    driven = rel.strf.any(axis=(1, 2))
    assert driven.sum() >= 6 and (~driven).sum() >= 2
    trapped = {c for v in rel.traps.values() for c in v}
    assert trapped & set(cells[driven])
    fitted = model.strf_.sel(neuron=cells[driven]).values
    planted = rel.strf[driven]
    r = [np.corrcoef(f.ravel(), t.ravel())[0, 1] for f, t in zip(fitted, planted)]
    assert min(r) >= 0.95, dict(zip(cells[driven], np.round(r, 3)))
    # each fitted filter peaks at its planted lag and best frequency, at about its height
    for f, t in zip(fitted, planted):
        assert np.unravel_index(f.argmax(), f.shape) == np.unravel_index(t.argmax(), t.shape)
    np.testing.assert_allclose(fitted.max(axis=(1, 2)), planted.max(axis=(1, 2)), rtol=0.15)
    np.testing.assert_allclose(model.intercept_.sel(neuron=cells).values, rel.intercept, atol=0.05)


def test_freq_hz_is_erb_spaced_from_200_hz_up_to_one_step_below_20_khz():
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2, n_freq=18, seed=0)
    hz = ds["freq_hz"].values
    attrs = ds["freq_hz"].attrs
    assert ds["freq_hz"].dims == ("freq",) and "NAT_stim" in attrs["provenance"]
    assert "do not state" in attrs["unknown"] and (attrs["f_min_hz"], attrs["f_max_hz"]) == (
        200.0,
        20000.0,
    )
    # Glasberg & Moore: ln(f + EarQ * minBW) is uniformly spaced, from 200 Hz, and one more
    # step above the top band reaches 20 kHz (the lab's stimulus code's f_max)
    erb = np.log(np.append(hz, 20000.0) + 9.26449 * 24.7)
    np.testing.assert_allclose(np.diff(erb), np.diff(erb)[0], rtol=1e-12)
    assert hz[0] == pytest.approx(200.0) and np.all(np.diff(hz) > 0)
    # it travels with the frequencies into lagged views and fitted filters
    assert "freq_hz" in lagged(ds, 2).coords
