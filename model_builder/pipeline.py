"""The build: data -> towers (or imported embeddings) -> ScaNN index -> SavedModel -> verified version.

Each stage lives in its package (towers/, index/, export/, verify.py); this module strings them
together: `build` prepares the catalogue, chooses and builds the index (`_index_stage`), then
publishes a version that is written (`_write_version`) and checked (`_check_version`) before it
gets its number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_builder import build_record, contract, verify
from model_builder.build_config import BuildConfig
from model_builder.compat import memory, serving_rules
from model_builder.contract import Catalogue, check_not_padding
from model_builder.errors import ConfigError
from model_builder.export import version_store, warmup
from model_builder.export.serving_graph import RetrievalModule, ServingOptions
from model_builder.index import attributes as item_attributes
from model_builder.index import config as index_config
from model_builder.index import search as index_search
from model_builder.index import tuning_queries as tuning_queries_file
from model_builder.index.tuning_queries import TuningQueries
from model_builder.towers.prepare import Log, Prepared, prepare_imported, prepare_trained
from model_builder.towers.training import TrainConfig

__all__ = ["BuildResult", "Prepared", "build", "module_factory", "prepare_trained"]

# A different sample from the recall gate's (seed 0), so the gate checks unseen queries.
_TUNING_SEED = 20_240
_TUNING_QUERIES = 1000


def _tuning_queries(catalogue: Catalogue) -> np.ndarray:
    vectors = catalogue.vectors_of_queries()
    picks = np.random.default_rng(_TUNING_SEED).choice(
        len(vectors), size=min(_TUNING_QUERIES, len(vectors)), replace=False
    )
    return vectors[picks]


def module_factory(
    cfg: BuildConfig,
    catalogue: Catalogue,
    fallback_ids: np.ndarray | None = None,
    query_tower=None,
    seen: np.ndarray | None = None,
) -> index_search.ExportSetting:
    """Exports the serving module of an index and its search knobs into a folder: what the build
    publishes, and what the index search times.

    `query_tower` (feature builds, served_tower.ServingTower) adds the search_by_features signature;
    `seen` (history.SeenItems.table) the exclusion of each user's history.
    """

    def export(resolved: index_config.ResolvedIndex, searcher, setting: index_search.Knobs, folder: Path) -> Path:
        module = serving_module(cfg, catalogue, resolved, searcher, setting, fallback_ids, query_tower, seen)
        version_store.save_module(module, module.signatures(), folder)
        return folder

    return export


def serving_module(
    cfg: BuildConfig,
    catalogue: Catalogue,
    resolved: index_config.ResolvedIndex,
    searcher,
    knobs: index_search.Knobs,
    fallback_ids: np.ndarray | None = None,
    query_tower=None,
    seen: np.ndarray | None = None,
    attributes: item_attributes.AttributeTables | None = None,
) -> RetrievalModule:
    """The serving graph for one index and its search knobs (`attributes`: the filtered signatures)."""
    options = ServingOptions(
        k=cfg.k,
        max_batch_size=cfg.max_batch_size,
        num_examples=cfg.num_examples,
        leaves_to_search=knobs.leaves_to_search,
        pre_reorder_num_neighbors=knobs.reorder,
        unknown_ids=cfg.unknown_ids,
        fallback_ids=fallback_ids,
        seen=seen,
        attributes=attributes,
        filters=build_record.filter_options(cfg),
        query_vectors_signature=cfg.shards > 1 and cfg.query_side == "partitioned",
    )
    return RetrievalModule(catalogue, resolved, searcher, options, query_tower)


def _attributes(cfg: BuildConfig, prepared: Prepared) -> item_attributes.AttributeTables | None:
    """--item-attributes: a features file, or 'dataset' (the dataset's item features)."""
    if not cfg.item_attributes:
        return None
    from model_builder.data.features import read_features

    ids = prepared.catalogue.candidate_ids
    if cfg.item_attributes == "dataset":
        if prepared.item_features is None:
            raise ConfigError("--item-attributes dataset: this dataset has no item features; give a file")
        table, renames = prepared.item_features, item_attributes.MOVIELENS_NAMES
    else:
        table, renames = read_features(Path(cfg.item_attributes), "item", ids.dtype), {}
    return item_attributes.from_feature_table(table, ids, cfg.crowding_attribute, renames)


def _fallback_ids(cfg: BuildConfig, prepared: Prepared) -> np.ndarray | None:
    """--unknown-ids fallback: the k most popular training items (user -> items and item -> similar alike)."""
    if cfg.unknown_ids != "fallback":
        return None
    if prepared.popular_ids is None:
        raise ConfigError("--unknown-ids fallback needs training interactions to rank items by popularity")
    if len(prepared.popular_ids) < cfg.k:
        raise ConfigError(f"--unknown-ids fallback needs k={cfg.k} items, the data has {len(prepared.popular_ids)}")
    return prepared.popular_ids[: cfg.k]


@dataclass(frozen=True)
class BuildResult:
    """Where the verified version went and what it contains."""

    version_dir: Path
    info: dict
    prepared: Prepared


@dataclass(frozen=True)
class _IndexChoice:
    """The index to serve, its searcher and knobs, and the index search's record (None when not searched)."""

    resolved: index_config.ResolvedIndex
    searcher: object
    build_seconds: float
    knobs: index_search.Knobs
    tuning: dict | None
    search_record: dict | None


def _seen(cfg: BuildConfig, prepared: Prepared):
    """The history table serving_default masks (None: no exclusions for this build)."""
    return prepared.seen if cfg.exclude_seen and prepared.seen is not None and prepared.seen.width else None


def _index_stage(
    cfg: BuildConfig,
    index_cfg: index_config.IndexConfig,
    prepared: Prepared,
    fallback_ids,
    query_tower,
    log: Log,
    given: TuningQueries | None = None,
) -> _IndexChoice:
    """The rule of thumb's index, or (with --tune) the fastest one reaching the recall target.

    `given` (--tuning-queries): the index search tunes on its tuning part instead of catalogue
    queries, for recall@(what the served signatures fetch without a query item) at the target itself.
    """
    catalogue = prepared.catalogue
    vectors = catalogue.candidate_vectors
    seen = _seen(cfg, prepared)
    # With exclusions every query fetches k + the history width: the index is tuned for that count.
    neighbours = contract.neighbours_per_query(
        cfg.k, catalogue.items_are_queries, seen.width if seen else 0, len(vectors)
    )
    resolved = index_config.resolve(index_cfg, len(vectors), vectors.shape[1], neighbours)
    log(f"index: {resolved.describe()}")
    if not cfg.tune or resolved.algorithm == "exact":
        searcher, seconds = index_config.build_searcher(vectors, resolved, neighbours)
        log(f"index: built in {seconds:.1f} s")
        return _IndexChoice(resolved, searcher, seconds, index_search.Knobs(None, None), None, None)
    if given is None:
        queries, count, gate = _tuning_queries(catalogue), neighbours, len(catalogue.vectors_of_queries())
        goal = contract.recall_goal_with_query_item(cfg.k, cfg.target_recall, catalogue.items_are_queries)
    else:  # not catalogue items: no query item among the results to discount
        queries, goal, gate = given.tuning, cfg.target_recall, len(given.held_out)
        count = contract.neighbours_per_query(cfg.k, False, seen.width if seen else 0, len(vectors))
    searched = index_search.search(
        index_search.SearchInputs(
            cfg=index_cfg,
            rule=resolved,
            vectors=vectors,
            queries=queries,
            count=count,
            goal=goal,
            export_setting=module_factory(cfg, catalogue, fallback_ids, query_tower, seen.table if seen else None),
            gate_queries=min(cfg.verify_queries, gate),  # what the gate samples
        ),
        log,
    )
    tuning = searched.tuning
    return _IndexChoice(
        searched.index,
        searched.searcher,
        searched.build_seconds,
        index_search.Knobs(tuning.leaves_to_search, tuning.reorder),
        tuning.to_dict(),
        searched.record,
    )


def _write_version(cfg: BuildConfig, prepared: Prepared, module, info: dict, tmp: Path, version: int, log: Log) -> None:
    """The SavedModel, its warmup file and build_info.json, into the unpublished folder."""
    log(f"export: writing version {version} into {tmp.parent}")
    version_store.save_module(module, module.signatures(), tmp)
    catalogue, exported = prepared.catalogue, prepared.feature_towers
    logs = warmup.warmup_logs(cfg.model_name, catalogue.query_ids, catalogue.vectors_of_queries(), cfg.max_batch_size)
    if exported:
        logs += warmup.feature_logs(cfg.model_name, exported.examples[cfg.query], cfg.max_batch_size)
    if module.query_vectors_signature:
        logs += warmup.query_vector_logs(cfg.model_name, catalogue.query_ids, cfg.max_batch_size)
    if module.filters is not None:
        widths = (cfg.filter_tokens_width, cfg.filter_exclude_width, module.filters.num_numeric)
        logs += warmup.filtered_logs(
            cfg.model_name, catalogue.query_ids, catalogue.candidate_ids, widths, cfg.max_batch_size
        )
    warmup.write(tmp, logs[: warmup.MAX_RECORDS])
    version_store.write_build_info(tmp, {**info, "version": version})


def _check_version(cfg: BuildConfig, tmp: Path, log: Log, given: TuningQueries | None) -> None:
    """The gates a version must pass before it is published: serving rules, recall, memory measured."""
    batching_file = Path(cfg.batching_parameters) if cfg.batching_parameters else serving_rules.default_batching_file()
    serving_rules.enforce(serving_rules.check_all(tmp, batching_file))
    log(
        "serving rules of TF Serving 2.11 --enable_batching: ok "
        f"({batching_file or 'no batching file: model checked alone'})"
    )
    log(f"verify: loading the export in a fresh process; recall@{cfg.k} must be >= {cfg.target_recall}")
    report = verify.verify_in_fresh_process(
        tmp, cfg.target_recall, cfg.verify_queries, given.path.resolve() if given else None
    )
    recalls = ", ".join(f"{k} {v:.4f}" for k, v in report["recall_at_k"].items())
    log(
        f"verify: recall@{report['k']} vs exact search: {recalls}; "
        f"{report['warmup_records_replayed']} warmup requests replayed"
    )
    full = version_store.read_build_info(tmp)
    full["verification"] = {**report, "version_dir": None}
    version_store.write_build_info(tmp, full)
    # Deploy sizing: peak RSS of loading + warming in the serving-runtime stand-in (compat/memory.py).
    memory.record(tmp, log)


def _read_tuning_queries(cfg: BuildConfig, train_cfg: TrainConfig, prepared: Prepared | None) -> TuningQueries | None:
    """--tuning-queries read and split before any work; trained towers' dimension is known from the flags."""
    if cfg.tuning_queries is None:
        return None
    given = tuning_queries_file.load(Path(cfg.tuning_queries), cfg.verify_queries)
    if prepared is None and not cfg.candidates:
        given.check_dimension(train_cfg.embedding_dim, "--embedding-dim")
    return given


def build(
    cfg: BuildConfig,
    train_cfg: TrainConfig,
    index_cfg: index_config.IndexConfig,
    log: Log = print,
    prepared: Prepared | None = None,
) -> BuildResult:
    """Runs the whole build; the version is published only if verification passes.

    `prepared` skips data loading and training (the demo trains once and builds two models).
    """
    cfg.validate()
    index_cfg.validate()
    started = time.perf_counter()
    given = _read_tuning_queries(cfg, train_cfg, prepared)
    if prepared is None:
        prepared = prepare_imported(cfg, log) if cfg.candidates else prepare_trained(cfg, train_cfg, log)
    if given is not None:
        given.check_dimension(prepared.catalogue.candidate_vectors.shape[1], "the catalogue")
        log(
            f"tuning queries: {given.rows} from {given.path}: {len(given.tuning)} tune the index, "
            f"{len(given.held_out)} held out for the recall gate"
        )
    check_not_padding(prepared.catalogue.candidate_ids, prepared.data_info.get("source", cfg.dataset))
    fallback_ids = _fallback_ids(cfg, prepared)
    attributes = _attributes(cfg, prepared)
    exported = prepared.feature_towers
    query_tower = exported.towers[cfg.query] if exported else None
    choice = _index_stage(cfg, index_cfg, prepared, fallback_ids, query_tower, log, given)
    seen = _seen(cfg, prepared)
    module = serving_module(
        cfg,
        prepared.catalogue,
        choice.resolved,
        choice.searcher,
        choice.knobs,
        fallback_ids,
        query_tower,
        seen.table if seen else None,
        attributes,
    )
    if attributes is not None:
        log(
            f"filters: {len(attributes.vocabulary)} tokens in {', '.join(attributes.namespaces) or 'no namespace'}, "
            f"numeric {', '.join(attributes.numeric_names) or 'none'}, crowding {attributes.crowding or 'off'}"
        )
    info = build_record.build_info(
        build_record.BuildFacts(
            cfg=cfg,
            prepared=prepared,
            index={**choice.resolved.to_dict(), "build_seconds": round(choice.build_seconds, 3)},
            tuning=choice.tuning,
            search_record=choice.search_record,
            fallback_ids=fallback_ids,
            seen=seen,
            given=given,
            attributes=attributes,
        )
    )
    version_dir = version_store.publish(
        Path(cfg.out),
        cfg.model_name,
        cfg.version,
        lambda tmp, version: _write_version(cfg, prepared, module, info, tmp, version, log),
        lambda tmp: _check_version(cfg, tmp, log, given),
    )
    info = version_store.read_build_info(version_dir)
    log(f"published {version_dir} in {time.perf_counter() - started:.0f} s")
    return BuildResult(version_dir, info, prepared)
