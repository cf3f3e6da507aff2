"""The paper's layers and model families against direct numpy computations of NEMS's definitions."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nat4xr.torch import models  # noqa: E402
from nat4xr.torch.models import layers  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread (two threads on a busy 2-core machine are many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _np(t):
    return t.detach().numpy().astype(np.float64)


def _run(layer, x):
    with torch.no_grad():
        return _np(layer(torch.as_tensor(x, dtype=torch.float32)))


def _randomize(layer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


RNG = np.random.default_rng(0)


def test_weight_channels_is_a_matrix_product():
    layer = layers.WeightChannels(5, 3)
    x = RNG.normal(size=(2, 5, 7))
    w = _np(layer.coefficients)
    expected = np.zeros((2, 3, 7))
    for b in range(2):
        for o in range(3):
            for t in range(7):
                expected[b, o, t] = sum(w[o, i] * x[b, i, t] for i in range(5))
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_gaussian_weight_channels_follow_nems_coefficients():
    layer = layers.GaussianWeightChannels(18, 4)
    with torch.no_grad():
        layer.mean.copy_(torch.tensor([0.1, 0.4, 0.7, 0.95]))
        layer.sd.copy_(torch.tensor([0.06, 0.2, 0.4, 1.0]))
    # NEMS0 weight_channels.gaussian_coefficients: positions i / n_in, normal pdf, rows sum to 1
    pos = np.arange(18) / 18
    mean, sd = _np(layer.mean)[:, None], _np(layer.sd)[:, None]
    coefs = 1 / (sd * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((pos - mean) / sd) ** 2)
    coefs /= coefs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_np(layer.weights()), coefs, rtol=1e-5, atol=1e-7)
    x = RNG.gamma(1.0, size=(3, 18, 6))
    np.testing.assert_allclose(_run(layer, x), np.einsum("oi,bit->bot", coefs, x), rtol=1e-5)


def test_gaussian_weight_channels_clip_to_nems_bounds():
    layer = layers.GaussianWeightChannels(18, 2)
    with torch.no_grad():
        layer.mean.copy_(torch.tensor([-3.0, 5.0]))
        layer.sd.copy_(torch.tensor([-1.0, 0.0]))
    inside = layers.GaussianWeightChannels(18, 2)
    with torch.no_grad():
        inside.mean.copy_(torch.tensor([-0.01, 1.01]))
        inside.sd.copy_(torch.tensor([0.05, 0.05]))
    np.testing.assert_allclose(_np(layer.weights()), _np(inside.weights()))
    assert np.isfinite(_np(layer.weights())).all()


def test_fir_is_a_causal_per_channel_filter_like_lfilter():
    from scipy.signal import lfilter

    layer = layers.FIR(3, 4)
    _randomize(layer)
    x = RNG.normal(size=(2, 3, 12))
    h = _np(layer.coefficients)
    expected = np.empty_like(x)
    for b in range(2):
        for c in range(3):
            expected[b, c] = lfilter(h[c], [1.0], x[b, c])  # zero initial state, tap 0 = lag 0
            for t in range(12):  # and the plain sum it stands for
                direct = sum(h[c, k] * x[b, c, t - k] for k in range(4) if t - k >= 0)
                assert abs(direct - expected[b, c, t]) < 1e-9
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_relu_with_and_without_offset():
    layer = layers.ReLU(3)
    with torch.no_grad():
        layer.offset.copy_(torch.tensor([-0.5, 0.0, 0.7]))
    x = RNG.normal(size=(2, 3, 5))
    expected = np.maximum(x - np.array([-0.5, 0.0, 0.7])[None, :, None], 0)
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-6, atol=1e-6)
    fixed = layers.ReLU(3, offset=False)
    assert list(fixed.parameters()) == []
    np.testing.assert_allclose(_run(fixed, x), np.maximum(x, 0), rtol=1e-6, atol=1e-7)


def test_level_shift_and_double_exponential():
    lvl = layers.LevelShift(2)
    with torch.no_grad():
        lvl.level.copy_(torch.tensor([1.0, -2.0]))
    x = RNG.normal(size=(2, 2, 4))
    np.testing.assert_allclose(_run(lvl, x), x + np.array([1.0, -2.0])[None, :, None], rtol=1e-6)

    dexp = layers.DoubleExponential(3)
    p = {"base": [0.1, -0.2, 0.0], "amplitude": [2.0, 1.0, -3.0],
         "shift": [0.0, 0.5, -1.0], "kappa": [0.0, 1.0, -0.5]}  # fmt: skip
    with torch.no_grad():
        for k, v in p.items():
            getattr(dexp, k).copy_(torch.tensor(v))
    x = RNG.normal(size=(2, 3, 6)) * 2
    base, amp, shift, kappa = (np.array(p[k])[None, :, None] for k in p)
    # NEMS0 nonlinearity._double_exponential, with |base| and |amplitude| (non-negative rates)
    expected = np.abs(base) + np.abs(amp) * np.exp(-np.exp(-np.exp(kappa) * (x - shift)))
    np.testing.assert_allclose(_run(dexp, x), expected, rtol=1e-5, atol=1e-6)
    raw = layers.DoubleExponential(3, nonnegative=False)
    raw.load_state_dict(dexp.state_dict())
    expected = base + amp * np.exp(-np.exp(-np.exp(kappa) * (x - shift)))
    np.testing.assert_allclose(_run(raw, x), expected, rtol=1e-5, atol=1e-6)


def test_double_exponential_far_below_its_shift_has_a_zero_gradient_not_nan():
    """A drive of -200 makes exp(200) overflow: the output is the base, the gradient 0."""
    dexp = layers.DoubleExponential(2)
    x = torch.tensor([[[-200.0, -50.0, 0.0]] * 2], requires_grad=True)
    y = dexp(x)
    y.sum().backward()
    np.testing.assert_array_equal(y[0, :, :2].detach().numpy(), np.float32(0.01))
    for grad in (x.grad, *(p.grad for p in dexp.parameters())):
        assert bool(torch.isfinite(grad).all()), grad
    assert x.grad[0, 0, 0] == 0.0 and x.grad[0, 0, 2] > 0


def test_causal_conv2d_matches_the_nems_definition():
    layer = layers.CausalConv2d(2, 3, (4, 3))
    _randomize(layer, 1)
    x = RNG.normal(size=(2, 2, 5, 9))  # (B, C, F, T)
    w, off = _np(layer.coefficients), _np(layer.offset)  # (O, C, kf, kt)
    expected = np.zeros((2, 3, 5, 9))
    for b in range(2):
        for o in range(3):
            for f in range(5):
                for t in range(9):
                    s = 0.0
                    for c in range(2):
                        for i in range(3):
                            for k in range(4):
                                ff, tt = f + i - 1, t + k - 3  # centred in freq, causal in time
                                if 0 <= ff < 5 and 0 <= tt < 9:
                                    s += w[o, c, i, k] * x[b, c, ff, tt]
                    expected[b, o, f, t] = max(s - off[o], 0.0)
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)
    # causal: the future does not change the present
    y = RNG.normal(size=x.shape)
    y[..., :5] = x[..., :5]
    np.testing.assert_allclose(_run(layer, y)[..., :5], expected[..., :5], rtol=1e-5, atol=1e-5)


def test_flatten_weight_channels_flatten_frequency_major():
    layer = layers.FlattenWeightChannels(3, 4, 2)
    x = RNG.normal(size=(2, 3, 4, 5))  # (B, K filters, F, T)
    w = _np(layer.coefficients)
    expected = np.zeros((2, 2, 5))
    for b in range(2):
        for o in range(2):
            for t in range(5):
                expected[b, o, t] = sum(
                    w[o, f * 3 + k] * x[b, k, f, t] for f in range(4) for k in range(3)
                )
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-5, atol=1e-5)


def test_grouped_weight_channels_keep_groups_apart():
    layer = layers.GroupedWeightChannels(3, 2, 1)
    x = RNG.normal(size=(2, 6, 4))
    w = _np(layer.coefficients)
    expected = np.stack(
        [np.einsum("oi,bit->bot", w[g], x[:, 2 * g : 2 * g + 2]) for g in range(3)], 1
    )
    np.testing.assert_allclose(_run(layer, x), expected.reshape(2, 3, 4), rtol=1e-5, atol=1e-6)


A1_COUNTS = {"PopLN": 109365, "CNN1D": 120825, "CNN1Dx2": 104835, "CNN2D": 102015,
             "SingleCNN": 146877}  # fmt: skip


def _count_by_hand(name: str, r: int) -> int:
    readout = lambda n: n * r + r + 4 * r  # noqa: E731  wc.nxR, lvl.R, dexp.R
    return {
        "PopLN": 2 * 120 + 120 * 25 + readout(120),
        "CNN1D": 2 * 100 + 100 * 25 + 100 * 120 + readout(120),
        "CNN1Dx2": 2 * 70 + 70 * 15 + 70 * 80 + 80 * 10 + 80 * 100 + 100 + readout(100),
        "CNN2D": (1 * 24 * 10 + 10) + 2 * (10 * 24 * 10 + 10) + 180 * 90 + 90 + readout(90),
        "SingleCNN": r * (2 * 6 + 6 * 25 + 6 + 1 + 4),
    }[name]


@pytest.mark.parametrize("name", list(A1_COUNTS))
def test_model_shapes_nonnegativity_and_parameter_counts(name):
    cls = getattr(models, name)
    assert (
        sum(p.numel() for p in cls(849).parameters())
        == A1_COUNTS[name]
        == _count_by_hand(name, 849)
    )
    net = cls(7, n_freq=18)
    _randomize(net, 3)
    stims = torch.rand(3, 1, 18, 40) * 3
    out = net(stims)
    assert out.shape == (3, 7, 1, 40)
    assert bool((out >= 0).all()) and bool(torch.isfinite(out).all())
    assert set(dict(net.named_children())) == {"core", "readout"}
    with pytest.raises(ValueError, match=r"\(B, 1, 18, T\)"):
        net(torch.rand(3, 18, 40))


@pytest.mark.parametrize("name", ["PopLN", "CNN1D", "CNN1Dx2", "CNN2D"])
def test_models_are_causal(name):
    net = getattr(models, name)(4)
    a = torch.rand(1, 1, 18, 30)
    b = a.clone()
    b[..., 20:] = torch.rand(1, 1, 18, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(a)[..., :20], net(b)[..., :20])


def test_keywords_of_the_defaults_are_the_papers():
    assert models.CNN1Dx2(3).keyword == (
        "wc.18x70.g-fir.1x15x70-relu.70.f-wc.70x80-fir.1x10x80-relu.80.f-wc.80x100-"
        "relu.100-wc.100xR-lvl.R-dexp.R"
    )
    assert models.CNN2D(3).keyword == "conv2d.10.8x3.rep3-wcn.90-relu.90-wc.90xR-lvl.R-dexp.R"
    assert models.SingleCNN(3).keyword == "wc.18x6.g-fir.1x25x6-relu.6.f-wc.6x1-lvl.1-dexp.1"


@pytest.mark.parametrize("name", ["PopLN", "CNN1D", "CNN1Dx2", "CNN2D"])
def test_with_readout_shares_the_core_and_none_of_the_readout(name):
    net = getattr(models, name)(6)
    other = net.with_readout(3)
    assert other.core is net.core
    core_ids = {id(p) for p in net.core.parameters()}
    assert core_ids == {id(p) for p in other.core.parameters()}
    assert not {id(p) for p in net.readout.parameters()} & {
        id(p) for p in other.readout.parameters()
    }
    assert not {id(p) for p in other.readout.parameters()} & core_ids
    assert other(torch.rand(2, 1, 18, 12)).shape == (2, 3, 1, 12)
    with torch.no_grad():  # one core: a change in one model's core is the other's
        next(iter(other.core.parameters())).add_(1.0)
    torch.testing.assert_close(
        net.core(torch.ones(1, 1, 18, 5)), other.core(torch.ones(1, 1, 18, 5))
    )
    assert type(other) is type(net) and other.keyword == net.keyword


def test_single_cnn_cells_are_independent_and_refuse_a_new_readout():
    net = models.SingleCNN(3, n_freq=6, n_taps=5)
    _randomize(net, 2)
    loss = net(torch.rand(2, 1, 6, 10))[:, 1].sum()
    loss.backward()
    fir = net.core[2].coefficients.grad  # only cell 1's channels 6..11 get a gradient
    assert (
        bool((fir[:6] == 0).all())
        and bool((fir[12:] == 0).all())
        and bool(fir[6:12].abs().sum() > 0)
    )
    with pytest.raises(TypeError, match="no shared core"):
        net.with_readout(2)


def test_reset_parameters_with_a_generator_is_reproducible():
    a, b = models.CNN1Dx2(4), models.CNN1Dx2(4)
    a.reset_parameters(torch.Generator().manual_seed(5))
    b.reset_parameters(torch.Generator().manual_seed(5))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n_neurons"):
        models.PopLN(0)
    with pytest.raises(ValueError, match="hidden"):
        models.CNN1Dx2(3, hidden=(70, 0, 100))
