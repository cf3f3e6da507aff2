"""The paper's models on synthetic A1: teacher-student scores, and what an epoch costs.

Usage::

    # scores: a truth="cnn" release, pop-LN, 1Dx2-CNN and RidgeSTRF fitted, val r_test
    python benchmarks/paper_models.py teacher --n-cells 849 --n-est 575 --n-val 18
    # epoch cost on the full-scale A1 cache: fit vs in-memory tensors vs deepSTRF's Fitter
    NAT4XR_DEEPSTRF_PATH=/tmp/deepstrf \\
        python benchmarks/paper_models.py epoch --release /tmp/nat4-full
    # held-out sites and cross-area transfer: refit readouts on a planted shared core
    python benchmarks/paper_models.py heldout --n-cells 200 --n-sites 10 --n-est 200 --threads 1
    # the masked losses alone, forward and backward, on one batch of A1 est sounds
    python benchmarks/paper_models.py loss

``teacher`` writes a release with a planted nonlinear population
(``write_release(truth="cnn", spectrogram="white")``, or ``--truth ln``) at
the sizes given,
fits each model with :func:`nat4xr.torch.fit` (est sounds only, early
stopping on 10 % of them) and prints per model: parameters, seconds per
epoch, epochs run and best epoch, median val ``r_test`` beside the true
rate's own, and the paired Wilcoxon p of the CNN against each other model.

``heldout`` writes a ``truth="cnn"`` A1 release and, for every site (or
the first ``--sites``), pre-trains the small 1Dx2-CNN without the site
(``assign_heldout_site(site)``) and on the matched control
(``matched=True``), refits both readouts on the site's cells
(:func:`nat4xr.torch.refit_readout`), and refits one on an untrained core
(the control: what a readout alone can do; at a tenth of the learning rate,
at which its loss stays finite). A fit whose loss diverges is repeated from
the same start at a third, then a tenth of its rate, and says so. It prints per site the median
val ``r_test`` of the site's cells in each condition and the seconds taken,
then over all held-out cells the medians, the paired difference, the
fraction of cells better held out and the two-sided Wilcoxon p. Then
cross-area transfer: a core fitted on all A1 cells, refit on the cells of a
PEG release with the same ``truth_seed`` (one planted core) and of one with
another ``truth_seed`` (another core, its difference measured by
:func:`nat4xr.synthetic.truth.feature_match`), each beside a model trained
on that PEG release.

``epoch`` opens A1 from its cache (built on first use) and times, per
model and round, in one process: first ``fit`` with one in-memory step
beside each of its own (``_paired``: the same model's forward and backward
pass on a batch already in memory, before ``fit``'s step on every other
batch and after it on the rest), which gives the data path's share of an
epoch, ``1 - memory / fit``, from two measurements that alternate every
few tens of milliseconds; then, one after the other (the first three in
this order in even rounds and the reverse in odd ones), the mean of
``--epochs`` epochs of ``fit`` after an untimed first one (train pass over
the est sounds less the holdout, then the holdout pass; the first also
learns which rows of each sound hold values), the same with each batch
read in turn (``training.READ_AHEAD = False``), the same forward and
backward passes over tensors already in memory (as many epochs, timed the
same way), one pass over both loaders alone, and one epoch of deepSTRF
0.1.0's ``Fitter`` with the same model, loss and batches. Shares are the
median over rounds of each round's ratio; ``loaders / fit`` is what the
reading alone would cost if nothing overlapped it. The same share in CPU
time (every epoch, every thread of the process, the fit's setup included)
says how much work the data path adds, wherever it runs; in the main
thread's CPU time alone, what an epoch costs when the reading thread has a
core of its own (on a busy machine it shares one).

``loss`` times ``masked_poisson_nll`` and ``masked_mse`` (forward and
backward) on one batch the size of 16 A1 est sounds, NaN at 2 % of bins,
in alternation with the same losses masked by ``torch.where`` throughout,
and checks that both give the same loss and gradient bit for bit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _models(n_cells: int, small: bool):
    from nat4xr.torch import models

    if small:
        return {
            "PopLN": lambda: models.PopLN(n_cells, rank=12),
            "CNN1Dx2": lambda: models.CNN1Dx2(n_cells, hidden=(16, 16, 20)),
        }
    return {"PopLN": lambda: models.PopLN(n_cells), "CNN1Dx2": lambda: models.CNN1Dx2(n_cells)}


def teacher(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import xarray as xr
    from scipy.stats import wilcoxon

    import nat4xr
    from nat4xr.synthetic import write_release
    from nat4xr.torch import fit, predict

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rel = write_release(
            tmp, "A1", scale="small", n_cells=args.n_cells, n_sites=args.n_sites,
            n_est=args.n_est, n_val=args.n_val, truth=args.truth, spectrogram="white",
            traps=False, seed=args.seed,
        )  # fmt: skip
        ds = rel.expected_dataset().compute()
        print(f"release: {dict(ds.sizes)}, written in {time.perf_counter() - t0:.0f} s")
    val = ds.nat4.sel_stims(subset="val")
    true = xr.DataArray(
        rel.rate[args.n_est :].astype("float32"),
        dims=("stim", "neuron", "time"),
        coords={"stim": val.stim, "neuron": val.neuron, "time": val.time},
    )
    scores = {"true rate": val.nat4.evaluate(true).r_test}
    rows = []
    t0 = time.perf_counter()
    strf = nat4xr.models.RidgeSTRF(n_lags=15).fit(ds.nat4.sel_stims(subset="est"))
    scores["RidgeSTRF"] = val.nat4.evaluate(strf.predict(val)).r_test
    rows.append(("RidgeSTRF", 15 * 18 * args.n_cells + args.n_cells, time.perf_counter() - t0,
                 "-", "-"))  # fmt: skip
    for name, make in _models(args.n_cells, args.small).items():
        torch.manual_seed(args.seed)
        net = make()
        history = fit(
            net, ds, max_epochs=args.max_epochs, patience=args.patience, lr=args.lr,
            batch_size=args.batch_size, seed=args.seed, progress=args.progress,
        )  # fmt: skip
        scores[name] = val.nat4.evaluate(predict(net, val)).r_test
        n_par = sum(p.numel() for p in net.parameters())
        per_epoch = float(np.median(history.seconds))
        rows.append((name, n_par, per_epoch, history.sizes["epoch"], history.attrs["best_epoch"]))
    print(f"{'model':10s} {'params':>9s} {'s/epoch':>8s} {'epochs':>6s} {'best':>5s} "
          f"{'median r_test':>13s}")  # fmt: skip
    for name, n_par, sec, epochs, best in rows:
        print(f"{name:10s} {n_par:9d} {sec:8.2f} {epochs!s:>6s} {best!s:>5s} "
              f"{float(scores[name].median()):13.3f}")  # fmt: skip
    best_possible = float(scores["true rate"].median())
    print(f"{'true rate':10s} {'':9s} {'':8s} {'':6s} {'':5s} {best_possible:13.3f}")
    for other in ("PopLN", "RidgeSTRF"):
        diff = scores["CNN1Dx2"] - scores[other]
        p = wilcoxon(scores["CNN1Dx2"].values, scores[other].values).pvalue
        print(f"CNN1Dx2 - {other}: median {float(diff.median()):+.3f}, "
              f"paired Wilcoxon p = {p:.2g} (two-sided)")  # fmt: skip
    return 0


def heldout(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import xarray as xr
    from scipy.stats import wilcoxon

    import nat4xr
    from nat4xr.synthetic import write_release
    from nat4xr.torch import fit, models, predict, refit_readout

    torch.set_num_threads(args.threads)
    kw = dict(
        n_cells=args.n_cells, n_sites=args.n_sites, n_est=args.n_est, n_val=args.n_val,
        truth="cnn", spectrogram="white", traps=False, drive=args.drive,
    )  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        a1_rel = write_release(Path(tmp, "a1"), "A1", seed=args.seed, truth_seed=args.truth_seed,
                               **kw)  # fmt: skip
        peg_rels = {
            ts: write_release(Path(tmp, f"peg{ts}"), "PEG", seed=args.seed + 1, truth_seed=ts, **kw)
            for ts in (args.truth_seed, args.other_truth_seed)
        }
        a1 = a1_rel.expected_dataset().compute()
        pegs = {ts: rel.expected_dataset().compute() for ts, rel in peg_rels.items()}
    print(f"A1: {dict(a1.sizes)}, truth_seed {args.truth_seed}; written in "
          f"{time.perf_counter() - t0:.0f} s; {args.threads} thread(s)")  # fmt: skip
    hidden = tuple(args.hidden)
    opts = dict(max_epochs=args.max_epochs, patience=args.patience, lr=args.lr,
                batch_size=args.batch_size, seed=args.seed, progress=args.progress)  # fmt: skip

    def cnn(n: int, seed: int = 0) -> torch.nn.Module:
        net = models.CNN1Dx2(n, hidden=hidden)
        torch.manual_seed(seed)
        net.reset_parameters()
        return net

    def guarded(step, net, ds, lr=args.lr):
        """``step(net, ds)``; a loss gone NaN: again from the same start at lr / 3, then lr / 10."""
        start = {k: v.clone() for k, v in net.state_dict().items()}
        for rate in (lr, lr / 3, lr / 10):
            try:
                return step(net, ds, **{**opts, "lr": rate})
            except FloatingPointError as err:
                print(f"  ({step.__name__} on {ds.sizes['neuron']} cells: {err})", flush=True)
                net.load_state_dict(start)
        raise FloatingPointError(f"no learning rate down to {lr / 10:g} kept the loss finite")

    def r_test(net: torch.nn.Module, ds: xr.Dataset) -> xr.DataArray:
        val = ds.nat4.sel_stims(subset="val")
        return nat4xr.evaluate(val, predict(net, val)).r_test

    if args.part == "transfer":
        return _transfer(args, a1, a1_rel, pegs, peg_rels, cnn, guarded, r_test)
    conditions = ("held-out", "matched", "untrained")
    per_cell: dict[str, list[xr.DataArray]] = {c: [] for c in conditions}
    sites = sorted(set(a1.site.values.tolist()))[: args.sites or None]
    print(f"{'site':9s} {'cells':>5s} {'pre-train':>9s} {'held-out':>8s} {'matched':>8s} "
          f"{'untrained':>9s} {'seconds':>7s}")  # fmt: skip
    t_all = time.perf_counter()
    for site in sites:
        t0 = time.perf_counter()
        cells = a1.nat4.sel_neurons(site=site)
        for condition in conditions[:2]:
            split = a1.nat4.assign_heldout_site(site, matched=condition == "matched", seed=0)
            core = cnn(int(split.pretrain.sum()))
            guarded(fit, core, split.nat4.sel_neurons(pretrain=True))
            net, _ = guarded(refit_readout, core, cells)
            per_cell[condition].append(r_test(net, cells))
        # an untrained core's features are large and uninformative: its readout diverges at
        # the rate the trained cores take, so the control starts at a tenth of it
        net, _ = guarded(refit_readout, cnn(int(split.pretrain.sum()), seed=1), cells, args.lr / 10)
        per_cell["untrained"].append(r_test(net, cells))
        med = [float(per_cell[c][-1].median()) for c in conditions]
        print(f"{site:9s} {cells.sizes['neuron']:5d} {int(split.pretrain.sum()):9d} "
              f"{med[0]:8.3f} {med[1]:8.3f} {med[2]:9.3f} {time.perf_counter() - t0:7.0f}",
              flush=True)  # fmt: skip
    r = {c: xr.concat(per_cell[c], dim="neuron") for c in conditions}
    diff = (r["held-out"] - r["matched"]).values
    print(
        f"all {diff.size} held-out cells of {len(sites)} sites: median r_test held-out "
        f"{float(r['held-out'].median()):.3f}, matched {float(r['matched'].median()):.3f}, "
        f"untrained core {float(r['untrained'].median()):.3f}; held-out - matched: median "
        f"{np.median(diff):+.3f}, better held out {np.mean(diff > 0):.0%}, paired Wilcoxon "
        f"p = {wilcoxon(diff).pvalue:.2g} (two-sided); {time.perf_counter() - t_all:.0f} s"
    )
    if args.part == "sites":
        return 0
    return _transfer(args, a1, a1_rel, pegs, peg_rels, cnn, guarded, r_test)


def _transfer(args, a1, a1_rel, pegs, peg_rels, cnn, guarded, r_test) -> int:
    """Cross-area transfer: one planted core (same truth_seed) against another core."""
    import numpy as np
    from scipy.stats import wilcoxon

    from nat4xr.synthetic.truth import feature_match
    from nat4xr.torch import fit, refit_readout

    t0 = time.perf_counter()
    full = cnn(a1.sizes["neuron"])
    guarded(fit, full, a1)
    spec = peg_rels[args.truth_seed].spectrogram
    for ts, peg in pegs.items():
        match = feature_match(a1_rel.planted, peg_rels[ts].planted, spec)
        own = cnn(peg.sizes["neuron"])
        guarded(fit, own, peg)
        transferred, _ = guarded(refit_readout, full, peg)
        r_own, r_tr = r_test(own, peg), r_test(transferred, peg)
        p = wilcoxon((r_tr - r_own).values).pvalue
        print(
            f"PEG truth_seed {ts} (planted features shared with A1's core: median best "
            f"correlation {np.median(match):.2f}): trained on PEG {float(r_own.median()):.3f}, "
            f"A1 core refit on PEG {float(r_tr.median()):.3f} (paired p = {p:.2g})"
        )
    print(f"transfer: {time.perf_counter() - t0:.0f} s")
    return 0


class _Served:
    """Batches already in memory, in a fixed order, where ``fit`` expects a loader."""

    class _Sampler:
        def set_epoch(self, epoch: int) -> None:
            pass

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.batch_sampler = self._Sampler()

    def __iter__(self):
        return (dict(b) for b in self.batches)


def _memory_step(net, opt, loss_fn, b) -> None:
    """One forward and backward step on a batch in memory, as a plain training loop's."""
    loss = loss_fn(net(b["stims"]), b["responses"], b["valid_mask"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()


def _memory_holdout(net, loss_fn, b) -> None:
    """One forward pass and loss on a batch in memory (under no_grad, the model in eval)."""
    loss_fn(net(b["stims"]), b["responses"], b["valid_mask"]).item()


def _paired(fit, training, net, est, batches, fit_kw, loss_fn, memory_loaders=False):
    """One ``fit`` with one in-memory step timed beside each of its own steps.

    Beside every training step of ``fit`` the same model takes one forward and
    backward step (its own Adam) on the next batch already in memory, and beside
    every holdout batch one forward pass, before ``fit``'s own on every other
    batch and after it on the rest: the two alternate every few tens of
    milliseconds, so whatever slows this machine for a second or two slows both
    alike. Returns, per epoch after the first, ``fit``'s epoch less the
    in-memory steps it contained, and the in-memory steps' sum. With
    ``memory_loaders``, ``fit`` itself is served ``batches`` instead of
    reading (no data path at all: what remains is ``fit``'s own work).
    """
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    spent: list[float] = []  # in-memory seconds per epoch
    where = {"train": 0, "hold": 0}
    step, hold, epoch = (training._Loop._train_step, training._Loop._holdout_sums,
                         training._Loop.train_epoch)  # fmt: skip

    def train_epoch(loop, *a, **k):
        spent.append(0.0)
        return epoch(loop, *a, **k)

    def in_memory_step(b):
        t0 = time.perf_counter()
        _memory_step(net, opt, loss_fn, b)
        spent[-1] += time.perf_counter() - t0

    def in_memory_holdout(b):
        t0 = time.perf_counter()
        _memory_holdout(net, loss_fn, b)
        spent[-1] += time.perf_counter() - t0

    def paired(kind, own, theirs, loop, a, k):
        # the in-memory step before fit's on every other batch, after it on the rest:
        # neither side always follows the other (whatever one leaves in the caches)
        i = where[kind]
        where[kind] += 1
        b = batches[kind == "hold"][i % len(batches[kind == "hold"])]
        if i % 2:
            theirs(b)
        own(loop, *a, **k)
        if not i % 2:
            theirs(b)

    def train_step(loop, *a, **k):
        paired("train", step, in_memory_step, loop, a, k)

    def holdout_sums(loop, *a, **k):  # under fit's no_grad, the model in eval mode
        paired("hold", hold, in_memory_holdout, loop, a, k)

    patched = {"train_epoch": train_epoch, "_train_step": train_step,
               "_holdout_sums": holdout_sums}  # fmt: skip
    saved = {name: getattr(training._Loop, name) for name in patched}
    reading = training.to_torch
    try:
        for name, f in patched.items():
            setattr(training._Loop, name, f)
        if memory_loaders:
            n_hold = sum(len(b["stim"]) for b in batches[1])
            training.to_torch = lambda ds, *a, **k: _Served(
                batches[1] if ds.sizes["stim"] == n_hold else batches[0]
            )
        h = fit(net, est, **fit_kw)
    finally:
        training.to_torch = reading
        for name, f in saved.items():
            setattr(training._Loop, name, f)
    seconds = [float(v) for v in h.seconds.values]
    return [f - m for f, m in zip(seconds[1:], spent[1:])], spent[1:]


def _in_memory(net, batches, k, loss_fn) -> tuple[float, float, float]:
    """k + 1 epochs over batches in memory: seconds per epoch after the first, and the
    CPU time of all of them (every thread, then this thread)."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    c0, m0 = time.process_time(), time.thread_time()
    for e in range(k + 1):
        if e == 1:
            t0 = time.perf_counter()
        net.train()
        for b in batches[0]:
            _memory_step(net, opt, loss_fn, b)
        net.eval()
        with torch.no_grad():
            for b in batches[1]:
                _memory_holdout(net, loss_fn, b)
    return (time.perf_counter() - t0) / k, time.process_time() - c0, time.thread_time() - m0


def epoch(args: argparse.Namespace) -> int:
    import torch
    from _deepstrf import _import_from_deepstrf

    import nat4xr
    from nat4xr.torch import fit, masked_poisson_nll, to_torch, training

    torch.set_num_threads(args.threads)
    ds = nat4xr.open_nat4("A1", path=args.release)
    est = ds.nat4.sel_stims(subset="est")
    if args.max_stims:
        est = est.isel(stim=slice(0, args.max_stims))
    est = nat4xr.splits.assign_holdout(est, 0.1, seed=0)
    is_held = est.holdout.values == 1
    train = est.isel(stim=~is_held)
    held = est.isel(stim=is_held)
    n_cells = est.sizes["neuron"]
    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    print(f"A1 est sounds: {train.sizes['stim']} train + {held.sizes['stim']} holdout, "
          f"{n_cells} cells, batch size {args.batch_size}, {args.threads} thread(s)")  # fmt: skip
    loaded = _import_from_deepstrf(
        lambda: (__import__("deepSTRF.training.fitter", fromlist=["Fitter"]).Fitter,
                 __import__("deepSTRF.metrics", fromlist=["poisson_loss"]).poisson_loss)
    )  # fmt: skip

    def loaders():
        return (to_torch(train, args.batch_size, shuffle=True, seed=0),
                to_torch(held, args.batch_size))  # fmt: skip

    results: dict[str, dict[str, list[float]]] = {}
    for name, make in _models(n_cells, False).items():
        torch.manual_seed(0)
        net = make()
        times = results.setdefault(
            name,
            {"paired fit": [], "paired memory": [],
             "fit": [], "in turn": [], "memory": [], "loaders": [], "deepSTRF": [],
             "fit cpu": [], "memory cpu": [], "fit main": [], "memory main": []},
        )  # fmt: skip
        tl, hl = loaders()
        batches = [b for b in tl], [b for b in hl]  # already in memory (and the file warm)
        k = args.epochs  # timed epochs per round, after one untimed epoch each way
        for r in range(args.rounds):
            fit_kw = dict(holdout="holdout", max_epochs=k + 1, patience=k + 1, lr=1e-3,
                          batch_size=args.batch_size, progress=False)  # fmt: skip
            # 0. fit with one in-memory step timed beside each of its own (see _paired):
            # the data path's share of an epoch, paired batch by batch
            f, m = _paired(fit, training, net, est, batches, fit_kw, masked_poisson_nll,
                           memory_loaders=args.memory_loaders)  # fmt: skip
            times["paired fit"].append(statistics.mean(f))
            times["paired memory"].append(statistics.mean(m))
            if args.memory_loaders:
                continue  # fit's own work alone: nothing else to compare

            # then one after the other, in this order in even rounds and the reverse
            # in odd ones: neither runs first every time (a fixed order measured the
            # share 5-10 points higher than alternating orders)
            order = ["fit", "in turn", "memory"]
            for what in order if r % 2 == 0 else order[::-1]:
                if what == "fit":
                    # 1. nat4xr.torch.fit, k + 1 epochs (training pass + holdout pass each),
                    # reading every batch; all but the first are timed (the first also
                    # learns, once per fit, which rows of each sound hold values)
                    c0, m0 = time.process_time(), time.thread_time()
                    h = fit(net, est, **fit_kw)
                    times["fit cpu"].append(time.process_time() - c0)  # every thread, setup
                    times["fit main"].append(time.thread_time() - m0)  # this thread only
                    times["fit"].append(float(h.seconds[1:].mean()))
                elif what == "in turn" and hasattr(training, "READ_AHEAD"):
                    # 1b. the same with each batch read in turn, not on a thread while the
                    # model computes on the last (fit without READ_AHEAD reads in turn)
                    training.READ_AHEAD = False
                    h = fit(net, est, **fit_kw)
                    training.READ_AHEAD = True
                    times["in turn"].append(float(h.seconds[1:].mean()))
                elif what == "memory":
                    # 2. the same passes over tensors in memory, k + 1 epochs, all but
                    # the first timed
                    wall, cpu, main = _in_memory(net, batches, k, masked_poisson_nll)
                    times["memory"].append(wall)
                    times["memory cpu"].append(cpu)  # every thread
                    times["memory main"].append(main)  # this thread only
            # 2b. the data path alone: one pass over both loaders, nothing computed
            tl, hl = loaders()
            t0 = time.perf_counter()
            sum(1 for _ in tl) + sum(1 for _ in hl)
            times["loaders"].append(time.perf_counter() - t0)
            # 3. deepSTRF's Fitter, same model, loss and batches (one epoch + its val pass)
            if loaded is not None:
                Fitter, poisson_loss = loaded
                tl, hl = loaders()
                fitter = Fitter(
                    net, tl, hl, loss_fn=poisson_loss, max_epochs=1, patience=1,
                    optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
                    track_train_metrics=False, log_fn=lambda d: None,
                )  # fmt: skip
                t0 = time.perf_counter()
                fitter.fit()
                times["deepSTRF"].append(time.perf_counter() - t0)
    print(f"{'model':8s} {'fit (s)':>8s} {'in turn (s)':>11s} {'memory (s)':>10s} "
          f"{'1 - memory/fit':>14s} {'loaders (s)':>11s} {'loaders/fit':>11s} "
          f"{'deepSTRF Fitter (s)':>19s}")  # fmt: skip
    for name, t in results.items():
        pf, pm = statistics.median(t["paired fit"]), statistics.median(t["paired memory"])
        pshare = [1 - mi / fi for fi, mi in zip(t["paired fit"], t["paired memory"])]
        print(f"{name:8s} paired batch by batch: fit {pf:.3f} s, in-memory passes {pm:.3f} s, "
              f"1 - memory/fit {statistics.median(pshare):.1%} (rounds "
              + " ".join(f"{v:.1%}" for v in pshare) + ")")  # fmt: skip
        if not t["fit"]:
            continue
        f, m = statistics.median(t["fit"]), statistics.median(t["memory"])
        lo = statistics.median(t["loaders"])
        turn = f"{statistics.median(t['in turn']):11.2f}" if t["in turn"] else f"{'n/a':>11s}"
        # the data path's share: per round (fit and its in-memory passes ran side by side)
        share = statistics.median(1 - mi / fi for fi, mi in zip(t["fit"], t["memory"]))
        d = f"{statistics.median(t['deepSTRF']):19.2f}" if t["deepSTRF"] else f"{'n/a':>19s}"
        print(f"{name:8s} {f:8.2f} {turn} {m:10.2f} {share:14.1%} {lo:11.2f} {lo / f:11.1%} {d}")
        cpu = statistics.median(1 - mi / fi for fi, mi in zip(t["fit cpu"], t["memory cpu"]))
        print(f"{'':8s} CPU time of every epoch (every thread; fit's setup too): fit "
              f"{statistics.median(t['fit cpu']):.2f} s, in-memory passes "
              f"{statistics.median(t['memory cpu']):.2f} s, 1 - memory/fit {cpu:.1%}")  # fmt: skip
        main = statistics.median(1 - mi / fi for fi, mi in zip(t["fit main"], t["memory main"]))
        fm, mm = statistics.median(t["fit main"]), statistics.median(t["memory main"])
        print(f"{'':8s} CPU time of the main thread alone: fit {fm:.2f} s, "
              f"in-memory passes {mm:.2f} s, 1 - memory/fit {main:.1%}")  # fmt: skip
        print(f"{'':8s} rounds: " + "; ".join(
            f"{k} " + " ".join(f"{v:.2f}" for v in vals) for k, vals in t.items() if vals
        ))  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def loss(args: argparse.Namespace) -> int:
    import torch

    from nat4xr.torch import masked_mse, masked_poisson_nll

    def where_poisson(pred, target, mask, eps=1e-8):  # the same loss, masked by torch.where
        zero, one = torch.zeros(()), torch.ones(())
        target = torch.where(mask, target, zero)
        pred = torch.where(mask, pred, one)
        values = pred - target * torch.log(pred + eps)
        return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum()

    def where_mse(pred, target, mask):
        zero = torch.zeros(())
        diff = torch.where(mask, pred, zero) - torch.where(mask, target, zero)
        return torch.where(mask, diff * diff, zero).sum() / mask.sum()

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 849, 1, 150)  # one batch of A1 est sounds
    target = torch.poisson(torch.full(shape, 0.3), generator=g)
    mask = torch.rand(shape, generator=g) > 0.02
    target[~mask] = float("nan")
    pred = (torch.rand(shape, generator=g) + 0.05).requires_grad_(True)
    print(f"batch {shape}, {args.threads} thread(s); forward + backward, ms per call, "
          f"median of {args.rounds} rounds of 10 calls, the two in alternation")  # fmt: skip
    for name, ours, ref in (
        ("masked_poisson_nll", masked_poisson_nll, where_poisson),
        ("masked_mse", masked_mse, where_mse),
    ):
        same = []
        for fn in (ours, ref):
            pred.grad = None
            value = fn(pred, target, mask)
            value.backward()
            same.append((value.detach().clone(), pred.grad.clone()))
        bitwise = all(torch.equal(a, b) for a, b in zip(*same))
        times: dict[str, list[float]] = {"nat4xr": [], "torch.where": []}
        for r in range(args.rounds):
            pair = (("nat4xr", ours), ("torch.where", ref))
            for key, fn in pair if r % 2 else pair[::-1]:
                t0 = time.perf_counter()
                for _ in range(10):
                    pred.grad = None
                    fn(pred, target, mask).backward()
                times[key].append((time.perf_counter() - t0) / 10 * 1e3)
        ms = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:20s} nat4xr {ms['nat4xr']:.2f}, masked with torch.where "
              f"{ms['torch.where']:.2f} ({ms['nat4xr'] / ms['torch.where']:.2f}x); "
              f"loss and gradient bitwise equal: {bitwise}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("teacher")
    t.add_argument("--truth", choices=("cnn", "ln"), default="cnn")
    t.add_argument("--n-cells", type=int, default=849)
    t.add_argument("--n-sites", type=int, default=22)
    t.add_argument("--n-est", type=int, default=575)
    t.add_argument("--n-val", type=int, default=18)
    t.add_argument("--small", action="store_true", help="small hidden sizes (as the tests)")
    t.add_argument("--max-epochs", type=int, default=200)
    t.add_argument("--patience", type=int, default=10)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--progress", action="store_true")
    h = sub.add_parser("heldout")
    h.add_argument("--n-cells", type=int, default=200)
    h.add_argument("--n-sites", type=int, default=10)
    h.add_argument("--n-est", type=int, default=200)
    h.add_argument("--n-val", type=int, default=10)
    h.add_argument("--sites", type=int, default=0, help="first N sites held out (0: all)")
    h.add_argument("--hidden", type=int, nargs=3, default=(16, 16, 20))
    h.add_argument("--drive", type=float, default=1.0)
    h.add_argument("--max-epochs", type=int, default=100)
    h.add_argument("--patience", type=int, default=10)
    h.add_argument("--lr", type=float, default=1e-2)
    h.add_argument("--batch-size", type=int, default=8)
    h.add_argument("--seed", type=int, default=1)
    h.add_argument("--truth-seed", type=int, default=1)
    h.add_argument("--other-truth-seed", type=int, default=3)
    h.add_argument("--threads", type=int, default=1)
    h.add_argument("--progress", action="store_true")
    h.add_argument("--part", choices=("all", "sites", "transfer"), default="all")
    e = sub.add_parser("epoch")
    e.add_argument("--release", type=Path, default=Path("/tmp/nat4-full"))
    e.add_argument("--max-stims", type=int, default=0, help="first N est sounds (0: all)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--rounds", type=int, default=3)
    e.add_argument("--epochs", type=int, default=3, help="timed epochs per round and way")
    e.add_argument(
        "--memory-loaders",
        action="store_true",
        help="the paired fit is served the batches in memory (fit's own work alone)",
    )
    e.add_argument("--threads", type=int, default=1)
    lo = sub.add_parser("loss")
    lo.add_argument("--batch-size", type=int, default=16)
    lo.add_argument("--rounds", type=int, default=30)
    lo.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return {"teacher": teacher, "heldout": heldout, "epoch": epoch, "loss": loss}[args.what](args)


if __name__ == "__main__":
    raise SystemExit(main())
