"""Start-up of the ``nat4xr`` command: ``--help`` and a usage error, each in a fresh process.

Prints, per call, the minimum and median wall time over ``--runs`` fresh
processes beside the floor (``python -c pass``), the peak RSS of one run, the
import time of ``nat4xr.cli`` from ``python -X importtime`` and which heavy
modules the call loaded. ``--pythonpath`` measures another checkout (the
version before a change, say).

Usage::

    python benchmarks/cli_startup.py --runs 21
    python benchmarks/cli_startup.py --runs 21 --pythonpath /tmp/nat4xr-before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("numpy", "pandas", "xarray", "dask", "pooch", "netCDF4", "nat4xr.build", "nat4xr.opening")
CALLS = {"nat4xr --help": ["--help"], "nat4xr fetch V1 (usage error)": ["fetch", "V1"]}


def _env(pythonpath: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=pythonpath)


def _run(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall time (s) and peak RSS (MB) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped by wait4
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def _wall(cmd: list[str], env: dict[str, str], cwd: str, runs: int) -> tuple[float, float, float]:
    runs_ = [_run(cmd, env, cwd) for _ in range(runs)]
    times = [t for t, _ in runs_]
    return min(times), statistics.median(times), max(m for _, m in runs_)


def _import_ms(env: dict[str, str], cwd: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import nat4xr.cli"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in proc.stderr.splitlines()[::-1]:
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 3 and fields[2] == "nat4xr.cli":
            return int(fields[1]) / 1000
    return float("nan")


def _loaded(args: list[str], env: dict[str, str], cwd: str) -> list[str]:
    code = (
        "import contextlib, io, json, sys\n"
        "from nat4xr.cli import main\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        f"    main({args!r})\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--pythonpath", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    env = _env(args.pythonpath)
    cwd = args.pythonpath  # the checkout's own package first, as an installed command sees it
    floor = _wall([sys.executable, "-c", "pass"], env, cwd, args.runs)
    print(f"checkout {args.pythonpath}; {args.runs} fresh processes per call")
    print(f"{'python -c pass':<32} min {floor[0]:.3f} s  median {floor[1]:.3f} s")
    for label, cli_args in CALLS.items():
        cmd = [sys.executable, "-m", "nat4xr.cli", *cli_args]
        best, median, peak = _wall(cmd, env, cwd, args.runs)
        print(
            f"{label:<32} min {best:.3f} s  median {median:.3f} s  "
            f"(+{best - floor[0]:.3f} s over the floor)  peak RSS {peak:.0f} MB  "
            f"loads {', '.join(_loaded(cli_args, env, cwd)) or 'nothing heavy'}"
        )
    print(f"{'import nat4xr.cli (-X importtime)':<32} {_import_ms(env, cwd):.1f} ms cumulative")


if __name__ == "__main__":
    main()
