"""The build: data -> towers (or imported embeddings) -> ScaNN index -> SavedModel -> verified version."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from model_builder import embeddings, evaluate, export, index, settings, tune, verify, warmup
from model_builder.compat import serving_rules
from model_builder.errors import ConfigError, DataError
from model_builder.serving_module import (
    MAX_EXAMPLES,
    UNKNOWN_ID_POLICIES,
    Catalogue,
    RetrievalModule,
    ServingOptions,
    check_not_padding,
)
from model_builder.towers import TrainConfig

QUERY_KINDS = ("user", "item")


@dataclass(frozen=True)
class BuildConfig:
    """What to build, from which data, and where to publish it."""

    dataset: str = field(default="movielens-100k", metadata={"help": "movielens-100k, synthetic, a GroupLens ml-100k folder, or an interactions .csv/.parquet"})
    items: str | None = field(default=None, metadata={"help": "optional item metadata file (item_id,title,...)"})
    min_weight: float | None = field(default=None, metadata={"help": "interactions with weight >= this are positives (default: 4 for MovieLens ratings, else every row)"})
    holdout_per_user: int = field(default=1, metadata={"help": "latest positives per user held out to measure hit-rate/recall"})
    refit: bool = field(default=True, metadata={"help": "retrain on all positives after evaluation so held-out items get trained embeddings"})
    query: str = field(default="user", metadata={"help": "which tower an id goes through: user (user -> items) or item (item -> similar items)"})
    candidates: str | None = field(default=None, metadata={"help": "import candidate embeddings (.npy/.npz/.parquet) instead of training"})
    query_embeddings: str | None = field(default=None, metadata={"help": "import query embeddings (ids + vectors, like --candidates): a materialized query tower"})
    query_tower: str | None = field(default=None, metadata={"help": "import a query tower (.keras or SavedModel dir) to embed --query-ids"})
    query_ids: str | None = field(default=None, metadata={"help": "query ids for an imported user tower (.txt/.npy/.csv/.parquet)"})
    out: str = field(default="models", metadata={"help": "model base path; the version goes to OUT/MODEL_NAME/VERSION"})
    model_name: str = field(default_factory=settings.model_name, metadata={"help": "model name (TF Serving's --model_name)"})
    version: int | None = field(default=None, metadata={"help": "version number; default: highest existing + 1 (never overwrites)"})
    k: int = field(default=10, metadata={"help": "results per query, fixed for this version"})
    max_batch_size: int = field(default=1024, metadata={"help": "largest batch one request may carry (warmup records stay within it; TF Serving's batching file must accept it)"})
    num_examples: int = field(default=8, metadata={"help": f"known ids published by the 'examples' signature for smoke tests (0 disables, at most {MAX_EXAMPLES})"})
    unknown_ids: str = field(default="error", metadata={"help": "what an unknown query id's row gets (found=false either way): error = no ids (our client raises InvalidRequestError naming them), fallback = the k most popular training items"})
    batching_parameters: str | None = field(default=None, metadata={"help": "TF Serving batching file the version must suit (serving rules checked before publishing); default: the image's k8s/base/config/batching_parameters.txt when building from a checkout, else the model alone"})
    target_recall: float = field(default=verify.DEFAULT_TARGET_RECALL, metadata={"help": "recall@k vs exact search the version must reach to be published"})
    tune: bool = field(default=True, metadata={"help": "tune leaves-to-search and reorder count on held-out queries to the fastest setting reaching --target-recall"})
    verify_queries: int = field(default=verify.DEFAULT_QUERIES, metadata={"help": "held-out queries used by the recall gate"})

    def validate(self) -> None:
        """Rejects inconsistent flags before any work starts."""
        if self.query not in QUERY_KINDS:
            raise ConfigError(f"--query '{self.query}': choose user or item")
        if not 0.0 <= self.target_recall <= 1.0:
            raise ConfigError("--target-recall must be between 0 and 1")
        if self.k < 1 or self.max_batch_size < 1 or self.verify_queries < 1:
            raise ConfigError("-k, --max-batch-size and --verify-queries must be at least 1")
        if not 0 <= self.num_examples <= MAX_EXAMPLES:
            raise ConfigError(f"--num-examples must be between 0 and {MAX_EXAMPLES}")
        if self.unknown_ids not in UNKNOWN_ID_POLICIES:
            raise ConfigError(f"--unknown-ids '{self.unknown_ids}': choose {' or '.join(UNKNOWN_ID_POLICIES)}")
        if self.unknown_ids == "fallback" and self.candidates:
            raise ConfigError("--unknown-ids fallback ranks items by popularity in the training interactions; "
                              "imported --candidates have none: use --unknown-ids error")
        if self.version is not None and self.version < 1:
            raise ConfigError("--version must be a positive integer (TF Serving's version folders are numbers)")
        if self.candidates is None and (self.query_tower or self.query_ids or self.query_embeddings):
            raise ConfigError("--query-embeddings/--query-tower/--query-ids need --candidates (importing replaces training)")
        if self.query_embeddings and self.query_tower:
            raise ConfigError("give either --query-embeddings or --query-tower, not both")
        if self.query_tower and not self.query_ids:
            raise ConfigError("--query-tower needs --query-ids: the ids to embed")
        if self.candidates and self.query == "user" and not (self.query_tower or self.query_embeddings):
            raise ConfigError("--query user with imported --candidates needs --query-embeddings or --query-tower (or use --query item)")
        if self.candidates and self.query == "item" and (self.query_tower or self.query_embeddings):
            raise ConfigError("--query item serves candidates as queries: drop --query-embeddings/--query-tower")


@dataclass(frozen=True)
class Prepared:
    """The catalogue to serve plus what we know about where it came from."""

    catalogue: Catalogue
    data_info: dict
    quality: dict
    titles: dict
    # Candidate ids, most positives in the training data first (None for imported embeddings).
    popular_ids: np.ndarray | None = None

    def as_item_to_item(self) -> Prepared:
        """The same towers served item -> similar items (queries are the candidates)."""
        cat = self.catalogue
        return replace(self, catalogue=Catalogue(cat.candidate_ids, None, cat.candidate_ids, cat.candidate_vectors))


Log = Callable[[str], None]


def _positives(cfg: BuildConfig, dataset) -> tuple[np.ndarray, float | None]:
    threshold = cfg.min_weight if cfg.min_weight is not None else dataset.default_min_weight
    weights = dataset.interactions.weights
    return (weights >= threshold) if threshold is not None else np.ones(len(weights), bool), threshold


def prepare_trained(cfg: BuildConfig, train_cfg: TrainConfig, log: Log) -> Prepared:
    """Loads the dataset, trains and evaluates the towers, returns the catalogue."""
    from model_builder import towers
    from model_builder.data import load_dataset

    train_cfg.validate()
    dataset = load_dataset(cfg.dataset, Path(cfg.items) if cfg.items else None)
    inter = dataset.interactions
    keep, threshold = _positives(cfg, dataset)
    users, items = evaluate.Vocab.build(inter.user_ids[keep]), evaluate.Vocab.build(inter.item_ids[keep])
    stamps = inter.timestamps[keep] if inter.timestamps is not None else None
    log(f"data: {len(inter)} interactions, {int(keep.sum())} positives (weight >= {threshold}), "
        f"{len(users.ids)} users, {len(items.ids)} items from {inter.source}")
    split = evaluate.leave_last_out(users.rows, items.rows, stamps, cfg.holdout_per_user)
    log(f"train: {len(split.train_users)} pairs, {len(split.test_users)} held out; {train_cfg}")
    start = time.perf_counter()
    trained = towers.train(split.train_users, split.train_items, len(users.ids), len(items.ids), train_cfg)
    model_q = evaluate.model_metrics(trained.user_vectors, trained.item_vectors, split)
    popular_q = evaluate.popularity_metrics(split, len(items.ids))
    log("quality on held-out interactions (all items ranked, training items excluded):")
    for k in evaluate.KS:
        log(f"  hit-rate@{k}: two-tower {model_q[f'hit_rate@{k}']:.4f} vs most-popular {popular_q[f'hit_rate@{k}']:.4f}"
            f"   recall@{k}: {model_q[f'recall@{k}']:.4f} vs {popular_q[f'recall@{k}']:.4f}")
    if cfg.refit:
        log("refit: training on all positives for the exported towers")
        trained = towers.train(users.rows, items.rows, len(users.ids), len(items.ids), train_cfg)
    quality = {"two_tower": model_q, "most_popular": popular_q, "train_seconds": time.perf_counter() - start,
               "final_loss": trained.final_loss, "config": asdict(train_cfg), "refit": cfg.refit}
    if cfg.query == "user":
        catalogue = Catalogue(users.ids, trained.user_vectors, items.ids, trained.item_vectors)
    else:
        catalogue = Catalogue(items.ids, None, items.ids, trained.item_vectors)
    data_info = {"dataset": dataset.name, "source": inter.source, "interactions": len(inter),
                 "positives": int(keep.sum()), "min_weight": threshold, "users": len(users.ids), "items": len(items.ids)}
    popularity = np.bincount(items.rows, minlength=len(items.ids))
    # Stable sort: equally popular items keep id order, so the fallback list is reproducible.
    popular_ids = items.ids[np.argsort(-popularity, kind="stable")]
    return Prepared(catalogue, data_info, quality, dataset.titles, popular_ids)


def prepare_imported(cfg: BuildConfig, log: Log) -> Prepared:
    """Reads candidate embeddings (and a query tower); no training."""
    path = Path(cfg.candidates)
    ids, vectors = embeddings.load_candidates(path)
    log(f"data: imported {len(ids)} candidates x {vectors.shape[1]} from {path}")
    if cfg.query == "item":
        catalogue = Catalogue(ids, None, ids, vectors)
    else:
        if cfg.query_embeddings:
            source = cfg.query_embeddings
            query_ids, query_vectors = embeddings.load_candidates(Path(source))
        else:
            source = cfg.query_tower
            query_ids = embeddings.load_query_ids(Path(cfg.query_ids))
            query_vectors = embeddings.run_query_tower(Path(source), query_ids)
        if query_vectors.shape[1] != vectors.shape[1]:
            raise DataError(f"{source}: queries have {query_vectors.shape[1]} dims but {path} holds "
                            f"{vectors.shape[1]}-dim candidates; both towers must embed into one space")
        log(f"data: {len(query_ids)} query vectors from {source}")
        catalogue = Catalogue(query_ids, query_vectors, ids, vectors)
    data_info = {"dataset": "imported", "source": str(path), "items": len(ids), "users": len(catalogue.query_ids)}
    return Prepared(catalogue, data_info, {}, {})


def _tuning_queries(catalogue: Catalogue, count: int = 1000) -> np.ndarray:
    # A different sample from the recall gate's (seed 0), so the gate checks unseen queries.
    vectors = catalogue.vectors_of_queries()
    picks = np.random.default_rng(20_240).choice(len(vectors), size=min(count, len(vectors)), replace=False)
    return vectors[picks]


def git_commit() -> str:
    """The source commit ($GIT_COMMIT in images, else git), or 'unknown'."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def runtime_versions() -> dict:
    """Versions that produced the model (stored in build_info.json)."""
    import importlib.metadata as md

    import tensorflow as tf

    from model_builder import __version__

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "scann": md.version("scann"),
            "numpy": np.__version__, "model_builder": __version__}


def _fallback_ids(cfg: BuildConfig, prepared: Prepared) -> np.ndarray | None:
    """--unknown-ids fallback: the k most popular training items (user -> items and item -> similar alike)."""
    if cfg.unknown_ids != "fallback":
        return None
    if prepared.popular_ids is None:
        raise ConfigError("--unknown-ids fallback needs training interactions to rank items by popularity")
    if len(prepared.popular_ids) < cfg.k:
        raise ConfigError(f"--unknown-ids fallback needs k={cfg.k} items, the data has {len(prepared.popular_ids)}")
    return prepared.popular_ids[:cfg.k]


@dataclass(frozen=True)
class BuildResult:
    """Where the verified version went and what it contains."""

    version_dir: Path
    info: dict
    prepared: Prepared


def build(cfg: BuildConfig, train_cfg: TrainConfig, index_cfg: index.IndexConfig, log: Log = print,
          prepared: Prepared | None = None) -> BuildResult:
    """Runs the whole build; the version is published only if verification passes.

    `prepared` skips data loading and training (the demo trains once and builds two models).
    """
    cfg.validate()
    started = time.perf_counter()
    if prepared is None:
        prepared = prepare_imported(cfg, log) if cfg.candidates else prepare_trained(cfg, train_cfg, log)
    catalogue = prepared.catalogue
    check_not_padding(catalogue.candidate_ids, prepared.data_info.get("source", cfg.dataset))
    fallback_ids = _fallback_ids(cfg, prepared)
    vectors = catalogue.candidate_vectors
    extra = 1 if catalogue.items_are_queries else 0  # the query item itself is dropped from its results
    resolved = index.resolve(index_cfg, len(vectors), vectors.shape[1], cfg.k + extra)
    log(f"index: {resolved.describe()}")
    searcher, index_seconds = index.build_searcher(vectors, resolved, cfg.k + extra)
    log(f"index: built in {index_seconds:.1f} s")
    tuning = None
    if cfg.tune and searcher is not None:
        tuning = tune.tune(searcher, resolved, _tuning_queries(catalogue), vectors, cfg.k + extra, cfg.target_recall, log)
    options = ServingOptions(k=cfg.k, max_batch_size=cfg.max_batch_size, num_examples=cfg.num_examples,
                             leaves_to_search=tuning.leaves_to_search if tuning else None,
                             pre_reorder_num_neighbors=tuning.reorder if tuning else None,
                             unknown_ids=cfg.unknown_ids, fallback_ids=fallback_ids)
    module = RetrievalModule(catalogue, resolved, searcher, options)
    info = {
        "model_name": cfg.model_name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": runtime_versions(),
        "data": prepared.data_info,
        "training": prepared.quality,
        "index": {**resolved.to_dict(), "build_seconds": round(index_seconds, 3)},
        "tuning": tuning.to_dict() if tuning else None,
        "serving": {"k": cfg.k, "query": cfg.query, "items_are_queries": catalogue.items_are_queries,
                    "max_batch_size": cfg.max_batch_size, "dimensions": int(vectors.shape[1]),
                    "unknown_ids": cfg.unknown_ids,
                    "fallback_ids": None if fallback_ids is None else fallback_ids.tolist(),
                    "query_id_dtype": "int64" if catalogue.query_ids.dtype == np.int64 else "string",
                    "candidate_id_dtype": "int64" if catalogue.candidate_ids.dtype == np.int64 else "string"},
        "build_config": asdict(cfg),
    }

    def write(tmp: Path, version: int) -> None:
        log(f"export: writing version {version} into {tmp.parent}")
        export.save_module(module, module.signatures(), tmp)
        warmup.write(tmp, warmup.warmup_logs(cfg.model_name, catalogue.query_ids, catalogue.vectors_of_queries(), cfg.max_batch_size))
        export.write_build_info(tmp, {**info, "version": version})

    def check(tmp: Path) -> None:
        batching_file = Path(cfg.batching_parameters) if cfg.batching_parameters else serving_rules.default_batching_file()
        serving_rules.enforce(serving_rules.check_all(tmp, batching_file))
        log(f"serving rules of TF Serving 2.11 --enable_batching: ok ({batching_file or 'no batching file: model checked alone'})")
        log(f"verify: loading the export in a fresh process; recall@{cfg.k} must be >= {cfg.target_recall}")
        report = verify.verify_in_fresh_process(tmp, cfg.target_recall, cfg.verify_queries)
        info["verification"] = report
        recalls = ", ".join(f"{k} {v:.4f}" for k, v in report["recall_at_k"].items())
        log(f"verify: recall@{report['k']} vs exact search: {recalls}; {report['warmup_records_replayed']} warmup requests replayed")
        full = export.read_build_info(tmp)
        full["verification"] = {**report, "version_dir": None}
        export.write_build_info(tmp, full)

    version_dir = export.publish(Path(cfg.out), cfg.model_name, cfg.version, write, check)
    info = export.read_build_info(version_dir)
    log(f"published {version_dir} in {time.perf_counter() - started:.0f} s")
    return BuildResult(version_dir, info, prepared)
