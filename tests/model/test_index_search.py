"""The build's index search on small catalogues: candidates, recall gate, budget, frontier, fallback.

Real ScaNN builds, real exports timed through TF's C API; no assertion on how
fast anything is, only on what the search did with what it measured.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import support
from model_builder.build_config import BuildConfig
from model_builder.contract import Catalogue
from model_builder.data.synthetic import clustered_embeddings
from model_builder.errors import ConfigError
from model_builder.export.version_store import read_build_info
from model_builder.index import config as index_config
from model_builder.index import execution_batch, graph_timing, recall, recall_sweep, structures
from model_builder.index import search as index_search
from model_builder.index.recall import exact_kth_scores
from model_builder.pipeline import module_factory, serving_module

COUNT = 10


def _keys(plan):
    return [structures.structure_key(s) for s in plan]


@pytest.mark.parametrize(("n", "dim"), [(1_000_000, 64), (60_000, 784), (30_000, 32), (5_000, 16)])
def test_candidates_start_with_the_rule_of_thumb_and_cover_every_family(n, dim):
    cfg = index_config.IndexConfig(brute_force_below=1_000)
    rule = index_config.resolve(cfg, n, dim, COUNT)
    plan = structures.candidates(cfg, rule)
    assert _keys(plan)[0] == structures.structure_key(rule)
    assert len(set(_keys(plan))) == len(plan), "no structure is built twice"
    assert {s.algorithm for s in plan} == {"brute_force", "ah", "tree_ah"}
    assert {s.dimensions_per_block for s in plan if s.algorithm == "ah"} == {1, 2, 4}
    root = n**0.5
    assert {s.num_leaves for s in plan if s.algorithm == "tree_ah"} == {round(root), round(2 * root), round(root / 2)}
    assert {(s.dimensions_per_block, s.hash_type) for s in plan if s.hash_type == "lut256"} == {(4, "lut256")}
    if n >= 100_000:  # full scans last where their cost grows with N
        assert [s.algorithm for s in plan][-1] == "brute_force"


def test_small_catalogues_keep_exact_scoring_unless_asked():
    cfg = index_config.IndexConfig()
    rule = index_config.resolve(cfg, 5_000, 16, COUNT)
    assert _keys(structures.candidates(cfg, rule)) == [("brute_force", None, None, None)]
    cfg = index_config.IndexConfig(algorithm="tree_ah")
    assert {s.algorithm for s in structures.candidates(cfg, index_config.resolve(cfg, 5_000, 16, COUNT))} == {"tree_ah"}


def test_flags_the_user_set_pin_the_structure():
    cfg = index_config.IndexConfig(algorithm="tree_ah", num_leaves=100, dimensions_per_block=4, hash_type="lut256")
    plan = structures.candidates(cfg, index_config.resolve(cfg, 50_000, 32, COUNT))
    assert _keys(plan) == [("tree_ah", 100, 4, "lut256")]
    cfg = index_config.IndexConfig(algorithm="ah")
    plan = structures.candidates(cfg, index_config.resolve(cfg, 50_000, 32, COUNT))
    assert {s.algorithm for s in plan} == {"ah"} and len(plan) == 4


def test_throughput_batch_defaults_to_the_shipped_batching_file():
    assert execution_batch.BATCHING_FILE.is_file()
    shipped = execution_batch.read_execution_batch_size(execution_batch.BATCHING_FILE)
    assert shipped == execution_batch.FALLBACK_EXECUTION_BATCH_SIZE, "builder images (no k8s/) must use the same value"
    assert index_config.IndexConfig().throughput_batch_size == shipped


@pytest.fixture(scope="module")
def small():
    """2,000 clustered 16-dim candidates (item -> similar items) and 200 held-out queries."""
    vectors = clustered_embeddings(2_200, 16, num_clusters=40, seed=7)
    base, queries = vectors[:2_000], vectors[2_000:]
    ids = np.arange(len(base), dtype=np.int64)
    return base, queries, Catalogue(ids, None, ids, base)


def _search(small, cfg: index_config.IndexConfig, target: float = 0.95):
    base, queries, catalogue = small
    rule = index_config.resolve(cfg, len(base), base.shape[1], COUNT)
    lines: list[str] = []
    inputs = index_search.SearchInputs(
        cfg, rule, base, queries, COUNT, target, module_factory(BuildConfig(k=COUNT), catalogue)
    )
    result = index_search.search(inputs, lines.append)
    return result, lines


def test_graph_timing_runs_the_exported_serving_signature(small, tmp_path):
    base, queries, catalogue = small
    resolved = index_config.resolve(index_config.IndexConfig(algorithm="tree_ah"), len(base), base.shape[1], COUNT)
    searcher, _ = index_config.build_searcher(base, resolved, COUNT)
    module = serving_module(BuildConfig(k=COUNT), catalogue, resolved, searcher, index_search.Knobs(3, 50))
    folder = module_factory(BuildConfig(k=COUNT), catalogue)(
        resolved, searcher, index_search.Knobs(3, 50), tmp_path / "x"
    )
    session = graph_timing.GraphSession(folder)
    try:
        # Whatever the serving graph returns is fetched, as TF Serving's Predict does (contract v2: found too).
        assert session.output_names == sorted(module.signatures()["search_by_vector"].structured_outputs)
        assert "found" in session.output_names and session.input_name == "vectors"
        per_call, calls = graph_timing.time_calls(session, queries, 4, max_calls=30)
        assert per_call > 0 and calls > 0
    finally:
        session.close()
    with pytest.raises(RuntimeError, match="TF_SessionRun"):  # a TF error surfaces with its message
        bad = graph_timing.GraphSession(folder)
        handle = bad.tensor(np.zeros((2, base.shape[1] + 1), np.float32))
        try:
            bad.run(handle)
        finally:
            bad.free(handle)
            bad.close()


def test_sweep_keeps_only_settings_that_reach_the_goal(small):
    base, queries, _ = small
    cfg = index_config.IndexConfig(algorithm="tree_ah")
    resolved = index_config.resolve(cfg, len(base), base.shape[1], COUNT)
    searcher, _ = index_config.build_searcher(base, resolved, COUNT)
    kth = exact_kth_scores(queries, base, COUNT, "dot_product")
    sweep = recall_sweep.sweep(searcher, resolved, queries, kth, base, COUNT, goal=0.96)
    assert sweep.frontier and all(p.recall - p.margin >= 0.96 for p in sweep.frontier)
    assert any(not p.reaches(0.96) for p in sweep.measured), "the sweep measured settings that fail the gate"
    assert len({p.leaves_to_search for p in sweep.frontier}) == len(sweep.frontier), "dominated settings dropped"
    impossible = recall_sweep.sweep(searcher, resolved, queries, kth, base, COUNT, goal=1.01)
    assert impossible.frontier == () and impossible.best_recall().recall <= 1.0


def test_the_margin_covers_both_samples_of_the_gate_comparison():
    assert recall_sweep.margin(np.ones(500), 200) == 0.0, "every query perfect: nothing to be unsure of"
    split = np.array([1.0, 0.0] * 50)
    expected = recall_sweep.CONFIDENCE_Z * split.std(ddof=1) * np.sqrt(1 / 100 + 1 / 400)
    assert recall_sweep.margin(split, 400) == pytest.approx(expected)
    assert recall_sweep.margin(split, 50) > recall_sweep.margin(split, 400) > recall_sweep.margin(split, 10**9)


def test_a_smaller_gate_sample_needs_a_wider_margin(small):
    base, queries, _ = small
    cfg = index_config.IndexConfig(algorithm="tree_ah", num_leaves=60)
    resolved = index_config.resolve(cfg, len(base), base.shape[1], COUNT)
    searcher, _ = index_config.build_searcher(base, resolved, COUNT)
    kth = exact_kth_scores(queries, base, COUNT, "dot_product")
    sweeps = {
        gate: recall_sweep.sweep(searcher, resolved, queries, kth, base, COUNT, 0.9, gate_queries=gate)
        for gate in (20, 10**9)
    }
    for sweep in sweeps.values():
        assert sweep.frontier and all(p.recall - p.margin >= 0.9 for p in sweep.frontier)
    assert sweeps[10**9].frontier[0].margin > 0, "the unbounded gate still leaves the sweep's own sample"
    # Same searcher, same knobs: same recall; only the margin differs. Which settings each sweep's
    # search lands on, and their recalls, depend on the tree ScaNN trains, so they are not compared.
    wide_by_knobs = {(p.leaves_to_search, p.reorder): p for p in sweeps[20].measured}
    common = [
        (p, wide_by_knobs[k]) for p in sweeps[10**9].measured if (k := (p.leaves_to_search, p.reorder)) in wide_by_knobs
    ]
    assert common, "both sweeps measured some of the same settings"
    for tight, loose in common:
        assert loose.recall == tight.recall and loose.margin >= tight.margin
        assert loose.margin > tight.margin or tight.margin == 0.0


def test_search_times_only_gated_settings_and_records_the_frontier(small):
    # Five structures (codes pinned): brute force, AH, tree at three leaf counts.
    cfg = index_config.IndexConfig(
        dimensions_per_block=2, hash_type="lut16", brute_force_below=500, search_budget_s=600
    )
    result, lines = _search(small, cfg)
    record = result.record
    frontier = record["frontier"]
    assert [(r["family"], r["num_leaves"]) for r in frontier][0] == ("ah", None), "the rule of thumb first"
    assert len(frontier) == 5 and all(r["status"] == "timed" for r in frontier), frontier
    goal = record["goal"]
    timed = [s for r in frontier for s in r["settings"] if s["cost_us_per_query"] is not None]
    assert timed and all(s["recall"] - s["margin"] >= goal for r in frontier for s in r["settings"])
    assert record["gate_queries"] == recall.DEFAULT_QUERIES and record["confidence_z"] == recall_sweep.CONFIDENCE_Z
    assert all(s["graph"]["batch"] == 1 and s["graph"]["calls"] > 0 for s in timed)
    assert all(
        len([s for s in r["settings"] if s["cost_us_per_query"] is not None]) <= index_search.GRAPH_TIMED_PER_STRUCTURE
        for r in frontier
    )
    finals = [s for s in timed if "final_us_per_query" in s]
    assert len(finals) == index_search.FINALISTS
    chosen = record["chosen"]
    assert chosen["final_us_per_query"] == min(s["final_us_per_query"] for s in finals)
    assert (chosen["family"], chosen["num_leaves"]) == (result.index.algorithm, result.index.num_leaves)
    assert (result.tuning.leaves_to_search, result.tuning.reorder) == (chosen["leaves_to_search"], chosen["reorder"])
    assert record["objective"] == "latency" and record["within_budget"]
    json.dumps(record)  # goes into build_info.json as is
    assert any("final round" in line for line in lines) and lines[-1].startswith("index search: chose")


def test_budget_stops_the_search_after_the_rule_of_thumb(small):
    result, lines = _search(small, index_config.IndexConfig(brute_force_below=500, search_budget_s=0.001))
    frontier = result.record["frontier"]
    assert frontier[0]["status"] == "timed"  # the rule always runs: it sets the budget and is the fallback
    assert frontier[1:] and all(r["status"].startswith("skipped") for r in frontier[1:])
    assert result.index.algorithm == "ah" and result.record["chosen"]["family"] == "ah"
    assert sum("skipped" in line for line in lines) == len(frontier) - 1


def test_throughput_objective_times_calls_of_the_batch_size(small):
    cfg = index_config.IndexConfig(
        algorithm="tree_ah",
        dimensions_per_block=2,
        hash_type="lut16",
        num_leaves=45,
        optimize="throughput",
        throughput_batch_size=4,
    )
    result, _ = _search(small, cfg)
    assert result.record["objective"] == "throughput" and result.record["batch"] == 4
    timed = [s for r in result.record["frontier"] for s in r["settings"] if s["cost_us_per_query"] is not None]
    assert timed and all(s["graph"]["batch"] == 4 for s in timed)


def test_below_the_brute_force_threshold_exact_scoring_is_kept_untimed(small):
    result, lines = _search(small, index_config.IndexConfig())
    (only,) = result.record["frontier"]
    assert only["family"] == "brute_force" and only["best_recall"] == 1.0 and only["status"].startswith("the only")
    assert result.record["chosen"]["cost_us_per_query"] is None and "only structure" in result.record["chosen"]["why"]
    assert result.index.algorithm == "brute_force" and not any("final round" in line for line in lines)


def test_nothing_reaches_the_goal_falls_back_to_the_rule_of_thumb():
    # i.i.d. Gaussian data (quantization's worst case), coarse codes, no tree: the reorder grid tops out
    # near recall 0.98, below the target of 0.99.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20_000, 64)).astype(np.float32)
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    ids = np.arange(len(base), dtype=np.int64)
    cfg = index_config.IndexConfig(algorithm="ah", dimensions_per_block=4, hash_type="lut16")
    rule = index_config.resolve(cfg, len(base), 64, COUNT)
    factory = module_factory(BuildConfig(k=COUNT), Catalogue(ids, None, ids, base))
    result = index_search.search(
        index_search.SearchInputs(cfg, rule, base, queries, COUNT, 0.99, factory), lambda _: None
    )
    record = result.record
    assert record["frontier"][0]["status"] == "no setting reached the recall goal"
    assert record["chosen"]["why"].startswith("fallback") and record["chosen"]["cost_us_per_query"] is None
    assert (
        result.tuning.recall == pytest.approx(record["frontier"][0]["best_recall"], abs=1e-4)
        and result.tuning.recall < record["goal"]
    )
    assert result.searcher is not None and result.index.algorithm == "ah"


def test_build_records_the_search_and_inspect_prints_it(tmp_path):
    vectors = clustered_embeddings(3_000, 16, num_clusters=40, seed=11)
    path = tmp_path / "items.npz"
    np.savez(path, ids=np.arange(len(vectors), dtype=np.int64) + 7, vectors=vectors)
    # A low target so that even the cheapest setting clears it by far: at 0.95 the search picks a
    # tree setting just above the goal, and a 200-query gate on a tree that k-means trained
    # differently each run lands below it now and then (the gate doing its job, not what is tested).
    version = support.build(
        tmp_path / "models",
        "--candidates",
        str(path),
        "--query",
        "item",
        "--target-recall",
        "0.5",
        "--verify-queries",
        "200",
        "--brute-force-below",
        "1000",
        "--search-budget-s",
        "5",
        "--optimize",
        "latency",
    )
    info = read_build_info(version)
    search = info["index_search"]
    assert search["objective"] == "latency" and search["frontier"] and info["verification"]["passed"]
    chosen = search["chosen"]
    assert info["index"]["algorithm"] == chosen["family"]
    assert info["tuning"]["leaves_to_search"] == chosen["leaves_to_search"]
    table = support.run_cli("inspect", str(version), "--frontier", check=True).stdout
    assert table.splitlines()[0].split()[:3] == ["family", "leaves", "dpb"]
    assert f"chosen: {chosen['family']}" in table and "TF_SessionRun" in table
    assert json.loads(support.run_cli("inspect", str(version), check=True).stdout)["index_search"] == search


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (index_config.IndexConfig(optimize="speed"), "--optimize 'speed'"),
        (index_config.IndexConfig(throughput_batch_size=0), "--throughput-batch-size"),
        (index_config.IndexConfig(search_budget_factor=0), "--search-budget-factor"),
        (index_config.IndexConfig(search_budget_s=-1.0), "--search-budget-s"),
        (index_config.IndexConfig(hash_type="lut8"), "--hash-type 'lut8'"),
    ],
)
def test_bad_search_flags_are_named(cfg, message):
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_bad_search_flag_exits_2_before_any_work(tmp_path):
    proc = support.run_cli("build", "--dataset", "synthetic", "--out", str(tmp_path), "--optimize", "speed")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --optimize 'speed'")
    assert "data:" not in proc.stdout  # rejected before loading or training anything
