"""Build-time verification: the recall gate, run on the exported files in a fresh process.

A fresh process proves the version loads from disk alone (nothing borrowed
from the builder's memory). Held-out queries go through both search
signatures; results are compared with exact search over the model's own
vectors. Recall counts a returned id as correct when its exact score reaches
the k-th best exact score, so ties between equal vectors are not punished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from model_builder.errors import VerificationError

DEFAULT_TARGET_RECALL = 0.95
DEFAULT_QUERIES = 1000
# Noise added to query vectors for search_by_vector (queries the index has never seen), as a
# fraction of each query's norm: per-dimension noise would swamp high-dimensional unit vectors.
_VECTOR_NOISE = 0.05


def _exact_scores(queries: np.ndarray, candidates: np.ndarray, distance: str) -> np.ndarray:
    sims = queries @ candidates.T
    if distance == "squared_l2":
        sims = 2 * sims - (queries**2).sum(1, keepdims=True) - (candidates**2).sum(1)[None, :]
    return sims


def exact_kth_scores(queries: np.ndarray, candidates: np.ndarray, k: int, distance: str,
                     exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """The exact k-th best score of every query (computed once, reused for many configs)."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), 256):
        sims = _exact_scores(queries[start:start + 256], candidates, distance)
        if exclude_rows is not None:
            sims[np.arange(len(sims)), exclude_rows[start:start + 256]] = -np.inf
        out[start:start + 256] = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return out


def recall_against(kth: np.ndarray, queries: np.ndarray, candidates: np.ndarray, returned_rows: np.ndarray,
                   distance: str) -> float:
    """Mean fraction of returned rows whose exact score reaches the exact k-th best score."""
    picked = candidates[returned_rows]  # [n, k, dim]
    got = np.einsum("nd,nkd->nk", queries, picked)
    if distance == "squared_l2":
        got = 2 * got - (queries**2).sum(1)[:, None] - (picked**2).sum(2)
    tolerance = 1e-4 * np.maximum(1.0, np.abs(kth))
    return float((got >= (kth - tolerance)[:, None]).mean())


def recall_at_k(queries: np.ndarray, candidates: np.ndarray, returned_rows: np.ndarray, distance: str,
                exclude_rows: np.ndarray | None = None) -> float:
    """Recall@k of returned rows against exact search (ties with the k-th score count as correct)."""
    kth = exact_kth_scores(queries, candidates, returned_rows.shape[1], distance, exclude_rows)
    return recall_against(kth, queries, candidates, returned_rows, distance)


def _rows_of(returned_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    lookup = {v: i for i, v in enumerate(candidate_ids.tolist())}
    return np.vectorize(lookup.__getitem__, otypes=[np.int64])(returned_ids)


def _replay_warmup(loaded, version_dir: Path) -> int:
    import tensorflow as tf

    from model_builder import warmup

    logs = warmup.read(version_dir)
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name or "serving_default"](**inputs)
    return len(logs)


def verify_version(version_dir: Path, target_recall: float = DEFAULT_TARGET_RECALL,
                   num_queries: int = DEFAULT_QUERIES, seed: int = 0) -> dict:
    """Loads the version, measures recall@k of both signatures, replays warmup; returns a report."""
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (registers Scann ops before loading)
    from model_builder.export import read_build_info
    from model_builder.serving_module import SERVING_SIGNATURE, VECTOR_SIGNATURE

    info = read_build_info(version_dir)
    distance = info.get("index", {}).get("distance", "dot_product")
    loaded = tf.saved_model.load(str(version_dir))
    candidates = loaded.candidate_vectors.numpy()
    candidate_ids = _decode(loaded.candidate_ids.numpy())
    query_vectors = loaded.query_vectors.numpy()
    query_ids = _decode(loaded.query_ids.numpy())
    items_are_queries = bool(info.get("serving", {}).get("items_are_queries", False))

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(query_ids), size=min(num_queries, len(query_ids)), replace=False)
    by_id = loaded.signatures[SERVING_SIGNATURE]
    by_vector = loaded.signatures[VECTOR_SIGNATURE]
    id_rows, vec_rows = [], []
    base = query_vectors[picks]
    scale = _VECTOR_NOISE * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
    noisy = (base + rng.normal(size=base.shape) * scale).astype(np.float32)
    for start in range(0, len(picks), 256):
        chunk = picks[start:start + 256]
        out = by_id(ids=tf.constant(_encode(query_ids[chunk])))
        id_rows.append(_rows_of(_decode(out["ids"].numpy()), candidate_ids))
        out = by_vector(vectors=tf.constant(noisy[start:start + 256]))
        vec_rows.append(_rows_of(_decode(out["ids"].numpy()), candidate_ids))
    id_rows, vec_rows = np.concatenate(id_rows), np.concatenate(vec_rows)
    self_rows = picks if items_are_queries else None
    report = {
        "version_dir": str(version_dir),
        "queries": int(len(picks)),
        "k": int(id_rows.shape[1]),
        "target_recall": target_recall,
        "recall_at_k": {
            SERVING_SIGNATURE: recall_at_k(query_vectors[picks], candidates, id_rows, distance, self_rows),
            VECTOR_SIGNATURE: recall_at_k(noisy, candidates, vec_rows, distance),
        },
        "self_excluded": bool(items_are_queries and not (id_rows == picks[:, None]).any()),
        "warmup_records_replayed": _replay_warmup(loaded, version_dir),
    }
    report["passed"] = min(report["recall_at_k"].values()) >= target_recall and (report["self_excluded"] or not items_are_queries)
    return report


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.asarray([v.decode() if isinstance(v, bytes) else v for v in values.ravel().tolist()], dtype=object).reshape(values.shape)
    return values


def _encode(values: np.ndarray) -> np.ndarray:
    return values if values.dtype == np.int64 else np.asarray([str(v) for v in values.tolist()], dtype=object)


def verify_in_fresh_process(version_dir: Path, target_recall: float, num_queries: int = DEFAULT_QUERIES) -> dict:
    """Runs `python -m model_builder verify` on version_dir; raises VerificationError below target."""
    cmd = [sys.executable, "-m", "model_builder", "verify", str(version_dir),
           "--target-recall", str(target_recall), "--queries", str(num_queries), "--json"]
    # The package may be run from a checkout without being installed: make it importable there too.
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerificationError(f"verification process failed to load {version_dir}: {tail}")
    report = json.loads(lines[-1])
    if not report["passed"]:
        recalls = ", ".join(f"{k} {v:.3f}" for k, v in report["recall_at_k"].items())
        raise VerificationError(
            f"recall@{report['k']} below target {target_recall}: {recalls}; the version was not published. "
            "Search more leaves (--num-leaves-to-search), reorder more (--reorder-num-neighbors), "
            "use --target-recall tuning, or lower --target-recall"
        )
    return report
