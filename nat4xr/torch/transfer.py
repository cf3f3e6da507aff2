"""Readout refit: a trained core serving cells it never saw, :func:`refit_readout`.

The paper's generalization test pre-trains a population model without a
recording site's cells, then fits only a new readout on that site's cells;
cross-area transfer is the same with a core trained on one area and readouts
fitted on the other's cells. Both are one call here.

The protocol a model must follow (the models of :mod:`nat4xr.torch.models`
do; a user's own model qualifies by having the same parts):

- ``core``: an ``nn.Module`` holding everything shared by all cells;
- ``readout``: an ``nn.Module`` holding everything whose size depends on
  the number of cells;
- ``with_readout(n)``: a new model of ``n`` cells whose ``core`` is this
  model's ``core`` (the same module, not a copy) with a fresh readout;
- the model maps stims ``(B, 1, F, T)`` to non-negative rates
  ``(B, N, 1, T)`` (as :func:`~nat4xr.torch.fit` expects); an ``n_freq``
  attribute, when present, is checked against the Dataset's ``freq`` axis.
"""

from __future__ import annotations

from typing import Any

import xarray as xr
from torch import nn

from .training import fit

__all__ = ["refit_readout"]

PROTOCOL = ("core", "readout", "with_readout")


def refit_readout(
    model: nn.Module, ds: xr.Dataset, **fit_kwargs: Any
) -> tuple[nn.Module, xr.Dataset]:
    """Fit a fresh readout for the cells of ``ds`` on ``model``'s core, the core left untouched.

    ``model.with_readout(n)`` (``n`` the neurons of ``ds``) gives a model
    sharing ``model``'s core; :func:`~nat4xr.torch.fit` then trains only
    its readout's parameters on the est sounds of ``ds``. The core's
    parameters keep their values exactly (bit for bit), so the new model and
    ``model`` go on sharing one core. ``ds`` may be another Dataset than the
    one the core was trained on (held-out cells of the same recording, or
    another area), as long as its frequency axis is the model's.

    Parameters
    ----------
    model : torch.nn.Module
        A model with ``core``, ``readout`` and ``with_readout(n)`` (see
        :mod:`nat4xr.torch.transfer` for the protocol), e.g. any population
        model of :mod:`nat4xr.torch.models` except ``SingleCNN``.
    ds : xarray.Dataset
        A nat4xr Dataset of the cells to fit the readout for.
    **fit_kwargs
        Passed to :func:`~nat4xr.torch.fit` (``max_epochs``, ``lr``,
        ``restarts``...), except ``params``, which this function sets.
        ``stages`` may not set ``params`` either.

    Returns
    -------
    new_model : torch.nn.Module
        The model of the cells of ``ds`` (``new_model.core is model.core``).
    history : xarray.Dataset
        :func:`~nat4xr.torch.fit`'s history.

    Raises
    ------
    TypeError
        ``model`` lacks a part of the protocol, ``with_readout`` does not
        share the core, or ``params`` is passed.
    ValueError
        ``ds`` has no ``freq`` axis or one of another size than the
        model's ``n_freq``; anything :func:`~nat4xr.torch.fit` refuses.

    Notes
    -----
    A core with running statistics (``BatchNorm`` buffers) would update
    them in training mode even though no parameter is trained; the
    population models of :mod:`nat4xr.torch.models` have none.

    Examples
    --------
    >>> import torch, nat4xr
    >>> from nat4xr.torch import models, refit_readout
    >>> ds = nat4xr.synthetic.random_dataset(n_est=6, n_val=2, n_neurons=4, n_time=20, n_freq=3)
    >>> net = models.PopLN(10, n_freq=3, rank=2, n_taps=4)
    >>> before = [p.clone() for p in net.core.parameters()]
    >>> new, history = refit_readout(net, ds, max_epochs=2, patience=1, progress=False)
    >>> new.core is net.core, new.n_neurons
    (True, 4)
    >>> all(torch.equal(a, b) for a, b in zip(before, net.core.parameters()))
    True
    """
    missing = [name for name in PROTOCOL if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"refit_readout needs a model with `core`, `readout` and `with_readout(n)`; "
            f"{type(model).__name__} has no {', '.join(f'`{m}`' for m in missing)}. "
            "Give the model a `core` module (shared by all cells), a `readout` module (sized "
            "by the number of cells) and a `with_readout(n)` method returning a model with the "
            "same core and a fresh readout of n cells (see nat4xr.torch.transfer)"
        )
    if "params" in fit_kwargs:
        raise TypeError(
            "refit_readout trains the new readout's parameters only and sets `params` itself; "
            "call nat4xr.torch.fit directly to train other parameters"
        )
    for stage in fit_kwargs.get("stages") or ():
        if stage.get("params") is not None:
            raise TypeError(
                "refit_readout trains the new readout's parameters only: a stage may not set "
                "`params`; call nat4xr.torch.fit directly to train other parameters"
            )
    if "freq" not in ds.sizes:
        raise ValueError(
            f"the Dataset has no 'freq' axis (dims {tuple(ds.sizes)}): refit_readout needs "
            "a nat4xr Dataset with a spectrogram"
        )
    n_freq = getattr(model, "n_freq", None)
    if n_freq is not None and ds.sizes["freq"] != n_freq:
        area = ds.attrs.get("area")
        raise ValueError(
            f"the Dataset{f' ({area})' if area else ''} has {ds.sizes['freq']} frequency bands "
            f"but the model's core takes {n_freq}: a core transfers only to sounds with the "
            "same spectrogram bands (rebuild the Dataset with the core's bands)"
        )
    if "neuron" not in ds.sizes or ds.sizes["neuron"] == 0:
        raise ValueError("the Dataset has no neurons: nothing to fit a readout for")
    new = model.with_readout(int(ds.sizes["neuron"]))
    if not isinstance(new, nn.Module) or not all(hasattr(new, n) for n in ("core", "readout")):
        raise TypeError(
            f"{type(model).__name__}.with_readout({int(ds.sizes['neuron'])}) must return a "
            f"torch.nn.Module with `core` and `readout`, got {type(new).__name__}"
        )
    core_ids = {id(p) for p in model.core.parameters()}
    new_core_ids = {id(p) for p in new.core.parameters()}
    if new_core_ids != core_ids:
        raise TypeError(
            f"{type(model).__name__}.with_readout must return a model whose `core` is the "
            "original model's core (the same parameters, not a copy)"
        )
    readout = [p for p in new.readout.parameters() if id(p) not in core_ids]
    if not readout:
        raise TypeError(
            f"{type(model).__name__}.with_readout returned a model with no readout parameters "
            "of its own: nothing to fit"
        )
    history = fit(new, ds, params=readout, **fit_kwargs)
    return new, history
