"""The merged check of a sharded build: the K published shard versions answer together as one model.

Every shard is loaded from its published files; held-out queries go through each shard's
`serving_default` (by id) and `search_by_vector`; the answers are merged by score (what the
fan-out client does, client/src/retrieval_client/_sharded.py) and the merged top k is scored
against exact search over the *whole* catalogue under the served rule (without the query item,
or without the user's history), with verify.py's recall (ties with the k-th score count).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_builder.index.recall import recall_at_k
from model_builder.towers.prepare import Prepared
from model_builder.verify import _VECTOR_NOISE, _decode, _encode, _returned_seen, _rows_of

_CHUNK = 256


def merge_top_k(ids: list[np.ndarray], scores: list[np.ndarray], k: int, padding) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (id, score) over every shard's answer; entries scored -inf are padding."""
    all_ids, all_scores = np.concatenate(ids, axis=1), np.concatenate(scores, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    top_ids = np.take_along_axis(all_ids, order, axis=1)
    top_scores = np.take_along_axis(all_scores, order, axis=1)
    return np.where(np.isneginf(top_scores), padding, top_ids), top_scores


def _answers(loaded: list, signature: str, key: str, values: np.ndarray, k: int, padding) -> np.ndarray:
    """The merged ids of every query row, asked of every shard in chunks."""
    import tensorflow as tf

    merged = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        tensor = tf.constant(_encode(chunk) if key == "ids" else chunk)
        outs = [model.signatures[signature](**{key: tensor}) for model in loaded]
        ids = [_decode(o["ids"].numpy()) for o in outs]
        scores = [o["scores"].numpy() for o in outs]
        merged.append(merge_top_k(ids, scores, k, padding)[0])
    return np.concatenate(merged)


def _outputs(model, signature: str, key: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """One signature's outputs over every row of `values`, asked in chunks."""
    import tensorflow as tf

    parts = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        out = model.signatures[signature](**{key: tf.constant(_encode(chunk) if key == "ids" else chunk)})
        parts.append({name: tensor.numpy() for name, tensor in out.items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _partitioned_answers(loaded: list, ids: np.ndarray, dim: int, k: int, padding) -> tuple[np.ndarray, np.ndarray]:
    """What the sharded client does with --query-side partitioned: each id's vector from its home
    shard (query_vectors), the home shard answers by id, every other shard by that vector.
    Returns the merged ids and, per row, whether the home shard knew the id."""
    from model_builder.contract import QUERY_VECTORS_SIGNATURE, SERVING_SIGNATURE, VECTOR_SIGNATURE
    from model_builder.sharding import shard_of

    homes = shard_of(ids, len(loaded))
    vectors, found = np.zeros((len(ids), dim), np.float32), np.zeros(len(ids), bool)
    for s, model in enumerate(loaded):
        rows = np.flatnonzero(homes == s)
        if len(rows):
            out = _outputs(model, QUERY_VECTORS_SIGNATURE, "ids", ids[rows])
            vectors[rows], found[rows] = out["vectors"], out["found"]
    per_shard_ids, per_shard_scores = [], []
    for s, model in enumerate(loaded):
        answer_ids = np.full((len(ids), k), padding, dtype=object if isinstance(padding, str) else np.int64)
        answer_scores = np.full((len(ids), k), -np.inf, np.float32)
        own, others = np.flatnonzero(homes == s), np.flatnonzero(homes != s)
        for rows, signature, key, values in (
            (own, SERVING_SIGNATURE, "ids", ids[own]),
            (others, VECTOR_SIGNATURE, "vectors", vectors[others]),
        ):
            if len(rows):
                out = _outputs(model, signature, key, values)
                answer_ids[rows], answer_scores[rows] = _decode(out["ids"])[:, :k], out["scores"][:, :k]
        per_shard_ids.append(answer_ids)
        per_shard_scores.append(answer_scores)
    return merge_top_k(per_shard_ids, per_shard_scores, k, padding)[0], found


def merged_check(
    version_dirs: list[Path],
    prepared: Prepared,
    k: int,
    num_queries: int,
    target: float,
    query_side: str = "replicated",
) -> dict:
    """Recall@k of the merged answer of the shards against exact search over the full catalogue."""
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (registers Scann ops before loading)
    from model_builder.contract import SERVING_SIGNATURE, VECTOR_SIGNATURE, padding_id
    from model_builder.export.version_store import read_build_info

    cat = prepared.catalogue
    distance = read_build_info(version_dirs[0]).get("index", {}).get("distance", "dot_product")
    loaded = [tf.saved_model.load(str(d)) for d in version_dirs]
    queries = cat.vectors_of_queries()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(cat.query_ids), size=min(num_queries, len(cat.query_ids)), replace=False)
    base = queries[picks]
    scale = _VECTOR_NOISE * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
    noisy = (base + rng.normal(size=base.shape) * scale).astype(np.float32)
    pad = padding_id(cat.candidate_ids)
    failures = []
    if query_side == "partitioned":
        merged_ids, known = _partitioned_answers(loaded, cat.query_ids[picks], queries.shape[1], k, pad)
        id_rows = _rows_of(merged_ids, cat.candidate_ids)
        if not known.all():
            failures.append(f"{int((~known).sum())} query ids unknown to their home shard (query_vectors)")
    else:
        id_rows = _rows_of(_answers(loaded, SERVING_SIGNATURE, "ids", cat.query_ids[picks], k, pad), cat.candidate_ids)
    vec_rows = _rows_of(_answers(loaded, VECTOR_SIGNATURE, "vectors", noisy, k, pad), cat.candidate_ids)
    seen = prepared.seen.table[picks] if prepared.seen is not None and prepared.seen.width else None
    excluded = picks if cat.items_are_queries else seen
    report = {
        "shards": [str(d) for d in version_dirs],
        "queries": int(len(picks)),
        "query_side": query_side,
        "k": k,
        "target_recall": target,
        "recall_at_k": {
            SERVING_SIGNATURE: recall_at_k(base, cat.candidate_vectors, id_rows, distance, excluded),
            VECTOR_SIGNATURE: recall_at_k(noisy, cat.candidate_vectors, vec_rows, distance),
        },
        "self_returned": bool(cat.items_are_queries and (id_rows == picks[:, None]).any()),
        # Recall alone would not see it: a returned history item scores above the k-th unseen one.
        "seen_returned": bool(seen is not None and _returned_seen(id_rows, seen)),
    }
    if min(report["recall_at_k"].values()) < target:
        failures.append(f"merged recall@{k} below target {target}: {report['recall_at_k']}")
    if report["self_returned"]:
        failures.append("an item query's merged answer contains the query item")
    if report["seen_returned"]:
        failures.append("a user's merged answer contains an item from their own history")
    report["failures"] = failures
    report["passed"] = not failures
    return report
