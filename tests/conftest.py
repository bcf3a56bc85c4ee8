"""Session fixtures: real models built once through the real CLI, shared by the test modules."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run `make <target>` the way a user does from a shell. Under `make test` the outer
# make exports its level, flags and command-line overrides; an inner make would inherit
# them (e.g. `make test MODEL=x` overriding a test's MODEL) and print "make[1]: Entering
# directory" lines into output the tests parse.
for _var in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):
    os.environ.pop(_var, None)

import support  # noqa: E402  (after the environment is cleaned above)
from support import harness  # noqa: E402  (idem)

# --target/--model for the target-only smoke suite (tests/smoke), also under `pytest tests`.
pytest_plugins = ["smoke.plugin"]


def pytest_ignore_collect(collection_path, config):
    """The target-only smoke suite runs only against a server: --target, $SMOKE_TARGET or
    `pytest tests/smoke`. Under a plain `pytest tests` it is not collected (rather than
    reported as skipped); tests/server runs it against the local server."""
    from smoke.plugin import SMOKE_DIR, resolve_target

    if collection_path == SMOKE_DIR and resolve_target(config) is None:
        return True
    return None


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """A model base path shared by the session's read-only models."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def movielens_model(models_root):
    """MovieLens 100K, user -> items, default training: the demo's model."""
    return support.build(models_root, "--dataset", "movielens-100k", model_name="movielens")


@pytest.fixture(scope="session")
def movielens_items_model(models_root):
    """MovieLens 100K, item -> similar items (the seed's use), fast training."""
    return support.build(
        models_root, "--dataset", "movielens-100k", "--query", "item", *support.FAST_TRAIN, model_name="movielens_items"
    )


@pytest.fixture(scope="session")
def string_id_csv(tmp_path_factory):
    """Synthetic interactions written as a CSV with string ids ("u1", "i7")."""
    from model_builder.data import synthetic

    inter = synthetic.interactions(num_users=300, num_items=500, string_ids=True).interactions
    path = tmp_path_factory.mktemp("data") / "interactions.csv"
    rows = ["user_id,item_id,weight,timestamp"]
    rows += [
        f"{u},{i},{w:g},{t:g}" for u, i, w, t in zip(inter.user_ids, inter.item_ids, inter.weights, inter.timestamps)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def synthetic_model(models_root, string_id_csv):
    """String ids from a CSV, user -> items, fast training."""
    return support.build(models_root, "--dataset", str(string_id_csv), *support.FAST_TRAIN, model_name="synthetic")


@pytest.fixture(scope="session")
def fallback_model_dir(models_root, string_id_csv):
    """Like synthetic_model, built with --unknown-ids fallback (unknown ids get the most popular items)."""
    return support.build(
        models_root,
        "--dataset",
        str(string_id_csv),
        *support.FAST_TRAIN,
        "--unknown-ids",
        "fallback",
        model_name="synthetic_fallback",
    )


@pytest.fixture(scope="session")
def model_kinds(movielens_model, movielens_items_model, synthetic_model, fallback_model_dir, tmp_path_factory):
    """One version of every kind: int/string ids, user/item queries, brute force / AH / tree+AH / exact, both
    unknown-id policies (tests/compat under TF 2.11, tests/server through a batching server)."""
    import numpy as np

    from model_builder.data.synthetic import clustered_embeddings

    root = tmp_path_factory.mktemp("model_kinds")
    kinds = {
        "movielens-user-int-bruteforce": movielens_model,
        "movielens-item-int": movielens_items_model,
        "synthetic-user-string": synthetic_model,
        "synthetic-user-string-fallback": fallback_model_dir,
    }
    for name, n, extra in (
        ("ah-string", 25_000, []),
        ("tree-ah-int", 110_000, []),
        ("exact-int", 2_000, ["--algorithm", "exact"]),
    ):
        path = root / f"{name}.npz"
        ids = np.array([f"c{i}" for i in range(n)]) if "string" in name else np.arange(n, dtype=np.int64) * 3
        np.savez(path, ids=ids, vectors=clustered_embeddings(n, 24, seed=n))
        # The gate with its default 1000 queries, as users run it: 200 left too little room between
        # the index search's recall goal and the gate's sampling noise.
        kinds[name] = support.build(root, "--candidates", str(path), "--query", "item", *extra, model_name=name)
    return kinds


@pytest.fixture(scope="session")
def items_model(tmp_path_factory):
    """2000 string-id items, item -> similar items, K=10, version 1 (tests/server, tests/reliability)."""
    return harness.items_model(tmp_path_factory)


@pytest.fixture(scope="session")
def items_v2_model(tmp_path_factory):
    """Same ids, other vectors, K=5, version 2."""
    return harness.items_v2_model(tmp_path_factory)


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory):
    """K=1500: a batch of 1024 ids takes seconds."""
    return harness.slow_model(tmp_path_factory)
