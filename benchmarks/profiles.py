"""Run profiles: `full` (the committed results, ~60 min on 2 cores) and `quick` (CI proof, ~5 min)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a run; `headline` marks the one that gets e2e, knobs, cold start and summary.json."""

    kind: str  # synthetic | fashion-mnist | movielens | movielens-noisy | wordnet-minilm
    num: int = 0  # synthetic rows; movielens-noisy target rows; fashion-mnist / wordnet-minilm row limit (0 = all)
    dim: int = 64
    validation: int = 1000
    test: int = 1000
    headline: bool = False


# The build configurations compared on every dataset (flags of `python -m model_builder build`).
CONFIGS = {
    "exact": ["--algorithm", "exact"],  # matmul + top_k in the same graph, no ScaNN
    "rule_of_thumb": ["--no-tune", "--target-recall", "0"],  # the untuned rule of thumb, published whatever its recall
    "tuned": [],  # the default build: index search, --optimize latency, --target-recall 0.95
    # Served for batches: the same search timing calls of 64 rows, the batch the in-process figures use
    # (TF Serving's own execution batch, k8s/base/config/batching_parameters.txt, is the builder's default).
    "tuned_throughput": ["--optimize", "throughput", "--throughput-batch-size", "64"],
}
# Tried, in order, when a tuned build fails its recall gate; the report names the one used.
TUNED_FALLBACKS = (["--dimensions-per-block", "1"],)


@dataclass(frozen=True)
class Profile:
    """Sizes, counts and time bounds of one run."""

    name: str
    datasets: tuple[DatasetSpec, ...]
    movielens_train_args: tuple[str, ...] = ()
    build_timeout_s: float = 1200
    latency_queries: int = 1000
    latency_max_s: float = 15.0
    throughput_s: float = 4.0
    throughput_batches: int = 400
    sweep_latency_queries: int = 200
    sweep_max_s: float = 1.5
    faiss_kinds: tuple[str, ...] = ("hnsw", "ivfpq")
    hnsw_m: int = 32
    e2e_requests: int = 2000
    e2e_max_s: float = 10.0
    e2e_clients: int = 8
    e2e_concurrent_s: float = 10.0
    rounds: int = 3  # e2e and thread settings take turns this many times (drifting load hits all alike)
    exact_e2e_requests: int = 200
    thread_settings: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 1), (1, 2), (2, 2))
    knob_requests: int = 600
    knob_max_s: float = 5.0
    knob_concurrent_s: float = 6.0
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    coldstart_requests: int = 500
    coldstart_repeats: int = 3
    build_flags: tuple[str, ...] = ()  # appended to every ScaNN build (the quick profile shortens the index search)
    # benchmarks/scheduler_grid.py's grid for the scheduler table (TF Serving 2.11's C++ scheduler when a harness
    # binary is given, the local server's always); peers: Faiss and gRPC at the same caller counts too.
    scheduler_grid: str = "full"
    scheduler_peers: bool = True
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form for the results."""
        return asdict(self)

    def e2e_config(self) -> dict:
        """The counts and bounds e2e.measure_server reads."""
        return {
            "e2e_requests": self.e2e_requests,
            "e2e_max_s": self.e2e_max_s,
            "e2e_clients": self.e2e_clients,
            "e2e_concurrent_s": self.e2e_concurrent_s,
            "rounds": self.rounds,
        }


FULL = Profile(
    name="full",
    datasets=(
        DatasetSpec("synthetic", num=1_000_000, dim=64, headline=True),
        DatasetSpec("fashion-mnist", dim=784),
        DatasetSpec("movielens", dim=32),
        DatasetSpec("movielens-noisy", num=1_000_000, dim=32),
        DatasetSpec("wordnet-minilm", dim=384),
    ),
)

QUICK = Profile(
    name="quick",
    datasets=(
        DatasetSpec("synthetic", num=100_000, dim=32, validation=300, test=200, headline=True),
        DatasetSpec("wordnet-minilm", num=2_000, dim=384, validation=200, test=100),
    ),
    build_timeout_s=300,
    latency_queries=150,
    latency_max_s=2.0,
    throughput_s=1.0,
    throughput_batches=50,
    sweep_latency_queries=50,
    sweep_max_s=0.3,
    hnsw_m=16,
    e2e_requests=200,
    e2e_max_s=3.0,
    e2e_clients=8,
    e2e_concurrent_s=1.5,
    rounds=2,
    exact_e2e_requests=50,
    thread_settings=((0, 0), (1, 1)),
    knob_requests=100,
    knob_max_s=1.0,
    knob_concurrent_s=1.0,
    batch_sizes=(1, 8, 64),
    coldstart_requests=100,
    coldstart_repeats=1,
    build_flags=("--search-budget-factor", "1.5"),
    scheduler_grid="quick",
    scheduler_peers=False,
)

PROFILES = {p.name: p for p in (FULL, QUICK)}
