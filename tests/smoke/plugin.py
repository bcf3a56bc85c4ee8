"""Command-line options of the target-only smoke suite (tests/smoke).

pytest reads `pytest_addoption` before parsing the command line only from
plugins and from the conftest files it loads first (the rootdir's, and those
of directories named on the command line). So:

- `pytest tests/smoke --target X --model Y` works through tests/smoke/conftest.py;
- `pytest tests --target X` needs this module registered by the rootdir
  conftest: `pytest_plugins = ["smoke.plugin"]` in tests/conftest.py.

Both call add_smoke_options(); the second registration is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SMOKE_DIR = Path(__file__).resolve().parent
DEFAULT_TARGET = "127.0.0.1:8500"


def add_smoke_options(parser) -> None:
    """Add --target, --model and --wait-s (idempotent)."""
    group = parser.getgroup("smoke", "retrieval smoke suite (tests/smoke)")
    try:
        group.addoption(
            "--target",
            default=None,
            help="gRPC target of the server under test, host:port or dns:///name:port "
            f"(default: $SMOKE_TARGET, else {DEFAULT_TARGET} when tests/smoke is named on the "
            "command line; otherwise the smoke tests are skipped)",
        )
        group.addoption("--model", default="scann_model", help="model name on that server (default: scann_model)")
        group.addoption(
            "--wait-s",
            type=float,
            default=30.0,
            help="first wait this long for an AVAILABLE version (default: 30)",
        )
    except ValueError:
        pass  # already added: registered both as plugin and through the conftest


def pytest_addoption(parser) -> None:
    add_smoke_options(parser)


def smoke_dir_requested(args: Iterable[str], invocation_dir: Path) -> bool:
    """True when a command-line path lies inside tests/smoke."""
    for arg in args:
        path = (Path(invocation_dir) / arg.split("::")[0]).resolve()
        if path == SMOKE_DIR or SMOKE_DIR in path.parents:
            return True
    return False


def resolve_target(config) -> str | None:
    """--target, else $SMOKE_TARGET, else the default port when the smoke
    suite was asked for explicitly; None means "no server: skip"."""
    target = config.getoption("target", default=None)
    if target:
        return target
    if os.environ.get("SMOKE_TARGET"):
        return os.environ["SMOKE_TARGET"]
    if smoke_dir_requested(config.args, config.invocation_params.dir):
        return DEFAULT_TARGET
    return None
