"""Predictions as labelled data: nat4xr.torch.predict and the prediction overlay of plot_trial."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import nat4xr  # noqa: E402
from nat4xr import plot  # noqa: E402
from nat4xr.errors import Nat4Warning  # noqa: E402
from nat4xr.torch import predict  # noqa: E402


def _random(**kw) -> xr.Dataset:
    kw = {"n_est": 10, "n_val": 4, "n_neurons": 9, "n_time": 12, "seed": 3, **kw}
    return nat4xr.synthetic.random_dataset(**kw)


@pytest.fixture(scope="module")
def release_cache(tmp_path_factory):
    """The tiny synthetic release, opened lazily from its netCDF cache."""
    root = tmp_path_factory.mktemp("release")
    nat4xr.synthetic.write_release(root, "A1", scale="tiny", seed=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAT4XR_CACHE_DIR", str(root / "cache"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Nat4Warning)  # the synthetic release's traps
            ds = nat4xr.open_nat4("A1", path=root, progress=False)
    yield ds
    ds.close()


@pytest.fixture(params=["eager", "dask", "cache", "cache-selected"])
def any_ds(request, release_cache):
    """In memory, dask-backed, and lazily backed by the cache (whole and selected)."""
    if request.param == "eager":
        return _random()
    if request.param == "dask":
        return _random().chunk({"stim": 4})
    if request.param == "cache-selected":  # some neurons, out of order; val sounds first
        order = np.argsort(release_cache["subset"].values != "val", kind="stable")
        return release_cache.isel(stim=order, neuron=[5, 0, 7, 2, 3])
    return release_cache


class SpecLinear(torch.nn.Module):
    """Per time bin, a fixed linear map of the frequency bands to the neurons.

    Its output depends on the stim's spectrogram, so a row written to another
    stim's position shows. ``repeat_dim`` adds the (B, N, 1, T) singleton.
    """

    def __init__(self, n_freq: int, n_neurons: int, repeat_dim: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n_freq, n_neurons)
        with torch.no_grad():
            weight = torch.arange(n_freq * n_neurons, dtype=torch.float32).reshape(n_neurons, -1)
            self.layer.weight.copy_(torch.sin(weight))
            self.layer.bias.copy_(torch.linspace(-1, 1, n_neurons))
        self.repeat_dim = repeat_dim

    def forward(self, stims: torch.Tensor) -> torch.Tensor:
        out = self.layer(stims[:, 0].transpose(1, 2)).transpose(1, 2)  # (B, N, T)
        return out[:, :, None] if self.repeat_dim else out

    def numpy_reference(self, ds: xr.Dataset) -> np.ndarray:
        """The model applied to the Dataset's spectrograms with NumPy, (stim, neuron, time)."""
        w = self.layer.weight.detach().numpy().astype(np.float64)
        b = self.layer.bias.detach().numpy().astype(np.float64)
        spec = ds["spectrogram"].transpose("stim", "freq", "time").values.astype(np.float64)
        return np.einsum("nf,sft->snt", w, spec) + b[None, :, None]


def _model(ds: xr.Dataset, repeat_dim: bool = False) -> SpecLinear:
    return SpecLinear(ds.sizes["freq"], ds.sizes["neuron"], repeat_dim)


def _by_hand(model, ds: xr.Dataset, batch_size: int) -> np.ndarray:
    """The model over the adapter's batches, placed by stim name and masked by coverage."""
    stim_ids = [str(s) for s in ds["stim"].values]
    out = np.full((len(stim_ids), ds.sizes["neuron"], ds.sizes["time"]), np.nan, np.float32)
    with torch.no_grad():
        # shuffled, so that batch order and stim order differ
        for batch in ds.nat4.to_torch(batch_size=batch_size, shuffle=True, seed=7):
            result = model(batch["stims"])
            if result.ndim == 4:
                result = result[:, :, 0]
            for i, meta in enumerate(batch["stim_meta"]):
                out[stim_ids.index(meta["name"])] = result[i].numpy()
    cover = ds["coverage"].transpose("stim", "neuron").values
    out[~cover] = np.nan
    return out


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("repeat_dim", [False, True], ids=["BNT", "BN1T"])
def test_predict_equals_the_model_on_the_adapters_batches(any_ds, repeat_dim):
    model = _model(any_ds, repeat_dim)
    pred = predict(model, any_ds, batch_size=3)
    expected = _by_hand(model, any_ds, batch_size=5)
    assert pred.dims == ("stim", "neuron", "time")
    assert pred.dtype == np.float32 and pred.name == "prediction"
    np.testing.assert_allclose(pred.values, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    # and against the model written out in NumPy, independent of the adapter
    cover = any_ds["coverage"].transpose("stim", "neuron").values
    reference = model.numpy_reference(any_ds)
    np.testing.assert_allclose(pred.values[cover], reference[cover], rtol=1e-4, atol=1e-4)
    # the stims differ enough that a row at the wrong position would not pass
    assert np.abs(np.diff(reference, axis=0)).max() > 0.1


@pytest.mark.parametrize("kind", ["eager", "cache"])
def test_two_workers_and_shuffled_batches_keep_the_stim_order(kind, release_cache):
    ds = _random() if kind == "eager" else release_cache.isel(neuron=[6, 1, 3])
    model = _model(ds)
    pred = predict(
        model, ds, batch_size=2, num_workers=2, multiprocessing_context="fork", shuffle=True
    )
    expected = _by_hand(model, ds, batch_size=4)
    np.testing.assert_allclose(pred.values, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_nan_exactly_where_there_is_no_data(any_ds):
    pred = predict(_model(any_ds), any_ds)
    cover = any_ds["coverage"].transpose("stim", "neuron").values
    assert (~cover).any() and cover.any()
    np.testing.assert_array_equal(np.isnan(pred.values).all(axis=2), ~cover)
    np.testing.assert_array_equal(np.isnan(pred.values).any(axis=2), ~cover)


def test_without_coverage_the_batch_mask_decides():
    ds = _random()
    pred = predict(_model(ds), ds.drop_vars("coverage"))
    has_data = ~np.isnan(ds["response"].values).all(axis=(2, 3))
    np.testing.assert_array_equal(~np.isnan(pred.values).all(axis=2), has_data)


def test_coordinates_and_provenance_carry_over(any_ds):
    model = _model(any_ds)
    pred = predict(model, any_ds)
    expected = {
        name for name in any_ds.coords if any_ds[name].dims in (("stim",), ("neuron",), ("time",))
    }
    assert {"stim", "neuron", "time", "subset", "n_repeats", "area", "site"} <= expected
    assert set(pred.coords) == expected  # no coverage, repeat or freq
    for name in expected:
        assert pred[name].dims == any_ds[name].dims
        assert pred[name].dtype == any_ds[name].dtype, name
        np.testing.assert_array_equal(pred[name].values, any_ds[name].values)
    assert not hasattr(pred.variable.data, "dask")
    assert pred.attrs["model"] == "SpecLinear"
    assert pred.attrs["model_class"].endswith("test_predict.SpecLinear")
    assert pred.attrs["model_parameters"] == sum(p.numel() for p in model.parameters())
    assert pred.attrs["area"] == any_ds.attrs["area"]


def test_stims_selects_and_orders_by_label():
    ds = _random()
    model = _model(ds)
    full = predict(model, ds)
    wanted = [str(s) for s in ds["stim"].values[[12, 0, 5]]]
    part = predict(model, ds, stims=wanted)
    assert part["stim"].values.tolist() == wanted
    xr.testing.assert_allclose(part, full.sel(stim=wanted))
    with pytest.raises(KeyError, match="STIM_nope"):
        predict(model, ds, stims=[wanted[0], "STIM_nope"])
    with pytest.raises(ValueError, match="more than once"):
        predict(model, ds, stims=[wanted[0], wanted[0]])
    with pytest.raises(TypeError, match="drop_last"):
        predict(model, ds, drop_last=True)


def test_float64_output_is_stored_as_float32():
    ds = _random()
    model = _model(ds).double()
    pred = predict(model, ds, dtype=torch.float64)
    assert pred.dtype == np.float32
    np.testing.assert_allclose(pred.values, predict(_model(ds), ds).values, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- model state


class Spy(torch.nn.Module):
    """Records what the model saw on each call; optionally fails on the second batch."""

    def __init__(self, n_freq: int, n_neurons: int, fail: bool = False) -> None:
        super().__init__()
        self.inner = SpecLinear(n_freq, n_neurons)
        self.fail = fail
        self.calls: list[dict] = []

    def forward(self, stims: torch.Tensor) -> torch.Tensor:
        out = self.inner(stims)
        self.calls.append(
            {
                "training": [m.training for m in self.modules()],
                "grad_enabled": torch.is_grad_enabled(),
                "requires_grad": out.requires_grad,
                "device": stims.device,
            }
        )
        if self.fail and len(self.calls) == 2:
            raise RuntimeError("model failed")
        return out


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_eval_mode_without_gradients_then_the_previous_mode(mode):
    ds = _random()
    spy = Spy(4, 9)
    spy.train(mode != "eval")
    if mode == "mixed":  # a frozen submodule stays frozen
        spy.inner.layer.eval()
    before = [m.training for m in spy.modules()]
    predict(spy, ds, batch_size=5)
    assert [m.training for m in spy.modules()] == before
    assert len(spy.calls) == 3
    for call in spy.calls:
        assert call["training"] == [False, False, False]
        assert not call["grad_enabled"] and not call["requires_grad"]
    assert all(p.grad is None for p in spy.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_when_the_model_raises(training):
    spy = Spy(4, 9, fail=True).train(training)
    with pytest.raises(RuntimeError, match="model failed"):
        predict(spy, _random(), batch_size=5)
    assert len(spy.calls) == 2
    assert all(m.training == training for m in spy.modules())


def test_inputs_go_to_the_models_device():
    ds = _random()

    class Elsewhere(torch.nn.Module):
        """Parameters on the meta device; answers on the CPU."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1, device="meta"))
            self.devices: list[torch.device] = []

        def forward(self, stims):
            self.devices.append(stims.device)
            return torch.zeros(stims.shape[0], ds.sizes["neuron"], ds.sizes["time"])

    model = Elsewhere()
    predict(model, ds, batch_size=7)
    assert model.devices == [torch.device("meta")] * 2
    model.devices.clear()
    predict(model, ds, batch_size=7, device="cpu")
    assert model.devices == [torch.device("cpu")] * 2


def test_plain_callable_and_parameterless_model():
    ds = _random()
    n, t = ds.sizes["neuron"], ds.sizes["time"]

    def mean_band(stims):  # no parameters, no modes: on the CPU
        assert stims.device.type == "cpu"
        return stims[:, 0].mean(1, keepdim=True).expand(-1, n, t)

    pred = predict(mean_band, ds)
    spec = ds["spectrogram"].transpose("stim", "freq", "time").values.mean(1)
    cover = ds["coverage"].values
    np.testing.assert_allclose(
        pred.values[cover], np.broadcast_to(spec[:, None], pred.shape)[cover], rtol=1e-6
    )
    assert pred.attrs["model"] == "function" and "model_parameters" not in pred.attrs


# --------------------------------------------------------------------------- wrong outputs


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda b, n, t: torch.zeros(b, n, t + 1), "(4, 9, 13)"),
        (lambda b, n, t: torch.zeros(b, n + 1, t), "(4, 10, 12)"),
        (lambda b, n, t: torch.zeros(b, n, 2, t), "(4, 9, 2, 12)"),
        (lambda b, n, t: torch.zeros(b, n * t), "(4, 108)"),
        (lambda b, n, t: torch.zeros(b - 1, n, t), "(3, 9, 12)"),
        (lambda b, n, t: torch.zeros(b, n, t, 1), "(4, 9, 12, 1)"),
        (lambda b, n, t: np.zeros((b, n, t)), "ndarray"),
        (lambda b, n, t: (torch.zeros(b, n, t),), "tuple"),
    ],
)
def test_wrong_output_shapes_say_what_was_expected(make, shown):
    ds = _random()
    n, t = ds.sizes["neuron"], ds.sizes["time"]
    model = torch.nn.Linear(1, 1)
    model.forward = lambda stims: make(stims.shape[0], n, t)
    with pytest.raises(ValueError) as info:
        predict(model, ds, batch_size=4)
    message = str(info.value)
    assert shown in message
    assert "(B, N, T) = (4, 9, 12)" in message and "(B, N, 1, T) = (4, 9, 1, 12)" in message
    assert model.training  # restored after the error too


# --------------------------------------------------------------------------- plot_trial


def _covered_val_pair(ds: xr.Dataset) -> tuple[str, str]:
    cover = ds["coverage"].values
    val = np.flatnonzero(ds["subset"].values == "val")
    s, n = next((i, j) for i in val for j in range(cover.shape[1]) if cover[i, j])
    return str(ds["stim"].values[s]), str(ds["neuron"].values[n])


def test_plot_trial_overlays_the_prediction_by_label(random_ds):
    pred = predict(_model(random_ds), random_ds)
    stim, cell = _covered_val_pair(random_ds)
    want = pred.sel(stim=stim, neuron=cell).values
    axes = random_ds.nat4.plot_trial(stim, cell, prediction=pred)
    psth, line = axes[2].lines
    expected_psth = np.nanmean(random_ds["response"].sel(stim=stim, neuron=cell).values, axis=0)
    np.testing.assert_allclose(psth.get_ydata(), expected_psth, rtol=1e-6)
    np.testing.assert_array_equal(line.get_ydata(), want)
    np.testing.assert_array_equal(line.get_xdata(), psth.get_xdata())
    legend = axes[2].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["PSTH", "prediction"]
    plt.close("all")
    # selected by label: other order, other stims, a size-1 repeat dim
    shuffled = pred.isel(stim=slice(None, None, -1), neuron=slice(None, None, -1))
    shuffled = shuffled.expand_dims(repeat=[0], axis=2).rename("model B")
    s = int(np.flatnonzero(random_ds["stim"].values == stim)[0])
    n = int(np.flatnonzero(random_ds["neuron"].values == cell)[0])
    assert not np.array_equal(shuffled.values[s, n, 0], want)  # by position: another trace
    axes = plot.plot_trial(random_ds, stim, cell, prediction=shuffled)
    assert axes[2].lines[1].get_label() == "model B"
    np.testing.assert_array_equal(axes[2].lines[1].get_ydata(), want)
    plt.close("all")
    # positions given to plot_trial still select the prediction by the ids they point at
    axes = plot.plot_trial(random_ds, s, n, prediction=shuffled)
    np.testing.assert_array_equal(axes[2].lines[1].get_ydata(), want)
    plt.close("all")


def test_plot_trial_prediction_without_the_label_raises(random_ds):
    pred = predict(_model(random_ds), random_ds)
    stim, cell = _covered_val_pair(random_ds)
    with pytest.raises(KeyError, match=r"stim .* is not in the prediction"):
        random_ds.nat4.plot_trial(stim, cell, prediction=pred.drop_sel(stim=stim))
    with pytest.raises(KeyError, match=r"neuron .* is not in the prediction"):
        random_ds.nat4.plot_trial(stim, cell, prediction=pred.drop_sel(neuron=cell))
    with pytest.raises(ValueError, match="repeats"):
        plot.plot_trial(random_ds, stim, cell, prediction=random_ds["response"])
    with pytest.raises(TypeError, match="DataArray"):
        plot.plot_trial(random_ds, stim, cell, prediction=pred.values)
    plt.close("all")
