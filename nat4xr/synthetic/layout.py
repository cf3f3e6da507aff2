"""Who is recorded where: sites, cell ids in both spellings, and the traps of the real data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .constants import _SITE_START, ANIMALS


@dataclass
class _Layout:
    """Sites, cell ids in both spellings, and which traps apply to whom.

    Units ``0 .. n_pop-1`` are the population cells (population order); the
    ones after are the site-only ('extra_site') cells.
    """

    sites: list[str]
    cells: list[str]  # population ids
    site_ids: list[str]  # spelling in the site files (all units)
    unit_site: np.ndarray  # site index of every unit
    keys: list[tuple[str, int, int]]  # parsed (site, electrode, unit); -1 where unknown
    in_sites: np.ndarray  # population cell present in its site file
    auditory: np.ndarray
    missing_est: dict[int, np.ndarray]  # site index -> est indices it did not record
    past_end: np.ndarray  # unit indices that get spikes after the end
    traps: dict[str, list[str]]

    @property
    def n_pop(self) -> int:
        return len(self.cells)

    @classmethod
    def make(
        cls, area: str, sizes: dict, published: dict | None, traps: bool, rng: np.random.Generator
    ) -> _Layout:
        if published is not None:
            animals = [a for a, k in published["sites"].items() for _ in range(k)]
            per_site = np.concatenate(
                [_split(published["cells"][a], k, rng) for a, k in published["sites"].items()]
            )
            n_auditory = published["auditory"]
        else:
            pool = ("ARM",) if area.upper() == "PEG" else ANIMALS
            animals = [pool[i % len(pool)] for i in range(sizes["n_sites"])]
            per_site = _split(sizes["n_cells"], sizes["n_sites"], rng)
            n_auditory = round(0.915 * sizes["n_cells"])
        sites = _site_names(animals, 17 if area.upper() == "PEG" else None, rng)
        n_pop = int(per_site.sum())
        frac = n_pop / 849
        n_trap = {
            "odd": max(1, round(3 * frac)),
            "padded": max(1, round(6 * frac)),
            "no_site": max(1, round(33 * frac)),
            "extra": max(1, round(4 * frac)),
            "past_end": max(1, round(3 * frac)),
        }
        if not traps:
            n_trap = dict.fromkeys(n_trap, 0)

        # (electrode, unit) pairs per site, extra cells included, in population order
        n_extra_site = np.bincount(
            rng.integers(0, len(sites), size=n_trap["extra"]), minlength=len(sites)
        )
        unit_site, keys, extra_flag = [], [], []
        for s, (site, m) in enumerate(zip(sites, per_site)):
            pairs = _electrode_units(int(m + n_extra_site[s]), rng)
            extra = set(rng.choice(len(pairs), size=n_extra_site[s], replace=False).tolist())
            for i, (e, u) in enumerate(pairs):
                unit_site.append(s)
                keys.append((site, e, u))
                extra_flag.append(i in extra)
        unit_site = np.array(unit_site)
        extra_flag = np.array(extra_flag)
        order = np.concatenate([np.flatnonzero(~extra_flag), np.flatnonzero(extra_flag)])
        unit_site = unit_site[order]
        keys = [keys[i] for i in order]

        pop = np.arange(n_pop)
        chosen = rng.permutation(pop)
        cut = np.cumsum([n_trap["odd"], n_trap["padded"], n_trap["no_site"]])
        odd, padded, no_site = np.split(chosen[: cut[-1]], cut[:-1])
        regular = np.setdiff1d(pop, np.concatenate([odd, padded, no_site]))
        past_end = rng.choice(regular, size=min(n_trap["past_end"], len(regular)), replace=False)

        cells = [f"{s}-{e:02d}-{u}" for s, e, u in keys]
        site_ids = list(cells)
        for j, i in enumerate(sorted(padded)):
            s, e, u = keys[i]
            long, short = f"{s}-{e:03d}-{u}", f"{s}-{e:02d}-{u}"
            # both directions occur: padded in the site file or in the population
            cells[i], site_ids[i] = (short, long) if j % 2 == 0 else (long, short)
        for j, i in enumerate(sorted(odd)):
            s, _, u = keys[i]
            cells[i] = site_ids[i] = f"{s}-LFP-{u}" if j % 2 == 0 else f"{s}-a-{u}"
            keys[i] = (s, -1, -1)  # the site is still readable, the rest is not
        # odd ids go last within their site, like a channel appended by hand
        pop_order = sorted(pop, key=lambda i: (unit_site[i], keys[i][1] < 0, i))
        perm = np.array([*pop_order, *range(n_pop, len(keys))])
        unit_site = unit_site[perm]
        keys = [keys[i] for i in perm]
        site_ids = [site_ids[i] for i in perm]
        rank = np.empty(len(perm), dtype=int)
        rank[perm] = np.arange(len(perm))
        cells = [cells[i] for i in pop_order]
        odd, padded, no_site, past_end = (
            np.sort(rank[a]) for a in (odd, padded, no_site, past_end)
        )

        in_sites = np.ones(n_pop, dtype=bool)
        in_sites[no_site] = False
        auditory = np.zeros(n_pop, dtype=bool)
        auditory[rng.choice(n_pop, size=min(n_auditory, n_pop), replace=False)] = True

        n_est = sizes["n_est"]
        gappy = rng.choice(len(sites), size=1 if len(sites) < 10 else 2, replace=False)
        n_missing = max(1, round(0.03 * n_est)) if n_est > 2 else 0
        missing_est = {
            int(s): np.sort(rng.choice(n_est, size=n_missing, replace=False)) for s in gappy
        }
        trap_lists = {
            "padded": [cells[i] for i in padded],
            "no_site": [cells[i] for i in no_site],
            "extra_site": site_ids[n_pop:],
            "odd_ids": [cells[i] for i in odd],
            "spikes_past_end": [cells[i] for i in past_end],
            # the per-cell table spells a few cells as their site file does
            "pred_respelled": [cells[i] for i in padded[:2]],
        }
        return cls(
            sites=sites,
            cells=cells,
            site_ids=site_ids,
            unit_site=unit_site,
            keys=keys,
            in_sites=in_sites,
            auditory=auditory,
            missing_est=missing_est,
            past_end=past_end,
            traps=trap_lists,
        )

    def neurons(self, area: str) -> pd.DataFrame:
        """Population cells' metadata, with the unknown-field conventions of the schema."""
        keys = self.keys[: self.n_pop]
        return pd.DataFrame(
            {
                "area": np.array([area] * self.n_pop, dtype=str),
                "site": np.array([k[0] for k in keys], dtype=str),
                "animal": np.array([k[0][:3] for k in keys], dtype=str),
                "electrode": np.array([k[1] for k in keys], dtype=np.int64),
                "unit": np.array([k[2] for k in keys], dtype=np.int64),
                "auditory": self.auditory.copy(),
            },
            index=pd.Index(self.cells, dtype=object),
        )

    def site_units(self, s: int) -> np.ndarray:
        """Units in site ``s``'s file (population cells with site data, then extras)."""
        units = np.flatnonzero(self.unit_site == s)
        return units[(units >= self.n_pop) | self.in_sites[np.minimum(units, self.n_pop - 1)]]


def _split(total: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` positive ints (at least 2 each) summing to ``total``, uneven like real sites."""
    p = rng.dirichlet(np.full(k, 4.0))
    return 2 + rng.multinomial(total - 2 * k, p)


def _site_names(animals: list[str], start: int | None, rng: np.random.Generator) -> list[str]:
    numbers: dict[str, int] = {}
    names = []
    for a in animals:
        n = numbers.get(a, start if start is not None else _SITE_START.get(a, 10))
        names.append(f"{a}{n:03d}{'aab'[rng.integers(0, 3)]}")
        numbers[a] = n + 1 + int(rng.integers(0, 2))
    return names


def _electrode_units(m: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``m`` distinct (electrode, unit) pairs, electrodes 1..64, units numbered per electrode."""
    electrodes = np.sort(rng.integers(1, 65, size=m))
    seen: dict[int, int] = {}
    pairs = []
    for e in electrodes.tolist():
        seen[e] = seen.get(e, 0) + 1
        pairs.append((e, seen[e]))
    return pairs
