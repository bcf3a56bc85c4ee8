"""The index search's vocabulary: a structure's knobs, the settings on its frontier and what each cost.

A *structure* is a built index (family, leaves, AH codes); a *setting* is one choice of its
search-time knobs (leaves to search, reorder depth) with its recall and costs; an *outcome* is
what happened to one structure during the search. Their `record()`s are build_info.json's
"index_search" (rendered by frontier_table.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_builder.index import graph_timing, recall_sweep
from model_builder.index.config import IndexConfig, ResolvedIndex
from model_builder.index.recall import DEFAULT_QUERIES


@dataclass(frozen=True)
class Knobs:
    """A built index's search-time knobs (None = the index default)."""

    leaves_to_search: int | None
    reorder: int | None


# Exports the serving graph of (index, searcher, knobs) into a folder and returns it: the build injects
# it (pipeline.module_factory), so the index stage times exactly what export would publish.
ExportSetting = Callable[[ResolvedIndex, object, Knobs, Path], Path]


@dataclass
class Setting:
    """One setting on a structure's frontier: its recall, and what it costs as far as it was timed."""

    knobs: Knobs
    recall: float
    margin: float
    proxy_us_per_query: float | None = None  # the ScaNN op alone, in process (ranking only)
    cost_us_per_query: float | None = None  # through the serving graph
    graph: graph_timing.GraphCost | None = None
    final_us_per_query: float | None = None  # the final side-by-side round

    @classmethod
    def of(cls, point: recall_sweep.Point) -> Setting:
        """An untimed setting from a sweep point."""
        return cls(Knobs(point.leaves_to_search, point.reorder), point.recall, point.margin)

    @property
    def cost(self) -> float | None:
        """The cost the choice was made on: the final round's when there was one."""
        return self.final_us_per_query if self.final_us_per_query is not None else self.cost_us_per_query

    def describe(self) -> str:
        """'leaves_to_search=5 reorder=100' for the build's log."""
        return f"leaves_to_search={self.knobs.leaves_to_search} reorder={self.knobs.reorder}"

    def record(self, with_graph: bool = True) -> dict:
        """build_info.json's form: the knobs, recall, margin, and each cost measured."""
        row = {
            "leaves_to_search": self.knobs.leaves_to_search,
            "reorder": self.knobs.reorder,
            "recall": round(self.recall, 4),
            "margin": round(self.margin, 4),
        }
        if self.proxy_us_per_query is not None:
            row["proxy_us_per_query"] = self.proxy_us_per_query
        row["cost_us_per_query"] = self.cost_us_per_query
        if with_graph and self.graph is not None:
            row["graph"] = self.graph.to_dict()
        if self.final_us_per_query is not None:
            row["final_us_per_query"] = self.final_us_per_query
        return row


@dataclass(frozen=True)
class SearchInputs:
    """What the index search works on: the rule of thumb, the catalogue, held-out queries and the goal.

    `count` results per query; `goal` is the recall@count to reach; `gate_queries` is the recall
    gate's sample size, which sets the confidence margin (recall_sweep.CONFIDENCE_Z).
    """

    cfg: IndexConfig
    rule: ResolvedIndex
    vectors: np.ndarray
    queries: np.ndarray
    count: int
    goal: float
    export_setting: ExportSetting
    gate_queries: int = DEFAULT_QUERIES


@dataclass
class Outcome:
    """What happened to one structure."""

    index: ResolvedIndex
    status: str = "pending"
    build_s: float | None = None
    seconds: float = 0.0
    sweep: recall_sweep.Sweep | None = None
    timed: list[Setting] = field(default_factory=list)  # frontier settings, cheapest proxy first
    searcher: object = None

    def best(self) -> Setting | None:
        """The timed setting with the lowest serving-graph cost per query."""
        graph_timed = [t for t in self.timed if t.cost_us_per_query is not None]
        return min(graph_timed, key=lambda t: t.cost_us_per_query) if graph_timed else None

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
            row["settings"] = [t.record() for t in self.timed or map(Setting.of, self.sweep.frontier)]
        return row


@dataclass(frozen=True)
class SearchResult:
    """The served structure, its searcher and knobs, and the whole search's record."""

    index: ResolvedIndex
    searcher: object
    build_seconds: float
    tuning: recall_sweep.TuningResult
    record: dict
