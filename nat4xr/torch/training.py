"""Training: :func:`fit` trains a model on the estimation sounds with early stopping.

One plain loop over :func:`~nat4xr.torch.to_torch`'s batches: a masked loss
(so NaN, the encoding of missing data, never reaches it), Adam, early
stopping on held-out estimation sounds with the best weights restored,
random restarts keeping the best, optional stages (the paper's two-stage
fit), and the history returned as an ``xarray.Dataset``. The validation
sounds are never read. Under ``torchrun`` (an initialized
``torch.distributed`` process group) the same call shards the batches with a
``DistributedSampler``, averages the gradients and reduces the losses, so
every process takes the same early-stopping decisions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..selection import select
from .loader import to_torch
from .losses import masked_mse, masked_poisson_nll

__all__ = ["EarlyStopping", "fit"]

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "poisson": masked_poisson_nll,
    "mse": masked_mse,
}
#: A cell's trial means vary if their spread exceeds this many units of their float
#: type's epsilon, relative to the size of its single trials; less is rounding.
RESOLUTION = 8
#: Settings a stage dict may override.
STAGE_KEYS = ("lr", "weight_decay", "max_epochs", "patience", "tolerance", "params")
#: With ``num_workers=0``, read the next batch on a thread while the model computes.
#: The batches and their order are the same either way (False: read in turn).
READ_AHEAD = True


class EarlyStopping:
    """Tracks the best loss; says when ``patience`` epochs passed without improvement.

    An epoch improves when its loss is below the best so far by more than
    ``tolerance``.

    Parameters
    ----------
    patience : int
        Epochs without improvement before stopping (at least 1).
    tolerance : float
        Smallest decrease that counts as an improvement.

    Examples
    --------
    >>> stop = EarlyStopping(patience=2, tolerance=0.0)
    >>> [stop.step(loss) for loss in [3.0, 2.0, 2.5, 2.1]], stop.best_epoch, stop.stop
    ([True, True, False, False], 1, True)
    """

    def __init__(self, patience: int, tolerance: float = 0.0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"patience must be an int of at least 1 epoch, got {patience!r}: "
                "patience 0 would stop before any improvement could be seen"
            )
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
        self.patience = patience
        self.tolerance = float(tolerance)
        self.best = math.inf
        self.best_epoch: int | None = None
        self.epoch = -1
        self.wait = 0

    def start(self, loss: float) -> None:
        """Count the starting weights' ``loss`` as the best so far (epoch -1)."""
        self.best = float(loss)

    def step(self, loss: float) -> bool:
        """Record the next epoch's loss; True when it improved on the best."""
        self.epoch += 1
        if loss < self.best - self.tolerance:
            self.best, self.best_epoch, self.wait = float(loss), self.epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def stop(self) -> bool:
        """True once ``patience`` epochs in a row did not improve."""
        return self.wait >= self.patience


def fit(
    model: nn.Module,
    ds: xr.Dataset,
    *,
    loss: str = "poisson",
    holdout: float | str = 0.1,
    batch_size: int = 8,
    max_epochs: int = 200,
    patience: int = 20,
    tolerance: float = 1e-4,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    restarts: int = 1,
    params: Iterable[nn.Parameter] | None = None,
    stages: Sequence[Mapping[str, Any]] | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    loader_kwargs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Train ``model`` on the estimation sounds of ``ds``; return the history.

    Only the sounds whose ``subset`` is ``'est'`` are read. A part of them
    (``holdout``) is held out: after each epoch the model's loss on them
    decides early stopping, and the weights of the best epoch are restored
    at the end. The loss is masked (:func:`~nat4xr.torch.masked_poisson_nll`
    or :func:`~nat4xr.torch.masked_mse` over ``valid_mask``), so missing
    trials and cells without a sound count for nothing. Optimizer: Adam.

    Parameters
    ----------
    model : torch.nn.Module
        Maps stims ``(B, 1, F, T)`` to rates ``(B, N, 1, T)`` (or
        ``(B, N, T)``), N the Dataset's neurons; non-negative for the
        Poisson loss.
    ds : xarray.Dataset
        A nat4xr Dataset; its val sounds are ignored.
    loss : {'poisson', 'mse'}
        Training and early-stopping loss.
    holdout : float or str
        A fraction of the est sounds held out for early stopping, drawn with
        ``seed`` by :func:`nat4xr.splits.assign_holdout`; or the name of a
        bool stim coordinate (``'holdout'``, as ``assign_holdout`` writes)
        whose True est sounds are held out.
    batch_size : int
        Sounds per batch (per process under ``torchrun``, where a
        ``DistributedSampler`` deals the training sounds out, repeating up to
        one per process so that all get as many; the holdout is split
        without repeats).
    max_epochs, patience, tolerance : int, int, float
        At most ``max_epochs`` epochs; stop after ``patience`` epochs
        without the holdout loss falling by more than ``tolerance``.
    lr, weight_decay : float
        Adam's learning rate and weight decay.
    restarts : int
        Fits from different starting points, keeping the one with the
        lowest holdout loss (NEMS's fits used 10). The first starts from the
        model as given, the others from ``reset_parameters`` drawn with
        ``seed`` (only the trained parameters change).
    params : iterable of Parameter, optional
        Train only these (e.g. ``model.readout.parameters()``); the others
        keep their values exactly.
    stages : list of dict, optional
        Successive fits, each starting from the previous one's best
        weights, each dict overriding ``lr``, ``weight_decay``,
        ``max_epochs``, ``patience``, ``tolerance`` or ``params``; restarts
        apply to the first. The paper's ``tfinit.n.lr1e3.et3.rb10.es20-newtf.n.lr1e4``
        is ``restarts=10, stages=[{"lr": 1e-3}, {"lr": 1e-4}]``.
    device : str or torch.device
        Where the model and batches go (``'cuda'``: pinned memory and
        non-blocking copies).
    num_workers : int
        DataLoader worker processes. With 0, this process reads the batches,
        each on a thread while the model computes on the one before (same
        batches, same order, bitwise the same fit).
    seed : int
        Seed of the holdout draw, the batch order and the restarts.
    progress : bool
        Show a tqdm bar per epoch (on rank 0 only under ``torchrun``).
    loader_kwargs : dict, optional
        More :func:`~nat4xr.torch.to_torch` arguments (``preload``,
        ``multiprocessing_context``...).

    Returns
    -------
    xarray.Dataset
        Over ``epoch`` (with a ``stage`` coordinate): ``train_loss`` (mean
        over the valid bins of the epoch's batches), ``holdout_loss``,
        ``holdout_cc`` (mean over cells of Pearson's r between the
        prediction and the mean of the valid trials, over the held-out
        sounds' bins with data; cells whose prediction or response is
        constant there have none and are left out) and ``seconds``;
        over ``restart``: ``restart_loss``, each restart's best holdout loss
        in the first stage. ``attrs``: ``best_epoch`` (the epoch whose
        weights the model holds), every setting, the held-out stim ids.
        The model is left holding the best weights, in the train/eval mode
        it had.

    Raises
    ------
    ValueError
        No est sounds, an empty holdout or training set, patience below 1,
        ``params`` not in the model, a model output of the wrong shape or
        with negative rates (Poisson loss), a neuron count the model does
        not produce.

    Examples
    --------
    >>> import nat4xr
    >>> from nat4xr.torch import models
    >>> ds = nat4xr.synthetic.random_dataset(n_est=10, n_val=2, n_neurons=3, n_time=20, seed=0)
    >>> net = models.PopLN(3, n_freq=ds.sizes["freq"], rank=2, n_taps=3)
    >>> history = fit(net, ds, max_epochs=3, patience=2, progress=False)
    >>> history.sizes["epoch"] <= 3, history.attrs["n_holdout_stims"]
    (True, 1)
    """
    settings = _check_settings(
        model, loss, batch_size, max_epochs, patience, tolerance, lr, weight_decay, restarts
    )
    est, held = _split(ds, holdout, seed)
    n_neurons, n_time = ds.sizes["neuron"], ds.sizes["time"]
    stage_list = _stages(stages, lr, weight_decay, max_epochs, patience, tolerance, params, model)
    world, rank = _distributed()
    device = torch.device(device)
    pin = device.type == "cuda"
    kwargs = dict(loader_kwargs or {})
    for key in ("batch_size", "shuffle", "seed", "sampler", "num_workers", "drop_last"):
        if key in kwargs:
            raise TypeError(f"fit sets {key} itself; pass it to fit, not in loader_kwargs")
    kwargs.setdefault("pin_memory", pin)
    train_ds = select(est, stim=np.flatnonzero(~held))
    hold_ds = select(est, stim=np.flatnonzero(held))
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            range(train_ds.sizes["stim"]), num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        train_loader = to_torch(
            train_ds, batch_size, sampler=sampler, num_workers=num_workers, **kwargs
        )
        hold_order = list(range(rank, hold_ds.sizes["stim"], world))
        hold_loader = to_torch(
            hold_ds, batch_size, sampler=hold_order, num_workers=num_workers, **kwargs
        )
    else:
        train_loader = to_torch(
            train_ds, batch_size, shuffle=True, seed=seed, num_workers=num_workers, **kwargs
        )
        hold_loader = to_torch(hold_ds, batch_size, num_workers=num_workers, **kwargs)

    was_training = model.training
    model.to(device)
    if world > 1:
        _broadcast(model)
    # Without worker processes, one thread reads the next batch while the model
    # computes on this one (the reading is NumPy copies and decompression, which
    # release the GIL); workers already read ahead in their own processes.
    reader = (
        ThreadPoolExecutor(1, thread_name_prefix="nat4xr-fit-read")
        if num_workers == 0 and READ_AHEAD
        else None
    )
    loop = _Loop(
        model, LOSSES[loss], loss, device, pin, n_neurons, n_time, world, train_loader, hold_loader,
        reader,
    )  # fmt: skip
    total = stage_list[0]["max_epochs"] * restarts + sum(s["max_epochs"] for s in stage_list[1:])
    bar = _progress(progress and rank == 0, total)
    rows: list[dict[str, float]] = []
    restart_loss: list[float] = []
    best_epoch, best_restart = -1, 0
    try:
        for i, stage in enumerate(stage_list):
            result = _fit_stage(loop, stage, i, restarts if i == 0 else 1, seed, bar)
            if i == 0:
                restart_loss = result["restart_loss"]
            offset = len(rows)
            rows.extend(result["rows"])
            if result["best_epoch"] is not None:
                best_epoch = offset + result["best_epoch"]
            if i == 0:
                best_restart = result["best_restart"]
    finally:
        bar.close()
        model.train(was_training)
        if reader is not None:
            reader.shutdown(wait=True)
    attrs = {
        **settings,
        "best_epoch": int(best_epoch),
        "best_holdout_loss": float(rows[best_epoch]["holdout_loss"]) if best_epoch >= 0 else np.nan,
        "best_restart": int(best_restart),
        "holdout": holdout if isinstance(holdout, str) else float(holdout),
        "holdout_stims": json.dumps([str(s) for s in hold_ds["stim"].values]),
        "n_train_stims": int(train_ds.sizes["stim"]),
        "n_holdout_stims": int(hold_ds.sizes["stim"]),
        "n_neurons": int(n_neurons),
        "seed": int(seed),
        "device": str(device),
        "num_workers": int(num_workers),
        "world_size": int(world),
        "stages": json.dumps([{k: v for k, v in s.items() if k != "params"} for s in stage_list]),
        "n_trained_parameters": json.dumps(
            [sum(p.numel() for p in s["params"]) for s in stage_list]
        ),
        "model": type(model).__name__,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    keyword = getattr(model, "keyword", None)
    if isinstance(keyword, str) and keyword:
        attrs["keyword"] = keyword
    return _history(rows, restart_loss, attrs)


# -- checks -------------------------------------------------------------------------------


def _check_settings(
    model: Any,
    loss: str,
    batch_size: int,
    max_epochs: int,
    patience: int,
    tolerance: float,
    lr: float,
    weight_decay: float,
    restarts: int,
) -> dict[str, Any]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("restarts", restarts)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    EarlyStopping(patience, tolerance)  # the same checks, once, before any work
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return {
        "loss": loss,
        "batch_size": int(batch_size),
        "max_epochs": int(max_epochs),
        "patience": int(patience),
        "tolerance": float(tolerance),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "restarts": int(restarts),
        "optimizer": "Adam",
    }


def _as_bool(values: np.ndarray, name: str) -> np.ndarray:
    """A stim coordinate's values on est sounds as bool, refusing anything else."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    if values.dtype.kind in "iuf" and np.isin(values, [0, 1]).all():
        return values.astype(bool)
    if values.dtype.kind == "O" and all(v in (True, False) for v in values.tolist()):
        return values.astype(bool)
    odd = sorted({str(v) for v in values.tolist()} - {"True", "False", "0", "1"})[:5]
    raise ValueError(
        f"the {name!r} coordinate must be True/False on the estimation sounds, found {odd}; "
        "write it with nat4xr.splits.assign_holdout"
    )


def _split(ds: xr.Dataset, holdout: float | str, seed: int) -> tuple[xr.Dataset, np.ndarray]:
    """The est sounds of ``ds`` and a bool mask of the held-out ones among them."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    if "subset" not in ds.coords:
        raise ValueError("the Dataset has no 'subset' stim coordinate to find estimation sounds")
    subset = np.asarray(ds["subset"].values).astype(str)
    est_pos = np.flatnonzero(subset == "est")
    if len(est_pos) == 0:
        raise ValueError(
            f"the Dataset has no estimation sounds (subset 'est') to train on; its subsets are "
            f"{sorted(set(subset.tolist()))}"
        )
    est = select(ds, stim=est_pos)  # nat4xr's selection: batches still read the file's chunks
    if isinstance(holdout, str):
        if holdout not in est.coords or est[holdout].dims != ("stim",):
            raise ValueError(
                f"holdout={holdout!r} names no stim coordinate of the Dataset; "
                "give a fraction or write one with nat4xr.splits.assign_holdout"
            )
        held = _as_bool(est[holdout].values, holdout)
    elif isinstance(holdout, (float, int)) and not isinstance(holdout, bool):
        if not 0.0 < float(holdout) < 1.0:
            raise ValueError(f"holdout must be a fraction between 0 and 1, got {holdout!r}")
        from ..splits import assign_holdout

        if len(est_pos) < 2:
            raise ValueError(
                "one estimation sound cannot be split into training and holdout sounds"
            )
        held = _as_bool(assign_holdout(est, float(holdout), seed)["holdout"].values, "holdout")
    else:
        raise TypeError(f"holdout must be a fraction or a coordinate name, got {holdout!r}")
    if not held.any():
        raise ValueError("the holdout is empty: no estimation sound is held out for early stopping")
    if held.all():
        raise ValueError("every estimation sound is held out: none is left to train on")
    return est, held


def _stages(
    stages: Sequence[Mapping[str, Any]] | None,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    patience: int,
    tolerance: float,
    params: Iterable[nn.Parameter] | None,
    model: nn.Module,
) -> list[dict[str, Any]]:
    """Every stage's full settings, with its parameter list checked against the model."""
    if params is not None:  # a generator (model.parameters()) is read once, for every stage
        params = list(params)
    base = {"lr": lr, "weight_decay": weight_decay, "max_epochs": max_epochs,
            "patience": patience, "tolerance": tolerance, "params": params}  # fmt: skip
    if stages is not None and (isinstance(stages, Mapping) or len(stages) == 0):
        raise ValueError("stages must be a non-empty list of dicts")
    out = []
    for i, stage in enumerate(stages or [{}]):
        if not isinstance(stage, Mapping):
            raise TypeError(f"stage {i} must be a dict of settings, got {type(stage).__name__}")
        if "params" in stage and stage["params"] is not None:
            stage = {**stage, "params": list(stage["params"])}
        unknown = set(stage) - set(STAGE_KEYS)
        if unknown:
            raise ValueError(f"stage {i} sets {sorted(unknown)}; a stage may set {STAGE_KEYS}")
        full = {**base, **stage}
        _check_settings(model, "poisson", 1, full["max_epochs"], full["patience"],
                        full["tolerance"], full["lr"], full["weight_decay"], 1)  # fmt: skip
        full["params"] = _trainable(model, full["params"])
        out.append(full)
    return out


def _trainable(model: nn.Module, params: Iterable[nn.Parameter] | None) -> list[nn.Parameter]:
    if params is None:
        chosen = [p for p in model.parameters() if p.requires_grad]
    else:
        chosen = list(params)
        if not all(isinstance(p, torch.Tensor) for p in chosen):
            raise TypeError("params must hold torch Parameters (e.g. model.readout.parameters())")
        own = {id(p) for p in model.parameters()}
        foreign = [tuple(p.shape) for p in chosen if id(p) not in own]
        if foreign:
            raise ValueError(
                f"params lists {len(foreign)} parameter(s) that are not in the model "
                f"(shapes {foreign[:3]}); pass parameters of the model being fitted"
            )
        seen: set[int] = set()
        chosen = [p for p in chosen if not (id(p) in seen or seen.add(id(p)))]
    if not chosen:
        raise ValueError("no parameters to train (params is empty or nothing requires grad)")
    return chosen


# -- the loop ----------------------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _broadcast(model: nn.Module) -> None:
    """Every process starts from rank 0's weights."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(values)
    return values


def _reshift(moments: torch.Tensor, shift: dict[str, torch.Tensor]) -> None:
    """Move this rank's per-cell moments to the shift every rank shares (in place).

    ``moments`` is ``(6, N)``: n, sx, sy, sxx, syy, sxy about this rank's
    shifts. The shared shift of a cell is the mean of the ranks' shifts that
    hold data of it (each near the cell's mean, so the move loses nothing);
    a collective call, made by every rank, with or without holdout batches.
    """
    n_n = moments.shape[1]
    local = torch.zeros(3, n_n, dtype=torch.float64, device=moments.device)
    if shift:
        known = shift["known"].double()
        local[0] = shift["x"].flatten().double() * known
        local[1] = shift["y"].flatten().double() * known
        local[2] = known
    common = _all_reduce(local.clone())
    common[:2] /= common[2].clamp_min(1)
    dx, dy = local[0] - common[0], local[1] - common[1]  # 0 where this rank has no shift
    n, sx, sy, sxx, syy, sxy = moments
    sxy += dx * sy + dy * sx + n * dx * dy
    sxx += 2 * dx * sx + n * dx * dx
    syy += 2 * dy * sy + n * dy * dy
    sx += n * dx
    sy += n * dy


class _Loop:
    """Training and evaluation epochs of one model over fixed loaders."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        loss_name: str,
        device: torch.device,
        pin: bool,
        n_neurons: int,
        n_time: int,
        world: int,
        train_loader: Any,
        hold_loader: Any,
        reader: ThreadPoolExecutor | None = None,
    ) -> None:
        self.model, self.loss_fn, self.loss_name = model, loss_fn, loss_name
        self.device, self.pin = device, pin
        self.n_neurons, self.n_time, self.world = n_neurons, n_time, world
        self.train_loader, self.hold_loader = train_loader, hold_loader
        self.reader = reader
        self.epochs_run = 0
        self.eps = torch.finfo(torch.float32).eps  # of the holdout moments' float type

    def _batches(self, loader: Any) -> contextlib.closing[Iterator[dict[str, Any]]]:
        """The loader's batches, read one ahead on the reader thread if there is one."""
        return contextlib.closing(_read_ahead(loader, self.reader))

    def _batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        to = {"device": self.device, "non_blocking": self.pin}
        return batch["stims"].to(**to), batch["responses"].to(**to), batch["valid_mask"].to(**to)

    def _output(self, pred: Any, n_batch: int) -> torch.Tensor:
        expected = (n_batch, self.n_neurons, 1, self.n_time)
        if not isinstance(pred, torch.Tensor):
            raise ValueError(
                f"the model returned a {type(pred).__name__}; fit expects a tensor of rates "
                f"of shape (B, N, 1, T) = {expected}"
            )
        if pred.dim() == 3:
            pred = pred[:, :, None, :]
        if tuple(pred.shape) != expected:
            raise ValueError(
                f"the model returned shape {tuple(pred.shape)}; fit expects rates of shape "
                f"(B, N, 1, T) = {expected} for {n_batch} stims, {self.n_neurons} neurons "
                f"and {self.n_time} time bins"
            )
        # one reduction, no (B, N, 1, T) mask; NaN is not < 0 either way
        if self.loss_name == "poisson" and pred.numel() and bool(pred.detach().amin() < 0):
            raise ValueError(
                f"the model returned negative rates (min {float(pred.detach().min()):.3g}); "
                "the Poisson loss needs rates >= 0: end the model in a non-negative nonlinearity "
                "(e.g. layers.DoubleExponential) or use loss='mse'"
            )
        return pred

    def train_epoch(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> float:
        self.model.train()
        self.train_loader.batch_sampler.set_epoch(self.epochs_run)
        self.epochs_run += 1
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with self._batches(self.train_loader) as batches:
            for batch in batches:
                self._train_step(batch, optimizer, params, total)
                del batch  # its arrays go back to the loader's pool before the read after next
        if self.world > 1:
            _all_reduce(total)
        if total[1] == 0:
            raise ValueError(
                "the training sounds hold no valid response bin (all NaN): "
                "select cells and sounds with data (ds.nat4.prune())"
            )
        return float(total[0] / total[1])

    def _train_step(
        self,
        batch: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        total: torch.Tensor,
    ) -> None:
        stims, resp, mask = self._batch(batch)
        pred = self._output(self.model(stims), stims.shape[0])
        value = self.loss_fn(pred, resp, mask)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if self.world > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _all_reduce(p.grad).div_(self.world)
        optimizer.step()
        n = torch.count_nonzero(mask)  # the responses' shape: every entry is one bin
        total += torch.stack([value.detach().double() * n, n.double()])

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Holdout loss (mean over valid bins) and mean over cells of the correlation."""
        self.model.eval()
        n_n = self.n_neurons
        # loss sum, bins; then per cell: n, sx, sy, sxx, syy, sxy about the cell's shift,
        # and the valid trials' count and sum of squares about it (their size)
        sums = torch.zeros(2 + 8 * n_n, dtype=torch.float64, device=self.device)
        shift: dict[str, torch.Tensor] = {}
        with self._batches(self.hold_loader) as batches:
            for batch in batches:
                self._holdout_sums(batch, sums, shift)
                del batch
        if self.world > 1:  # the ranks' moments, about one shift per cell, then summed
            _reshift(sums[2 : 2 + 6 * n_n].view(6, n_n), shift)
            _all_reduce(sums)
        if sums[1] == 0:
            raise ValueError(
                "the held-out sounds hold no valid response bin (all NaN): choose another "
                "holdout, or select cells and sounds with data (ds.nat4.prune())"
            )
        loss = float(sums[0] / sums[1])
        # moments about a value near each cell's mean: no cancellation, and a constant
        # prediction has exactly zero variance. Trial means carry rounding (a constant
        # 1/3 differs by an ulp from bin to bin): a variance of theirs below the
        # resolution of the trials' own size is none. No variance, no correlation.
        n, sx, sy, sxx, syy, sxy, n_trials, s_trials = sums[2:].view(8, n_n).cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = sxy - sx * sy / n
            vx, vy = sxx - sx * sx / n, syy - sy * sy / n
            noise = n * (RESOLUTION * self.eps) ** 2 * (s_trials / n_trials)
            ok = (n > 1) & (vx > 0) & (vy > noise)
            cc = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), np.nan)
        finite = cc[np.isfinite(cc)]
        return loss, float(finite.mean()) if finite.size else math.nan

    def _holdout_sums(
        self, batch: dict[str, Any], sums: torch.Tensor, shift: dict[str, torch.Tensor]
    ) -> None:
        """Add one batch's loss and per-cell moments of prediction and trial mean to ``sums``.

        The moments are of values shifted by each cell's means in the first
        batch that holds data of it (``shift``: ``"x"``, ``"y"`` and
        ``"known"``, per cell): the correlation does not change, and float32
        sums over a sound's time bins lose nothing to an offset (float64
        elementwise work on every bin cost several times more). Before a
        cell's shift is set its bins all had weight 0, so every sum of it is
        still an exact zero.

        Invalid bins enter as zeros with weight 0, in float arithmetic: the
        boolean mask is converted once (elementwise work on booleans costs
        several times what it costs on floats). With several trials per
        sound, the valid trials' count and sum of squares about the shift
        are summed too: the size against which a spread of the trial means
        is told from their rounding.
        """
        stims, resp, mask = self._batch(batch)
        pred = self._output(self.model(stims), stims.shape[0])
        n = torch.count_nonzero(mask)
        sums[0] += self.loss_fn(pred, resp, mask).double() * n
        sums[1] += n
        dtype = torch.promote_types(resp.dtype, torch.float32)  # float16 sums overflow
        self.eps = torch.finfo(dtype).eps
        values = torch.nan_to_num(resp.to(dtype), nan=0.0)  # finite; a bin's weight decides
        trials = mask.to(dtype)  # (B, N, R, T): 1 at a valid trial's bin, else 0
        if mask.shape[2] == 1:
            w = trials[:, :, 0]  # (B, N, T)
        else:
            count = trials.sum(dim=2)
            w = count.clamp(max=1)  # whole counts: 1 where any trial is valid, else 0
        # NaN or inf predicted for a bin without data must not reach the moments; at
        # a bin with data it makes the loss non-finite, which stops the fit
        x = torch.nan_to_num(pred[:, :, 0].to(dtype), nan=0.0)
        if not shift:
            shift.update(
                x=torch.zeros((self.n_neurons, 1), dtype=dtype, device=x.device),
                y=torch.zeros((self.n_neurons, 1), dtype=dtype, device=x.device),
                known=torch.zeros(self.n_neurons, dtype=torch.bool, device=x.device),
            )
        fresh = ~shift["known"] & (w.sum(dim=(0, 2)) > 0)  # cells with their first data
        if bool(fresh.any()):  # their means over this batch's valid bins
            for key, v, weight in (("x", x, w), ("y", values, trials)):
                dims = tuple(d for d in range(v.dim()) if d != 1)
                total = (v * weight).sum(dim=dims, dtype=torch.float64)
                mean = total / weight.sum(dim=dims, dtype=torch.float64).clamp_min(1)
                shift[key] = torch.where(fresh[:, None], mean.to(dtype)[:, None], shift[key])
            shift["known"] |= fresh
        # shifted before any sum: float32 sums of values far from zero lose their digits
        x = x.sub_(shift["x"]).mul_(w)
        if mask.shape[2] == 1:  # one trial per sound (est): its values
            y = values[:, :, 0].sub_(shift["y"]).mul_(w)
        else:  # the mean over each bin's valid trials
            values = values.sub_(shift["y"][:, None]).mul_(trials)
            size = torch.linalg.vecdot(values, values).sum(dim=2)  # (B, N)
            y = values.sum(dim=2).div_(count.clamp_(min=1))
        per_sound = [w.sum(dim=2), x.sum(dim=2), y.sum(dim=2), torch.linalg.vecdot(x, x),
                     torch.linalg.vecdot(y, y), torch.linalg.vecdot(x, y)]  # fmt: skip
        if mask.shape[2] == 1:
            per_sound += per_sound[::4]  # the trials are the bins
        else:
            per_sound += [trials.sum(dim=(2, 3)), size]
        sums[2:] += torch.stack(per_sound).sum(dim=1, dtype=torch.float64).flatten()


_END = object()


def _read_ahead(loader: Any, reader: ThreadPoolExecutor | None) -> Iterator[dict[str, Any]]:
    """``loader``'s batches in order; with a ``reader``, each read there while the last is used.

    The iterator is made here, in the calling thread, so that whatever it
    draws from torch's global generator is drawn exactly as a plain loop
    would; only the reads move. A read's error is raised here. Closing the
    generator (the ``with`` of :meth:`_Loop._batches`) waits for a read in
    flight, so no read outlives the loop that asked for it.
    """
    if reader is None:
        yield from loader
        return
    batches = iter(loader)
    pending = reader.submit(next, batches, _END)
    try:
        while True:
            batch = pending.result()
            if batch is _END:
                return
            pending = reader.submit(next, batches, _END)
            yield batch
            del batch
    finally:
        pending.cancel()
        with contextlib.suppress(BaseException):
            pending.result()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _reinitialize(model: nn.Module, trained: list[nn.Parameter], seed: int, restart: int) -> None:
    """Draw the trained parameters afresh, reproducibly; the others keep their values."""
    keep = {id(p) for p in trained}
    frozen = [(p, p.detach().clone()) for p in model.parameters() if id(p) not in keep]
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(restart))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1_000_003 + int(restart))
        if callable(getattr(model, "reset_parameters", None)):
            _call_reset(model, generator)
        else:
            for module in model.modules():
                if module is not model and callable(getattr(module, "reset_parameters", None)):
                    _call_reset(module, generator)
    with torch.no_grad():
        for p, value in frozen:
            p.copy_(value)


def _call_reset(module: nn.Module, generator: torch.Generator) -> None:
    try:
        module.reset_parameters(generator)
    except TypeError:  # torch's own layers draw from the (forked, seeded) global generator
        module.reset_parameters()


def _fit_stage(
    loop: _Loop, stage: dict[str, Any], index: int, restarts: int, seed: int, bar: Any
) -> dict[str, Any]:
    model = loop.model
    params = stage["params"]
    start = _state(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in params}
    results = []
    try:
        for p, _ in flags:  # gradients only for what is trained
            p.requires_grad_(id(p) in chosen)
        for restart in range(restarts):
            if restart > 0:
                model.load_state_dict(start)
                _reinitialize(model, params, seed, restart)
                if loop.world > 1:
                    _broadcast(model)
            results.append(_fit_once(loop, stage, index, restart, bar))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    best = min(range(len(results)), key=lambda r: results[r]["best_loss"])
    model.load_state_dict(results[best]["state"])
    return {
        "rows": results[best]["rows"],
        "best_epoch": results[best]["best_epoch"],
        "best_restart": best,
        "restart_loss": [r["best_loss"] for r in results],
    }


def _fit_once(loop: _Loop, stage: dict[str, Any], index: int, restart: int, bar: Any) -> dict:
    model = loop.model
    optimizer = torch.optim.Adam(
        stage["params"], lr=stage["lr"], weight_decay=stage["weight_decay"]
    )
    stopper = EarlyStopping(stage["patience"], stage["tolerance"])
    best_state = None
    if index > 0:  # a later stage keeps the previous stage's weights unless it beats them
        stopper.start(loop.evaluate()[0])
        best_state = _state(model)
    rows = []
    for epoch in range(stage["max_epochs"]):
        tic = time.perf_counter()
        train_loss = loop.train_epoch(optimizer, stage["params"])
        hold_loss, hold_cc = loop.evaluate()
        if not (math.isfinite(train_loss) and math.isfinite(hold_loss)):
            raise FloatingPointError(
                f"the loss became {train_loss} (train) / {hold_loss} (holdout) in epoch {epoch} "
                f"of stage {index}, restart {restart}: lower lr or check the model's output"
            )
        if stopper.step(hold_loss):
            best_state = _state(model)
        rows.append({
            "train_loss": train_loss, "holdout_loss": hold_loss, "holdout_cc": hold_cc,
            "seconds": time.perf_counter() - tic, "stage": index,
        })  # fmt: skip
        bar.update(1)
        bar.set_postfix(stage=index, restart=restart, train=f"{train_loss:.4g}",
                        holdout=f"{hold_loss:.4g}", cc=f"{hold_cc:.3f}")  # fmt: skip
        if stopper.stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"rows": rows, "best_epoch": stopper.best_epoch, "best_loss": stopper.best,
            "state": best_state if best_state is not None else _state(model)}  # fmt: skip


def _progress(show: bool, total: int) -> Any:
    if not show:  # tqdm.auto's notebook bar warns about ipywidgets even when disabled
        from tqdm import tqdm as silent

        return silent(total=total, disable=True)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="epoch", desc="fit", leave=True)


def _history(rows: list[dict[str, float]], restart_loss: list[float], attrs: dict) -> xr.Dataset:
    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=np.float64)

    units = {"seconds": "s"}
    data = {
        key: ("epoch", column(key), {"units": units[key]} if key in units else {})
        for key in ("train_loss", "holdout_loss", "holdout_cc", "seconds")
    }
    data["restart_loss"] = ("restart", np.asarray(restart_loss, dtype=np.float64))
    coords = {
        "epoch": np.arange(len(rows)),
        "stage": ("epoch", np.array([r["stage"] for r in rows], dtype=np.int64)),
        "restart": np.arange(len(restart_loss)),
    }
    return xr.Dataset(data, coords=coords, attrs=copy.deepcopy(attrs))
