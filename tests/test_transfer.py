"""refit_readout: a trained core serving held-out cells and another area, the core untouched.

The study-level tests use synthetic releases with one planted nonlinear core
(``write_release(truth="cnn", truth_seed=...)``) at small sizes: 32 cells in 4 sites,
80 est and 4 val sounds, small hidden layers, one thread (deterministic). Here the
held-out site's refit scores a median r_test of 0.79 against 0.75 for the model that
saw the site (0.24 with an untrained core's readout refit), and the A1 core refit on
PEG 0.83 against 0.80 for the PEG model, while the same PEG cells planted with another
core (another truth_seed) get 0.57 from the A1 core against 0.82 from their own model:
transfer needs the shared core. At these sizes one fit's median moves by
about 0.05 from one truth seed to the next: of four truth seeds tried, all kept the
held-out site within 0.05, three kept the transfer within 0.05 (the fourth: 0.80
against 0.89); larger runs make the comparison sharper.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")
from torch import nn  # noqa: E402

import nat4xr  # noqa: E402
from nat4xr.synthetic import random_dataset, write_release  # noqa: E402
from nat4xr.synthetic.truth import feature_match  # noqa: E402
from nat4xr.torch import fit, models, predict, refit_readout  # noqa: E402

N_CELLS, N_SITES, N_EST, N_VAL = 32, 4, 80, 4
FIT = {"max_epochs": 120, "patience": 10, "lr": 1.5e-2, "progress": False}


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models: one thread (faster on a busy machine, and deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cnn(n_neurons: int, seed: int = 0) -> models.CNN1Dx2:
    torch.manual_seed(seed)
    net = models.CNN1Dx2(n_neurons, hidden=(12, 12, 16))
    net.reset_parameters()
    return net


def _median_r(net: nn.Module, ds: xr.Dataset) -> float:
    val = ds.nat4.sel_stims(subset="val")
    return float(np.median(nat4xr.evaluate(val, predict(net, val)).r_test.values))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw = dict(
            n_cells=N_CELLS, n_sites=N_SITES, n_est=N_EST, n_val=N_VAL, truth="cnn",
            truth_seed=1, spectrogram="white", traps=False, drive=3.0,
        )  # fmt: skip
        root = tmp_path_factory.mktemp("transfer")
        a1_rel = write_release(root / "a1", "A1", seed=1, **kw)
        peg_rel = write_release(root / "peg", "PEG", seed=2, **kw)
        # the same PEG cells (seed 2: layout, sounds, readouts) on another planted core
        other_rel = write_release(root / "other", "PEG", seed=2, **{**kw, "truth_seed": 3})
        a1, peg, other = (
            r.expected_dataset().compute() for r in (a1_rel, peg_rel, other_rel)
        )  # fmt: skip
        site = str(a1.site.values[0])
        split = a1.nat4.assign_heldout_site(site)
        held = a1.sel(neuron=~split.pretrain)
        full = _cnn(N_CELLS)
        fit(full, a1, **FIT)
        pre = _cnn(int(split.pretrain.sum()))
        fit(pre, a1.sel(neuron=split.pretrain), **FIT)
        before = [p.detach().clone() for p in pre.core.parameters()]
        site_net, _ = refit_readout(pre, held, **FIT)
        # the control: a core that learned nothing, its readout refit the same way
        untrained, _ = refit_readout(_cnn(N_CELLS, seed=1), held, **FIT)
        own = _cnn(peg.sizes["neuron"])
        fit(own, peg, **FIT)
        transferred, _ = refit_readout(full, peg, **FIT)
        other_own = _cnn(other.sizes["neuron"])
        fit(other_own, other, **FIT)
        other_transferred, _ = refit_readout(full, other, **FIT)
        yield {
            "a1": a1, "peg": peg, "held": held, "full": full, "pre": pre, "before": before,
            "site_net": site_net, "untrained": untrained, "own": own, "transferred": transferred,
            "rels": (a1_rel, peg_rel, other_rel), "other": other, "other_own": other_own,
            "other_transferred": other_transferred,
        }  # fmt: skip
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_core_trained_without_a_site_serves_its_cells_after_a_readout_refit(study):
    held = study["held"]
    val = study["a1"].nat4.sel_stims(subset="val")
    # the model that saw the site, scored on the site's cells (labels align the selection)
    r_full = nat4xr.evaluate(val, predict(study["full"], val)).r_test.sel(neuron=held.neuron)
    matched, refit = float(np.median(r_full)), _median_r(study["site_net"], held)
    assert refit > matched - 0.05, (refit, matched)
    assert refit > 0.5, refit  # a real fit, not two failures side by side
    # the readout alone cannot do it (an untrained core's refit: 0.24): the core serves
    untrained = _median_r(study["untrained"], held)
    assert untrained < matched - 0.15, (untrained, matched)
    # the refit trained no core weight, and the new model runs the same core
    assert study["site_net"].core is study["pre"].core
    for a, b in zip(study["before"], study["pre"].core.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_an_a1_core_refit_on_peg_cells_comes_close_to_a_model_trained_on_peg(study):
    peg = study["peg"]
    own, transferred = _median_r(study["own"], peg), _median_r(study["transferred"], peg)
    assert transferred > own - 0.05, (transferred, own)
    assert transferred > 0.5, transferred
    assert study["transferred"].core is study["full"].core


@pytest.mark.slow
def test_transfer_needs_the_shared_core(study):
    """An A1 core serves PEG cells because both releases were planted with one core.

    The control: the same PEG cells (same seed: layout, sounds, readout weights)
    planted with another core (``truth_seed=3``). Cores drawn from different
    seeds share their bands and differ only in each channel's delay (0-2 bins),
    so they can agree by chance; truth_seed 3 and 1 agree on one channel of six,
    checked here on the planted features before the transfer is compared.
    """
    a1_rel, peg_rel, other_rel = study["rels"]
    spec = peg_rel.spectrogram
    same = feature_match(a1_rel.planted, peg_rel.planted, spec)
    different = feature_match(a1_rel.planted, other_rel.planted, spec)
    np.testing.assert_allclose(same, 1.0, atol=1e-9)
    assert np.median(different) < 0.5 and (different > 0.99).sum() <= 2, different
    # only the core differs: every cell's readout and gain were drawn alike
    np.testing.assert_array_equal(peg_rel.planted.weights, other_rel.planted.weights)
    np.testing.assert_array_equal(peg_rel.planted.gain, other_rel.planted.gain)
    shared = _median_r(study["transferred"], study["peg"])
    other = _median_r(study["other_transferred"], study["other"])
    other_own = _median_r(study["other_own"], study["other"])
    # measured on one thread: 0.83 (one core), 0.57 (another core), 0.82 (trained on it)
    assert other < shared - 0.15, (other, shared)
    assert other < other_own - 0.15, (other, other_own)
    assert other_own > 0.6, other_own  # the other release is learnable: its core is the issue


@pytest.mark.parametrize("family", ["PopLN", "CNN1D", "CNN1Dx2", "CNN2D"])
def test_refitting_gives_a_readout_of_the_new_cells_and_changes_no_core_weight(family):
    ds = random_dataset(n_est=8, n_val=2, n_neurons=3, n_time=20, n_freq=4, seed=1)
    small = {"PopLN": {"rank": 3, "n_taps": 4}, "CNN1D": {"hidden": (3, 4), "n_taps": 4},
             "CNN1Dx2": {"hidden": (3, 4, 5), "n_taps": (3, 2)},
             "CNN2D": {"filters": 2, "kernel": (3, 2), "n_layers": 1, "hidden": 4}}  # fmt: skip
    torch.manual_seed(0)
    net = getattr(models, family)(7, n_freq=4, **small[family])
    core = {k: v.detach().clone() for k, v in net.core.state_dict().items()}
    readout = {k: v.detach().clone() for k, v in net.readout.state_dict().items()}
    new, history = refit_readout(net, ds, max_epochs=3, patience=3, lr=5e-2, progress=False)
    assert new.core is net.core and new.readout is not net.readout
    assert all(torch.equal(v, net.core.state_dict()[k]) for k, v in core.items())
    # the original model keeps its own readout, untouched
    assert all(torch.equal(v, net.readout.state_dict()[k]) for k, v in readout.items())
    out = new(torch.rand(2, 1, 4, 20))
    assert tuple(out.shape) == (2, 3, 1, 20)
    fresh = getattr(models, family)(3, n_freq=4, **small[family])
    shapes = [tuple(p.shape) for p in new.readout.parameters()]
    assert shapes == [tuple(p.shape) for p in fresh.readout.parameters()]
    assert shapes != [tuple(p.shape) for p in net.readout.parameters()]
    n_readout = sum(p.numel() for p in new.readout.parameters())
    assert history.attrs["n_trained_parameters"] == f"[{n_readout}]"
    assert history.sizes["epoch"] >= 1


def test_restarts_and_stages_keep_the_core():
    ds = random_dataset(n_est=8, n_val=2, n_neurons=3, n_time=20, n_freq=4, seed=2)
    net = models.PopLN(5, n_freq=4, rank=2, n_taps=3)
    before = [p.detach().clone() for p in net.core.parameters()]
    refit_readout(
        net, ds, max_epochs=2, patience=2, restarts=2, stages=[{"lr": 1e-2}, {"lr": 1e-3}],
        progress=False,
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, net.core.parameters(), strict=True))


class _UserModel(nn.Module):
    """A user's model following the protocol: core, readout, with_readout(n)."""

    def __init__(self, n_neurons: int, core: nn.Module | None = None) -> None:
        super().__init__()
        self.core = core if core is not None else nn.Conv1d(4, 3, 1)
        self.readout = nn.Conv1d(3, n_neurons, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.readout(self.core(x[:, 0])))[:, :, None, :]

    def with_readout(self, n: int) -> _UserModel:
        return _UserModel(n, self.core)


def test_a_users_own_model_qualifies():
    ds = random_dataset(n_est=8, n_val=2, n_neurons=2, n_time=20, n_freq=4, seed=3)
    net = _UserModel(6)
    before = net.core.weight.detach().clone()
    new, _ = refit_readout(net, ds, max_epochs=2, patience=2, progress=False)
    assert new.core is net.core and torch.equal(before, net.core.weight)
    assert tuple(predict(new, ds.nat4.sel_stims(subset="val")).shape)[:2] == (2, 2)


def test_a_model_without_the_protocol_is_refused_by_name():
    ds = random_dataset(n_est=4, n_val=2, n_neurons=2, n_time=10, n_freq=4)

    class CoreOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.core = nn.Linear(2, 2)

    with pytest.raises(TypeError, match=r"CoreOnly has no `readout`, `with_readout`"):
        refit_readout(CoreOnly(), ds)
    with pytest.raises(TypeError, match="no shared core"):
        refit_readout(models.SingleCNN(3, n_freq=4, hidden=2, n_taps=3), ds)

    class Copies(_UserModel):
        def with_readout(self, n):
            import copy

            return _UserModel(n, copy.deepcopy(self.core))

    with pytest.raises(TypeError, match="must return a model whose `core` is the original"):
        refit_readout(Copies(3), ds)

    class ReturnsNothing(_UserModel):
        def with_readout(self, n):
            return None

    with pytest.raises(TypeError, match=r"with_readout\(2\) must return a torch.nn.Module"):
        refit_readout(ReturnsNothing(3), ds)
    net = models.PopLN(3, n_freq=4, rank=2, n_taps=3)
    with pytest.raises(ValueError, match="no neurons"):
        refit_readout(net, ds.isel(neuron=[]))
    with pytest.raises(TypeError, match="sets `params` itself"):
        refit_readout(net, ds, params=net.parameters())
    with pytest.raises(TypeError, match="a stage may not set `params`"):
        refit_readout(net, ds, stages=[{"params": net.core.parameters()}])


def test_a_frequency_axis_the_core_does_not_take_is_refused():
    ds = random_dataset(n_est=4, n_val=2, n_neurons=2, n_time=10, n_freq=5, area="PEG")
    net = models.PopLN(3, n_freq=4, rank=2, n_taps=3)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(
        ValueError, match=r"\(PEG\) has 5 frequency bands but the model's core takes 4"
    ):
        refit_readout(net, ds)
    with pytest.raises(ValueError, match="no 'freq' axis"):
        refit_readout(net, ds.drop_dims("freq"))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
