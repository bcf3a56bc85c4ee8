"""`python -m model_builder check-compat VERSION_DIR`: will TF Serving 2.11 in the serving image load and serve this model?

Two gates: every op exists in the serving runtime (a registry snapshot of TF 2.11 + scann
1.2.9; exit 1 and the op list when one is missing), and the serving rules -- what TF
Serving's batching does with the version and a batching file (compat/serving_rules.py;
exit 2 with one line naming each broken rule).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model_builder.compat import ops, serving_rules


def add_check_compat(sub) -> None:
    """Registers the check-compat subcommand."""
    default = serving_rules.default_batching_file()
    p = sub.add_parser(
        "check-compat",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="check a version against the serving runtime's ops and TF Serving 2.11's batching rules",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("version_dir", type=Path, help="a version folder: BASE/NAME/VERSION")
    p.add_argument(
        "--batching-parameters",
        type=Path,
        default=default,
        help="TF Serving BatchingParameters file the server runs with (default: the image's "
        "k8s/base/config/batching_parameters.txt when run from a checkout; none: the model is checked alone)"
        "%(default).0s",
    )
    p.add_argument(
        "--runtime", default=ops.default_runtime(), help="registry snapshot under model_builder/compat/registry/"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    report = ops.check(args.version_dir, args.runtime)
    violations = [
        v
        for v in serving_rules.check_all(args.version_dir, args.batching_parameters, args.runtime)
        if v.rule is not serving_rules.OPS
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "runtime": report.runtime,
                    "ok": report.ok and not violations,
                    "ops_used": report.ops_used,
                    "missing_ops": report.missing_ops,
                    "unknown_attrs": report.unknown_attrs,
                    "batching_parameters": str(args.batching_parameters) if args.batching_parameters else None,
                    "serving_rules_broken": [
                        {"rule": v.rule.name, "source": v.rule.source, "message": v.message} for v in violations
                    ],
                }
            )
        )
    else:
        print(f"{len(report.ops_used)} op types in {args.version_dir} (target runtime {report.runtime}):")
        for op, count in report.ops_used.items():
            flag = "MISSING" if op in report.missing_ops else "ok"
            print(f"  {flag:7} {op} x{count}")
        for op, attrs in report.unknown_attrs.items():
            print(
                f"  warning: {op} sets attribute(s) {', '.join(attrs)} unknown to {report.runtime}; its loader ignores them"
            )
        print(
            "compatible"
            if report.ok
            else f"INCOMPATIBLE: {', '.join(report.missing_ops)} not registered in {report.runtime}"
        )
        if not violations:
            checked = args.batching_parameters or "no batching file (model checked alone)"
            print(f"serving rules of TF Serving 2.11 --enable_batching: ok ({checked})")
    if violations:
        print(f"error: {'; '.join(str(v) for v in violations)}", file=sys.stderr)
        return serving_rules.ServingRuleError.exit_code
    return 0 if report.ok else 1
