"""The sounds and the responses: epoch names, spectrograms, rates and Poisson spike counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .constants import _PRE_BINS, _SOUND_BINS, _WORDS, N_REPEATS, N_TIME
from .layout import _Layout


def _stim_names(n_est: int, n_val: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Epoch names like the real ones, in a shuffled (not alphabetical) order."""
    numbers = rng.permutation(np.arange(1, 10 * (n_est + n_val) + 10))[: n_est + n_val]
    words = rng.integers(0, len(_WORDS), size=n_est + n_val)
    est = [
        f"STIM_cat{numbers[i]}_rec{1 + i % 3}_{_WORDS[words[i]]}_excerpt{1 + i % 2}.wav"
        for i in range(n_est)
    ]
    val = [
        f"STIM_00cat{numbers[n_est + i]}_rec1_{_WORDS[words[n_est + i]]}_excerpt1.wav"
        for i in range(n_val)
    ]
    return est, val


def _spectrograms(
    n_stim: int, n_freq: int, rng: np.random.Generator, kind: str = "smooth"
) -> np.ndarray:
    """Non-negative gamma-ish bands during the sound, zero in the silences.

    ``'smooth'``: smoothed over 5 bins in time and 3 bands, under a slow
    envelope (like natural sounds; neighbouring lags are strongly
    correlated). ``'white'``: independent values in every band and bin of a
    sound, so each lag and band of a filter can be told apart. Both tilt
    each sound's spectrum by a random slope.
    """
    from scipy.ndimage import uniform_filter1d

    g = rng.gamma(1.5, 1.0, size=(n_stim, n_freq, _SOUND_BINS))
    if kind == "smooth":
        g = uniform_filter1d(g, size=5, axis=2, mode="nearest")
        g = uniform_filter1d(g, size=3, axis=1, mode="nearest")
    tilt = rng.normal(0.0, 0.5, size=(n_stim, 1, 1)) * np.linspace(-1, 1, n_freq)[None, :, None]
    g = g * np.exp(tilt)
    if kind == "smooth":
        env = uniform_filter1d(rng.random((n_stim, 1, _SOUND_BINS)), size=15, axis=2)
        g = g * (0.3 + 1.4 * env)
    spec = np.zeros((n_stim, n_freq, N_TIME), dtype="float32")
    spec[:, :, _PRE_BINS : _PRE_BINS + _SOUND_BINS] = g
    return spec


@dataclass
class _Counts:
    """Spike counts of every unit: est (n_est, U, T) and val (n_val, U, 20, T)."""

    est: np.ndarray  # uint8 counts, all units, no NaN
    val: np.ndarray  # uint8
    est_truth: np.ndarray  # float32, population cells, NaN where not recorded
    strf: np.ndarray | None  # (units, 4, F) the filter each unit's rate is made from
    base: np.ndarray  # (units,) spontaneous rate
    rate: np.ndarray | None = None  # (stims, population cells, T) with a planted truth
    planted: Any = None  # the PlantedTruth the rate comes from (all units)

    @classmethod
    def draw(
        cls,
        spec: np.ndarray,
        layout: _Layout,
        n_est: int,
        rng: np.random.Generator,
        drive: float = 1.0,
        truth: str | None = None,
        core: tuple[np.random.Generator, np.ndarray] | None = None,
    ) -> _Counts:
        n_stim, n_freq, n_time = spec.shape
        n_units = len(layout.keys)
        best = rng.uniform(0, n_freq - 1, size=n_units)
        width = rng.uniform(1.0, 4.0, size=n_units)
        tuning = np.exp(-0.5 * ((np.arange(n_freq)[None, :] - best[:, None]) / width[:, None]) ** 2)
        tuning /= tuning.sum(axis=1, keepdims=True)
        lag = rng.integers(1, 4, size=n_units)
        base = rng.lognormal(np.log(0.02), 0.7, size=n_units)
        # most cells follow the sound, the rest fire at their spontaneous rate
        gain = np.where(rng.random(n_units) < 0.7, rng.lognormal(np.log(0.05), 0.6, n_units), 0.0)
        gain = gain * drive
        planted = None
        if truth is not None:
            from .truth import PlantedTruth

            planted = PlantedTruth.draw(truth, spec, n_units, base, drive, rng, core)
            true_rate = np.empty((n_stim, layout.n_pop, n_time))
        est = np.empty((n_est, n_units, n_time), dtype=np.uint8)
        val = np.empty((n_stim - n_est, n_units, N_REPEATS, n_time), dtype=np.uint8)
        step = 32
        for lo in range(0, n_stim, step):
            hi = min(lo + step, n_stim)
            drive = np.einsum("sft,uf->sut", spec[lo:hi], tuning.astype("float32"))
            lagged = np.zeros_like(drive)
            for k in np.unique(lag):
                sel = lag == k
                lagged[:, sel, k:] = drive[:, sel, :-k]
            if planted is None:
                trial_gain = rng.lognormal(0.0, 0.2, size=(hi - lo, n_units, 1))
                rate = base[None, :, None] + gain[None, :, None] * trial_gain * lagged
            else:  # the planted rate is the expected count of every bin
                rate = planted.rate(spec[lo:hi])
                true_rate[lo:hi] = rate[:, : layout.n_pop]
            for i in range(lo, hi):
                r = rate[i - lo]
                if i < n_est:
                    est[i] = _counts(rng.poisson(r))
                else:
                    val[i - n_est] = _counts(
                        rng.poisson(r[:, None, :], size=(n_units, N_REPEATS, n_time))
                    )
        est_truth = est[:, : layout.n_pop].astype("float32")
        for s, missing in layout.missing_est.items():
            est_truth[np.ix_(missing, layout.unit_site[: layout.n_pop] == s)] = np.nan
        # the rate is base + gain * trial_gain * (tuning . spectrogram) at one lag; the trial
        # gain is lognormal(0, 0.2), of mean exp(0.02)
        if planted is not None:
            kept = {"est": est, "val": val, "est_truth": est_truth, "base": base}
            return cls(**kept, strf=None, rate=true_rate, planted=planted)
        strf = np.zeros((n_units, 4, n_freq))
        strf[np.arange(n_units), lag] = (gain * np.exp(0.02))[:, None] * tuning
        return cls(est=est, val=val, est_truth=est_truth, strf=strf, base=base)


def _counts(draw: np.ndarray) -> np.ndarray:
    """Spike counts per 10 ms bin as the release stores them (uint8), refusing overflow."""
    if draw.size and int(draw.max()) > 255:
        raise ValueError(
            f"a bin drew {int(draw.max())} spikes, more than the 255 a count holds: lower drive"
        )
    return draw
