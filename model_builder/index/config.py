"""The ScaNN index: the rule of thumb, every knob overridable, and the searcher build.

Rule of thumb (ScaNN's own advice for its algorithms, by catalogue size N):
  N < 20k          brute force (exact; quantization would cost recall for little speed)
  20k <= N < 100k  asymmetric hashing (2 dims per block) + exact reordering
  N >= 100k        tree partitioning (~sqrt(N) leaves) + AH + exact reordering
Reordering always re-scores more candidates than k so the final top-k is exact
among them. The rule is where the build's index search starts and what it falls
back to (model_builder/index/search.py): other families and knobs are tried
within a time budget and the fastest served configuration reaching the recall
target wins.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from model_builder.errors import ConfigError
from model_builder.index import execution_batch

ALGORITHMS = ("auto", "brute_force", "ah", "tree_ah", "exact")
DISTANCES = ("dot_product", "squared_l2")
HASH_TYPES = ("lut16", "lut256")
OBJECTIVES = ("latency", "throughput")
# The rule of thumb's AH codes: 4-bit codes (lut16) for 2 dimensions each.
DEFAULT_DIMENSIONS_PER_BLOCK = 2
DEFAULT_HASH_TYPE = "lut16"


@dataclass(frozen=True)
class IndexConfig:
    """Index knobs; None means "let the rule of thumb decide"."""

    algorithm: str = field(
        default="auto",
        metadata={"help": f"one of {', '.join(ALGORITHMS)}; 'exact' is matmul+top_k without ScaNN (a baseline)"},
    )
    distance: str = field(default="dot_product", metadata={"help": "dot_product (two-tower scores) or squared_l2"})
    brute_force_below: int = field(
        default=20_000, metadata={"help": "catalogues smaller than this use brute force under 'auto'"}
    )
    partition_from: int = field(
        default=100_000, metadata={"help": "catalogues this large or larger add tree partitioning under 'auto'"}
    )
    num_leaves: int | None = field(
        default=None,
        metadata={
            "help": "tree leaves; default ~sqrt(N). More leaves: faster search, slower build, lower recall per leaf searched"
        },
    )
    num_leaves_to_search: int | None = field(
        default=None,
        metadata={"help": "leaves scanned per query; default 5%% of leaves (min 10). Higher: better recall, slower"},
    )
    dimensions_per_block: int | None = field(
        default=None,
        metadata={
            "help": "AH dims per code; fewer = more accurate, larger and slower. Default: 2, and the index search also tries 1 and 4; setting it fixes it"
        },
    )
    anisotropic_quantization_threshold: float = field(
        default=0.2,
        metadata={"help": "AH loss weighting for dot product (ScaNN's recommended 0.2); ignored for squared_l2"},
    )
    reorder_num_neighbors: int | None = field(
        default=None,
        metadata={
            "help": "candidates re-scored exactly; must exceed k. Default max(100, 4k). Higher: better recall, slower"
        },
    )
    training_sample_size: int | None = field(
        default=None, metadata={"help": "vectors sampled to train the tree and AH codebooks; default min(N, 250000)"}
    )
    training_threads: int = field(default=0, metadata={"help": "threads for index training (0 = all cores)"})
    residual_quantization: bool | None = field(
        default=None,
        metadata={
            "help": "AH codes the residual to the vector's tree centre (default: on with a tree). Off, clustered data lost most of its recall (0.52 vs 0.98 at 200k x 64)"
        },
    )
    hash_type: str | None = field(
        default=None,
        metadata={
            "help": "AH codes: lut16 (4-bit, fastest) or lut256 (8-bit: more accurate per candidate, ~1.8x the search cost at equal recall on 1M x 64). Default: lut16, and the index search also tries lut256; setting it fixes it"
        },
    )
    index_search: bool = field(
        default=True,
        metadata={
            "help": "with --tune: also try other index families and structures (brute force, AH 1/2/4 dims per block, tree + AH with leaves around sqrt(N), lut16/lut256) within the time budget and serve the fastest reaching --target-recall; off: only the rule of thumb's structure, its search knobs tuned"
        },
    )
    optimize: str = field(
        default="latency",
        metadata={
            "help": "what 'fastest' means: latency (one query per call, how an online recommender calls) or throughput (cost per query in batches of --throughput-batch-size, what TF Serving's batcher executes)"
        },
    )
    throughput_batch_size: int = field(
        default_factory=execution_batch.execution_batch_size,
        metadata={
            "help": "rows per call timed under --optimize throughput; default: max_execution_batch_size of k8s/base/config/batching_parameters.txt"
        },
    )
    search_budget_factor: float = field(
        default=4.0,
        metadata={
            "help": "index search time budget as a multiple of the time the rule-of-thumb index took to build, tune and time (at least 5 s)"
        },
    )
    search_budget_s: float | None = field(
        default=None, metadata={"help": "index search time budget in seconds (overrides --search-budget-factor)"}
    )

    def validate(self) -> None:
        """Rejects flags that are wrong whatever the catalogue, before any work starts."""
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"--algorithm '{self.algorithm}': choose one of {', '.join(ALGORITHMS)}")
        if self.distance not in DISTANCES:
            raise ConfigError(f"--distance '{self.distance}': choose one of {', '.join(DISTANCES)}")
        if self.hash_type is not None and self.hash_type not in HASH_TYPES:
            raise ConfigError(f"--hash-type '{self.hash_type}': choose lut16 or lut256")
        if self.dimensions_per_block is not None and self.dimensions_per_block < 1:
            raise ConfigError("--dimensions-per-block must be at least 1")
        for name in ("num_leaves", "num_leaves_to_search", "training_sample_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.optimize not in OBJECTIVES:
            raise ConfigError(f"--optimize '{self.optimize}': choose latency or throughput")
        if self.throughput_batch_size < 1:
            raise ConfigError("--throughput-batch-size must be at least 1")
        if self.search_budget_factor <= 0 or (self.search_budget_s is not None and self.search_budget_s <= 0):
            raise ConfigError("--search-budget-factor and --search-budget-s must be positive")


@dataclass(frozen=True)
class ResolvedIndex:
    """A fully concrete index configuration plus why it was chosen."""

    algorithm: str
    distance: str
    num_candidates: int
    dimensions: int
    k: int
    reason: str
    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    dimensions_per_block: int | None = None
    anisotropic_quantization_threshold: float | None = None
    reorder_num_neighbors: int | None = None
    training_sample_size: int | None = None
    residual_quantization: bool | None = None
    hash_type: str | None = None
    training_threads: int = 0

    def to_dict(self) -> dict:
        """JSON-ready form for build_info.json and the build log."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        """One readable line for the build log."""
        knobs = {
            k: v
            for k, v in self.to_dict().items()
            if k not in ("algorithm", "reason", "num_candidates", "dimensions", "k", "distance", "training_threads")
        }
        parts = ", ".join(f"{k}={v}" for k, v in knobs.items())
        return f"{self.algorithm} over {self.num_candidates} x {self.dimensions} ({self.distance}, k={self.k}){': ' + parts if parts else ''} -- {self.reason}"


def resolve(cfg: IndexConfig, num_candidates: int, dimensions: int, k: int) -> ResolvedIndex:
    """Applies the rule of thumb to `cfg` for a catalogue of this size; validates overrides."""
    _validate(cfg, num_candidates, k)
    n = num_candidates
    algorithm, reason = cfg.algorithm, f"algorithm={cfg.algorithm} requested"
    if algorithm == "auto":
        if n < cfg.brute_force_below:
            algorithm, reason = "brute_force", f"N={n} < {cfg.brute_force_below}: exact scoring is fast enough"
        elif n < cfg.partition_from:
            algorithm, reason = "ah", f"{cfg.brute_force_below} <= N={n} < {cfg.partition_from}: AH + reordering"
        else:
            algorithm, reason = "tree_ah", f"N={n} >= {cfg.partition_from}: tree (~sqrt(N) leaves) + AH + reordering"
    base = ResolvedIndex(
        algorithm=algorithm,
        distance=cfg.distance,
        num_candidates=n,
        dimensions=dimensions,
        k=k,
        reason=reason,
        training_threads=cfg.training_threads,
    )
    if algorithm in ("brute_force", "exact"):
        return base
    reorder = cfg.reorder_num_neighbors or min(n, max(100, 4 * k))
    ah = replace(
        base,
        dimensions_per_block=cfg.dimensions_per_block or DEFAULT_DIMENSIONS_PER_BLOCK,
        anisotropic_quantization_threshold=(
            cfg.anisotropic_quantization_threshold if cfg.distance == "dot_product" else None
        ),
        reorder_num_neighbors=reorder,
        training_sample_size=min(n, cfg.training_sample_size or 250_000),
    )
    if algorithm == "ah":
        # Without a tree there are no centres to take residuals to.
        return replace(ah, residual_quantization=False, hash_type=cfg.hash_type or DEFAULT_HASH_TYPE)
    leaves = cfg.num_leaves or max(2, int(round(math.sqrt(n))))
    if leaves > n:
        raise ConfigError(f"--num-leaves {leaves} exceeds the number of candidates ({n})")
    to_search = cfg.num_leaves_to_search or min(leaves, max(10, int(round(0.05 * leaves))))
    if to_search > leaves:
        raise ConfigError(f"--num-leaves-to-search {to_search} exceeds --num-leaves {leaves}")
    residual = True if cfg.residual_quantization is None else cfg.residual_quantization
    return replace(
        ah,
        num_leaves=leaves,
        num_leaves_to_search=to_search,
        residual_quantization=residual,
        hash_type=cfg.hash_type or DEFAULT_HASH_TYPE,
    )


def _validate(cfg: IndexConfig, n: int, k: int) -> None:
    cfg.validate()
    if k < 1:
        raise ConfigError("-k must be at least 1")
    if n < k:
        raise ConfigError(f"-k {k} exceeds the number of candidates ({n}); lower -k")
    if cfg.reorder_num_neighbors is not None and cfg.reorder_num_neighbors <= k:
        raise ConfigError(
            f"--reorder-num-neighbors {cfg.reorder_num_neighbors} must exceed k={k}: reordering only fixes the order of candidates it sees"
        )


def build_searcher(vectors: np.ndarray, index: ResolvedIndex, num_neighbors: int):
    """Builds the ScaNN TF-ops searcher (None for algorithm 'exact'); returns (searcher, seconds)."""
    if index.algorithm == "exact":
        return None, 0.0
    from model_builder.scann_import import scann_ops

    start = time.perf_counter()
    builder = scann_ops.builder(vectors, num_neighbors, index.distance).set_n_training_threads(index.training_threads)
    if index.num_leaves:
        builder = builder.tree(
            num_leaves=index.num_leaves,
            num_leaves_to_search=index.num_leaves_to_search,
            training_sample_size=index.training_sample_size,
        )
    if index.algorithm == "brute_force":
        builder = builder.score_brute_force()
    else:
        threshold = index.anisotropic_quantization_threshold
        builder = builder.score_ah(
            index.dimensions_per_block,
            anisotropic_quantization_threshold=float("nan") if threshold is None else threshold,
            training_sample_size=index.training_sample_size,
            residual_quantization=bool(index.residual_quantization),
            hash_type=index.hash_type or "lut16",
        ).reorder(index.reorder_num_neighbors)
    searcher = builder.build()
    return searcher, time.perf_counter() - start
