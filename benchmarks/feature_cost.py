"""What the query tower in the graph costs: search_by_features vs serving_default per call, and model size.

`python -m benchmarks.feature_cost [--work DIR] [--out DIR]` builds the MovieLens 100K feature model
(default flags, the demo's) and the id-only model (`--no-features`) with the real CLI, then times
one signature call at batch 1 and 8 for serving_default (a table lookup of the stored vector) and
search_by_features (the tower runs: hash-table lookups, embedding gathers, token bags, two dense
layers) on the same loaded version, in alternating rounds so drifting load hits both alike.

Two figures per call (benchmarks/README.md, findings: where the call's time goes):
- `session`: `tf.compat.v1.Session.run` on the signature's tensors, as our local server calls it
  (includes ~0.2 ms of Python harness per call that TF Serving's C++ Session::Run does not pay);
- `graph`: the graph's own time from step stats (RunOptions FULL_TRACE: first op start to last op
  end), what TF Serving pays for the graph itself.
Writes benchmarks/results/feature_cost.json and feature_cost.png. No pass/fail: numbers only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ENV, PYTHON, REPO, dir_size_mb, log, machine, percentiles, versions, write_json
from model_builder.build_runner import BuildRunError, run_build

ROUNDS = 20
CALLS_PER_ROUND = 50
BATCHES = (1, 8)


def build(work: Path, name: str, *flags: str) -> Path:
    """A version built through the CLI (reused when `work` already holds it)."""

    model_dir = work / name
    done = (
        sorted((p for p in model_dir.glob("[0-9]*") if p.is_dir()), key=lambda p: int(p.name))
        if model_dir.is_dir()
        else []
    )
    if done:
        return done[-1]
    log(f"building {name} ({' '.join(flags) or 'default flags'})")
    try:
        return run_build("--out", str(work), "--model-name", name, *flags, python=PYTHON, env=ENV, cwd=REPO).version_dir
    except BuildRunError as err:
        raise SystemExit(str(err)) from None


class Signatures:
    """A version loaded into a TF1 Session (like the local server); feeds by the signature's tensor names."""

    def __init__(self, version_dir: Path) -> None:
        import tensorflow as tf

        import model_builder.scann_import  # noqa: F401  (registers the ScaNN ops)

        self.tf = tf
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(version_dir))
        self.defs = meta.signature_def

    def feeds(self, signature: str, inputs: dict[str, np.ndarray]) -> tuple[dict, list]:
        sig = self.defs[signature]
        return {sig.inputs[k].name: v for k, v in inputs.items()}, [sig.outputs[k].name for k in sorted(sig.outputs)]

    def session_seconds(self, feed: dict, fetches: list, calls: int) -> list[float]:
        out = []
        for _ in range(calls):
            start = time.perf_counter()
            self.session.run(fetches, feed)
            out.append(time.perf_counter() - start)
        return out

    def graph_seconds(self, feed: dict, fetches: list, calls: int) -> list[float]:
        tf = self.tf
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        out = []
        for _ in range(calls):
            metadata = tf.compat.v1.RunMetadata()
            self.session.run(fetches, feed, options=options, run_metadata=metadata)
            nodes = [n for d in metadata.step_stats.dev_stats for n in d.node_stats if n.all_end_rel_micros >= 0]
            start = min(n.all_start_micros for n in nodes)
            end = max(n.all_start_micros + n.all_end_rel_micros for n in nodes)
            out.append((end - start) / 1e6)
        return out


def feature_rows(batch: int) -> dict[str, np.ndarray]:
    """`batch` new users (unknown id) with varied features, as a caller sends them."""
    rng = np.random.default_rng(batch)
    occupations = np.array(
        ["student", "engineer", "writer", "retired", "artist", "doctor", "other", "educator"], dtype=object
    )
    return {
        "user_id": np.full(batch, 10**9, np.int64),
        "age": rng.integers(15, 70, batch).astype(np.float32),
        "gender": rng.choice(np.array(["M", "F"], dtype=object), batch),
        "occupation": rng.choice(occupations, batch),
        "zip_code": np.array([f"{z:05d}" for z in rng.integers(0, 99999, batch)], dtype=object),
    }


def measure(version_dir: Path) -> dict:
    """Alternating rounds of both signatures at each batch size; p50 of every figure."""
    sigs = Signatures(version_dir)
    cases = {}
    for batch in BATCHES:
        cases[f"serving_default@{batch}"] = sigs.feeds(
            "serving_default", {"ids": np.arange(1, batch + 1, dtype=np.int64)}
        )
        cases[f"search_by_features@{batch}"] = sigs.feeds("search_by_features", feature_rows(batch))
    samples = {name: {"session": [], "graph": []} for name in cases}
    for feed, fetches in cases.values():  # warm: the ScaNN searcher and kernels are built on first use
        sigs.session_seconds(feed, fetches, 5)
    for round_no in range(ROUNDS):
        for name, (feed, fetches) in cases.items():
            samples[name]["session"] += sigs.session_seconds(feed, fetches, CALLS_PER_ROUND)
            samples[name]["graph"] += sigs.graph_seconds(feed, fetches, CALLS_PER_ROUND // 5)
        if round_no % 5 == 4:
            log(f"round {round_no + 1}/{ROUNDS}")
    out = {name: {kind: percentiles(v) for kind, v in s.items()} for name, s in samples.items()}
    for batch in BATCHES:
        for kind in ("session", "graph"):
            ratio = out[f"search_by_features@{batch}"][kind]["p50_ms"] / out[f"serving_default@{batch}"][kind]["p50_ms"]
            out.setdefault("ratios", {})[f"features_vs_id_{kind}_p50@{batch}"] = round(ratio, 2)
    return out


def sizes(feature_dir: Path, id_dir: Path) -> dict:
    """Version folders on disk, and the tower's share (its variables, counted from the checkpoint)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(feature_dir / "variables" / "variables"))
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    tower = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items() if "query_tower" in name)
    return {
        "feature_model_mb": dir_size_mb(feature_dir),
        "id_only_model_mb": dir_size_mb(id_dir),
        "tower_variables_mb": round(tower / 1e6, 3),
        "note": "the feature model also indexes the 235 MovieLens items without a positive rating (1682 vs 1447 candidates)",
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels, width = [f"batch {b}" for b in BATCHES], 0.2
    for i, (sig, kind) in enumerate(
        [(s, k) for s in ("serving_default", "search_by_features") for k in ("session", "graph")]
    ):
        values = [result["per_call"][f"{sig}@{b}"][kind]["p50_ms"] for b in BATCHES]
        ax.bar(np.arange(len(BATCHES)) + (i - 1.5) * width, values, width, label=f"{sig} ({kind})")
    ax.set_xticks(np.arange(len(BATCHES)), labels)
    ax.set_ylabel("p50 per call (ms)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # room for the legend above the bars
    ax.set_title("MovieLens 100K feature model: one signature call")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Builds (or reuses) both models, measures, writes JSON + PNG."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.feature_cost", description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--work",
        type=Path,
        default=REPO / "build" / "bench-work" / "feature-cost",
        help="models are built (and reused) here",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    args = p.parse_args(argv)
    feature_dir = build(args.work, "movielens_features")
    id_dir = build(args.work, "movielens_ids", "--no-features")
    log("measuring (alternating rounds)")
    started = machine()
    per_call = measure(feature_dir)
    result = {
        "what": (__doc__ or "").strip().splitlines()[0],
        "model": str(feature_dir.relative_to(args.work)),
        "per_call": {k: v for k, v in per_call.items() if k != "ratios"},
        "ratios": per_call["ratios"],
        "size": sizes(feature_dir, id_dir),
        "machine": started,
        "load_average_end": machine()["load_average"],
        "versions": versions(),
        "rounds": ROUNDS,
        "calls_per_round": CALLS_PER_ROUND,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "feature_cost.json", result)
    plot(result, args.out / "feature_cost.png")
    log(f"wrote {args.out / 'feature_cost.json'}: {json.dumps(result['ratios'])}, sizes {json.dumps(result['size'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
