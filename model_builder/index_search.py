"""The build's index search: the fastest served configuration reaching the recall target, within a budget.

For each structure of index_space.candidates() (the rule of thumb first):
  1. build it;
  2. sweep its search knobs on held-out queries (tune.sweep): only settings
     reaching the recall goal go on;
  3. rank those settings by a cheap in-process timing of the ScaNN op alone,
     at the objective's batch size (within one structure only the ScaNN op's
     work changes between settings);
  4. time the best GRAPH_TIMED_PER_STRUCTURE of them through the serving graph
     itself (graph_timing: exported SavedModel, TF's C-API loader and
     TF_SessionRun, TF Serving's thread flags) at one query per call
     (--optimize latency) or at the batching file's execution batch
     (--optimize throughput).
The FINALISTS cheapest settings found are then timed once more, side by side
(all loaded, taking turns: drifting load on a shared machine hits all alike),
and the cheapest of that final round is served. The budget is a multiple of
what the rule of thumb took (steps 1-4), fixed once it has finished; a
structure whose estimated build would overrun it is skipped, and sweeps and
timings stop at the deadline.
When nothing reaches the goal the rule of thumb's highest-recall setting is
served and the recall gate decides. Every structure's outcome (family, knobs,
recall, cost, or why it was skipped) goes into build_info.json.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_builder import graph_timing, index_space, tune
from model_builder.index import IndexConfig, ResolvedIndex, build_searcher
from model_builder.verify import DEFAULT_QUERIES, exact_kth_scores

GRAPH_TIMED_PER_STRUCTURE = 2
FINALISTS = 3
# A floor for small catalogues, whose rule of thumb takes about a second: enough for a few other
# structures, little enough that every build (tests build dozens) stays quick.
MIN_BUDGET_S = 5.0
_PROXY_CALLS = 60
_PROXY_MAX_S = 0.3
TIMING_METHOD = (
    "serving graph (search_by_vector) exported to a temporary SavedModel, loaded with TF's C API "
    "(TF_LoadSessionFromSavedModel) and run with TF_SessionRun in a loop on pre-built inputs: median per "
    "call, best of 3 rounds; finalists again side by side, taking turns (best of 5 rounds); intra-op 1 / "
    "inter-op 2 threads (the serving image's flags)"
)

# Module factory: (index, searcher, leaves_to_search, reorder) -> the serving tf.Module the build would export.
MakeModule = Callable[[ResolvedIndex, object, "int | None", "int | None"], object]


@dataclass
class Outcome:
    """What happened to one structure."""

    index: ResolvedIndex
    status: str = "pending"
    build_s: float | None = None
    seconds: float = 0.0
    sweep: tune.Sweep | None = None
    timed: list[dict] = field(default_factory=list)  # frontier settings with their costs
    searcher: object = None

    def best(self) -> dict | None:
        """The timed setting with the lowest serving-graph cost per query."""
        graph_timed = [t for t in self.timed if t.get("cost_us_per_query") is not None]
        return min(graph_timed, key=lambda t: t["cost_us_per_query"]) if graph_timed else None

    def record(self) -> dict:
        """The structure's row for build_info.json: knobs, build time, every setting with recall and cost."""
        ix = self.index
        row = {
            "family": ix.algorithm,
            "num_leaves": ix.num_leaves,
            "dimensions_per_block": ix.dimensions_per_block,
            "hash_type": ix.hash_type,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "build_s": None if self.build_s is None else round(self.build_s, 2),
        }
        if self.sweep is not None:
            row["recall_measurements"] = len(self.sweep.measured)
            row["best_recall"] = round(self.sweep.best_recall().recall, 4)
            row["settings"] = self.timed or [_point(p) for p in self.sweep.frontier]
        return row


@dataclass(frozen=True)
class SearchResult:
    """The served structure, its searcher and knobs, and the whole search's record."""

    index: ResolvedIndex
    searcher: object
    build_seconds: float
    tuning: tune.TuningResult
    record: dict


def _point(p: tune.Point) -> dict:
    return {
        "leaves_to_search": p.leaves_to_search,
        "reorder": p.reorder,
        "recall": round(p.recall, 4),
        "margin": round(p.margin, 4),
    }


@dataclass
class _Timed:
    """A setting timed through the serving graph, its export kept on disk for the final round."""

    outcome: Outcome
    setting: dict
    folder: Path


class _Finalists:
    """The cheapest timed settings so far; exports of the others are deleted as they fall out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[_Timed] = []

    def offer(self, timed: _Timed) -> None:
        self.items.append(timed)
        self.items.sort(key=lambda t: t.setting["cost_us_per_query"])
        for dropped in self.items[self.size :]:
            shutil.rmtree(dropped.folder, ignore_errors=True)
        del self.items[self.size :]

    def holds(self, outcome: Outcome) -> bool:
        return any(t.outcome is outcome for t in self.items)


def search(
    cfg: IndexConfig,
    rule: ResolvedIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    count: int,
    target: float,
    make_module: MakeModule,
    log: Callable[[str], None] = print,
    gate_queries: int = DEFAULT_QUERIES,
) -> SearchResult:
    """Runs the search (see the module docstring); `count` results per query, `queries` held out.

    `gate_queries` is the recall gate's sample size: settings must clear `target` by the confidence
    margin that sample needs (tune.CONFIDENCE_Z).
    """
    batch = 1 if cfg.optimize == "latency" else cfg.throughput_batch_size
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    # Exact ground truth is needed whatever is searched: computed before the clock starts.
    kth = exact_kth_scores(queries, vectors, count, rule.distance)
    started = time.monotonic()
    plan = index_space.candidates(cfg, rule) if cfg.index_search else [rule]
    unit = "per query" if batch == 1 else f"per query in calls of {batch}"
    log(
        f"index search: {len(plan)} structure(s), recall@{count} goal {target:.3f} on {len(queries)} held-out queries "
        f"(+ {tune.CONFIDENCE_Z:g} standard errors against a {gate_queries}-query gate), "
        f"cost = serving-graph time {unit} (--optimize {cfg.optimize})"
    )
    outcomes: list[Outcome] = []
    budget_s: float | None = cfg.search_budget_s
    finalists = _Finalists(FINALISTS)
    workdir = Path(tempfile.mkdtemp(prefix="index-search-"))
    try:
        for number, index in enumerate(plan, 1):
            elapsed = time.monotonic() - started
            label = (
                f"index search [{elapsed:.0f}/{_fmt_budget(budget_s)} s] {number}/{len(plan)} "
                f"{index_space.describe(index)}"
            )
            if outcomes and budget_s is not None:
                estimate = _estimate(index, outcomes) + _final_reserve(outcomes[0], finalists)
                if elapsed + estimate > budget_s:
                    left = max(0.0, budget_s - elapsed)
                    outcomes.append(Outcome(index, status=f"skipped: needs ~{estimate:.0f} s, {left:.0f} s left"))
                    log(f"{label}: skipped (needs ~{estimate:.0f} s, budget left {left:.0f} s)")
                    continue
            # The rule of thumb always runs to the end: it is the fallback, and it sets the budget.
            deadline = None if not outcomes or budget_s is None else started + budget_s
            alone = len(plan) == 1 and index.algorithm == "brute_force"
            outcome = _evaluate(
                index,
                vectors,
                queries,
                kth,
                count,
                target,
                batch,
                make_module,
                deadline,
                log,
                label,
                workdir / str(number),
                finalists,
                alone,
                gate_queries,
            )
            outcomes.append(outcome)
            if budget_s is None:
                budget_s = max(MIN_BUDGET_S, cfg.search_budget_factor * (time.monotonic() - started))
                log(
                    f"index search: budget {budget_s:.0f} s ({cfg.search_budget_factor:g} x the rule of thumb's "
                    f"{time.monotonic() - started:.1f} s, at least {MIN_BUDGET_S:.0f} s)"
                )
            for done in outcomes:  # searchers are kept only for finalists, and the rule's while it is the fallback
                if not finalists.holds(done) and (done is not outcomes[0] or finalists.items):
                    done.searcher = None
        winner = _final_round(finalists, queries, batch, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    return _result(cfg, outcomes, winner, target, gate_queries, batch, budget_s, elapsed, log)


def _fmt_budget(budget_s: float | None) -> str:
    return "?" if budget_s is None else f"{budget_s:.0f}"


def _estimate(index: ResolvedIndex, done: list[Outcome]) -> float:
    """Seconds a structure will take: its build scaled from the most similar one built so far, plus
    what evaluating the rule of thumb took beyond its build (sweep and timing)."""
    rule = done[0]
    built = [o for o in done if o.build_s is not None]
    ref = max([o for o in built if o.index.algorithm == index.algorithm] or [rule], key=lambda o: o.build_s or 0.0)
    # A build cannot be interrupted, so the estimate only ever scales up: fewer leaves or coarser codes
    # saved little on Fashion-MNIST (122 leaves, 4 dims per block: 58 s against 57 s for 245 leaves, 2 dims).
    scale = 1.0
    if index.num_leaves and ref.index.num_leaves:
        scale *= max(1.0, index.num_leaves / ref.index.num_leaves)  # k-means work grows with the leaves
    if index.dimensions_per_block and ref.index.dimensions_per_block:
        scale *= max(1.0, ref.index.dimensions_per_block / index.dimensions_per_block)  # more codebooks to train
    if index.hash_type == "lut256" and ref.index.hash_type != "lut256":
        scale *= 4.0  # 256 centres per block instead of 16
    if index.algorithm == "brute_force":
        scale = 0.1  # nothing to train
    return (ref.build_s or 0.0) * scale + max(0.0, rule.seconds - (rule.build_s or 0.0))


def _final_reserve(rule: Outcome, finalists: _Finalists) -> float:
    """Seconds to keep for the final side-by-side round: loading and timing each finalist once more."""
    per_setting = max((t["graph"]["load_s"] + 1.0 for t in rule.timed if t.get("graph")), default=1.0)
    return per_setting * min(FINALISTS, len(finalists.items) + 1)


def _final_round(finalists: _Finalists, queries: np.ndarray, batch: int, log) -> _Timed | None:
    """Re-times the finalists side by side; returns the cheapest (None when nothing reached the goal)."""
    if len(finalists.items) < 2:
        return finalists.items[0] if finalists.items else None
    costs = graph_timing.compare([t.folder for t in finalists.items], queries, batch)
    for timed, cost in zip(finalists.items, costs):
        timed.setting["final_us_per_query"] = round(cost.us_per_query, 2)
    log(
        "index search: final round, side by side: "
        + "; ".join(
            f"{index_space.describe(t.outcome.index)} leaves_to_search={t.setting['leaves_to_search']} "
            f"reorder={t.setting['reorder']} {t.setting['final_us_per_query']:.0f} us/query"
            for t in finalists.items
        )
    )
    return min(finalists.items, key=lambda t: t.setting["final_us_per_query"])


def _evaluate(
    index: ResolvedIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    kth: np.ndarray,
    count: int,
    goal: float,
    batch: int,
    make_module: MakeModule,
    deadline: float | None,
    log,
    label: str,
    folder: Path,
    finalists: _Finalists,
    alone: bool = False,
    gate_queries: int = DEFAULT_QUERIES,
) -> Outcome:
    """Build, recall sweep, proxy ranking, serving-graph timing of one structure."""
    started = time.monotonic()
    outcome = Outcome(index)
    log(f"{label}: building")
    searcher, outcome.build_s = build_searcher(vectors, index, count)
    outcome.searcher = searcher
    sweep = outcome.sweep = tune.sweep(searcher, index, queries, kth, vectors, count, goal, deadline, gate_queries)
    log(
        f"{label}: built in {outcome.build_s:.1f} s; {len(sweep.measured)} recall measurements, "
        f"{len(sweep.frontier)} setting(s) reach {goal:.3f} with the margin (best recall {sweep.best_recall().recall:.4f})"
        + ("" if sweep.complete else "; sweep stopped at the deadline")
    )
    if not sweep.frontier:
        outcome.status = "no setting reached the recall goal" + ("" if sweep.complete else " before the deadline")
        outcome.seconds = time.monotonic() - started
        return outcome
    if alone:
        outcome.status = "the only structure: reaches the goal, nothing to compare its cost with"
        outcome.seconds = time.monotonic() - started
        return outcome
    proxy = _proxy_us(searcher, list(sweep.frontier), queries, count, batch)
    ranked = sorted(
        ({**_point(p), "proxy_us_per_query": us} for p, us in zip(sweep.frontier, proxy)),
        key=lambda t: t["proxy_us_per_query"],
    )
    for rank, setting in enumerate(ranked):
        setting["cost_us_per_query"] = None
        if rank >= GRAPH_TIMED_PER_STRUCTURE or (deadline is not None and time.monotonic() > deadline):
            continue
        module = make_module(index, searcher, setting["leaves_to_search"], setting["reorder"])
        export_dir = graph_timing.export(module, folder / str(rank))
        del module
        cost = graph_timing.measure(export_dir, queries, batch)
        setting.update({"cost_us_per_query": round(cost.us_per_query, 2), "graph": cost.to_dict()})
        finalists.offer(_Timed(outcome, setting, export_dir))
    outcome.timed = ranked
    chosen = outcome.best()
    outcome.status = "timed" if chosen else "stopped at the deadline before timing"
    if chosen:
        log(
            f"{label}: cheapest {chosen['cost_us_per_query']:.0f} us/query through the serving graph "
            f"(leaves_to_search={chosen['leaves_to_search']}, reorder={chosen['reorder']}, "
            f"recall {chosen['recall']:.4f})"
        )
    outcome.seconds = time.monotonic() - started
    return outcome


def _proxy_us(searcher, points: list[tune.Point], queries: np.ndarray, count: int, batch: int) -> list[float]:
    """Median microseconds per query of the ScaNN op alone (eager, the objective's batch size) for each
    setting, the settings taking turns call by call so that load on the machine hits all alike."""
    rows = np.resize(queries, (batch, queries.shape[1])) if len(queries) < batch else queries
    kws = [
        {"final_num_neighbors": count, "pre_reorder_num_neighbors": p.reorder, "leaves_to_search": p.leaves_to_search}
        for p in points
    ]
    for kw in kws:
        searcher.search_batched_parallel(rows[:batch], **kw)
    samples: list[list[float]] = [[] for _ in points]
    stop = time.perf_counter() + _PROXY_MAX_S * len(points)
    for n in range(_PROXY_CALLS):
        start_row = (n * batch) % max(1, len(rows) - batch + 1)
        chunk = rows[start_row : start_row + batch]
        for kw, out in zip(kws, samples):
            began = time.perf_counter()
            searcher.search_batched_parallel(chunk, **kw)
            out.append(time.perf_counter() - began)
        if time.perf_counter() > stop:
            break
    return [round(float(np.median(out)) / batch * 1e6, 2) for out in samples]


def _result(
    cfg: IndexConfig,
    outcomes: list[Outcome],
    winner: _Timed | None,
    target: float,
    gate_queries: int,
    batch: int,
    budget_s: float | None,
    seconds: float,
    log,
) -> SearchResult:
    """The chosen (or fallback) structure with its knobs, and the record for build_info.json."""
    rule = outcomes[0]
    if winner is not None:
        chosen, setting = winner.outcome, winner.setting
        why = "cheapest through the serving graph among settings reaching the goal" + (
            " (final round, side by side)" if "final_us_per_query" in setting else ""
        )
    elif rule.sweep is not None and rule.sweep.frontier and len(outcomes) == 1:
        chosen, setting = rule, {**_point(rule.sweep.frontier[0]), "cost_us_per_query": None}
        why = (
            "the only structure considered (exact brute force below --brute-force-below, "
            "or --no-index-search on brute force)"
        )
    else:
        assert rule.sweep is not None
        fallback = rule.sweep.best_recall()
        chosen, setting = rule, {**_point(fallback), "cost_us_per_query": None}
        why = "fallback: no structure reached the recall goal; the rule of thumb's highest-recall setting"
        log(
            f"index search: no structure reached recall {target:.3f}; serving the rule of thumb at its best "
            f"({fallback.recall:.4f}, leaves_to_search={fallback.leaves_to_search}, reorder={fallback.reorder})"
        )
    assert chosen.searcher is not None and chosen.sweep is not None
    cost = setting.get("final_us_per_query", setting.get("cost_us_per_query"))
    log(
        f"index search: chose {index_space.describe(chosen.index)} leaves_to_search={setting['leaves_to_search']} "
        f"reorder={setting['reorder']} (recall {setting['recall']:.4f}"
        + (f", {cost:.0f} us/query" if cost is not None else "")
        + f") after {seconds:.0f} s of a {budget_s:.0f} s budget"
    )
    record = {
        "objective": cfg.optimize,
        "batch": batch,
        "goal": target,
        "confidence_z": tune.CONFIDENCE_Z,
        "gate_queries": gate_queries,
        "enabled": cfg.index_search,
        "budget_s": None if budget_s is None else round(budget_s, 1),
        "seconds": round(seconds, 1),
        "within_budget": budget_s is None or seconds <= budget_s,
        "budget_factor": cfg.search_budget_factor,
        "timing_method": TIMING_METHOD,
        "chosen": {
            "family": chosen.index.algorithm,
            "num_leaves": chosen.index.num_leaves,
            "dimensions_per_block": chosen.index.dimensions_per_block,
            "hash_type": chosen.index.hash_type,
            **{k: v for k, v in setting.items() if k != "graph"},
            "why": why,
        },
        "rule_of_thumb": {"family": rule.index.algorithm, "num_leaves": rule.index.num_leaves, "best": rule.best()},
        "frontier": [o.record() for o in outcomes],
    }
    tuning = tune.TuningResult(
        target, setting["leaves_to_search"], setting["reorder"], setting["recall"], list(chosen.sweep.measured), seconds
    )
    return SearchResult(chosen.index, chosen.searcher, chosen.build_s or 0.0, tuning, record)
