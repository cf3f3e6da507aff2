"""What the library says about the data matches what it does."""

from __future__ import annotations

import numpy as np

import nat4xr
from nat4xr.lagged import lagged


def test_lagged_pads_before_the_trial_start_not_the_sound_onset():
    ds = nat4xr.synthetic.random_dataset(n_est=2, n_val=1, n_neurons=2, n_freq=3, seed=0)
    spec = ds["spectrogram"].values.copy()
    spec[:, :, :] += 1.0  # every bin of the trial, the pre-stimulus silence included, non-zero
    view = lagged(ds.assign(spectrogram=(ds["spectrogram"].dims, spec)), 4)
    assert "trial's start (t = 0)" in view.attrs["padding"]
    values = view.values  # (stim, time, lag, freq)
    for t in range(4):
        for k in range(4):
            # zero exactly where t - k < 0: before t = 0, wherever the sound itself starts
            assert (values[:, t, k] == 0).all() == (t - k < 0)
    np.testing.assert_array_equal(values[:, 3, 3], spec[:, :, 0])
