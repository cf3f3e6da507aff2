"""The in-memory recording: :class:`Recording` and its :class:`Signal` objects.

A rasterized signal holds a ``(time, chan)`` float32 matrix; a point process
holds spike times per channel and bins them into trials on request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import FormatError
from .epochs import _NO_EPOCHS, epoch_index

__all__ = ["POINT", "RASTERIZED", "Recording", "Signal"]

RASTERIZED = "rasterized"
POINT = "point"


@dataclass
class Signal:
    """One signal of a recording.

    Attributes
    ----------
    name : str
        Signal name (``resp``, ``stim``, ...).
    fs : float
        Sampling rate in Hz.
    chans : list of str
        Channel names (cell ids for ``resp``).
    kind : {'rasterized', 'point'}
        Rasterized signals have :attr:`data`; point processes have spike times.
    epochs : DataFrame
        Epoch table with columns ``name``, ``start``, ``end`` (seconds).
    meta : dict
        The sidecar JSON.
    source : str
        Where the signal was read from (used in error messages).
    """

    name: str
    fs: float
    chans: list[str]
    kind: str
    epochs: pd.DataFrame
    meta: dict[str, Any]
    source: str
    data: np.ndarray | None = None
    spikes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        """Number of samples: the data's length, else the end of the last segment."""
        if self.data is not None:
            return int(self.data.shape[0])
        segments = self.meta.get("segments") or []
        if segments:
            return int(max(int(end) for _, end in segments))
        return int(np.ceil(self.epochs["end"].max() * self.fs)) if len(self.epochs) else 0

    def epoch_samples(self, name: str) -> np.ndarray:
        """``(k, 2)`` int array of ``[start, end)`` sample bounds of every epoch ``name``.

        Raises
        ------
        FormatError
            If an epoch ends past the signal's last sample.

        Examples
        --------
        >>> ep = pd.DataFrame({"name": ["A", "B", "A"], "start": [0, 1.0, 2.0],
        ...                    "end": [1.0, 2.0, 3.0]})
        >>> sig = Signal("resp", 100.0, ["c"], RASTERIZED, ep, {}, "rec",
        ...              data=np.zeros((300, 1), "float32"))
        >>> sig.epoch_samples("A").tolist()
        [[0, 100], [200, 300]]
        """
        index = self.__dict__.get("_epoch_index")
        if index is None:  # built once: looking names up in the DataFrame costs ms each
            index = self.__dict__["_epoch_index"] = epoch_index(self.epochs, self.fs)
        bounds = index.get(name, _NO_EPOCHS)
        if len(bounds) and bounds[:, 1].max() > self.n_samples:
            raise FormatError(
                f"{self.source}: epoch {name!r} ends at sample {int(bounds[:, 1].max())}, past "
                f"the end of signal {self.name!r} ({self.n_samples} samples); the epoch table "
                "and the data do not belong together (re-download the file)"
            )
        return bounds

    def spike_times(self, chan: str) -> np.ndarray:
        """Spike times (seconds) of one channel of a point-process signal."""
        try:
            return self.spikes[chan]
        except KeyError:
            raise FormatError(
                f"{self.source}: no spike-time dataset for channel {chan!r} of signal "
                f"{self.name!r}; the HDF5 file is incomplete (re-download the file)"
            ) from None

    def bin_spikes(
        self,
        starts: np.ndarray,
        n_samples: int,
        factor: int = 1,
        chans: Iterable[str] | None = None,
    ) -> np.ndarray:
        """Spike counts in trials, binned straight from the spike times.

        A spike at time ``t`` falls in sample ``floor(t * fs)`` (the NEMS rule).
        Trial ``k`` covers samples ``starts[k] .. starts[k] + n_samples``; the
        counts are summed in groups of ``factor`` samples.

        Parameters
        ----------
        starts : array of int
            First sample of each trial.
        n_samples : int
            Trial length in samples (a multiple of ``factor``).
        factor : int
            Samples summed into one output bin (10: 1 ms -> 10 ms).
        chans : iterable of str, optional
            Channels to bin (default all), in output order.

        Returns
        -------
        ndarray, float32, shape (len(starts), len(chans), n_samples // factor)

        Examples
        --------
        >>> sig = Signal("resp", 1000.0, ["c"], POINT, pd.DataFrame(), {}, "rec",
        ...              spikes={"c": np.array([0.0005, 0.0095, 0.0105, 1.0])})
        >>> sig.bin_spikes(np.array([0]), 20, factor=10)[0, 0].tolist()
        [2.0, 1.0]
        """
        if n_samples % factor:
            raise ValueError(f"trial length {n_samples} is not a multiple of {factor}")
        chans = list(self.chans if chans is None else chans)
        starts = np.asarray(starts, dtype=np.int64)
        n_out = n_samples // factor
        out = np.zeros((len(starts), len(chans), n_out), dtype=np.float32)
        order = np.argsort(starts, kind="stable")
        sorted_starts = starts[order]
        for j, chan in enumerate(chans):
            samples = np.floor(self.spike_times(chan) * self.fs).astype(np.int64)
            samples.sort()
            lo = np.searchsorted(samples, sorted_starts, side="left")
            hi = np.searchsorted(samples, sorted_starts + n_samples, side="left")
            counts = hi - lo
            if not counts.any():
                continue
            trial = np.repeat(np.arange(len(starts)), counts)
            picks = np.concatenate([samples[a:b] for a, b in zip(lo, hi)])
            offset = (picks - sorted_starts[trial]) // factor
            flat = np.bincount(trial * n_out + offset, minlength=len(starts) * n_out)
            out[order, j, :] = flat.reshape(len(starts), n_out)
        return out


@dataclass
class Recording:
    """A NEMS recording: metadata and signals, all in memory.

    Examples
    --------
    >>> rec = open_recording("rec.tgz")  # doctest: +SKIP
    >>> rec.signals["resp"].chans[:2]  # doctest: +SKIP
    ['ARM029a-04-1', 'ARM029a-07-6']
    """

    name: str
    meta: dict[str, Any]
    signals: dict[str, Signal]
    source: str

    def __getitem__(self, name: str) -> Signal:
        try:
            return self.signals[name]
        except KeyError:
            raise FormatError(
                f"{self.source}: recording has no signal {name!r} "
                f"(it has: {', '.join(sorted(self.signals)) or 'none'})"
            ) from None

    @property
    def epochs(self) -> pd.DataFrame:
        """The epoch table of ``resp`` (or of the first signal that has one)."""
        for name in ("resp", *self.signals):
            if name in self.signals:
                return self.signals[name].epochs
        return pd.DataFrame({"name": [], "start": [], "end": []})
