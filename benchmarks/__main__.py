"""`python -m benchmarks run --profile quick|full [--out DIR] [--work DIR] [--only KINDS]` and `report [--out DIR]`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

from benchmarks.common import REPO

# What the benchmarks import on top of requirements/build.txt (requirements/bench.txt pins them).
NEEDED = {
    "faiss": "faiss-cpu",
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "matplotlib": "matplotlib",
    "psutil": "psutil",
    "retrieval_client": "./client",
}


def missing_packages() -> list[str]:
    """Distribution names of the benchmark dependencies that are not importable."""
    return [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs a profile; exit 2 on bad setup, 1 on failure."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.profiles import PROFILES

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a benchmark profile")
    r.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    r.add_argument(
        "--out", type=Path, help="results folder (default: benchmarks/results for full, build/bench-quick for quick)"
    )
    r.add_argument("--work", type=Path, help="models, indexes, data and logs (default: build/bench-work/<profile>)")
    r.add_argument(
        "--only",
        default="",
        help="comma-separated dataset kinds of the profile to run "
        "(synthetic, fashion-mnist, movielens, movielens-noisy); default all",
    )
    g = sub.add_parser(
        "report", help="re-render summary.json, report.md and the charts from a run's JSON (no measuring)"
    )
    g.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder of a run")
    args = p.parse_args(argv)
    if args.command == "report":
        from benchmarks.runner import rerender

        rerender(args.out.resolve())
        return 0
    missing = missing_packages()
    if missing:
        print(
            f"error: missing benchmark packages: {', '.join(missing)}; install them with "
            f"`{sys.executable} -m pip install -r requirements/build.txt -r requirements/bench.txt` "
            "(and `pip install -e ./client`)",
            file=sys.stderr,
        )
        return 2
    profile = PROFILES[args.profile]
    if args.only:
        kinds = set(args.only.split(","))
        unknown = kinds - {d.kind for d in profile.datasets}
        if unknown:
            print(f"error: --only {','.join(sorted(unknown))}: not in profile {profile.name}", file=sys.stderr)
            return 2
        profile = dataclasses.replace(profile, datasets=tuple(d for d in profile.datasets if d.kind in kinds))
    out = args.out or (REPO / "benchmarks" / "results" if profile.name == "full" else REPO / "build" / "bench-quick")
    work = args.work or REPO / "build" / "bench-work" / profile.name
    from benchmarks.runner import run

    try:
        run(profile, out.resolve(), work.resolve())
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
