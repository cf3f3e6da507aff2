"""Load deepSTRF 0.1.0's NAT4 loader for side-by-side timing, without its heavy extras.

deepSTRF is not a dependency of nat4xr. Install it beside, in the benchmark's
own environment and without its dependencies, e.g.::

    pip install --no-deps --target /tmp/deepstrf deepSTRF==0.1.0
    export NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf

Spectrogram mode never calls the optional packages it imports at module load
(torchaudio, torchvision, lightning, ...), so those are replaced by inert stubs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from unittest import mock

STUBBED = {
    "torchaudio",
    "torchcodec",
    "torchvision",
    "pytorch_lightning",
    "lightning",
    "einops",
    "mambapy",
    "soundfile",
    "skimage",
    "tables",
    "mat73",
    "wandb",
    "tensorboard",
    "huggingface_hub",
    "safetensors",
    "gammatone",
    "mne",
    "allensdk",
    "pykeops",
}


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in STUBBED:
            try:
                if name in sys.modules or importlib.machinery.PathFinder.find_spec(name) is None:
                    return importlib.machinery.ModuleSpec(name, self, is_package=True)
            except (ImportError, ValueError):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: mock.MagicMock(name=f"{spec.name}.{attr}")
        return module

    def exec_module(self, module):
        return None


def _import_from_deepstrf(load):
    """``load()`` with deepSTRF importable (``NAT4XR_DEEPSTRF_PATH``), or None if it is not."""
    extra = os.environ.get("NAT4XR_DEEPSTRF_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    sys.meta_path.insert(0, _StubFinder())
    try:
        return load()
    except ImportError as exc:
        print(f"deepSTRF not available ({exc}); skipping the comparison", file=sys.stderr)
        return None


def load_deepstrf():
    """Return ``(NAT4Dataset, neural_collate)`` from deepSTRF, or ``None`` if not installed."""

    def load():
        from deepSTRF.datasets.audio.nat4 import NAT4Dataset
        from deepSTRF.utils import neural_collate

        return NAT4Dataset, neural_collate

    return _import_from_deepstrf(load)


def load_deepstrf_metrics():
    """Return deepSTRF's ``metrics.performance`` module, or ``None`` if not installed."""

    def load():
        from deepSTRF.metrics import performance

        return performance

    return _import_from_deepstrf(load)


def load_deepstrf_training():
    """Return deepSTRF's ``(Linear, Fitter)``, or ``None`` if not installed."""

    def load():
        from deepSTRF.models.audio.audio_zoo import Linear
        from deepSTRF.training.fitter import Fitter

        return Linear, Fitter

    return _import_from_deepstrf(load)


def load_deepstrf_flow():
    """Return deepSTRF's ``(NAT4Dataset, neural_collate, concat_neural_datasets)``, or ``None``."""

    def load():
        from deepSTRF.datasets.audio.nat4 import NAT4Dataset
        from deepSTRF.utils import concat_neural_datasets, neural_collate

        return NAT4Dataset, neural_collate, concat_neural_datasets

    return _import_from_deepstrf(load)
