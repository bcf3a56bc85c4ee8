"""The smoke suite itself: passes against a conforming server, fails against a broken one,
and only runs when a target is given."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_tfs import FakeModel

import support

TESTS = Path(__file__).resolve().parents[1]
SMOKE = TESTS / "smoke"


def run_smoke(target: str, *extra: str) -> subprocess.CompletedProcess:
    return support.run_smoke_suite(target, "scann_model", *extra, wait_s=5)


@pytest.mark.parametrize("id_dtype", ["string", "int64"])
@pytest.mark.parametrize("typed_values", [False, True], ids=["tensor_content", "typed_vals"])
def test_smoke_suite_passes_against_a_conforming_server(make_server, id_dtype, typed_values):
    # A conforming server serves the current (batching-safe, v2) contract.
    server = make_server(FakeModel(id_dtype=id_dtype, contract=2), typed_values=typed_values)
    run = run_smoke(server.target)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "9 passed" in run.stdout
    assert server.calls["Predict"] >= 10 and server.calls["GetModelStatus"] >= 2


def test_smoke_suite_fails_when_results_are_not_best_first(make_server):
    server = make_server(FakeModel(contract=2))
    nearest = server.model.nearest
    server.model.nearest = lambda queries: tuple(a[:, ::-1] for a in nearest(queries))
    run = run_smoke(server.target)
    assert run.returncode == 1
    assert "FAILED" in run.stdout and "test_known_query_returns_k_distinct_ids_best_first" in run.stdout
    assert "test_candidate_vector_finds_its_candidate_first" in run.stdout


def load_plugin():
    spec = importlib.util.spec_from_file_location("smoke_plugin_under_test", SMOKE / "plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "option, env, args, expected",
    [
        ("10.0.0.1:8500", None, ["tests"], "10.0.0.1:8500"),
        (None, "svc:8500", ["tests"], "svc:8500"),
        (None, None, ["tests/smoke"], "127.0.0.1:8500"),
        (None, None, ["tests/smoke/test_smoke.py::test_batch_of_64"], "127.0.0.1:8500"),
        (None, None, ["tests"], None),  # part of `pytest tests`: skipped
        (None, None, ["tests/client"], None),
    ],
)
def test_target_resolution(monkeypatch, option, env, args, expected):
    plugin = load_plugin()
    if env is None:
        monkeypatch.delenv("SMOKE_TARGET", raising=False)
    else:
        monkeypatch.setenv("SMOKE_TARGET", env)
    config = SimpleNamespace(
        getoption=lambda name, default=None: option if name == "target" else default,
        args=args,
        invocation_params=SimpleNamespace(dir=TESTS.parent),
    )
    assert plugin.resolve_target(config) == expected
