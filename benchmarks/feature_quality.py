"""Feature towers vs id-only towers on warm users, and held-out users vs most-popular, over seeds.

`python -m benchmarks.feature_quality [--seeds 0,1,2] [--set NAME=VALUE ...] [--out DIR]` runs the
build's own quality measurement (towers/prepare.py `prepare_trained` with `--no-refit`: the
MovieLens 100K cold-start split of that seed, feature towers and id-only towers trained on the
same split, warm users' history excluded as served) once per seed, and summarizes per metric:
per-seed values, mean, sample standard deviation, min and max, and the per-seed difference
features - id-only on warm users. `--set` overrides a TrainConfig field (e.g. `--set
id_dropout=0.1`) for trying a training change; the defaults are the build's.

Writes benchmarks/results/feature_quality.json (or feature_quality-<label>.json with `--label`).
Issue 19, deliverable 6: features >= id-only on warm users at hit-rate@10 and @100 (means), and
held-out users above most-popular. No pass/fail exit code: numbers and the verdict are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, log, machine, versions, write_json

# (where in quality["cold_start"], tower, metric) -> the name used in the result.
METRICS = {
    "warm_features_hr@10": ("warm_users", "features", "hit_rate@10"),
    "warm_id_only_hr@10": ("warm_users", "id_only", "hit_rate@10"),
    "warm_popular_hr@10": ("warm_users", "most_popular", "hit_rate@10"),
    "warm_features_hr@100": ("warm_users", "features", "hit_rate@100"),
    "warm_id_only_hr@100": ("warm_users", "id_only", "hit_rate@100"),
    "warm_popular_hr@100": ("warm_users", "most_popular", "hit_rate@100"),
    "cold_features_hr@10": ("cold_users", "features", "hit_rate@10"),
    "cold_popular_hr@10": ("cold_users", "most_popular", "hit_rate@10"),
    "cold_features_hr@100": ("cold_users", "features", "hit_rate@100"),
    "cold_popular_hr@100": ("cold_users", "most_popular", "hit_rate@100"),
}


@dataclass(frozen=True)
class Spread:
    """One metric over seeds."""

    per_seed: list[float]
    mean: float
    sd: float  # sample standard deviation (0 for one seed)
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        """Summarizes `values` (one per seed)."""
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(
            [round(v, 4) for v in values], round(statistics.fmean(values), 4), round(sd, 4), min(values), max(values)
        )


def train_overrides(pairs: list[str]) -> dict:
    """`NAME=VALUE` strings -> TrainConfig fields, converted to the field's type; SystemExit(2) names a bad one."""
    kinds = {f.name: f.type for f in dataclasses.fields(default_train_config())}
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in kinds or name == "seed":
            raise SystemExit(
                f"error: --set '{pair}': expected NAME=VALUE with NAME one of {sorted(set(kinds) - {'seed'})}"
            )
        kind = {"int": int, "float": float, "str": str}[str(kinds[name])]
        try:
            out[name] = kind(value)
        except ValueError:
            raise SystemExit(f"error: --set '{pair}': {value!r} is not of type {kind.__name__}") from None
    return out


def default_train_config():
    """A default TrainConfig (its fields name what `--set` may change); imported late: TensorFlow loads with it."""
    from model_builder.towers.training import TrainConfig

    return TrainConfig()


def one_seed(seed: int, overrides: dict) -> dict[str, float]:
    """The build's quality table for one seed (no refit), as METRICS."""
    from model_builder.build_config import BuildConfig
    from model_builder.towers.prepare import prepare_trained
    from model_builder.towers.training import TrainConfig

    lines: list[str] = []
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' per-epoch lines
        prepared = prepare_trained(BuildConfig(refit=False), TrainConfig(seed=seed, **overrides), lines.append)
    for line in lines:
        if line.startswith(("quality", "  warm", "  held-out users")):
            log(f"seed {seed}: {line.strip()}")
    cold = prepared.quality["cold_start"]
    return {name: float(cold[part][tower][metric]) for name, (part, tower, metric) in METRICS.items()}


def summarize(per_seed: dict[int, dict[str, float]]) -> dict:
    """Spread of every metric, of features - id-only on warm users, and the issue's verdict on the means."""
    seeds = sorted(per_seed)
    spreads = {name: Spread.of([per_seed[s][name] for s in seeds]) for name in METRICS}
    for k in (10, 100):
        spreads[f"warm_features_minus_id_only_hr@{k}"] = Spread.of(
            [per_seed[s][f"warm_features_hr@{k}"] - per_seed[s][f"warm_id_only_hr@{k}"] for s in seeds]
        )
    mean = {name: s.mean for name, s in spreads.items()}
    verdict = {
        f"warm_features_ge_id_only_hr@{k}": mean[f"warm_features_hr@{k}"] >= mean[f"warm_id_only_hr@{k}"]
        for k in (10, 100)
    }
    verdict.update(
        {
            f"cold_features_gt_popular_hr@{k}": mean[f"cold_features_hr@{k}"] > mean[f"cold_popular_hr@{k}"]
            for k in (10, 100)
        }
    )
    return {"metrics": {n: dataclasses.asdict(s) for n, s in spreads.items()}, "verdict": verdict}


def main(argv: list[str] | None = None) -> int:
    """Runs every seed, writes the JSON, logs the table."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.feature_quality", description=(__doc__ or "").splitlines()[0]
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each draws its own cold-start split)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="TrainConfig override")
    p.add_argument("--label", default="", help="suffix of the result file (for a variant)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds '{args.seeds}': expected comma-separated integers such as 0,1,2") from None
    overrides = train_overrides(args.set)
    started, began = machine(), time.perf_counter()
    per_seed = {seed: one_seed(seed, overrides) for seed in seeds}
    result = {
        "what": (__doc__ or "").strip().splitlines()[0],
        "protocol": "movielens-100k, default build flags with --no-refit; per seed its own cold-start split "
        "(20% users, 10% items held out), features and id-only towers on the same split; warm users' "
        "history excluded as served; sd = sample standard deviation over seeds",
        "seeds": seeds,
        "train_overrides": overrides,
        "train_config": dataclasses.asdict(default_train_config()) | overrides,
        "per_seed": {str(s): {k: round(v, 4) for k, v in m.items()} for s, m in per_seed.items()},
        **summarize(per_seed),
        "seconds": round(time.perf_counter() - began, 1),
        "machine": started,
        "versions": versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (f"feature_quality-{args.label}.json" if args.label else "feature_quality.json")
    write_json(path, result)
    for name, spread in result["metrics"].items():
        log(f"{name:36} {spread['mean']:.4f} ± {spread['sd']:.4f}  {spread['per_seed']}")
    log(f"verdict {result['verdict']}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
