"""nat4xr.torch.fit: est only, masked loss, early stopping, restored weights, seeds, stages, DDP."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nat4xr  # noqa: E402
from nat4xr.torch import fit, models, training  # noqa: E402
from nat4xr.torch.training import EarlyStopping  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread (two threads on a busy 2-core machine are many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(seed=0, p_missing=0.2, n_est=12):
    return nat4xr.synthetic.random_dataset(
        n_est=n_est, n_val=3, n_neurons=4, n_time=20, p_missing=p_missing, seed=seed
    )


def _net(n=4, seed=0):
    torch.manual_seed(seed)
    return models.PopLN(n, n_freq=4, rank=2, n_taps=3)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FAST = {"max_epochs": 3, "patience": 2, "progress": False, "batch_size": 4}


def test_early_stopping_on_a_constructed_curve():
    stop = EarlyStopping(patience=3, tolerance=0.01)
    curve = [5.0, 4.0, 3.0, 3.5, 2.995, 3.1, 3.2, 1.0]
    seen = []
    for loss in curve:
        seen.append(stop.step(loss))
        if stop.stop:
            break
    # 2.995 is not 0.01 below 3.0: epochs 3, 4, 5 fail, stop after epoch 5
    assert seen == [True, True, True, False, False, False]
    assert stop.best_epoch == 2 and stop.best == 3.0


def test_fit_stops_at_the_right_epoch_and_restores_that_epochs_weights(monkeypatch):
    curve = iter([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 1.0, 0.5])
    snapshots = []

    def evaluate(self):
        snapshots.append(_state(self.model))
        return next(curve), 0.0

    monkeypatch.setattr(training._Loop, "evaluate", evaluate)
    net = _net()
    history = fit(net, _data(), max_epochs=8, patience=3, tolerance=0.0, progress=False, lr=0.05)
    assert history.sizes["epoch"] == 6  # best at 2, then 3 epochs without improvement
    assert history.attrs["best_epoch"] == 2
    np.testing.assert_array_equal(history.holdout_loss, [5.0, 4.0, 3.0, 3.5, 3.2, 3.1])
    assert _same(_state(net), snapshots[2])
    assert not _same(_state(net), snapshots[-1])


def test_nan_targets_never_reach_the_loss(monkeypatch):
    ds = _data(p_missing=0.4)
    est = ds.nat4.sel_stims(subset="est")
    assert bool(est.response.isnull().any()) and not bool(est.coverage.all())
    seen = []

    def checked(pred, target, mask):
        assert not bool(torch.isnan(target[mask.expand_as(target)]).any())
        seen.append(int((~mask).sum()))
        value = training.masked_poisson_nll(pred, target, mask)
        assert bool(torch.isfinite(value))
        return value

    monkeypatch.setitem(training.LOSSES, "poisson", checked)
    history = fit(_net(), ds, **FAST)
    assert sum(seen) > 0  # masked bins were there, and were masked
    assert np.isfinite(history.train_loss).all() and np.isfinite(history.holdout_loss).all()
    for p in _net().parameters():
        assert bool(torch.isfinite(p).all())


def test_val_sounds_are_never_read_or_held_out():
    ds = _data()
    is_val = ds.subset == "val"
    # val spectrograms of NaN would make every loss NaN if a val sound were used
    ds = ds.assign(spectrogram=ds.spectrogram.where(~is_val))
    history = fit(_net(), ds, **FAST)
    assert np.isfinite(history.holdout_loss).all()
    held = set(__import__("json").loads(history.attrs["holdout_stims"]))
    assert held and held <= set(ds.stim.values[~is_val.values].tolist())
    assert history.attrs["n_train_stims"] + history.attrs["n_holdout_stims"] == 12


def test_a_holdout_coordinate_is_used_on_est_sounds_whatever_val_carries():
    ds = _data()
    flags = np.zeros(ds.sizes["stim"], dtype=object)
    flags[:] = False
    est = np.flatnonzero(ds.subset.values == "est")
    flags[est[[1, 4]]] = True
    flags[ds.subset.values == "val"] = None  # val sounds: not part of the split
    history = fit(_net(), ds.assign_coords(holdout=("stim", flags)), holdout="holdout", **FAST)
    held = __import__("json").loads(history.attrs["holdout_stims"])
    assert held == [str(s) for s in ds.stim.values[est[[1, 4]]]]
    marked = nat4xr.splits.assign_holdout(ds, 0.25, seed=3)
    history = fit(_net(), marked, holdout="holdout", **FAST)
    expected = marked.stim.values[(marked.holdout.values == True) & (marked.subset.values == "est")]  # noqa: E712
    assert __import__("json").loads(history.attrs["holdout_stims"]) == expected.tolist()


def test_the_same_seed_gives_bitwise_the_same_fit_with_and_without_workers():
    ds = _data()
    runs = []
    for workers in (0, 0, 2):
        net = _net(seed=1)
        h = fit(net, ds, seed=5, num_workers=workers, **FAST)
        runs.append((_state(net), h.drop_vars("seconds")))
    for state, history in runs[1:]:
        assert _same(state, runs[0][0])
        np.testing.assert_array_equal(history.train_loss, runs[0][1].train_loss)
        np.testing.assert_array_equal(history.holdout_loss, runs[0][1].holdout_loss)
    other = _net(seed=1)
    fit(other, ds, seed=6, **FAST)
    assert not _same(_state(other), runs[0][0])


def test_params_trains_only_those_parameters():
    net = _net()
    core, readout = _state(net.core), _state(net.readout)
    fit(net, _data(), params=net.readout.parameters(), **FAST)
    assert _same(_state(net.core), core)
    assert not _same(_state(net.readout), readout)
    assert all(p.requires_grad for p in net.parameters())  # flags restored


def test_restarts_keep_the_best_and_stages_continue_from_it():
    net = _net()
    history = fit(net, _data(), restarts=3, seed=2, **FAST)
    losses = history.restart_loss.values
    assert losses.shape == (3,) and history.attrs["best_restart"] == int(np.argmin(losses))
    assert history.attrs["best_holdout_loss"] == pytest.approx(losses.min())
    history = fit(
        net, _data(), stages=[{"lr": 1e-2, "max_epochs": 2}, {"lr": 1e-3, "max_epochs": 2}],
        patience=2, progress=False, batch_size=4,
    )  # fmt: skip
    assert history.stage.values.tolist() == [0, 0, 1, 1]
    assert '"lr": 0.01' in history.attrs["stages"]
    # the model holds the weights of best_epoch: its holdout loss is that epoch's
    loop_loss = _holdout_loss(net, history)
    assert loop_loss <= history.holdout_loss.values[:2].min() + 1e-6


def _holdout_loss(net, history):
    import json

    ds = _data()
    held = ds.sel(stim=json.loads(history.attrs["holdout_stims"]))
    loader = nat4xr.torch.to_torch(held, batch_size=100)
    batch = next(iter(loader))
    with torch.no_grad():
        return float(training.masked_poisson_nll(net(batch["stims"]), batch["responses"],
                                                 batch["valid_mask"]))  # fmt: skip


def test_history_is_a_dataset_with_the_settings():
    history = fit(_net(), _data(), device=torch.device("cpu"), **FAST)
    assert set(history.data_vars) >= {"train_loss", "holdout_loss", "holdout_cc", "seconds"}
    assert history.train_loss.dims == ("epoch",)
    for key in ("best_epoch", "lr", "patience", "batch_size", "seed", "loss", "device"):
        assert key in history.attrs
    assert history.attrs["device"] == "cpu" and history.attrs["model"] == "PopLN"
    assert -1 <= history.attrs["best_epoch"] < history.sizes["epoch"]


class _Wrong(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.out = out

    def forward(self, x):
        return self.out(x) * self.w


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (lambda: _Wrong(lambda x: torch.ones(x.shape[0], 3, 1, x.shape[-1])), {}, "shape"),
        (lambda: _Wrong(lambda x: -torch.ones(x.shape[0], 4, 1, x.shape[-1])), {}, "negative"),
        (_net, {"patience": 0}, "patience"),
        (_net, {"params": [torch.nn.Parameter(torch.ones(2))]}, "not in the model"),
        (_net, {"holdout": 0.0}, "between 0 and 1"),
        (_net, {"stages": [{"momentum": 0.9}]}, "a stage may set"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(make(), _data(), **{**FAST, **kwargs})


def test_no_est_sounds_and_an_empty_holdout_are_refused():
    ds = _data()
    with pytest.raises(ValueError, match="no estimation sounds"):
        fit(_net(), ds.nat4.sel_stims(subset="val"), **FAST)
    empty = ds.assign_coords(holdout=("stim", np.zeros(ds.sizes["stim"], dtype=bool)))
    with pytest.raises(ValueError, match="holdout is empty"):
        fit(_net(), empty, holdout="holdout", **FAST)
    odd = ds.assign_coords(holdout=("stim", np.array(["x"] * ds.sizes["stim"])))
    with pytest.raises(ValueError, match="True/False"):
        fit(_net(), odd, holdout="holdout", **FAST)


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path[:0] = [{root!r}, {tests!r}]
from test_training import _data, _net, _state
from nat4xr.torch import fit
dist.init_process_group("gloo")  # torchrun's environment
torch.set_num_threads(1)
net = _net(seed=3)
history = fit(net, _data(p_missing=0.0), batch_size=5, max_epochs=3, patience=3, holdout=0.17,
              progress=True, lr=0.02)
torch.save((_state(net), history.holdout_loss.values, history.train_loss.values,
            history.holdout_cc.values), f"{out}/rank{{dist.get_rank()}}.pt")
dist.destroy_process_group()
"""


def test_two_gloo_processes_under_torchrun_agree_with_one(tmp_path):
    """Full-batch epochs (10 train sounds: one batch of 10, or 5 per process) with
    complete coverage: the averaged gradient is the same, up to float rounding."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT.format(root=str(here.parent), tests=str(here), out=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(script)]  # fmt: skip
    # tqdm refreshes a slow bar on a timer: one bar must print "0/3" once, however slow
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "1000"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("| 0/3 [") == 1  # one bar: only rank 0 shows it
    torch.set_num_threads(1)
    try:
        net = _net(seed=3)
        one = fit(net, _data(p_missing=0.0), batch_size=10, max_epochs=3, patience=3, holdout=0.17,
                  progress=False, lr=0.02)  # fmt: skip
    finally:
        torch.set_num_threads(2)
    assert one.attrs["n_train_stims"] == 10  # the premise: one full batch per epoch
    for rank in (0, 1):  # every process holds the same weights and losses as one process
        state, hold, train, cc = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        np.testing.assert_allclose(hold, one.holdout_loss.values, rtol=1e-5)
        np.testing.assert_allclose(cc, one.holdout_cc.values, rtol=1e-5)  # moments summed
        np.testing.assert_allclose(train, one.train_loss.values, rtol=1e-5)
        for key, value in _state(net).items():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5)


def test_plot_history_draws_both_panels(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from nat4xr.plot import plot_history

    history = fit(_net(), _data(), stages=[{"max_epochs": 2}, {"max_epochs": 2, "lr": 1e-4}],
                  patience=2, progress=False, batch_size=4)  # fmt: skip
    axes = plot_history(history)
    assert len(axes) == 2
    np.testing.assert_array_equal(axes[0].get_lines()[1].get_ydata(), history.holdout_loss)
    axes[0].figure.savefig(tmp_path / "history.png")
    with pytest.raises(ValueError, match="not a fit history"):
        plot_history(history.drop_vars("holdout_cc"))


def test_a_params_generator_serves_every_stage():
    net = _net()
    core = _state(net.core)
    history = fit(net, _data(), params=net.readout.parameters(), patience=2, progress=False,
                  stages=[{"max_epochs": 1}, {"max_epochs": 1, "lr": 1e-4}])  # fmt: skip
    assert history.attrs["n_trained_parameters"] == "[28, 28]"  # wc 2x4, lvl 4, dexp 4x4
    assert _same(_state(net.core), core)


def test_a_holdout_without_any_data_is_refused():
    ds = _data()
    est = np.flatnonzero(ds.subset.values == "est")
    flags = np.zeros(ds.sizes["stim"], dtype=bool)
    flags[est[0]] = True
    response = ds.response.copy()
    response[est[0]] = np.nan
    bad = ds.assign(response=response).assign_coords(holdout=("stim", flags))
    with pytest.raises(ValueError, match="held-out sounds hold no valid response"):
        fit(_net(), bad, holdout="holdout", **FAST)


@pytest.mark.filterwarnings("ignore::nat4xr.Nat4Warning")
def test_fit_on_a_cache_backed_dataset_reads_batches_without_computing_dask(tmp_path, monkeypatch):
    from nat4xr.synthetic import write_release
    from nat4xr.testing import raise_if_dask_computes

    monkeypatch.setenv("NAT4XR_CACHE_DIR", str(tmp_path / "cache"))
    write_release(tmp_path / "rel", scale="tiny", seed=0)
    ds = nat4xr.open_nat4("A1", path=tmp_path / "rel")
    assert hasattr(ds.response.data, "dask")
    net = models.PopLN(ds.sizes["neuron"], rank=3, n_taps=4)
    with raise_if_dask_computes():  # batches come from the file's chunks, never a full read
        history = fit(net, ds, holdout=0.2, **FAST)
    assert np.isfinite(history.holdout_loss).all()


class _Fixed(torch.nn.Module):
    """Rates from a fixed random projection of the stims, plus ``offset``: training changes
    nothing (the one parameter has no gradient), so every epoch scores the same output."""

    def __init__(self, n, n_freq, offset=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(n, n_freq, generator=g))
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.offset = offset

    def forward(self, x):
        drive = torch.einsum("nf,bft->bnt", self.proj, x[:, 0])
        return (torch.nn.functional.softplus(drive) + self.offset + 0 * self.unused)[:, :, None]


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_holdout_cc_is_the_mean_over_cells_of_pearson_r_with_the_trial_mean(offset):
    """Sounds with several trials, some missing, and an offset that float32 sums of raw
    values would lose the correlation to: against np.corrcoef per cell on the valid bins."""
    ds = _data(p_missing=0.0, n_est=12)
    ds = ds.assign_coords(subset=("stim", np.array(["est"] * ds.sizes["stim"], dtype=object)))
    response = ds.response.values.copy()
    response[12, 1, 0] = np.nan  # one missing trial of a sound that has others
    response[13, :, 1, :7] = np.nan
    response[14, 2] = np.nan  # a cell without this sound
    response[2, 3, :, :5] = np.nan
    ds = ds.assign(response=(ds.response.dims, response + offset))
    held = np.zeros(ds.sizes["stim"], dtype=bool)
    held[[2, 5, 12, 13, 14]] = True  # single-trial sounds and three with repeats: 2 batches
    ds = ds.assign_coords(holdout=("stim", held))
    net = _Fixed(4, 4, offset)
    history = fit(net, ds, holdout="holdout", loss="mse", **FAST)
    batch = next(iter(nat4xr.torch.to_torch(ds.isel(stim=held), batch_size=10)))
    with torch.no_grad():
        x = net(batch["stims"])[:, :, 0].double().numpy()  # (S, N, T), float32 values
    with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)  # a cell without a sound
        y = np.nanmean(batch["responses"].double().numpy(), axis=2)
    ccs = []
    for cell in range(4):
        ok = np.isfinite(y[:, cell])
        ccs.append(np.corrcoef(x[:, cell][ok], y[:, cell][ok])[0, 1])
    assert np.isfinite(ccs).all()
    np.testing.assert_allclose(history.holdout_cc, np.mean(ccs), rtol=1e-6)


class _JunkWhereSilent(_Fixed):
    """``_Fixed``, but NaN, inf or a negative rate wherever the stim is silent."""

    def forward(self, x):
        out = super().forward(x)
        silent = (x[:, 0] == 0).all(dim=1)[:, None, None, :]  # (B, 1, 1, T)
        junk = torch.tensor([float("nan"), float("inf"), -5.0]).repeat(x.shape[-1])
        return torch.where(silent, junk[: x.shape[-1]], out)


@pytest.mark.parametrize("n_repeats", [1, 3])
def test_holdout_cc_ignores_predictions_for_bins_without_data(n_repeats):
    """A prediction of NaN, inf or below zero for bins where no trial holds data reaches
    neither the holdout loss nor its correlation: against np.corrcoef on the valid bins."""
    ds = _data(p_missing=0.0, n_est=12).isel(repeat=slice(0, n_repeats))
    ds = ds.assign_coords(subset=("stim", np.array(["est"] * ds.sizes["stim"], dtype=object)))
    ds = ds.assign_coords(n_repeats=("stim", np.full(ds.sizes["stim"], n_repeats)))
    held = np.zeros(ds.sizes["stim"], dtype=bool)
    held[[1, 4, 7, 10]] = True
    spec = ds.spectrogram.values.copy()
    response = ds.response.values.copy()
    for stim in (4, 10):  # silent bins in two held-out sounds, with no data there
        spec[stim, :, 3:9] = 0.0
        response[stim, :, :, 3:9] = np.nan
    response[1, 2, 0, :4] = np.nan  # and a bin or two missing elsewhere
    ds = ds.assign(spectrogram=(ds.spectrogram.dims, spec),
                   response=(ds.response.dims, response))  # fmt: skip
    ds = ds.assign_coords(holdout=("stim", held))
    net = _JunkWhereSilent(4, 4)
    history = fit(net, ds, holdout="holdout", loss="mse", **FAST)
    batch = next(iter(nat4xr.torch.to_torch(ds.isel(stim=held), batch_size=10)))
    with torch.no_grad():
        x = net(batch["stims"])[:, :, 0].double().numpy()
    with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        y = np.nanmean(batch["responses"].double().numpy(), axis=2)
    assert not np.isfinite(x[np.isnan(y)]).all()  # the junk is there to be ignored
    ccs = []
    for cell in range(4):
        ok = np.isfinite(y[:, cell])
        ccs.append(np.corrcoef(x[:, cell][ok], y[:, cell][ok])[0, 1])
    assert np.isfinite(history.holdout_loss).all()
    np.testing.assert_allclose(history.holdout_cc, np.mean(ccs), rtol=1e-6)


_LOG2 = float(np.float32(np.log(2)))  # a constant rate that rounding leaves a variance to


class _Channels(torch.nn.Module):
    """Cell n's rate: the stim's frequency channel n (absolute), plus ``offset``; cells in
    ``constant`` predict ``value`` everywhere. Nothing trains (one unused parameter)."""

    def __init__(self, offset=0.0, constant=(), value=_LOG2, n=None):
        super().__init__()
        self.offset, self.constant, self.value, self.n = offset, list(constant), value, n
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = x[:, 0, : self.n].abs() + self.offset
        out[:, self.constant] = self.value
        return (out + 0 * self.unused)[:, :, None]


def _channel_ccs(ds, held, offset=0.0, constant=()):
    """Per cell: np.corrcoef of _Channels' float32 output and the trial mean, valid bins."""
    n_cells = ds.sizes["neuron"]
    x = np.abs(ds.spectrogram.values[held, :n_cells].astype(np.float32)) + np.float32(offset)
    x[:, list(constant)] = np.float32(_LOG2)
    with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        y = np.nanmean(ds.response.values[held].astype(np.float64), axis=2)
    ccs = []
    for cell in range(x.shape[1]):
        ok = np.isfinite(y[:, cell])
        xs, ys = x[:, cell][ok].astype(np.float64), y[:, cell][ok]
        ccs.append(np.corrcoef(xs, ys)[0, 1] if np.ptp(xs) > 0 and np.ptp(ys) > 0 else np.nan)
    return np.array(ccs)


@pytest.mark.parametrize("n_repeats", [1, 3])
def test_holdout_cc_with_an_offset_when_the_first_batch_lacks_a_cell(n_repeats):
    """A cell without data in the first holdout batch is shifted by its means in the first
    batch that has them: an offset of 1000 on counts and rates costs it no digits."""
    ds = _data(p_missing=0.0, n_est=8).isel(repeat=slice(0, n_repeats))
    ds = ds.assign_coords(subset=("stim", np.array(["est"] * ds.sizes["stim"], dtype=object)))
    ds = ds.assign_coords(n_repeats=("stim", np.full(ds.sizes["stim"], n_repeats)))
    held = np.zeros(ds.sizes["stim"], dtype=bool)
    held[:5] = True
    response = ds.response.values.copy()
    response[0, 0] = np.nan  # cell 0 has nothing in the first held-out sound (batch)
    response[1, 1, :, :6] = np.nan
    ds = ds.assign(response=(ds.response.dims, response + 1000.0))
    ds = ds.assign_coords(holdout=("stim", held))
    history = fit(_Channels(1000.0), ds, holdout="holdout", loss="mse",
                  **{**FAST, "batch_size": 1, "max_epochs": 1})  # fmt: skip
    ccs = _channel_ccs(ds, held, offset=1000.0)
    assert np.isfinite(ccs).all()
    np.testing.assert_allclose(history.holdout_cc, ccs.mean(), rtol=1e-6)


def test_a_cell_predicted_as_a_constant_has_no_correlation():
    """A constant prediction has no variance: its cell is left out of holdout_cc (not
    scored about 0 from rounding), and with every cell constant holdout_cc is NaN."""
    ds = nat4xr.synthetic.random_dataset(
        n_est=3, n_val=1, n_neurons=4, n_time=375, p_missing=0.0, seed=0
    )  # 375 bins of log 2 left rounding errors of 1e-13 in float64 moments about zero
    held = np.zeros(ds.sizes["stim"], dtype=bool)
    held[0] = True
    ds = ds.assign_coords(holdout=("stim", held))
    ccs = _channel_ccs(ds, held, constant=[0, 2])
    assert np.isnan(ccs[[0, 2]]).all() and np.isfinite(ccs[[1, 3]]).all()
    history = fit(_Channels(constant=[0, 2]), ds, holdout="holdout", loss="mse", **FAST)
    np.testing.assert_allclose(history.holdout_cc, np.nanmean(ccs), rtol=1e-6)
    history = fit(_Channels(constant=range(4)), ds, holdout="holdout", loss="mse", **FAST)
    assert np.isnan(history.holdout_cc).all()


def test_a_constant_trial_mean_has_no_correlation():
    """Two spikes among six trials in every bin: the trial mean is 1/3 everywhere, which
    float32 rounds differently from bin to bin; the cell has no correlation, not noise."""
    n_stim, n_rep, n_time = 6, 6, 40
    ds = nat4xr.synthetic.random_dataset(
        n_est=n_stim, n_val=1, n_neurons=2, n_time=n_time, n_repeats=n_rep, p_missing=0.0, seed=0
    ).isel(stim=slice(0, n_stim))
    ds = ds.assign_coords(subset=("stim", np.array(["est"] * n_stim, dtype=object)),
                          n_repeats=("stim", np.full(n_stim, n_rep)),
                          holdout=("stim", np.arange(n_stim) < 4))  # fmt: skip
    rng = np.random.default_rng(2)
    response = np.zeros(ds.response.shape, np.float32)
    for stim in range(n_stim):
        for t in range(n_time):
            response[stim, 0, rng.choice(n_rep, 2, replace=False), t] = 1.0
    response[:, 1] = rng.poisson(2.0, (n_stim, n_rep, n_time))
    ds = ds.assign(response=(ds.response.dims, response))
    held = ds.holdout.values
    ccs = _channel_ccs(ds, held)
    assert np.isnan(ccs[0]) and np.isfinite(ccs[1])  # the premise: cell 0 is constant
    fast = {**FAST, "batch_size": 2, "max_epochs": 1}
    history = fit(_Channels(n=2), ds, holdout="holdout", loss="mse", **fast)
    np.testing.assert_allclose(history.holdout_cc, ccs[1], rtol=1e-6)
    history = fit(_Channels(n=1), ds.isel(neuron=[0]), holdout="holdout", loss="mse", **fast)
    assert np.isnan(history.holdout_cc).all()


def test_ranks_holdout_moments_meet_about_one_shift(monkeypatch):
    """Two ranks (threads here, with a summing collective) whose holdout sounds differ,
    one without any data of a cell, counts offset by 1000: each rank's moments are moved
    to the shared shifts before the sum, and both get the pooled correlation."""
    import threading

    ds = _data(p_missing=0.0, n_est=8)
    ds = ds.assign_coords(subset=("stim", np.array(["est"] * ds.sizes["stim"], dtype=object)))
    held = np.zeros(ds.sizes["stim"], dtype=bool)
    held[:6] = True
    response = ds.response.values.copy()
    response[[0, 2, 4], 1] = np.nan  # rank 0 (sounds 0, 2, 4) has no data of cell 1
    ds = ds.assign(response=(ds.response.dims, response + 1000.0))
    parts = [ds.isel(stim=[0, 2, 4]), ds.isel(stim=[1, 3, 5])]
    barrier, deposits = threading.Barrier(2, timeout=60), {}  # a failing rank: no hang

    def all_reduce(values):  # every rank's tensor, summed in place, as dist.all_reduce
        deposits[threading.get_ident()] = values.clone()
        barrier.wait()
        values.copy_(sum(deposits.values()))
        barrier.wait()
        return values

    monkeypatch.setattr(training, "_all_reduce", all_reduce)
    net = _Channels(1000.0)
    results = [None, None]

    def rank(r):
        loader = nat4xr.torch.to_torch(parts[r], batch_size=1)
        loop = training._Loop(net, training.LOSSES["mse"], "mse", torch.device("cpu"), False,
                              4, 20, 2, None, loader)  # fmt: skip
        results[r] = loop.evaluate()

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ccs = _channel_ccs(ds, held, offset=1000.0)
    assert np.isfinite(ccs).all()
    rate = np.abs(ds.spectrogram.values[held].astype(np.float32)) + np.float32(1000.0)
    counts = ds.response.values[held].astype(np.float32)  # (S, N, R, T)
    error = (rate[:, :, None, :].astype(np.float64) - counts) ** 2
    for loss, cc in results:
        assert loss == pytest.approx(np.nanmean(error), rel=1e-5)
        assert cc == pytest.approx(ccs.mean(), rel=1e-6)


def test_reading_ahead_on_a_thread_gives_bitwise_the_same_fit(monkeypatch):
    from nat4xr.torch.dataset import NAT4TorchDataset

    threads = []
    read = NAT4TorchDataset.__getitems__

    def recorded(self, indices):
        threads.append(__import__("threading").current_thread().name)
        return read(self, indices)

    monkeypatch.setattr(NAT4TorchDataset, "__getitems__", recorded)
    ds = _data()
    runs = []
    for ahead in (False, True):
        monkeypatch.setattr(training, "READ_AHEAD", ahead)
        threads.clear()
        net = _net(seed=1)
        h = fit(net, ds, seed=5, **FAST)
        runs.append((_state(net), h, set(threads)))
    assert runs[0][2] == {"MainThread"}
    assert runs[1][2] and all(t.startswith("nat4xr-fit-read") for t in runs[1][2])
    assert _same(runs[0][0], runs[1][0])
    for key in ("train_loss", "holdout_loss", "holdout_cc"):
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key])


def _reader_threads():
    return [t for t in __import__("threading").enumerate() if t.name.startswith("nat4xr-fit")]


def test_a_failed_read_ahead_raises_in_fit_and_leaves_no_thread(monkeypatch):
    from nat4xr.torch.dataset import NAT4TorchDataset

    calls = []
    read = NAT4TorchDataset.__getitems__

    def failing(self, indices):
        calls.append(indices)
        if len(calls) == 3:
            raise OSError("chunk 7 of the cache file failed its CRC check")
        return read(self, indices)

    monkeypatch.setattr(NAT4TorchDataset, "__getitems__", failing)
    with pytest.raises(OSError, match="failed its CRC"):
        fit(_net(), _data(), **FAST)
    assert not _reader_threads()


def test_a_model_failing_mid_epoch_leaves_no_read_in_flight():
    calls = []

    def late_negative(x):
        calls.append(1)
        sign = -1.0 if len(calls) == 2 else 1.0
        return sign * torch.ones(x.shape[0], 4, 1, x.shape[-1])

    with pytest.raises(ValueError, match="negative rates"):
        fit(_Wrong(late_negative), _data(), **FAST)
    assert not _reader_threads()
