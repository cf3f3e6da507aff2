"""The fixed numbers of the published layout, and what synthetic names are made from.

Sampling rates, trial timing and repeats of the real release; the size
presets of :func:`~nat4xr.synthetic.write_release` and the published counts
per area; animals, site numbers and sound words.
"""

from __future__ import annotations

ANIMALS = ("ARM", "CRD", "DRX", "TNC")

FS_POP = 100
FS_SITE = 1000
N_TIME = 150
PRE_STIM_SILENCE = 0.25
TRIAL_DURATION = 1.5
N_REPEATS = 20
AUDIO_FS = 44100
_MTIME = 1686787200  # fixed archive timestamps keep the files byte-identical per seed
_FIELD = 25  # bytes of one "%.18e" value plus its separator
_PRE_BINS = round(PRE_STIM_SILENCE * FS_POP)
_SOUND_BINS = round(1.0 * FS_POP)

_SCALES: dict[str, dict[str, int]] = {
    "tiny": {"n_sites": 2, "n_cells": 8, "n_est": 6, "n_val": 2},
    "small": {"n_sites": 4, "n_cells": 40, "n_est": 30, "n_val": 4},
    "full": {"n_sites": 22, "n_cells": 849, "n_est": 575, "n_val": 18},
}
#: The published counts per area: sites and cells per animal, auditory cells.
_FULL_AREAS: dict[str, dict] = {
    "A1": {
        "sites": {"ARM": 4, "CRD": 2, "DRX": 3, "TNC": 13},
        "cells": {"ARM": 165, "CRD": 36, "DRX": 244, "TNC": 404},
        "auditory": 777,
    },
    "PEG": {"sites": {"ARM": 12}, "cells": {"ARM": 398}, "auditory": 339},
}
_SITE_START = {"ARM": 29, "CRD": 16, "DRX": 6, "TNC": 8}
_WORDS = (
    "geese", "ferretmixed41-1sec", "Athena-Violet001", "waterfall", "True_crime",
    "speech_female", "crickets", "thunder", "violin", "DogBark", "rain", "ferret_fights",
    "kitten", "wind", "bells", "Marmoset", "rooster", "tabla", "guitar", "chimes",
)  # fmt: skip
