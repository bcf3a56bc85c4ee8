"""Faiss, the seed alternative's engine: HNSW, and IVF-PQ with exact refinement.

Both use inner product like our model. IVF-PQ+refine is Faiss's analogue of
ScaNN's tree + AH + reorder: sqrt(N) inverted lists, 8-bit PQ codes for 2 dims
each on <= 128-dim data (4 dims above), the best `k_factor * k` candidates
re-scored exactly. 8-bit codes, not the faster-scanning 4-bit `x4fs` ones:
on the clustered 1M x 64 set 4-bit codes needed k_factor 1024 (0.9 ms/query)
for recall 0.93, 8-bit ones k_factor 16 (0.37 ms) for 0.999. HNSW is the usual
graph index (M=32, efConstruction=40, Faiss's default).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

KINDS = ("hnsw", "ivfpq")
HNSW_EF = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
IVF_NPROBE = (1, 2, 4, 8, 16, 32, 64)
IVF_K_FACTOR = (4, 16, 64, 256)


def factory_string(kind: str, num: int, dim: int, hnsw_m: int = 32) -> str:
    """The index_factory description for `kind` at this size."""
    if kind == "hnsw":
        return f"HNSW{hnsw_m}"
    if kind == "ivfpq":
        nlist = max(16, int(round(math.sqrt(num))))
        sub = dim // 2 if dim <= 128 else dim // 4
        return f"IVF{nlist},PQ{sub},RFlat"
    raise ValueError(f"unknown faiss index kind '{kind}' (choose {', '.join(KINDS)})")


def build(kind: str, base: np.ndarray, path: Path, hnsw_m: int = 32) -> dict:
    """Trains and fills the index, writes it to `path`; returns what it took."""
    import faiss

    description = factory_string(kind, len(base), base.shape[1], hnsw_m)
    start = time.perf_counter()
    index = faiss.index_factory(base.shape[1], description, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(base)
    index.add(base)
    seconds = time.perf_counter() - start
    faiss.write_index(index, str(path))
    return {
        "kind": kind,
        "factory": description,
        "build_s": round(seconds, 2),
        "threads": faiss.omp_get_max_threads(),
        "index_mb": round(path.stat().st_size / 1e6, 2),
    }


def grid(kind: str, index) -> list[dict]:
    """Search-time settings to sweep, cheapest first."""
    if kind == "hnsw":
        return [{"efSearch": ef} for ef in HNSW_EF]
    nlist = _ivf(index).nlist
    return [{"nprobe": p, "k_factor": f} for p in IVF_NPROBE if p <= nlist for f in IVF_K_FACTOR]


def _ivf(index):
    import faiss

    return faiss.downcast_index(faiss.downcast_index(index).base_index)


def apply(index, params: dict) -> None:
    """Sets efSearch (HNSW) or nprobe/k_factor (IVF-PQ + refine) on a loaded index."""
    import faiss

    outer = faiss.downcast_index(index)
    for key, value in params.items():
        if key == "efSearch":
            outer.hnsw.efSearch = int(value)
        elif key == "k_factor":
            outer.k_factor = float(value)
        elif key == "nprobe":
            _ivf(index).nprobe = int(value)
        else:
            raise ValueError(f"unknown faiss parameter {key}")


def searcher(index, k: int, threads: int):
    """`search(vectors) -> rows` over a loaded index with `threads` OpenMP threads (the GIL is released)."""
    import faiss

    def search(vectors: np.ndarray) -> np.ndarray:
        faiss.omp_set_num_threads(threads)
        _, rows = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return rows

    return search


def describe(params: dict) -> str:
    """'efSearch=64' / 'nprobe=8,k_factor=16' (also the FastAPI service's --params)."""
    return ",".join(f"{k}={v}" for k, v in params.items())


def parse(text: str) -> dict:
    """Inverse of describe()."""
    out: dict = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = float(value) if "." in value else int(value)
    return out
