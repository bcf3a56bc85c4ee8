"""build --tuning-queries: the index search tunes on part of the file, the gate scores the other part.

One real build of a 3,000 x 16 catalogue whose queries are not its items (noisy draws off the
clusters); the split is re-derived here from the rule build_info records, independently of
model_builder's code, and the gate's recall recomputed on those rows.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import support
from model_builder import verify
from model_builder.data.synthetic import clustered_embeddings
from model_builder.errors import ConfigError
from model_builder.export.version_store import read_build_info
from model_builder.index import tuning_queries
from model_builder.index.recall import recall_at_k

ID_OFFSET = 7
QUERY_ROWS = 400
GATE_QUERIES = 150


def _queries(rows: int, seed: int) -> np.ndarray:
    """Queries off the catalogue: cluster draws plus wide noise, renormalized (not catalogue items)."""
    base = clustered_embeddings(rows, 16, num_clusters=40, seed=seed)
    noisy = base + np.random.default_rng(seed).normal(scale=0.35, size=base.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuning-queries")
    vectors = clustered_embeddings(3_000, 16, num_clusters=40, seed=11)
    items = folder / "items.npz"
    np.savez(items, ids=np.arange(len(vectors), dtype=np.int64) + ID_OFFSET, vectors=vectors)
    queries = folder / "queries.npy"
    np.save(queries, _queries(QUERY_ROWS, seed=5))
    # AH with its reorder depth tuned to a low target, so recall is well below 1 and depends on the
    # queries; the gate publishes whatever they measure (what is tested is which queries it measured).
    # Not a tree: tuned on these off-catalogue queries, a tree's few leaves sometimes left
    # serving_default (gated on catalogue ids) below the target (README "Tuning queries").
    version = support.build(
        folder / "models",
        "--candidates", str(items), "--query", "item", "--tuning-queries", str(queries),
        "--verify-queries", str(GATE_QUERIES), "--target-recall", "0.5",
        "--algorithm", "ah", "--no-index-search",
    )  # fmt: skip
    return folder, version, vectors, queries


def test_build_records_the_file_and_the_gate_scores_its_held_out_part(built):
    folder, version, vectors, queries = built
    info = read_build_info(version)
    record = info["tuning_queries"]
    assert record["sha256"] == hashlib.sha256(queries.read_bytes()).hexdigest()
    assert (record["file"], record["rows"], record["held_out_rows"]) == ("queries.npy", QUERY_ROWS, GATE_QUERIES)
    assert record["tuning_rows"] == QUERY_ROWS - GATE_QUERIES and "permut" in record["split"]
    assert info["index_search"]["queries"] == record["tuning_rows"]
    # Tuned for what search_by_vector fetches (k), not k + 1 as for a catalogue item that finds itself.
    assert info["index_search"]["recall_at"] == 10 and info["index_search"]["goal"] == 0.5
    report = info["verification"]
    assert report["vector_queries"] == {"rows": GATE_QUERIES, "source": "--tuning-queries held-out part"}

    # The split re-derived from the recorded rule, and the gate's recall recomputed on those rows.
    order = np.random.default_rng(record["seed"]).permutation(record["rows"])
    held_out = np.load(queries)[order[: record["held_out_rows"]]]
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops before loading)

    out = tf.saved_model.load(str(version)).signatures["search_by_vector"](vectors=tf.constant(held_out))
    rows = out["ids"].numpy() - ID_OFFSET
    expected = recall_at_k(held_out, vectors, rows, "dot_product")
    assert report["recall_at_k"]["search_by_vector"] == pytest.approx(expected, abs=1e-6)

    # Without the file, verify scores noisy catalogue items: another sample, another figure.
    plain = verify.verify_version(version, 0.5, GATE_QUERIES)
    assert plain["vector_queries"] == {"rows": GATE_QUERIES, "source": "catalogue queries + 5% noise"}
    assert plain["recall_at_k"]["search_by_vector"] != pytest.approx(expected, abs=1e-3)


def test_verify_takes_the_same_file_and_refuses_another(built):
    folder, version, _, queries = built
    proc = support.run_cli(
        "verify", str(version), "--tuning-queries", str(queries), "--target-recall", "0.5", "--json", check=True
    )
    again = json.loads(proc.stdout.splitlines()[-1])
    recorded = read_build_info(version)["verification"]
    assert again["vector_queries"]["rows"] == GATE_QUERIES
    assert again["recall_at_k"]["search_by_vector"] == pytest.approx(recorded["recall_at_k"]["search_by_vector"])

    other = folder / "other.npy"
    np.save(other, _queries(QUERY_ROWS, seed=6))
    proc = support.run_cli("verify", str(version), "--tuning-queries", str(other))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: --tuning-queries {other}: not the file this version was tuned on")
    assert "queries.npy" in lines[0]


def _write_bad(folder, kind: str):
    good = _queries(QUERY_ROWS, seed=5)
    path = folder / f"{kind}.npy"
    if kind == "wrong-dimension":
        np.save(path, good[:, :8])
    elif kind == "nan":
        good[17, 3] = np.nan
        np.save(path, good)
    elif kind == "too-few-rows":
        np.save(path, good[:150])
    elif kind == "unreadable":
        path.write_bytes(b"not numpy at all")
    elif kind == "npz-without-vectors":
        path = folder / "queries.npz"
        np.savez(path, embeddings=good)
    return path


BAD_FILES = {
    "wrong-dimension": "vectors have 8 dims but the catalogue has 16",
    "nan": "row 17 holds NaN or Inf (1 of 400 rows)",
    "too-few-rows": f"150 rows; at least {tuning_queries.MIN_ROWS} are needed (100 to tune",
    "unreadable": "not a .npy file",
    "npz-without-vectors": "no array 'vectors' (found: embeddings)",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_is_a_config_error_naming_it_and_the_fix(tmp_path, kind):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        tuning_queries.load(path, GATE_QUERIES).check_dimension(16, "the catalogue")
    assert str(err.value).startswith(f"--tuning-queries {path}: ") and BAD_FILES[kind] in str(err.value)


def test_bad_file_exits_2_with_one_line_before_any_work(built, tmp_path):
    # One CLI case (each costs a process start); the others raise the same ConfigError above.
    folder, kind = built[0], "wrong-dimension"
    path = _write_bad(tmp_path, kind)
    proc = support.run_cli(
        "build", "--candidates", str(folder / "items.npz"), "--query", "item", "--out", str(tmp_path / "m"),
        "--tuning-queries", str(path),
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"error: {tuning_queries_error(path, kind)}"
    assert "index:" not in proc.stdout and not (tmp_path / "m").exists()  # nothing indexed or written


def tuning_queries_error(path, kind: str) -> str:
    """The message the API raises for this file (the CLI prints exactly it)."""
    with pytest.raises(ConfigError) as err:
        tuning_queries.load(path, GATE_QUERIES).check_dimension(16, "the catalogue")
    assert BAD_FILES[kind] in str(err.value)
    return str(err.value)


def test_parquet_list_column_and_npz_vectors_read_like_npy(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = _queries(QUERY_ROWS, seed=5)
    pq.write_table(pa.table({"query_id": np.arange(QUERY_ROWS), "embedding": list(good)}), tmp_path / "q.parquet")
    np.savez(tmp_path / "q.npz", vectors=good)
    np.save(tmp_path / "q.npy", good)
    loaded = [tuning_queries.load(tmp_path / f"q.{ext}", GATE_QUERIES) for ext in ("npy", "npz", "parquet")]
    for other in loaded[1:]:
        np.testing.assert_array_equal(other.held_out, loaded[0].held_out)
        np.testing.assert_array_equal(other.tuning, loaded[0].tuning)
    assert (len(loaded[0].held_out), len(loaded[0].tuning)) == (GATE_QUERIES, QUERY_ROWS - GATE_QUERIES)


def test_trained_towers_check_the_dimension_before_training(tmp_path):
    path = tmp_path / "q.npy"
    np.save(path, _queries(QUERY_ROWS, seed=5))  # 16 dims
    with pytest.raises(ConfigError, match="16 dims but --embedding-dim has 32"):
        tuning_queries.load(path, 100).check_dimension(32, "--embedding-dim")
    proc = support.run_cli(
        "build",
        "--dataset",
        "synthetic",
        "--out",
        str(tmp_path),
        "--embedding-dim",
        "32",
        "--tuning-queries",
        str(path),
    )
    assert proc.returncode == 2 and "--embedding-dim has 32" in proc.stderr.strip().splitlines()[-1]
    assert "data:" not in proc.stdout  # rejected before loading or training anything
