"""Masked losses: entries outside the mask change neither the loss nor its gradient."""

from __future__ import annotations

import torch

__all__ = ["masked_mse", "masked_poisson_nll"]


def _aligned(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pred``, ``target`` and ``mask`` in ``target``'s shape, or a ValueError naming the shapes.

    A rate ``(B, N, T)`` against responses ``(B, N, R, T)`` is one rate for
    every repeat (as :func:`nat4xr.torch.predict`'s models give ``(B, N, 1, T)``);
    otherwise ``pred`` and ``mask`` must broadcast to ``target``'s shape
    without changing it (broadcasting that grows the target, as ``(1, N, T)``
    against ``(1, N, R, T)`` would, scores every cell against every other).
    """
    if target.ndim == 4 and pred.ndim == 3:
        if pred.shape[:2] != target.shape[:2] or pred.shape[2] != target.shape[3]:
            raise ValueError(
                f"{loss}: a rate of shape {tuple(pred.shape)} does not match responses "
                f"{tuple(target.shape)}; expected (B, N, T) = {_bnt(target)}, "
                f"(B, N, 1, T) or (B, N, R, T)"
            )
        pred = pred.unsqueeze(2)
    for name, t in (("prediction", pred), ("mask", mask)):
        try:
            ok = torch.broadcast_shapes(t.shape, target.shape) == target.shape
        except RuntimeError:
            ok = False
        # fewer dims would broadcast from the right: (N, T) against (R, T)
        ok = ok and (target.ndim != 4 or t.ndim == 4)
        if not ok:
            expected = (
                f"(B, N, T) = {_bnt(target)}, (B, N, 1, T) or (B, N, R, T)"
                if target.ndim == 4
                else f"one that broadcasts to {tuple(target.shape)}"
            )
            raise ValueError(
                f"{loss}: the {name} has shape {tuple(t.shape)}, the responses "
                f"{tuple(target.shape)}; expected {expected}"
            )
    if mask.dtype != torch.bool:
        raise TypeError(f"{loss}: the mask must be bool (batch['valid_mask']), got {mask.dtype}")
    pred, target, mask = torch.broadcast_tensors(pred, target, mask)
    return pred, target, mask


def _bnt(target: torch.Tensor) -> tuple[int, int, int]:
    return (target.shape[0], target.shape[1], target.shape[3])


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; ``values`` must be finite where the mask is False.

    Weighting by the mask as 0/1 floats gives the sum and gradient that
    ``torch.where(mask, values, 0)`` gives (bit for bit on contiguous
    batches; another memory layout may change the order of the sum by an
    ulp) at a fraction of its cost on the CPU, where elementwise work on
    booleans is slow. Half-precision values are summed and counted in
    float32: a float16 count or sum overflows past 65504.
    """
    acc = torch.promote_types(values.dtype, torch.float32)
    total = (values * mask.to(values.dtype)).sum(dtype=acc)
    count = torch.count_nonzero(mask).clamp_min(1).to(acc)
    return (total / count).to(values.dtype)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is True.

    NaN in ``target`` (or anything in ``pred``) where the mask is False
    changes neither the loss nor its gradient. ``pred`` broadcasts against
    ``target`` without changing its shape: against responses ``(B, N, R, T)``
    a rate ``(B, N, T)`` or ``(B, N, 1, T)`` is one prediction for all
    repeats; other shapes raise ``ValueError``. Zero when nothing is valid.

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
    pred, target, mask = _aligned(pred, target, mask, "masked_mse")
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
        Predicted rate (or log-rate when ``log_input``); against responses
        ``(B, N, R, T)``: ``(B, N, T)``, ``(B, N, 1, T)`` or ``(B, N, R, T)``.
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
    pred, target, mask = _aligned(pred, target, mask, "masked_poisson_nll")
    zero = torch.zeros((), dtype=target.dtype, device=target.device)
    target = torch.where(mask, target, zero)
    if log_input:
        pred = torch.where(mask, pred, zero)
        values = torch.exp(pred) - target * pred
    else:
        pred = torch.where(mask, pred, torch.ones((), dtype=pred.dtype, device=pred.device))
        values = pred - target * torch.log(pred + eps)
    return _masked_mean(values, mask)
