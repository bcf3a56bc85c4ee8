"""The build's index search: the fastest served configuration reaching the recall target, within a budget.

For each structure of structures.candidates() (the rule of thumb first):
  1. build it;
  2. sweep its search knobs on held-out queries (recall_sweep.sweep): only settings
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from model_builder.index import graph_timing, recall_sweep, structures
from model_builder.index.config import ResolvedIndex, build_searcher
from model_builder.index.frontier import ExportSetting, Knobs, Outcome, SearchInputs, SearchResult, Setting
from model_builder.index.recall import exact_kth_scores

__all__ = ["ExportSetting", "Knobs", "SearchInputs", "SearchResult", "search"]

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


@dataclass
class _Timed:
    """A setting timed through the serving graph, its export kept on disk for the final round."""

    outcome: Outcome
    setting: Setting
    folder: Path


class _Finalists:
    """The cheapest timed settings so far; exports of the others are deleted as they fall out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[_Timed] = []

    def offer(self, timed: _Timed) -> None:
        self.items.append(timed)
        self.items.sort(key=lambda t: t.setting.cost_us_per_query)
        for dropped in self.items[self.size :]:
            shutil.rmtree(dropped.folder, ignore_errors=True)
        del self.items[self.size :]

    def holds(self, outcome: Outcome) -> bool:
        return any(t.outcome is outcome for t in self.items)


@dataclass
class _Run:
    """One search's state shared by its steps: the inputs, the batch, exact ground truth, the finalists."""

    inputs: SearchInputs
    batch: int
    kth: np.ndarray
    log: Callable[[str], None]
    workdir: Path
    finalists: _Finalists = field(default_factory=lambda: _Finalists(FINALISTS))


def search(inputs: SearchInputs, log: Callable[[str], None] = print) -> SearchResult:
    """Runs the search (see the module docstring)."""
    cfg = inputs.cfg
    batch = 1 if cfg.optimize == "latency" else cfg.throughput_batch_size
    queries = np.ascontiguousarray(inputs.queries, dtype=np.float32)
    inputs = replace(inputs, queries=queries)
    # Exact ground truth is needed whatever is searched: computed before the clock starts.
    kth = exact_kth_scores(queries, inputs.vectors, inputs.count, inputs.rule.distance)
    started = time.monotonic()
    plan = structures.candidates(cfg, inputs.rule) if cfg.index_search else [inputs.rule]
    unit = "per query" if batch == 1 else f"per query in calls of {batch}"
    log(
        f"index search: {len(plan)} structure(s), recall@{inputs.count} goal {inputs.goal:.3f} on {len(queries)} "
        f"held-out queries (+ {recall_sweep.CONFIDENCE_Z:g} standard errors against a {inputs.gate_queries}-query "
        f"gate), cost = serving-graph time {unit} (--optimize {cfg.optimize})"
    )
    run = _Run(inputs, batch, kth, log, Path(tempfile.mkdtemp(prefix="index-search-")))
    outcomes: list[Outcome] = []
    budget_s: float | None = cfg.search_budget_s
    try:
        for number, index in enumerate(plan, 1):
            elapsed = time.monotonic() - started
            label = (
                f"index search [{elapsed:.0f}/{_fmt_budget(budget_s)} s] {number}/{len(plan)} "
                f"{structures.describe(index)}"
            )
            skipped = _skip_reason(index, outcomes, run.finalists, budget_s, elapsed)
            if skipped:
                outcomes.append(Outcome(index, status=f"skipped: {skipped}"))
                log(f"{label}: skipped ({skipped})")
                continue
            # The rule of thumb always runs to the end: it is the fallback, and it sets the budget.
            deadline = None if not outcomes or budget_s is None else started + budget_s
            alone = len(plan) == 1 and index.algorithm == "brute_force"
            outcomes.append(_evaluate(run, index, deadline, label, number, alone))
            if budget_s is None:
                spent = time.monotonic() - started
                budget_s = max(MIN_BUDGET_S, cfg.search_budget_factor * spent)
                log(
                    f"index search: budget {budget_s:.0f} s ({cfg.search_budget_factor:g} x the rule of thumb's "
                    f"{spent:.1f} s, at least {MIN_BUDGET_S:.0f} s)"
                )
            for done in outcomes:  # searchers are kept only for finalists, and the rule's while it is the fallback
                if not run.finalists.holds(done) and (done is not outcomes[0] or run.finalists.items):
                    done.searcher = None
        winner = _final_round(run)
    finally:
        shutil.rmtree(run.workdir, ignore_errors=True)
    return _result(run, outcomes, winner, budget_s, time.monotonic() - started)


def _fmt_budget(budget_s: float | None) -> str:
    return "?" if budget_s is None else f"{budget_s:.0f}"


def _skip_reason(
    index: ResolvedIndex, done: list[Outcome], finalists: _Finalists, budget_s: float | None, elapsed: float
) -> str | None:
    """Why a structure is not tried (its estimated time does not fit the budget), or None."""
    if not done or budget_s is None:
        return None
    estimate = _estimate(index, done) + _final_reserve(done[0], finalists)
    if elapsed + estimate <= budget_s:
        return None
    return f"needs ~{estimate:.0f} s, {max(0.0, budget_s - elapsed):.0f} s left"


def _estimate(index: ResolvedIndex, done: list[Outcome]) -> float:
    """Seconds a structure will take: its build scaled from the most similar one built so far, plus
    what evaluating the rule of thumb took beyond its build (sweep and timing)."""
    fallback = done[0]
    built = [o for o in done if o.build_s is not None]
    ref = max([o for o in built if o.index.algorithm == index.algorithm] or [fallback], key=lambda o: o.build_s or 0.0)
    # A build cannot be interrupted, so the estimate only ever scales up: fewer leaves or coarser
    # codes save little (benchmarks/README.md, Fashion-MNIST build times).
    scale = 1.0
    if index.num_leaves and ref.index.num_leaves:
        scale *= max(1.0, index.num_leaves / ref.index.num_leaves)  # k-means work grows with the leaves
    if index.dimensions_per_block and ref.index.dimensions_per_block:
        scale *= max(1.0, ref.index.dimensions_per_block / index.dimensions_per_block)  # more codebooks to train
    if index.hash_type == "lut256" and ref.index.hash_type != "lut256":
        scale *= 4.0  # 256 centres per block instead of 16
    if index.algorithm == "brute_force":
        scale = 0.1  # nothing to train
    return (ref.build_s or 0.0) * scale + max(0.0, fallback.seconds - (fallback.build_s or 0.0))


def _final_reserve(fallback: Outcome, finalists: _Finalists) -> float:
    """Seconds to keep for the final side-by-side round: loading and timing each finalist once more."""
    per_setting = max((t.graph.load_s + 1.0 for t in fallback.timed if t.graph), default=1.0)
    return per_setting * min(FINALISTS, len(finalists.items) + 1)


def _final_round(run: _Run) -> _Timed | None:
    """Re-times the finalists side by side; returns the cheapest (None when nothing reached the goal)."""
    finalists = run.finalists.items
    if len(finalists) < 2:
        return finalists[0] if finalists else None
    costs = graph_timing.compare([t.folder for t in finalists], run.inputs.queries, run.batch)
    for timed, cost in zip(finalists, costs):
        timed.setting.final_us_per_query = round(cost.us_per_query, 2)
    run.log(
        "index search: final round, side by side: "
        + "; ".join(
            f"{structures.describe(t.outcome.index)} {t.setting.describe()} {t.setting.final_us_per_query:.0f} us/query"
            for t in finalists
        )
    )
    return min(finalists, key=lambda t: t.setting.final_us_per_query)


def _evaluate(run: _Run, index: ResolvedIndex, deadline: float | None, label: str, number: int, alone: bool) -> Outcome:
    """Build, recall sweep, proxy ranking, serving-graph timing of one structure."""
    inputs, log = run.inputs, run.log
    started = time.monotonic()
    outcome = Outcome(index)
    log(f"{label}: building")
    searcher, outcome.build_s = build_searcher(inputs.vectors, index, inputs.count)
    outcome.searcher = searcher
    sweep = outcome.sweep = recall_sweep.sweep(
        searcher,
        index,
        inputs.queries,
        run.kth,
        inputs.vectors,
        inputs.count,
        inputs.goal,
        deadline,
        inputs.gate_queries,
    )
    log(
        f"{label}: built in {outcome.build_s:.1f} s; {len(sweep.measured)} recall measurements, "
        f"{len(sweep.frontier)} setting(s) reach {inputs.goal:.3f} with the margin "
        f"(best recall {sweep.best_recall().recall:.4f})"
        + ("" if sweep.complete else "; sweep stopped at the deadline")
    )
    if not sweep.frontier:
        outcome.status = "no setting reached the recall goal" + ("" if sweep.complete else " before the deadline")
    elif alone:
        outcome.status = "the only structure: reaches the goal, nothing to compare its cost with"
    else:
        _time_settings(run, outcome, deadline, run.workdir / str(number), label)
    outcome.seconds = time.monotonic() - started
    return outcome


def _time_settings(run: _Run, outcome: Outcome, deadline: float | None, folder: Path, label: str) -> None:
    """Ranks the frontier by the proxy and times the cheapest GRAPH_TIMED_PER_STRUCTURE through the graph."""
    assert outcome.sweep is not None
    settings = [Setting.of(p) for p in outcome.sweep.frontier]
    for setting, us in zip(settings, _proxy_us(run, outcome.searcher, settings)):
        setting.proxy_us_per_query = us
    outcome.timed = sorted(settings, key=lambda t: t.proxy_us_per_query)
    for rank, setting in enumerate(outcome.timed[:GRAPH_TIMED_PER_STRUCTURE]):
        if deadline is not None and time.monotonic() > deadline:
            break
        export_dir = run.inputs.export_setting(outcome.index, outcome.searcher, setting.knobs, folder / str(rank))
        cost = graph_timing.measure(export_dir, run.inputs.queries, run.batch)
        setting.cost_us_per_query, setting.graph = round(cost.us_per_query, 2), cost
        run.finalists.offer(_Timed(outcome, setting, export_dir))
    chosen = outcome.best()
    outcome.status = "timed" if chosen else "stopped at the deadline before timing"
    if chosen:
        run.log(
            f"{label}: cheapest {chosen.cost_us_per_query:.0f} us/query through the serving graph "
            f"({chosen.describe()}, recall {chosen.recall:.4f})"
        )


def _proxy_us(run: _Run, searcher, settings: list[Setting]) -> list[float]:
    """Median microseconds per query of the ScaNN op alone (eager, the objective's batch size) for each
    setting, the settings taking turns call by call so that load on the machine hits all alike."""
    batch, queries = run.batch, run.inputs.queries
    rows = np.resize(queries, (batch, queries.shape[1])) if len(queries) < batch else queries
    kws = [
        {
            "final_num_neighbors": run.inputs.count,
            "pre_reorder_num_neighbors": s.knobs.reorder,
            "leaves_to_search": s.knobs.leaves_to_search,
        }
        for s in settings
    ]
    for kw in kws:
        searcher.search_batched_parallel(rows[:batch], **kw)
    samples: list[list[float]] = [[] for _ in settings]
    stop = time.perf_counter() + _PROXY_MAX_S * len(settings)
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
    run: _Run, outcomes: list[Outcome], winner: _Timed | None, budget_s: float | None, seconds: float
) -> SearchResult:
    """The chosen (or fallback) structure with its knobs, and the record for build_info.json."""
    inputs, cfg, fallback = run.inputs, run.inputs.cfg, outcomes[0]
    if winner is not None:
        chosen, setting = winner.outcome, winner.setting
        why = "cheapest through the serving graph among settings reaching the goal" + (
            " (final round, side by side)" if setting.final_us_per_query is not None else ""
        )
    elif fallback.sweep is not None and fallback.sweep.frontier and len(outcomes) == 1:
        chosen, setting = fallback, Setting.of(fallback.sweep.frontier[0])
        why = (
            "the only structure considered (exact brute force below --brute-force-below, "
            "or --no-index-search on brute force)"
        )
    else:
        assert fallback.sweep is not None
        chosen, setting = fallback, Setting.of(fallback.sweep.best_recall())
        why = "fallback: no structure reached the recall goal; the rule of thumb's highest-recall setting"
        run.log(
            f"index search: no structure reached recall {inputs.goal:.3f}; serving the rule of thumb at its best "
            f"({setting.recall:.4f}, {setting.describe()})"
        )
    assert chosen.searcher is not None and chosen.sweep is not None
    run.log(
        f"index search: chose {structures.describe(chosen.index)} {setting.describe()} (recall {setting.recall:.4f}"
        + (f", {setting.cost:.0f} us/query" if setting.cost is not None else "")
        + f") after {seconds:.0f} s of a {budget_s:.0f} s budget"
    )
    best = fallback.best()
    record = {
        "objective": cfg.optimize,
        "batch": run.batch,
        "goal": inputs.goal,
        "recall_at": inputs.count,
        "queries": len(inputs.queries),
        "confidence_z": recall_sweep.CONFIDENCE_Z,
        "gate_queries": inputs.gate_queries,
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
            **setting.record(with_graph=False),
            "why": why,
        },
        "rule_of_thumb": {
            "family": fallback.index.algorithm,
            "num_leaves": fallback.index.num_leaves,
            "best": best.record() if best else None,
        },
        "frontier": [o.record() for o in outcomes],
    }
    knobs = setting.knobs
    tuning = recall_sweep.TuningResult(
        inputs.goal, knobs.leaves_to_search, knobs.reorder, setting.recall, list(chosen.sweep.measured), seconds
    )
    return SearchResult(chosen.index, chosen.searcher, chosen.build_s or 0.0, tuning, record)
