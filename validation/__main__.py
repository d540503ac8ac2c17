"""Command line of the validation suite: ``python -m validation [--quick] [--out DIR] ...``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK_OUT = Path(tempfile.gettempdir()) / "signalprop-validation-quick"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m validation",
                                description="Run theory against simulation over the validation "
                                            "catalogue and write report.md and figures.")
    p.add_argument("--quick", action="store_true",
                   help="run the small quick subset (seconds) instead of the full catalogue")
    p.add_argument("--out", default=None,
                   help="output folder for report.md and figures/ (default: the validation folder "
                        "for the full suite, <tmp>/signalprop-validation-quick for --quick)")
    p.add_argument("--family", action="append", default=None,
                   help="only cases of this family (repeatable)")
    p.add_argument("--case", action="append", default=None, help="only the case with this name")
    p.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes (default 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (drawn on stderr when it is a terminal)")
    # the file descriptor signalprop validate hands over for the bar (its stderr is a pipe)
    p.add_argument("--progress-fd", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    """Run the suite; returns the exit status (0: every case expected to agree agrees)."""
    from .catalogue import catalogue, quick_catalogue
    from signalprop.progress import progress_bar

    from .runner import run_cases, write_report

    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be an integer >= 1", file=sys.stderr)
        return 2
    cases = quick_catalogue() if args.quick else catalogue()
    if args.family:
        cases = [c for c in cases if c.family in args.family]
    if args.case:
        cases = [c for c in cases if c.name in args.case]
    if not cases:
        print("error: no case matches the selection", file=sys.stderr)
        return 2
    if args.list:
        for c in cases:
            print(f"{c.family:13s} {c.name:40s} expected {c.expected:8s} beta={c.beta:.3f}")
        return 0
    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)

    # the bar: on stderr when it is a terminal, or on the descriptor signalprop validate passes
    stream = None if args.progress_fd is None else os.fdopen(args.progress_fd, "w", closefd=False)
    show = False if args.quiet else (True if stream is not None else None)
    t0 = time.perf_counter()
    with progress_bar(len(cases), "validation", "cases", progress=show, stream=stream) as bar:
        def progress(r):
            bar.write(f"{r.case.family:13s} {r.case.name:40s} {r.verdict:9s} "
                      f"(expected {r.case.expected}) {r.seconds:7.1f} s")
            bar.update(1)
        results = run_cases(cases, jobs=args.jobs, progress=progress)
    wall = time.perf_counter() - t0
    cmd = "python -m validation" + (" --quick" if args.quick else "")
    if args.family:
        cmd += "".join(f" --family {f}" for f in args.family)
    title = "signalprop validation report" + (" (quick subset)" if args.quick else "")
    path = write_report(results, out, title=title, command=cmd, wall=wall,
                        figures=not args.no_figures)
    failed = [r for r in results if r.failed]
    print(f"{len(results)} cases in {wall:.1f} s; {len(failed)} expected to agree did not; "
          f"report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
