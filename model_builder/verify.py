"""Build-time verification: the recall gate, run on the exported files in a fresh process.

A fresh process proves the version loads from disk alone (nothing borrowed
from the builder's memory). Held-out queries go through both search
signatures; results are compared with exact search over the model's own
vectors. Recall counts a returned id as correct when its exact score reaches
the k-th best exact score, so ties between equal vectors are not punished.

It also proves the graph is batching-safe (TF Serving merges concurrent
requests into one batch): a batch mixing known ids with unknown ids (and
finite vectors with NaN rows) must answer every known row exactly as that row
alone, and mark only the others `found = false`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from model_builder.errors import VerificationError
from model_builder.index.recall import DEFAULT_QUERIES, DEFAULT_TARGET_RECALL, recall_at_k

# Noise added to query vectors for search_by_vector (queries the index has never seen), as a
# fraction of each query's norm: per-dimension noise would swamp high-dimensional unit vectors.
_VECTOR_NOISE = 0.05
# Rows of the mixed-batch check (known rows, each also run alone).
_MIXED_ROWS = 16


def _rows_of(returned_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """Candidate rows of returned ids; -1 for padding entries ("" / -1: fewer than k candidates found)."""
    lookup = {v: i for i, v in enumerate(candidate_ids.tolist())}
    return np.vectorize(lambda v: lookup.get(v, -1), otypes=[np.int64])(returned_ids)


def _replay_warmup(loaded, version_dir: Path) -> int:
    import tensorflow as tf

    from model_builder.export import warmup

    logs = warmup.read(version_dir)
    for log in logs:
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name or "serving_default"](**inputs)
    return len(logs)


def verify_version(
    version_dir: Path,
    target_recall: float = DEFAULT_TARGET_RECALL,
    num_queries: int = DEFAULT_QUERIES,
    seed: int = 0,
    vector_queries: np.ndarray | None = None,
) -> dict:
    """Loads the version, measures recall@k of both signatures, replays warmup; returns a report.

    `vector_queries` (the held-out part of build --tuning-queries, index/tuning_queries.py) are
    what search_by_vector is scored on; without them, noisy copies of sampled catalogue queries.
    """
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (registers Scann ops before loading)
    from model_builder.contract import SERVING_SIGNATURE, VECTOR_SIGNATURE
    from model_builder.export.version_store import read_build_info

    info = read_build_info(version_dir)
    distance = info.get("index", {}).get("distance", "dot_product")
    loaded = tf.saved_model.load(str(version_dir))
    candidates = loaded.candidate_vectors.numpy()
    candidate_ids = _decode(loaded.candidate_ids.numpy())
    query_vectors = loaded.query_vectors.numpy()
    query_ids = _decode(loaded.query_ids.numpy())
    items_are_queries = bool(info.get("serving", {}).get("items_are_queries", False))
    # User -> items with exclusions: each query row's history (candidate rows, padded past the catalogue).
    seen = loaded.seen_items.numpy() if hasattr(loaded, "seen_items") else None

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(query_ids), size=min(num_queries, len(query_ids)), replace=False)
    by_id = loaded.signatures[SERVING_SIGNATURE]
    by_vector = loaded.signatures[VECTOR_SIGNATURE]
    id_rows, vec_rows = [], []
    base = query_vectors[picks]
    scale = _VECTOR_NOISE * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
    noisy = (base + rng.normal(size=base.shape) * scale).astype(np.float32)
    if vector_queries is not None:
        noisy = np.ascontiguousarray(vector_queries, dtype=np.float32)
    all_found = True
    for start in range(0, len(picks), 256):
        out = by_id(ids=tf.constant(_encode(query_ids[picks[start : start + 256]])))
        all_found &= bool(out["found"].numpy().all())
        id_rows.append(_rows_of(_decode(out["ids"].numpy()), candidate_ids))
    for start in range(0, len(noisy), 256):
        out = by_vector(vectors=tf.constant(noisy[start : start + 256]))
        all_found &= bool(out["found"].numpy().all())
        vec_rows.append(_rows_of(_decode(out["ids"].numpy()), candidate_ids))
    id_rows, vec_rows = np.concatenate(id_rows), np.concatenate(vec_rows)
    serving = info.get("serving", {})
    mixed = mixed_batch_check(
        by_id,
        by_vector,
        query_ids[picks[:_MIXED_ROWS]],
        noisy[:_MIXED_ROWS],
        set(query_ids.tolist()),
        _not_found_row(serving, candidate_ids, int(id_rows.shape[1])),
    )
    # Exact search under the served rule: without the query item, or without the user's history.
    # A shard of an item model maps each query to its candidate row here (-1: held by another shard).
    own = loaded.self_rows.numpy()[picks].astype(np.int64) if hasattr(loaded, "self_rows") else picks
    excluded = own if items_are_queries else (seen[picks] if seen is not None else None)
    report = {
        "version_dir": str(version_dir),
        "queries": int(len(picks)),
        "vector_queries": {
            "rows": int(len(noisy)),
            "source": "catalogue queries + 5% noise" if vector_queries is None else "--tuning-queries held-out part",
        },
        "k": int(id_rows.shape[1]),
        "target_recall": target_recall,
        "recall_at_k": {
            SERVING_SIGNATURE: recall_at_k(query_vectors[picks], candidates, id_rows, distance, excluded),
            VECTOR_SIGNATURE: recall_at_k(noisy, candidates, vec_rows, distance),
        },
        "items_are_queries": items_are_queries,
        "self_excluded": bool(items_are_queries and not ((id_rows == own[:, None]) & (id_rows >= 0)).any()),
        "seen_excluded": None if seen is None else not _returned_seen(id_rows, seen[picks]),
        "known_rows_found": all_found,
        "mixed_batch": mixed,
        "warmup_records_replayed": _replay_warmup(loaded, version_dir),
    }
    report["passed"] = not failures(report)
    return report


def _returned_seen(rows: np.ndarray, seen: np.ndarray) -> bool:
    """True when any returned row is in its query's history (padding entries, -1, never match)."""
    return any(np.isin(r[r >= 0], h).any() for r, h in zip(rows, seen))


def _not_found_row(serving: dict, candidate_ids: np.ndarray, k: int) -> list:
    """What an unknown id's row must hold: the build-time fallback list, or padding."""
    if serving.get("unknown_ids") == "fallback":
        return list(serving["fallback_ids"])
    return [-1 if candidate_ids.dtype == np.int64 else ""] * k


def _unknown_ids(known: set, like: np.ndarray, count: int) -> np.ndarray:
    if like.dtype == np.int64:
        start = max(known) + 1
        return np.arange(start, start + count, dtype=np.int64)
    return np.asarray(
        [f"not-a-query-id-{i}" for i in range(count * 2) if f"not-a-query-id-{i}" not in known][:count], dtype=object
    )


def mixed_batch_check(
    by_id, by_vector, known_ids: np.ndarray, vectors: np.ndarray, all_query_ids: set, not_found_row: list
) -> dict:
    """Known rows interleaved with unknown ids (or NaN vectors) must answer as in a batch without them.

    The reference is a batch of the same size with each bad row replaced by a copy of the known
    row before it, not each row alone: ScaNN's tree search picks leaves with slightly different
    arithmetic for one row, a few rows and many rows (model_builder/README.md, "The model
    contract"), so only a same-size batch isolates what a bad row does to its neighbours.
    """
    import tensorflow as tf

    n = len(known_ids)
    unknown = _unknown_ids(all_query_ids, known_ids, n)
    ids = np.empty(2 * n, dtype=known_ids.dtype)
    ids[0::2], ids[1::2] = known_ids, unknown
    mixed_vectors = np.empty((2 * n, vectors.shape[1]), np.float32)
    mixed_vectors[0::2], mixed_vectors[1::2] = vectors, np.nan
    checks = []
    for fn, key, batch, rows, padding in (
        (by_id, "ids", ids, known_ids, not_found_row),
        (by_vector, "vectors", mixed_vectors, vectors, None),
    ):

        def run(values, fn=fn, key=key):
            tensor = tf.constant(_encode(values) if key == "ids" else values)
            return {k: v.numpy() for k, v in fn(**{key: tensor}).items()}

        out, clean = run(batch), run(np.repeat(rows, 2, axis=0))
        same = (
            _decode(out["ids"][0::2]).tolist() == _decode(clean["ids"][0::2]).tolist()
            and np.allclose(out["scores"][0::2], clean["scores"][0::2], rtol=1e-5, atol=1e-6)
            and bool(clean["found"].all())
        )
        expected_pad = (
            padding if padding is not None else [-1 if out["ids"].dtype == np.int64 else ""] * out["ids"].shape[1]
        )
        unanswered = (
            not out["found"][1::2].any()
            and out["found"][0::2].all()
            and all(_decode(row).tolist() == expected_pad for row in out["ids"][1::2])
            and bool(np.isneginf(out["scores"][1::2]).all())
        )
        checks.append(same and unanswered)
    return {"rows": 2 * n, "unknown_ids_rows_ok": checks[0], "nan_vector_rows_ok": checks[1], "passed": all(checks)}


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.asarray(
            [v.decode() if isinstance(v, bytes) else v for v in values.ravel().tolist()], dtype=object
        ).reshape(values.shape)
    return values


def _encode(values: np.ndarray) -> np.ndarray:
    return values if values.dtype == np.int64 else np.asarray([str(v) for v in values.tolist()], dtype=object)


def verify_in_fresh_process(
    version_dir: Path, target_recall: float, num_queries: int = DEFAULT_QUERIES, tuning_queries: Path | None = None
) -> dict:
    """Runs `python -m model_builder verify` on version_dir; raises VerificationError below target.

    `tuning_queries`: the build's --tuning-queries file, whose held-out part search_by_vector is scored on.
    """
    cmd = [
        sys.executable,
        "-m",
        "model_builder",
        "verify",
        str(version_dir),
        "--target-recall",
        str(target_recall),
        "--queries",
        str(num_queries),
        "--json",
        *(["--tuning-queries", str(tuning_queries)] if tuning_queries else []),
    ]
    # The package may be run from a checkout without being installed: make it importable there too.
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerificationError(f"verification process failed to load {version_dir}: {tail}")
    report = json.loads(lines[-1])
    if not report["passed"]:
        raise VerificationError("; ".join(failures(report)) + "; the version was not published")
    return report


def failures(report: dict) -> list[str]:
    """What a verification report fails on, each with its fix (empty: it passes)."""
    found = []
    if min(report["recall_at_k"].values()) < report["target_recall"]:
        recalls = ", ".join(f"{k} {v:.3f}" for k, v in report["recall_at_k"].items())
        found.append(
            f"recall@{report['k']} below target {report['target_recall']}: {recalls}. "
            "Search more leaves (--num-leaves-to-search), reorder more (--reorder-num-neighbors), "
            "use --target-recall tuning, or lower --target-recall"
        )
    if report["items_are_queries"] and not report["self_excluded"]:
        found.append("an item query returned the query item itself (items-as-queries must exclude it)")
    if report.get("seen_excluded") is False:
        found.append("a user's query returned an item from their own history (--exclude-seen must drop it)")
    if not report["known_rows_found"]:
        found.append("a known query id or a finite vector came back with found=false")
    mixed = report["mixed_batch"]
    if not mixed["passed"]:
        rows = [name for name in ("unknown_ids_rows_ok", "nan_vector_rows_ok") if not mixed[name]]
        found.append(
            f"mixed-batch check failed ({', '.join(rows)}): a known row answered differently next to "
            "unknown ids or NaN vectors than in a batch without them, or the bad rows were not answered "
            "as not found"
        )
    return found
