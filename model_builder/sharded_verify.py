"""The merged check of a sharded build: the K published shard versions answer together as one model.

Every shard is loaded from its published files, one at a time; held-out queries go through each
shard's `serving_default` (by id; with --query-side partitioned only on the id's home shard, the
others by its vector, and the home shard's `query_vectors` checked against the stored vector) and
`search_by_vector`; the answers are merged by score (what the fan-out client does,
client/src/retrieval_client/_sharded.py and _partitioned.py) and the merged top k is scored
against exact search over the *whole* catalogue under the served rule (without the query item,
or without the user's history), with verify.py's recall (ties with the k-th score count).
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _outputs(model, signature: str, key: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """One signature's outputs over every row of `values`, asked in chunks."""
    import tensorflow as tf

    parts = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start : start + _CHUNK]
        out = model.signatures[signature](**{key: tf.constant(_encode(chunk) if key == "ids" else chunk)})
        parts.append({name: tensor.numpy() for name, tensor in out.items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


@dataclass
class _Answers:
    """One shard's top k for every query row (rows it was not asked: padding, scored -inf)."""

    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls, rows: int, k: int, padding) -> _Answers:
        dtype = object if isinstance(padding, str) else np.int64
        return cls(np.full((rows, k), padding, dtype=dtype), np.full((rows, k), -np.inf, np.float32))

    def fill(self, rows: np.ndarray, out: dict[str, np.ndarray]) -> None:
        k = self.ids.shape[1]
        self.ids[rows], self.scores[rows] = _decode(out["ids"])[:, :k], out["scores"][:, :k]


@dataclass(frozen=True)
class _Queries:
    """The held-out queries every shard is asked: ids (their stored vectors) and noisy vectors."""

    ids: np.ndarray
    stored: np.ndarray
    noisy: np.ndarray
    homes: np.ndarray | None  # --query-side partitioned: each id's home shard


def _ask_shard(model, shard: int, queries: _Queries, k: int, padding) -> tuple[_Answers, _Answers, int]:
    """One shard's answers by id and by vector, as the fan-out client asks it; the third value
    counts its home ids whose query_vectors output differs from the stored vector (partitioned)."""
    from model_builder.contract import QUERY_VECTORS_SIGNATURE, SERVING_SIGNATURE, VECTOR_SIGNATURE

    rows = len(queries.ids)
    by_id, by_vector = _Answers.empty(rows, k, padding), _Answers.empty(rows, k, padding)
    by_vector.fill(np.arange(rows), _outputs(model, VECTOR_SIGNATURE, "vectors", queries.noisy))
    if queries.homes is None:
        by_id.fill(np.arange(rows), _outputs(model, SERVING_SIGNATURE, "ids", queries.ids))
        return by_id, by_vector, 0
    own, others = np.flatnonzero(queries.homes == shard), np.flatnonzero(queries.homes != shard)
    wrong = 0
    if len(own):
        by_id.fill(own, _outputs(model, SERVING_SIGNATURE, "ids", queries.ids[own]))
        got = _outputs(model, QUERY_VECTORS_SIGNATURE, "ids", queries.ids[own])
        close = np.isclose(got["vectors"], queries.stored[own], rtol=1e-5, atol=1e-6).all(axis=1)
        wrong = int((~(got["found"] & close)).sum())
    if len(others):
        # The client sends the home shard's query_vectors output, checked equal to these above.
        by_id.fill(others, _outputs(model, VECTOR_SIGNATURE, "vectors", queries.stored[others]))
    return by_id, by_vector, wrong


def _merged_answers(version_dirs: list[Path], queries: _Queries, k: int, padding) -> tuple[np.ndarray, np.ndarray, int]:
    """Merged ids by id and by vector; one shard loaded at a time (K loaded at once would need
    K shards' memory in the builder: 21.8 GB at 4 x 1M x 64, benchmarks/README.md "Sharding")."""
    import gc

    import tensorflow as tf

    by_id, by_vector, wrong = [], [], 0
    for shard, version_dir in enumerate(version_dirs):
        model = tf.saved_model.load(str(version_dir))
        answers_id, answers_vector, bad = _ask_shard(model, shard, queries, k, padding)
        by_id.append(answers_id)
        by_vector.append(answers_vector)
        wrong += bad
        del model
        gc.collect()
    merged_id = merge_top_k([a.ids for a in by_id], [a.scores for a in by_id], k, padding)[0]
    merged_vector = merge_top_k([a.ids for a in by_vector], [a.scores for a in by_vector], k, padding)[0]
    return merged_id, merged_vector, wrong


def merged_check(
    version_dirs: list[Path],
    prepared: Prepared,
    k: int,
    num_queries: int,
    target: float,
    query_side: str = "replicated",
) -> dict:
    """Recall@k of the merged answer of the shards against exact search over the full catalogue."""
    import model_builder.scann_import  # noqa: F401  (registers Scann ops before loading)
    from model_builder.contract import SERVING_SIGNATURE, VECTOR_SIGNATURE, padding_id
    from model_builder.export.version_store import read_build_info
    from model_builder.sharding import shard_of

    cat = prepared.catalogue
    distance = read_build_info(version_dirs[0]).get("index", {}).get("distance", "dot_product")
    queries = cat.vectors_of_queries()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(cat.query_ids), size=min(num_queries, len(cat.query_ids)), replace=False)
    base = queries[picks]
    scale = _VECTOR_NOISE * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
    noisy = (base + rng.normal(size=base.shape) * scale).astype(np.float32)
    pad = padding_id(cat.candidate_ids)
    homes = shard_of(cat.query_ids[picks], len(version_dirs)) if query_side == "partitioned" else None
    asked = _Queries(cat.query_ids[picks], base.astype(np.float32), noisy, homes)
    merged_id, merged_vector, wrong = _merged_answers(version_dirs, asked, k, pad)
    id_rows, vec_rows = _rows_of(merged_id, cat.candidate_ids), _rows_of(merged_vector, cat.candidate_ids)
    failures = []
    if wrong:
        failures.append(f"{wrong} query ids' query_vectors output is missing or differs from the stored vector")
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
