"""write_release(truth=...): planted nonlinear and LN populations, and the unchanged default."""

from __future__ import annotations

import hashlib
import tarfile
import zipfile

import numpy as np
import pytest

from nat4xr.synthetic import write_release
from nat4xr.synthetic.truth import PlantedTruth


def _digest(rel) -> str:
    """Every file's decompressed content and every returned array (zlib-version proof)."""
    h = hashlib.sha256()
    for key, path in sorted(rel.files.items()):
        h.update(key.encode())
        if path.suffix == ".tgz":
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    h.update(m.name.encode())
                    if m.isfile():
                        h.update(tar.extractfile(m).read())
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    h.update(name.encode())
                    h.update(z.read(name))
        else:
            h.update(path.read_bytes())
    for a in (rel.est_response, rel.val_response, rel.spectrogram, rel.strf, rel.intercept):
        h.update(a.tobytes())
    return h.hexdigest()[:24]


# Recorded from the writer before ``truth=`` existed.
DEFAULT_DIGESTS = [
    ({"scale": "tiny", "seed": 3}, "550b123c0eacd253eb319bed"),
    ({"scale": "small", "seed": 0, "n_est": 12, "n_val": 2}, "d22444b4ba612c968a58c7b2"),
    (
        {"scale": "tiny", "seed": 1, "drive": 50.0, "spectrogram": "white"},
        "82e841e3fbb3b845b87c38aa",
    ),
]


@pytest.mark.parametrize(("kwargs", "digest"), DEFAULT_DIGESTS)
def test_the_default_release_is_unchanged_byte_for_byte(tmp_path, kwargs, digest):
    rel = write_release(tmp_path, **kwargs)
    assert _digest(rel) == digest
    assert rel.rate is None and rel.truth is None and rel.strf is not None
    assert _digest(write_release(tmp_path / "b", truth=None, **kwargs)) == digest


@pytest.mark.parametrize("truth", ["cnn", "ln"])
def test_a_planted_truth_keeps_the_rate_the_counts_are_drawn_from(tmp_path, truth):
    rel = write_release(tmp_path, scale="tiny", n_est=6, n_val=3, truth=truth, seed=2)
    n_stim, n_cells, n_time = 9, len(rel.cells), 150
    assert rel.rate.shape == (n_stim, n_cells, n_time) and rel.rate.dtype == np.float64
    assert rel.truth == truth and rel.strf is None
    assert (rel.rate >= rel.intercept[None, :, None] - 1e-12).all()
    # the rate is a function of the spectrogram (est first, then val, as rel.spectrogram)
    silent = rel.spectrogram.sum(axis=1) == 0  # (stim, time)
    quiet = rel.rate[:, :, :20].transpose(0, 2, 1)[silent[:, :20]]  # (bins, cells)
    np.testing.assert_allclose(quiet, np.broadcast_to(quiet[0], quiet.shape))  # the same at rest
    # counts are Poisson draws of it: over 20 val repeats, per-cell means agree
    present = ~np.isnan(rel.val_response[:, :, 0, 0])
    counts = rel.val_response.mean(axis=(0, 2, 3))[present.all(axis=0)]
    expected = rel.rate[6:].mean(axis=(0, 2))[present.all(axis=0)]
    np.testing.assert_allclose(counts, expected, rtol=0.15)
    again = write_release(tmp_path / "again", scale="tiny", n_est=6, n_val=3, truth=truth, seed=2)
    np.testing.assert_array_equal(again.rate, rel.rate)


def test_the_cnn_truth_responds_to_both_signs_of_a_channel():
    rng = np.random.default_rng(0)
    spec = rng.gamma(1.5, size=(4, 18, 60))
    truth = PlantedTruth.draw("cnn", spec, 3, np.full(3, 0.01), 1.0, rng)
    drive = truth._drive(spec) / truth.scale[None, :, None]
    cells = truth.weights.reshape(3, -1, 2)  # (units, channels, sign)
    np.testing.assert_array_equal(cells[:, :, 0], cells[:, :, 1])  # even in each channel's drive
    magnitude = np.maximum(np.abs(drive) - 1.0, 0.0)  # (stim, channel, time)
    expected = 0.01 + truth.gain[None, :, None] * np.einsum(
        "uc,sct->sut", cells[:, :, 0], magnitude
    )
    np.testing.assert_allclose(truth.rate(spec), expected, rtol=1e-10)


def test_an_unknown_truth_is_refused(tmp_path):
    with pytest.raises(ValueError, match="truth must be"):
        write_release(tmp_path, scale="tiny", truth="rnn")


def test_releases_with_one_truth_seed_share_the_planted_core(tmp_path):
    from nat4xr.synthetic.responses import _spectrograms

    kw = {"truth": "cnn", "truth_seed": 4, "spectrogram": "white", "traps": False}
    a1 = write_release(tmp_path / "a1", "A1", n_cells=8, n_sites=2, n_est=6, n_val=2, seed=1, **kw)
    peg = write_release(
        tmp_path / "peg", "PEG", n_cells=12, n_sites=3, n_est=5, n_val=3, seed=2, **kw
    )
    core = ("bands", "kernels", "scale")
    for name in core:
        np.testing.assert_array_equal(getattr(a1.planted, name), getattr(peg.planted, name))
    # the core comes from truth_seed alone: the kernels' delays, then the normalization on
    # 64 reference sounds of the same kind drawn before them
    rng = np.random.default_rng(4)
    reference = _spectrograms(64, 18, rng, "white")
    delays = [int(np.flatnonzero(k)[0]) for k in a1.planted.kernels]
    assert delays == list(rng.integers(0, 3, len(delays)))
    np.testing.assert_allclose(
        a1.planted.scale, a1.planted._drive(reference).std(axis=(0, 2)) + 1e-12, rtol=1e-12
    )
    # each cell's readout and gain still come from seed: the areas' cells differ
    assert not np.array_equal(a1.planted.weights[:8], peg.planted.weights[:8])
    assert not np.array_equal(a1.planted.gain[:8], peg.planted.gain[:8])
    # the kept rate is the planted model's
    for rel in (a1, peg):
        n = len(rel.cells)
        np.testing.assert_allclose(rel.rate, rel.planted.rate(rel.spectrogram)[:, :n], rtol=1e-12)
    # without truth_seed each release draws its own core from seed
    own = write_release(tmp_path / "own", "PEG", scale="tiny", seed=2, truth="cnn")
    other = write_release(tmp_path / "other", "A1", scale="tiny", seed=1, truth="cnn")
    assert not np.array_equal(own.planted.scale, other.planted.scale)


@pytest.mark.parametrize("truth", [None, "ln"])
def test_a_truth_seed_without_a_shared_core_is_refused(tmp_path, truth):
    with pytest.raises(ValueError, match="only truth='cnn' has"):
        write_release(tmp_path, scale="tiny", truth=truth, truth_seed=1)


def test_the_planted_features_follow_their_definition():
    rng = np.random.default_rng(3)
    spec = rng.gamma(1.5, size=(2, 18, 30))
    truth = PlantedTruth.draw("cnn", spec, 4, np.zeros(4), 1.0, rng)
    expected = np.zeros((2, 2 * len(truth.kernels), 30))
    for s in range(2):
        for c, (band, kernel) in enumerate(zip(truth.bands, truth.kernels, strict=True)):
            for t in range(30):
                drive = sum(
                    kernel[k] * sum(band[f] * spec[s, f, t - k] for f in range(18))
                    for k in range(len(kernel))
                    if t - k >= 0
                )
                drive /= truth.scale[c]
                expected[s, 2 * c, t] = max(drive - 1.0, 0.0)
                expected[s, 2 * c + 1, t] = max(-drive - 1.0, 0.0)
    np.testing.assert_allclose(truth.features(spec), expected, rtol=1e-10, atol=1e-12)
    # every cell's rate is its readout of these features
    rate = truth.base[None, :, None] + truth.gain[None, :, None] * np.einsum(
        "uk,skt->sut", truth.weights, expected
    )
    np.testing.assert_allclose(truth.rate(spec), rate, rtol=1e-10)
    ln = PlantedTruth.draw("ln", spec, 2, np.zeros(2), 1.0, rng)
    with pytest.raises(ValueError, match="only a 'cnn' truth has a shared core"):
        ln.features(spec)


def test_feature_match_tells_a_shared_core_from_another(tmp_path):
    from nat4xr.synthetic.truth import feature_match

    kw = {"truth": "cnn", "spectrogram": "white", "traps": False, "n_est": 20, "n_val": 2}
    a = write_release(tmp_path / "a", "A1", scale="tiny", seed=1, truth_seed=1, **kw).planted
    same = write_release(tmp_path / "s", "PEG", scale="tiny", seed=2, truth_seed=1, **kw)
    other = write_release(tmp_path / "o", "PEG", scale="tiny", seed=2, truth_seed=3, **kw)
    spec = same.spectrogram
    np.testing.assert_allclose(feature_match(a, same.planted, spec), 1.0, atol=1e-9)
    # another core shares a channel only where the delay of its kernel is the same
    delay = [[int(np.flatnonzero(k)[0]) for k in t.kernels] for t in (a, other.planted)]
    shared = np.repeat(np.equal(*delay), 2)  # (+c, -c) per channel
    assert 0 < shared.sum() < shared.size  # truth_seed 1 and 3: one channel of six
    match = feature_match(a, other.planted, spec)
    assert (match[shared] > 0.95).all() and (match[~shared] < 0.6).all(), (match, shared)
