"""Planted rate models for releases with a known nonlinear truth (``write_release(truth=...)``).

``'cnn'``: a shared nonlinear core with a readout per cell. The core filters
the spectrogram with ``K`` spectro-temporal channels (a Gaussian band times a
biphasic temporal kernel, so each channel's drive is signed) and rectifies
each channel both ways, ``relu(s)`` and ``relu(-s)``; every cell weighs
these ``2K`` features with non-negative weights. A cell that weighs both
halves of a channel responds to its drive's magnitude, which no linear
filter followed by a monotonic output nonlinearity can produce: an LN model
cannot reach these cells' rates, a convolutional network can.

``'ln'``: one linear filter per cell (a Gaussian band times the same
biphasic kernel at a cell-specific delay) followed by a double-exponential
output nonlinearity: exactly the form of a population LN model.

Both give rates ``base + drive * gain * g(features)`` in spikes per bin,
with ``base`` and ``gain`` per cell; the Poisson counts of the release are
drawn from these rates directly (no trial-to-trial gain), so the rate is
the expected count of every bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRUTHS = ("ln", "cnn")
_N_CHANNELS = 6
_N_TAPS = 8


def _biphasic(n_taps: int, delay: int = 0) -> np.ndarray:
    """A causal temporal kernel: two bins of excitation, then two of suppression.

    Equal lobes make the filtered drive of a sound white in time symmetric
    about zero (a difference of two equally distributed sums), so a cell
    responding to its magnitude is invisible to any linear filter.
    """
    kernel = np.zeros(n_taps)
    kernel[delay : delay + 2] = 0.25
    kernel[delay + 2 : delay + 4] = -0.25
    return kernel


def _causal_filter(drive: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``y[..., t] = sum_k kernel[k] drive[..., t - k]`` (zero before the start)."""
    out = np.zeros_like(drive)
    for k, w in enumerate(kernel):
        if w != 0.0:
            out[..., k:] += w * drive[..., : drive.shape[-1] - k]
    return out


def _bands(centres: np.ndarray, width: np.ndarray, n_freq: int) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(n_freq)[None, :] - centres[:, None]) / width[:, None]) ** 2)
    return g / g.sum(axis=1, keepdims=True)


@dataclass
class PlantedTruth:
    """A planted rate model: ``rate(spec)`` gives (stims, units, T) rates, float64."""

    kind: str
    base: np.ndarray  # (units,) spontaneous rate
    gain: np.ndarray  # (units,) rate per unit of drive
    bands: np.ndarray  # (channels, F) spectral weights of the channels (or of each unit, 'ln')
    kernels: np.ndarray  # (channels, taps) temporal kernels
    weights: np.ndarray  # 'cnn': (units, 2 * channels) readout; 'ln': unused (units, 0)
    scale: np.ndarray  # (channels,) normalization of each channel's drive

    @classmethod
    def draw(
        cls, kind: str, spec: np.ndarray, n_units: int, base: np.ndarray, drive: float,
        rng: np.random.Generator, core: tuple[np.random.Generator, np.ndarray] | None = None,
    ) -> PlantedTruth:  # fmt: skip
        """Draw a truth of ``kind`` for ``n_units`` units, normalized on the sounds ``spec``.

        ``core``, for ``'cnn'`` only: a generator and reference sounds of their own
        from which the shared core (channel kernels, normalization) is drawn
        instead, so that releases given the same pair share one core while
        ``rng`` still draws every unit's gain and readout.
        """
        n_freq = spec.shape[1]
        core_rng, reference = (rng, spec) if core is None else core
        gain = rng.lognormal(np.log(0.5 if kind == "cnn" else 0.25), 0.3, size=n_units) * drive
        if kind == "cnn":
            centres = (np.arange(_N_CHANNELS) + 0.5) * n_freq / _N_CHANNELS
            bands = _bands(centres, np.full(_N_CHANNELS, 1.5), n_freq)
            delays = core_rng.integers(0, 3, _N_CHANNELS)
            kernels = np.stack([_biphasic(_N_TAPS, d) for d in delays])
            # each unit: the magnitude of two channels' drive (both halves, equal weights)
            weights = np.zeros((n_units, 2 * _N_CHANNELS))
            for u in range(n_units):
                for ch in rng.choice(_N_CHANNELS, size=2, replace=False):
                    weights[u, [2 * ch, 2 * ch + 1]] = rng.uniform(0.5, 1.0)
        else:
            bands = _bands(
                rng.uniform(1, n_freq - 2, n_units), rng.uniform(1.0, 3.0, n_units), n_freq
            )
            kernels = np.stack([_biphasic(_N_TAPS, d) for d in rng.integers(0, 3, n_units)])
            weights = np.zeros((n_units, 0))
        truth = cls(kind, base, gain, bands, kernels, weights, np.ones(len(bands)))
        truth.scale = truth._drive(reference).std(axis=(0, 2)) + 1e-12
        return truth

    def _drive(self, spec: np.ndarray) -> np.ndarray:
        """Each channel's signed drive, (stims, channels, T), before normalization."""
        banded = np.einsum("sft,cf->sct", spec.astype(np.float64), self.bands)
        out = np.empty_like(banded)
        for c, kernel in enumerate(self.kernels):
            out[:, c] = _causal_filter(banded[:, c], kernel)
        return out

    def features(self, spec: np.ndarray) -> np.ndarray:
        """The planted core's output for the sounds ``spec`` (stims, F, T): (stims, 2 * K, T).

        ``'cnn'`` only: each channel's normalized drive thresholded at one
        standard deviation both ways, ordered ``(+c0, -c0, +c1, ...)``; every
        cell's rate is ``base + gain * weights @ features``. Two cores are the
        same core when their features are, which is what decides whether a
        core fitted on one release can serve another's cells.

        Examples
        --------
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> spec = rng.random((3, 18, 40))
        >>> truth = PlantedTruth.draw("cnn", spec, 4, np.zeros(4), 1.0, rng)
        >>> truth.features(spec).shape
        (3, 12, 40)
        """
        if self.kind != "cnn":
            raise ValueError(f"only a 'cnn' truth has a shared core, this one is {self.kind!r}")
        s = self._drive(spec) / self.scale[None, :, None]
        # thresholded at one standard deviation: sparse events of either sign
        features = np.stack([np.maximum(s - 1.0, 0.0), np.maximum(-s - 1.0, 0.0)], axis=2)
        return features.reshape(s.shape[0], -1, s.shape[2])  # (+c0, -c0, +c1, ...)

    def rate(self, spec: np.ndarray) -> np.ndarray:
        """The rate of every unit for the sounds ``spec`` (stims, F, T): (stims, units, T)."""
        if self.kind == "cnn":
            out = np.einsum("uk,skt->sut", self.weights, self.features(spec))
        else:
            s = self._drive(spec) / self.scale[None, :, None]
            # the double exponential of NEMS's dexp, shift 1, kappa log(1.5)
            out = np.exp(-np.exp(-1.5 * (s - 1.0))) * 2.0
        return self.base[None, :, None] + self.gain[None, :, None] * out


def feature_match(a: PlantedTruth, b: PlantedTruth, spec: np.ndarray) -> np.ndarray:
    """How well ``b``'s planted core reproduces each of ``a``'s features, on the sounds ``spec``.

    For each feature of ``a`` (:meth:`PlantedTruth.features`), the largest
    correlation over (stims, time) with any one feature of ``b``: 1 for a
    feature both cores compute, near 0 for one that ``b`` lacks. Two
    releases with the same ``truth_seed`` give all ones; cores drawn from
    other seeds share a channel only where their temporal kernels agree.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> spec = rng.random((4, 18, 60))
    >>> a = PlantedTruth.draw("cnn", spec, 3, np.zeros(3), 1.0, rng)
    >>> bool(np.allclose(feature_match(a, a, spec), 1.0))
    True
    """
    fa, fb = (t.features(spec).transpose(1, 0, 2).reshape(2 * len(t.kernels), -1) for t in (a, b))
    fa = (fa - fa.mean(1, keepdims=True)) / (fa.std(1, keepdims=True) + 1e-12)
    fb = (fb - fb.mean(1, keepdims=True)) / (fb.std(1, keepdims=True) + 1e-12)
    return (fa @ fb.T / fa.shape[1]).max(axis=1)
