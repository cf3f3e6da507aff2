"""The ``nat4xr`` command: fetch, build, inspect and clean up.

Examples
--------
>>> main(["cache", "--help"])  # doctest: +ELLIPSIS
usage: nat4xr cache [-h] {list,clear} ...
...
0
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .errors import Nat4Error

# Nothing heavy at import time: `nat4xr --help` and usage errors load neither
# numpy, pandas, xarray nor the builder; each command imports what it uses.

__all__ = ["main", "summary"]


def summary(ds, source: str | os.PathLike | None = None) -> str:
    """Plain-text facts about a nat4xr Dataset, one per line.

    Parameters
    ----------
    ds : xarray.Dataset
        A Dataset of the nat4xr contract (lazy is fine: only coordinates are read).
    source : path-like, optional
        Cache file to report (default: ``ds.encoding['source']`` when present).

    Examples
    --------
    >>> import nat4xr
    >>> print(summary(nat4xr.synthetic.random_dataset(n_est=4, n_val=2, n_neurons=3, seed=1)))
    ... # doctest: +NORMALIZE_WHITESPACE
    area       A1
    cells      3 (auditory 2)
    sounds     6 (est 4, val 2)
    coverage   0.889 of (sound, cell) pairs
    animals    ARM 3
    sites      1
    """
    import numpy as np

    subset = np.asarray(ds["subset"].values).astype(str)
    animals = np.asarray(ds["animal"].values).astype(str)
    names, counts = np.unique(animals[animals != ""], return_counts=True)
    sites = {s for s in np.asarray(ds["site"].values).astype(str) if s}
    coverage = np.asarray(ds["coverage"].values)
    lines = [
        ("area", str(ds.attrs.get("area", "?"))),
        ("cells", f"{ds.sizes['neuron']} (auditory {int(np.sum(ds['auditory'].values))})"),
        (
            "sounds",
            f"{ds.sizes['stim']} (est {int(np.sum(subset == 'est'))}, "
            f"val {int(np.sum(subset == 'val'))})",
        ),
        ("coverage", f"{coverage.mean() if coverage.size else 0.0:.3f} of (sound, cell) pairs"),
        ("animals", ", ".join(f"{n} {c}" for n, c in zip(names, counts)) or "unknown"),
        ("sites", str(len(sites))),
    ]
    source = source if source is not None else ds.encoding.get("source")
    if source is not None and Path(source).is_file():
        lines.append(("cache", f"{source} ({_size(Path(source).stat().st_size)})"))
    return "\n".join(f"{k:<10} {v}" for k, v in lines)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ----------------------------------------------------------------------------- commands


def _progress(args: argparse.Namespace) -> bool | None:
    """Progress bars unless ``--quiet``, and only on a terminal (never into log files)."""
    return False if args.quiet else None


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import fetch

    root = fetch(args.area, path=args.path, wav=args.wav, progress=_progress(args))
    print(root)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from .opening import open_nat4

    ds = open_nat4(
        args.area,
        subset=args.subset,
        path=args.path,
        download=args.download,
        normalize=args.normalize,
        smooth_ms=args.smooth_ms,
        rebuild=args.rebuild,
        waveform=args.waveform,
        progress=_progress(args),
    )
    print(summary(ds))
    ds.close()
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .release import AREAS

    if args.target in AREAS:  # an area, even if a file of that name lies here (./A1 is the file)
        from .opening import open_nat4

        ds = open_nat4(args.target, subset=args.subset, path=args.path, progress=_progress(args))
    else:
        target = Path(args.target)
        if not target.exists() and target.suffix != ".nc":
            raise Nat4Error(
                f"{args.target!r} is neither an area ({', '.join(AREAS)}) nor a file; "
                "`nat4xr cache list` shows the cache files"
            )
        from .cachefile.reading import identify

        if target.exists() and identify(target) is None:
            raise Nat4Error(
                f"{target} is not a nat4xr cache file (no nat4xr stamp inside); `nat4xr info` "
                "takes an area or a cache file (`nat4xr cache list` shows them)"
            )
        from .cachefile import open_cache

        ds = open_cache(target)
    print(summary(ds))
    ds.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .cachedir import data_dir
    from .opening import open_demo

    out = None
    if not args.no_png:
        out = _figure_path(args.out, data_dir())
    ds = open_demo()
    print(summary(ds))
    if out is not None:
        png = _coverage_png(ds, out)
        if png is not None:
            print(f"{'figure':<10} {png}")
    ds.close()
    return 0


_FIGURE_NAME = "nat4xr_demo_coverage.png"
_FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _figure_path(out: str | None, folder: Path) -> Path:
    """Where ``demo`` writes its figure: ``--out`` (a file or a folder), else the data folder."""
    if not out:
        return (folder / _FIGURE_NAME).absolute()
    path = Path(out).expanduser().absolute()
    if path.is_dir():
        return path / _FIGURE_NAME
    if not path.suffix:
        return path.with_suffix(".png")
    if path.suffix.lower() not in _FIGURE_SUFFIXES:
        raise Nat4Error(
            f"--out {out}: a figure is written as {', '.join(_FIGURE_SUFFIXES)}; "
            "name a file with one of these endings, or a folder"
        )
    return path


def _coverage_png(ds, path: Path) -> Path | None:
    """Stim x neuron coverage image with the est|val boundary; None without matplotlib."""
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("nat4xr: matplotlib is not installed, no figure written", file=sys.stderr)
        return None
    accessor = getattr(ds, "nat4", None)
    if accessor is not None and hasattr(accessor, "plot_coverage"):
        ax = accessor.plot_coverage()
        fig = ax.figure
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.imshow(np.asarray(ds["coverage"].values).T, aspect="auto", interpolation="nearest",
                  cmap="Greys")  # fmt: skip
        n_est = int(np.sum(np.asarray(ds["subset"].values).astype(str) == "est"))
        ax.axvline(n_est - 0.5, color="tab:red", label="est | val")
        ax.set_xlabel("sound")
        ax.set_ylabel("cell")
        ax.set_title("coverage (black: recorded)")
        ax.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cmd_cache(args: argparse.Namespace) -> int:
    from .cachedir import cache_clear, cache_dir, cache_list

    if args.action == "list":
        entries = cache_list()
        print(f"cache folder {cache_dir()}")
        if not entries:
            print("no cache files")
        for e in entries:
            print(f"{e.area:<4} {e.subset:<4} {_size(e.size):>9}  {e.path}")
            print(f"{'':<20}release {e.options.get('release', 'not recorded')}")
            print(f"{'':<20}options {_options_text(e.options)}")
        return 0
    removed = cache_clear(area=args.area)
    print(f"removed {len(removed)} file(s) from {cache_dir()}")
    return 0


def _options_text(options) -> str:
    """Build options of a cache as ``name=value`` pairs (those that name what it holds)."""
    shown = {k: v for k, v in options.items() if k not in ("area", "subset", "release")}
    if not shown.get("waveform"):
        shown = {k: v for k, v in shown.items() if k not in ("audio_fs", "resampler")}
    return " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "defaults"


# ----------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nat4xr",
        description="The NAT4 auditory-cortex dataset as a labeled, lazy xarray Dataset.",
    )
    parser.add_argument("--version", action="version", version=f"nat4xr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def area_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("area", choices=("A1", "PEG"), help="recording area")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--path", help="release folder (default: the nat4xr data folder)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("fetch", help="download and unpack an area's release files")
    area_arg(p)
    p.add_argument("--wav", action="store_true", help="also fetch the sound waveforms")
    common(p)
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("build", help="build (or reuse) an area's netCDF cache")
    area_arg(p)
    p.add_argument("--subset", choices=("all", "est", "val"), default="all")
    p.add_argument("--normalize", choices=("nems",), default=None,
                   help="scale as the published NEMS models did")  # fmt: skip
    p.add_argument("--smooth-ms", type=float, default=None, help="smoothing window (ms)")
    p.add_argument("--waveform", action="store_true", help="include the sound waveforms")
    p.add_argument("--download", action="store_true", help="fetch missing release files")
    p.add_argument("--rebuild", action="store_true", help="build again, replacing the cache")
    common(p)
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("info", help="summarise an area (built if needed) or a cache file")
    p.add_argument("target", metavar="AREA|FILE", help="'A1', 'PEG' or a cache .nc file")
    p.add_argument("--subset", choices=("all", "est", "val"), default="all")
    common(p)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="open the offline demo and draw its coverage")
    p.add_argument("--out", metavar="PNG", default=None,
                   help="where to write the coverage figure (default: "
                        "nat4xr_demo_coverage.png in the data folder)")  # fmt: skip
    p.add_argument("--png", dest="out", help=argparse.SUPPRESS)  # the option's former name
    p.add_argument("--no-png", action="store_true", help="do not write the figure")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("cache", help="list or delete netCDF cache files")
    cache_sub = p.add_subparsers(dest="action", metavar="{list,clear}", required=True)
    cache_sub.add_parser("list", help="list the cache files")
    clear = cache_sub.add_parser("clear", help="delete cache files")
    clear.add_argument("--area", choices=("A1", "PEG"), help="only this area's files")
    p.set_defaults(func=_cmd_cache)
    return parser


def _for_shell(message: str, args: argparse.Namespace) -> str:
    """A library message with its Python remedies said as the command-line options."""
    area = getattr(args, "area", None) or getattr(args, "target", None)
    area = area if area in ("A1", "PEG") else "AREA"
    rules = (
        (r"[Pp]ass download=True with waveform=True \(or run `nat4xr fetch AREA --wav`\)",
         f"run `nat4xr fetch {area} --wav` (or `nat4xr build {area} --waveform --download`)"),
        (r"open_nat4\(\.\.\., rebuild=True\)", f"`nat4xr build {area} --rebuild`"),
        (r"(?:[Pp]ass|with) download=True(?: \(or run `nat4xr fetch`\))?",
         f"run `nat4xr fetch {area}` (or `nat4xr build {area} --download`)"),
        (r"download=True", f"`nat4xr fetch {area}`"),
        (r"\bpath=(?:\.\.\.)?", "--path"),
        (r",? or pass cache=False", ""),
        (r"\bsmooth_ms\b", "--smooth-ms"),
    )  # fmt: skip
    for pattern, replacement in rules:
        message = re.sub(
            pattern,
            lambda m, r=replacement: r[:1].upper() + r[1:] if m.group(0)[:1].isupper() else r,
            message,
        )
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nat4xr`` command; returns the exit code.

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    nat4xr ...
    0
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        """Warnings as one ``nat4xr: warning: ...`` line, without source lines."""
        print(f"nat4xr: warning: {_for_shell(str(message), args)}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
    except BrokenPipeError:  # `nat4xr cache list | head -1`: the reader is done, so are we
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the flush at exit must not fail again
        os.close(devnull)
        return 141  # as a command ended by SIGPIPE
    except KeyboardInterrupt:
        print("nat4xr: interrupted", file=sys.stderr)
        return 130
    except (Nat4Error, ValueError, KeyError, OSError) as exc:
        text = str(exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"nat4xr: error: {_for_shell(message, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
