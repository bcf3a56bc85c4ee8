"""The client drops into backend stacks: fresh venvs across Python 3.10-3.13, protobuf 4.25-7.x
and grpcio 1.60+, each with `pip check` clean and the client's own tests (tests/client/portable)
passing against the real local server; the report has each venv's recovery times after an outage.

Cost: the wheel is built once (client_dist); downloaded wheels are kept in build/wheels and
installed with --no-index afterwards (a fresh clone downloads them once, ~100 MB from PyPI);
the venvs are set up and tested in parallel. The run prints its wall time and writes
build/client-matrix/report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import support

WHEELS = support.REPO / "build" / "wheels"
WORK = support.REPO / "build" / "client-matrix"
PORTABLE = Path(__file__).resolve().parent / "portable"
# The test runner inside each venv: dev.txt's pytest.
PYTEST = "pytest==9.2.0"


@dataclass(frozen=True)
class Env:
    """One backend stack. `first` is installed before the client (the service's own pins);
    `with_client` beside it. `kept` packages must keep the version `first` gave them."""

    name: str
    python: str
    first: tuple[str, ...]
    with_client: tuple[str, ...] = ()
    kept: tuple[str, ...] = ("protobuf", "grpcio")
    only_client_deps: bool = False


MATRIX = (
    # The declared lower bounds, on the oldest Python.
    Env("py3.10-protobuf4.25-grpcio1.60", "3.10", ("protobuf==4.25.1", "grpcio==1.60.0", "numpy==1.22.0")),
    # A service pinned by grpcio-status 1.66 (protobuf 5): the client must not move protobuf.
    Env(
        "py3.11-protobuf5.29-grpcio-status1.66",
        "3.11",
        ("grpcio-status==1.66.2", "protobuf==5.29.6"),
        kept=("protobuf", "grpcio", "grpcio-status"),
    ),
    # grpcio 1.70: its backup poller never saw a restarted server (grpc/grpc#38290); the
    # portable recovery test shows the client recovering on it anyway.
    Env(
        "py3.12-protobuf6.33-grpcio1.70",
        "3.12",
        ("protobuf==6.33.6",),
        ("grpcio==1.70.0", "numpy==2.5.5"),
        only_client_deps=True,
    ),
    Env("py3.13-protobuf7.36", "3.13", ("protobuf==7.36.2",), ("grpcio==1.85.3", "numpy==2.5.5")),
)
# Installed beside the client: grpcio, protobuf, numpy; typing-extensions only because grpcio declares it.
CLIENT_DEPS = {"scann-serving-client", "grpcio", "protobuf", "numpy", "typing-extensions"}
TOOLING = {"pip", "setuptools", "wheel"}


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)


def _must(command: list[str], **kwargs) -> str:
    run = _run(command, **kwargs)
    assert run.returncode == 0, (
        f"{' '.join(map(str, command))} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    )
    return run.stdout


def interpreter(version: str) -> str:
    """Python <version> from pyenv or PATH (pyenv's shims answer only for the selected
    version, so each candidate is run once); fails with an install hint."""
    candidates = []
    if shutil.which("pyenv"):
        bare = _run(["pyenv", "versions", "--bare"])
        versions = sorted(
            (v for v in bare.stdout.split() if v.startswith(version + ".") and v.count(".") == 2),
            key=lambda v: tuple(int(x) for x in v.split(".")),
        )
        for full in reversed(versions):
            prefix = _run(["pyenv", "prefix", full]).stdout.strip()
            candidates.append(str(Path(prefix) / "bin" / "python"))
    candidates.extend(filter(None, [shutil.which(f"python{version}")]))
    for candidate in candidates:
        probe = _run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"])
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    pytest.fail(f"Python {version} not found: the client matrix needs Python 3.10-3.13 (pyenv install {version})")


def pip(python: Path, *args: str) -> list[str]:
    """The main venv's pip acting on another interpreter's environment (pip --python): the
    matrix venvs are made --without-pip, which saves an ensurepip run per venv."""
    return [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]


def pip_install(python: Path, requirements: list[str]) -> None:
    """Install from build/wheels without the index; download what is missing once, then retry."""
    offline = pip(python, "install", "--quiet", "--no-index", "--find-links", str(WHEELS), *requirements)
    if _run(offline).returncode == 0:
        return
    # A local wheel (the client) is passed too: pip then fetches the dependencies it declares
    # (e.g. numpy for a Python version no earlier run needed).
    _must(
        pip(
            python,
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--dest",
            str(WHEELS),
            "--find-links",
            str(WHEELS),
            *requirements,
        )
    )
    _must(offline)


def installed(python: Path) -> dict[str, str]:
    listing = json.loads(_must(pip(python, "list", "--format=json")))
    return {p["name"].lower().replace("_", "-"): p["version"] for p in listing}


@dataclass
class Outcome:
    env: Env
    versions: dict[str, str] = field(default_factory=dict)
    pip_check: str = ""
    tests: str = ""
    seconds: float = 0.0
    error: str | None = None
    # Seconds from the server's return to the first success, per client variant (test_recovery.py).
    recovery: dict[str, float | None] = field(default_factory=dict)


PROBE = (
    "import sys, json, grpc, numpy, google.protobuf, retrieval_client\n"
    "from google.protobuf.internal import api_implementation\n"
    "from retrieval_client.protos import predict_pb2\n"
    "import importlib.resources as r\n"
    "assert not [m for m in sys.modules if m.startswith(('tensorflow', 'tensorflow_serving'))]\n"
    "assert r.files('retrieval_client.protos').joinpath('predict.proto').is_file()\n"
    "print(json.dumps({'python': sys.version.split()[0], 'protobuf': google.protobuf.__version__,\n"
    "  'protobuf_impl': api_implementation.Type(), 'grpcio': grpc.__version__, 'numpy': numpy.__version__,\n"
    "  'client': retrieval_client.__version__}))\n"
)


# Venv setup runs for all envs at once; the test runs hold one core each, so the deadline tests'
# timings are not skewed by more parallel sessions than cores.
_TEST_SLOTS = threading.BoundedSemaphore(max(1, min(len(MATRIX), os.cpu_count() or 1)))


def run_env(env: Env, wheel: Path, portable_copy: Path, live_targets: str) -> Outcome:
    outcome = Outcome(env)
    started = time.monotonic()
    try:
        venv = WORK / env.name
        _must([interpreter(env.python), "-m", "venv", "--clear", "--without-pip", str(venv)])
        python = venv / "bin" / "python"
        pip_install(python, list(env.first))
        before = installed(python)
        pip_install(python, [str(wheel), *env.with_client])
        after = installed(python)
        moved = {
            name: (before[name], after.get(name))
            for name in env.kept
            if name in before and before[name] != after.get(name)
        }
        assert not moved, f"installing the client changed the service's pins: {moved}"
        if env.only_client_deps:
            extra = set(after) - CLIENT_DEPS - TOOLING
            assert not extra, f"the client pulled in more than grpcio/protobuf/numpy: {sorted(extra)}"
        check = _run(pip(python, "check"))
        outcome.pip_check = check.stdout.strip()
        assert check.returncode == 0, f"pip check: {check.stdout}{check.stderr}"
        outcome.versions = json.loads(_must([str(python), "-c", PROBE]).strip().splitlines()[-1])
        assert _must([str(venv / "bin" / "retrieval-client"), "--version"]).startswith("retrieval-client ")
        pip_install(python, [PYTEST])
        recovery_report = venv / "recovery.json"
        recovery_report.unlink(missing_ok=True)
        with _TEST_SLOTS:
            tests = _run(
                [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(portable_copy)],
                cwd=portable_copy,
                env={
                    # Without PYTHONPATH: a developer's (e.g. PYTHONPATH=client/src) would make the venv
                    # import the checkout's client instead of the installed wheel.
                    **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
                    "RETRIEVAL_CLIENT_LIVE_TARGETS": live_targets,
                    "RETRIEVAL_CLIENT_RECOVERY_REPORT": str(recovery_report),
                    "PYTHONDONTWRITEBYTECODE": "1",
                },
            )
        if recovery_report.is_file():
            measured = json.loads(recovery_report.read_text())
            outcome.recovery = {name: result["recovered_s"] for name, result in measured.items()}
        outcome.tests = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
        assert tests.returncode == 0, f"client tests failed:\n{tests.stdout[-4000:]}\n{tests.stderr[-2000:]}"
    except AssertionError as exc:
        outcome.error = str(exc)
    except BaseException as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - started
    return outcome


@pytest.mark.slow
def test_client_across_python_protobuf_and_grpcio(client_dist, local_live_servers, tmp_path):
    started = time.monotonic()
    WHEELS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    # The portable tests run from a copy: no conftest of the repository's tests/ (which needs TF) is loaded,
    # and `retrieval_client` can only come from the installed wheel.
    portable_copy = tmp_path / "portable"
    shutil.copytree(PORTABLE, portable_copy, ignore=shutil.ignore_patterns("__pycache__"))
    (portable_copy / "pytest.ini").write_text("[pytest]\naddopts = -ra\n")
    # Their one helper from tests/support (certificates, standard library only), without the rest of it.
    (portable_copy / "support").mkdir()
    (portable_copy / "support" / "__init__.py").write_text("")
    shutil.copy(PORTABLE.parent.parent / "support" / "tls.py", portable_copy / "support" / "tls.py")
    live_targets = ",".join(f"{dtype}={where}" for dtype, where in local_live_servers.items())
    with ThreadPoolExecutor(len(MATRIX)) as pool:
        outcomes = list(pool.map(lambda env: run_env(env, client_dist["wheel"], portable_copy, live_targets), MATRIX))
    wall = time.monotonic() - started
    report = {
        "wall_seconds": round(wall, 1),
        "envs": [
            {
                "name": o.env.name,
                "versions": o.versions,
                "pip_check": o.pip_check,
                "tests": o.tests,
                "seconds": round(o.seconds, 1),
                "recovery_s": o.recovery,
                "error": o.error,
            }
            for o in outcomes
        ],
    }
    (WORK / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nclient matrix: {wall:.1f} s wall for {len(MATRIX)} venvs (report: {WORK / 'report.json'})")
    for o in outcomes:
        versions = " ".join(f"{k}={v}" for k, v in o.versions.items())
        print(
            f"  {o.env.name}: {o.seconds:.1f} s; {versions}; {o.tests or '-'}; {'FAILED: ' + o.error if o.error else 'ok'}"
        )
    print("  seconds from the server's return to the first success (tests/client/portable/test_recovery.py):")
    for o in outcomes:
        print(f"    grpcio {o.versions.get('grpcio', '?')}: {o.recovery or '-'}")
    failed = [f"{o.env.name}: {o.error}" for o in outcomes if o.error]
    assert not failed, "\n\n".join(failed)
