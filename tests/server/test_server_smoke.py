"""The target-only smoke suite (tests/smoke), run as a user would, against the local server on real models."""

from __future__ import annotations

import pytest

import support


@pytest.mark.parametrize(
    "model_fixture",
    [
        pytest.param("movielens_model", marks=pytest.mark.slow),  # int64 user ids, the demo's model
        "synthetic_model",  # string ids from a CSV
    ],
)
def test_smoke_suite_passes_against_the_local_server(request, model_fixture, tmp_path):
    version_dir = request.getfixturevalue(model_fixture)
    model = version_dir.parent.name
    with support.local_server(version_dir.parent.parent, model, log_dir=tmp_path) as server:
        server.wait_available()
        run = support.run_smoke_suite(server.target, model)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "9 passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
