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
