"""Teacher-student: on a planted nonlinear population a fitted 1Dx2-CNN beats pop-LN and a
ridge STRF; on a planted LN population it does not, and pop-LN comes close to the truth.

Small sizes (16 cells, 100 est and 4 val sounds, small hidden layers, one thread) keep the
run short; ``benchmarks/paper_models.py teacher`` runs the same at larger sizes, up to the
full A1 release. The cells are driven twice as hard as by default (``drive=2``), so that
100 sounds carry enough of the planted core for a CNN to come close to the truth.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")
from scipy.stats import wilcoxon  # noqa: E402

import nat4xr  # noqa: E402
from nat4xr.synthetic import write_release  # noqa: E402
from nat4xr.torch import fit, models, predict  # noqa: E402

pytestmark = pytest.mark.slow

N_CELLS, N_EST, N_VAL = 16, 100, 4
#: How far below the true rate's median val r_test a model fitted to its own family may end.
MARGIN = 0.1


@pytest.fixture(scope="module", params=["cnn", "ln"])
def scored(request, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is faster and deterministic
    try:
        rel = write_release(
            tmp_path_factory.mktemp(request.param), n_cells=N_CELLS, n_sites=4, n_est=N_EST,
            n_val=N_VAL, truth=request.param, spectrogram="white", traps=False, seed=1, drive=2.0,
        )  # fmt: skip
        ds = rel.expected_dataset().compute()
        val = ds.nat4.sel_stims(subset="val")
        true = xr.DataArray(
            rel.rate[N_EST:].astype("float32"), dims=("stim", "neuron", "time"),
            coords={"stim": val.stim, "neuron": val.neuron, "time": val.time},
        )  # fmt: skip
        preds = {"true": true}
        strf = nat4xr.models.RidgeSTRF(n_lags=10).fit(ds.nat4.sel_stims(subset="est"))
        preds["ridge"] = strf.predict(val)
        for name, net in [("ln", models.PopLN(N_CELLS, rank=8)),
                          ("cnn", models.CNN1Dx2(N_CELLS, hidden=(12, 12, 16)))]:  # fmt: skip
            torch.manual_seed(0)
            net.reset_parameters()
            fit(net, ds, max_epochs=300, patience=15, lr=1e-2, progress=False)
            preds[name] = predict(net, val)
        yield request.param, {k: val.nat4.evaluate(p).r_test.values for k, p in preds.items()}
    finally:
        torch.set_num_threads(threads)


def test_teacher_student(scored):
    truth, r = scored
    med = {k: float(np.median(v)) for k, v in r.items()}
    if truth == "cnn":
        # the CNN beats both linear-filter models, cell by cell
        assert wilcoxon(r["cnn"], r["ln"], alternative="greater").pvalue < 0.01, med
        assert wilcoxon(r["cnn"], r["ridge"], alternative="greater").pvalue < 0.01, med
        # by a wide margin, and comes close to the true rate's own score (0.93 against
        # 0.98 at these settings; pop-LN and the ridge STRF stay near 0.3)
        assert med["cnn"] > med["ln"] + 0.3, med
        assert med["cnn"] >= med["true"] - MARGIN, med
    else:
        # nothing for a CNN to add: it does not beat pop-LN, which comes close to the truth
        # (0.92 against 0.94; the CNN 0.87)
        assert wilcoxon(r["cnn"], r["ln"], alternative="greater").pvalue > 0.05, med
        assert med["ln"] >= med["cnn"] - 0.02, med
        assert med["ln"] >= med["true"] - MARGIN, med
