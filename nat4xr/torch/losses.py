"""Masked losses: entries outside the mask change neither the loss nor its gradient."""

from __future__ import annotations

import torch

__all__ = ["masked_mse", "masked_poisson_nll"]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is True.

    NaN in ``target`` (or anything in ``pred``) where the mask is False
    changes neither the loss nor its gradient. ``pred`` broadcasts against
    ``target`` (e.g. one prediction for all repeats). Zero when nothing is valid.

    Parameters
    ----------
    pred, target : Tensor
        Prediction and observed responses.
    mask : Tensor of bool
        True where ``target`` is valid (``batch["valid_mask"]``).

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> t = torch.tensor([1.0, float("nan"), 3.0])
    >>> masked_mse(torch.tensor([2.0, 0.0, 3.0]), t, ~torch.isnan(t))
    tensor(0.5000)
    """
    pred, target, mask = torch.broadcast_tensors(pred, target, mask)
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    diff = torch.where(mask, pred, zero) - torch.where(mask, target, zero)
    return _masked_mean(diff * diff, mask)


def masked_poisson_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    log_input: bool = False,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Poisson negative log-likelihood over the entries where ``mask`` is True.

    Same terms as ``torch.nn.functional.poisson_nll_loss`` (without the
    Stirling term): ``exp(pred) - target * pred`` when ``log_input``, else
    ``pred - target * log(pred + eps)``, averaged over valid entries. Invalid
    entries affect neither the loss nor the gradient.

    Parameters
    ----------
    pred : Tensor
        Predicted rate (or log-rate when ``log_input``).
    target : Tensor
        Observed counts; NaN allowed where ``mask`` is False.
    mask : Tensor of bool
        True where ``target`` is valid.
    log_input : bool
        ``pred`` is a log-rate.
    eps : float
        Added inside the log when ``log_input`` is False.

    Returns
    -------
    Tensor
        Scalar loss.

    Examples
    --------
    >>> t = torch.tensor([2.0, float("nan")])
    >>> masked_poisson_nll(torch.tensor([0.0, 5.0]), t, ~torch.isnan(t), log_input=True)
    tensor(1.)
    """
    pred, target, mask = torch.broadcast_tensors(pred, target, mask)
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    target = torch.where(mask, target, zero)
    if log_input:
        pred = torch.where(mask, pred, zero)
        values = torch.exp(pred) - target * pred
    else:
        pred = torch.where(mask, pred, torch.ones((), dtype=pred.dtype, device=pred.device))
        values = pred - target * torch.log(pred + eps)
    return _masked_mean(values, mask)
