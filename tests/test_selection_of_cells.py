"""The paper's cell selection: significant for every model compared (nems_db's rule)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import nat4xr


def _scores(seed: int, ids: list[str]) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    n = len(ids)
    data = {
        "r_test": rng.uniform(-0.1, 0.6, n),
        "se_test": rng.uniform(0.0, 0.2, n),
        "r_floor": rng.uniform(0.0, 0.2, n),
        "r_ceiling": rng.uniform(0.0, 0.9, n),
    }
    return xr.Dataset({k: ("neuron", v) for k, v in data.items()}, coords={"neuron": ids})


def test_significant_for_every_model_as_the_authors_select_cells():
    ids = [f"c{i}" for i in range(60)]
    models = [_scores(k, ids) for k in range(3)]
    models[1] = models[1].isel(neuron=slice(None, None, -1))  # another order: aligned by id
    models[2] = models[2].isel(neuron=slice(0, 50))  # cells 50.. were not fitted by model 2
    models[0]["r_test"][3] = np.nan
    # the loop of pop_model_utils.get_significant_cells: cells every model scored
    # (dropna how='any'), each significant by r > 2 se and r > floor, and-ed over models
    expected = []
    for cell in ids:
        keep = True
        for m in models:
            if cell not in m.neuron.values:
                keep = False
                break
            row = m.sel(neuron=cell)
            r, se, floor = float(row.r_test), float(row.se_test), float(row.r_floor)
            keep &= bool(r > 2 * se and r > floor)
        expected.append(keep)
    sig = nat4xr.significant(*models)
    assert sig.neuron.values.tolist() == ids
    assert sig.values.tolist() == expected
    assert 0 < sum(expected) < sum(nat4xr.significant(models[0]).values)
    assert sig.attrs["n_sets"] == 3 and "every one of 3" in sig.attrs["rule"]
    np.testing.assert_array_equal(nat4xr.significant(models).values, sig.values)  # a list
    # the older call form, a rule given positionally, still works
    np.testing.assert_array_equal(
        nat4xr.significant(models[0], "se").values,
        nat4xr.significant(models[0], rule="se").values,
    )
    # the paper's figures: r_ceiling of those cells
    plotted = models[0]["r_ceiling"].where(sig, drop=True)
    assert plotted.sizes["neuron"] == sum(expected)
    with pytest.raises(ValueError, match="at least one"):
        nat4xr.significant([])
