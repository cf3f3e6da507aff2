"""Predictions as labelled data: :func:`predict` runs a model over :func:`to_torch`'s batches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..selection import aligned_mask
from .loader import to_torch

__all__ = ["predict"]


def predict(
    model: Callable[[torch.Tensor], torch.Tensor],
    ds: xr.Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    stims: Sequence[Any] | None = None,
    name: str = "prediction",
    **loader_kwargs: Any,
) -> xr.DataArray:
    """Run ``model`` over the stims of ``ds`` and return its output as labelled data.

    The model sees exactly what a training loop over :func:`to_torch` gives
    it: ``batch["stims"]``, (B, 1, F, T) spectrograms (or waveforms when the
    Dataset has them, see ``waveform``). It runs in eval mode under
    ``torch.no_grad()``; the training flags of the model and of every
    submodule are restored afterwards, also when the model raises. Each
    batch's output is written into one preallocated array at its stims'
    positions, so memory holds the output and one batch, whatever the order
    the batches arrive in (workers, ``shuffle``).

    Parameters
    ----------
    model : torch.nn.Module or callable
        Maps ``stims`` (B, 1, F, T) to responses (B, N, T) or (B, N, 1, T),
        with N the Dataset's neurons and T its time bins, as torch tensors on
        any device.
    ds : xarray.Dataset
        A nat4xr Dataset: in memory, dask-backed or lazily backed by a file.
    batch_size : int
        Stims per batch.
    device : str or torch.device, optional
        Where the inputs go; by default the device of the model's first
        parameter (or buffer), the CPU for a model without any.
    num_workers : int
        DataLoader worker processes reading the batches.
    stims : sequence of stim ids or bool mask, optional
        Predict these stims only, in this order (labels, as ``ds.sel``); a
        mask over ``stim`` is aligned by id when it has stim labels.
    name : str
        Name of the returned DataArray.
    **loader_kwargs
        Passed to :func:`to_torch` (``multiprocessing_context``, ``waveform``,
        ``dtype``, ``pin_memory``...). ``drop_last`` and ``sampler`` would
        leave stims out and are refused.

    Returns
    -------
    xarray.DataArray
        float32 with dims (stim, neuron, time), the Dataset's ``stim``,
        ``neuron`` and ``time`` coordinates and every other 1-D coordinate
        along them (``subset``, ``n_repeats``, ``area``, ...). NaN where the
        cell has no data for the stim (``coverage`` False), so metrics
        against ``response`` see the same cells. ``attrs`` keep the
        Dataset's and record the model (``model``, ``model_class``,
        ``model_parameters``, ``nat4xr_version``).

    Raises
    ------
    ValueError
        When the model's output is not a tensor of shape (B, N, T) or
        (B, N, 1, T); the message gives the expected and the returned shape.

    Examples
    --------
    >>> import nat4xr
    >>> ds = nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3, n_time=10)
    >>> # per time bin, the 4 frequency bands -> the 3 neurons
    >>> model = torch.nn.Sequential(torch.nn.Flatten(1, 2), torch.nn.Conv1d(4, 3, 1))
    >>> pred = predict(model, ds, batch_size=4)
    >>> pred.dims, pred.shape, pred.dtype
    (('stim', 'neuron', 'time'), (6, 3, 10), dtype('float32'))
    >>> bool((pred.isnull().all("time") == ~ds.coverage).all())  # NaN where no data
    True
    >>> pred.attrs["model"], model.training
    ('Sequential', True)
    """
    for key in ("drop_last", "sampler"):
        if loader_kwargs.get(key):
            raise TypeError(f"predict reads every stim; {key}= would leave some out")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    if stims is not None:
        if not isinstance(stims, str) and np.asarray(stims).dtype.kind == "b":
            # a mask: by stim id when it has them, else by position
            stims = ds["stim"].values[aligned_mask(stims, ds["stim"].values, "stim", "stims")]
        wanted = [stims] if isinstance(stims, str) else list(stims)
        if len(set(wanted)) != len(wanted):
            raise ValueError("stims= lists some stim ids more than once")
        missing = [s for s in wanted if s not in ds.indexes["stim"]]
        if missing:
            raise KeyError(f"stims not in this Dataset: {missing[:5]} (of {len(missing)})")
        ds = ds.sel(stim=wanted)
    loader = to_torch(ds, batch_size=batch_size, num_workers=num_workers, **loader_kwargs)
    n_stim, n_neuron, n_time = ds.sizes["stim"], ds.sizes["neuron"], ds.sizes["time"]
    coverage = _coverage(ds)
    where = {stim: i for i, stim in enumerate(loader.dataset.stims)}
    out = np.full((n_stim, n_neuron, n_time), np.nan, dtype=np.float32)
    if device is None:
        device = _model_device(model)
    with _eval_mode(model), torch.no_grad():
        for batch in loader:
            result = model(batch["stims"].to(device))
            values = _prediction_values(result, len(batch["stim"]), n_neuron, n_time)
            rows = np.array([where[stim] for stim in batch["stim"]], dtype=np.intp)
            # Mask by coverage: the model predicts every cell, data exist for some.
            if coverage is not None:
                cov = coverage[rows]
            else:
                cov = batch["valid_mask"].numpy().any(axis=(2, 3))
            out[rows] = np.where(cov[:, :, None], values, np.float32(np.nan))
            # Dropped before the next read, so the adapter can reuse this batch's memory.
            del batch, result, values
    return xr.DataArray(
        out,
        dims=("stim", "neuron", "time"),
        coords=_output_coords(ds),
        name=name,
        attrs={**ds.attrs, **_model_attrs(model)},
    )


def _coverage(ds: xr.Dataset) -> np.ndarray | None:
    """The (stim, neuron) coverage in memory, None if the Dataset has none."""
    if "coverage" not in ds.variables:
        return None  # the batches' valid_mask says it instead
    cov = ds["coverage"].transpose("stim", "neuron")
    if hasattr(cov.data, "dask"):
        return np.asarray(cov.data.compute(scheduler="synchronous"), dtype=bool)
    return np.asarray(cov.values, dtype=bool)


def _output_coords(ds: xr.Dataset) -> dict[str, xr.Variable]:
    """The stim, neuron and time ids and every 1-D coordinate along those dims."""
    coords = {}
    for name in ds.coords:
        var = ds.variables[name]
        if var.dims in (("stim",), ("neuron",), ("time",)):
            data = var.data
            if hasattr(data, "dask"):  # tiny metadata: read it here, not on a cluster
                data = data.compute(scheduler="synchronous")
            coords[name] = xr.Variable(var.dims, np.asarray(data), attrs=var.attrs)
    return coords


def _model_attrs(model: Any) -> dict[str, Any]:
    """Provenance of a prediction: which model made it (netCDF-safe values)."""
    from .._version import __version__

    kind = type(model)
    attrs: dict[str, Any] = {
        "model": kind.__name__,
        "model_class": f"{kind.__module__}.{kind.__qualname__}",
        "nat4xr_version": __version__,
    }
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        attrs["model_parameters"] = int(sum(p.numel() for p in parameters()))
    return attrs


def _model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU without either."""
    for get in ("parameters", "buffers"):
        tensors = getattr(model, get, None)
        first = next(iter(tensors()), None) if callable(tensors) else None
        if first is not None:
            return first.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put a module in eval mode; restore every submodule's training flag on exit."""
    modules = getattr(model, "modules", None)
    if not callable(modules):  # a plain function has no mode
        yield
        return
    flags = [(module, module.training) for module in modules()]
    model.eval()
    try:
        yield
    finally:
        # The model's own train() first (it may do more than set flags), then
        # each flag as it was: a submodule frozen in eval stays in eval.
        model.train(flags[0][1])
        for module, flag in flags:
            if module.training != flag:
                module.training = flag


def _prediction_values(result: Any, n_batch: int, n_neuron: int, n_time: int) -> np.ndarray:
    """The model's output for one batch as a (B, N, T) float32 array on the CPU."""
    expected = (
        f"(B, N, T) = ({n_batch}, {n_neuron}, {n_time}) or "
        f"(B, N, 1, T) = ({n_batch}, {n_neuron}, 1, {n_time}) for a batch of "
        f"{n_batch} stims, {n_neuron} neurons and {n_time} time bins"
    )
    if not isinstance(result, torch.Tensor):
        raise ValueError(
            f"the model returned a {type(result).__name__}; predict expects a "
            f"torch.Tensor of shape {expected}"
        )
    shape = tuple(result.shape)
    if len(shape) == 4 and shape[2] == 1:
        result = result[:, :, 0]
    if tuple(result.shape) != (n_batch, n_neuron, n_time):
        raise ValueError(f"the model returned shape {shape}; predict expects {expected}")
    return result.detach().to(device="cpu", dtype=torch.float32).numpy()
