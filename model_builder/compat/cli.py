"""`python -m model_builder check-compat VERSION_DIR`: will the serving image's TF load this model?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model_builder.compat import ops


def add_check_compat(sub) -> None:
    """Registers the check-compat subcommand."""
    p = sub.add_parser("check-compat", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="list a SavedModel's ops and fail if the serving runtime lacks any",
                       description="Lists every op in a SavedModel (functions included) and checks it against "
                                   "a snapshot of the serving runtime's op registry.")
    p.add_argument("version_dir", type=Path, help="a version folder: BASE/NAME/VERSION")
    p.add_argument("--runtime", default=ops.default_runtime(), help="registry snapshot under model_builder/compat/registry/")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    report = ops.check(args.version_dir, args.runtime)
    if args.json:
        print(json.dumps({"runtime": report.runtime, "ok": report.ok, "ops_used": report.ops_used,
                          "missing_ops": report.missing_ops, "unknown_attrs": report.unknown_attrs}))
    else:
        print(f"{len(report.ops_used)} op types in {args.version_dir} (target runtime {report.runtime}):")
        for op, count in report.ops_used.items():
            flag = "MISSING" if op in report.missing_ops else "ok"
            print(f"  {flag:7} {op} x{count}")
        for op, attrs in report.unknown_attrs.items():
            print(f"  warning: {op} sets attribute(s) {', '.join(attrs)} unknown to {report.runtime}; its loader ignores them")
        print("compatible" if report.ok else f"INCOMPATIBLE: {', '.join(report.missing_ops)} not registered in {report.runtime}")
    return 0 if report.ok else 1
