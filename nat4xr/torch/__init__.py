"""Masked batches for PyTorch: a map-style Dataset over stims and a DataLoader factory.

Each batch is read with a single indexing call into the xarray Dataset (the
batch's stims only, up to the largest repeat count among them), so an
estimation-only batch never reads the repeat padding. Batches carry the keys of
deepSTRF's ``neural_collate``: ``stims``, ``responses`` (NaN-padded),
``valid_mask`` and ``stim_meta``, plus the ``stim`` and ``neuron`` ids.

Datasets backed by a netCDF file travel to worker processes as the file path
plus the selection, and each worker opens its own handle.

Every public name is importable from here; the modules hold one job each:

- ``nat4xr.torch.dataset``: :class:`NAT4TorchDataset`, :func:`collate` and
  the per-process helpers (threads, recycled batch arrays).
- ``nat4xr.torch.sampling``: :class:`StimBatchSampler`.
- ``nat4xr.torch.loader``: :func:`to_torch`.
- ``nat4xr.torch.prediction``: :func:`predict`.
- ``nat4xr.torch.losses``: :func:`masked_mse`, :func:`masked_poisson_nll`.
- ``nat4xr.torch.training``: :func:`fit` (early stopping, restarts, stages).
- ``nat4xr.torch.transfer``: :func:`refit_readout` (a trained core, a new
  readout for other cells or another area).
- ``nat4xr.torch.models``: the paper's model families and their layers.

Examples
--------
>>> import nat4xr
>>> from nat4xr.torch import to_torch
>>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=5, n_time=10)
>>> batch = next(iter(to_torch(ds.nat4.sel_stims(subset="est"), batch_size=3)))  # training
>>> tuple(batch["responses"].shape), batch["stim_meta"][0]["subset"]
((3, 5, 1, 10), 'est')
"""

from __future__ import annotations

# Checked before any module of the package is imported, so a missing PyTorch
# gives this message and leaves no half-imported module behind.
try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "nat4xr.torch needs PyTorch, which is not installed: pip install nat4xr[torch] "
        '(in a clone of nat4xr: pip install -e ".[torch]"; without a GPU, first the '
        "CPU-only build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
    ) from err

from .dataset import NAT4TorchDataset, collate
from .loader import to_torch
from .losses import masked_mse, masked_poisson_nll
from .prediction import predict
from .sampling import StimBatchSampler
from .training import fit
from .transfer import refit_readout

__all__ = [
    "NAT4TorchDataset",
    "StimBatchSampler",
    "collate",
    "fit",
    "masked_mse",
    "masked_poisson_nll",
    "predict",
    "refit_readout",
    "to_torch",
]
