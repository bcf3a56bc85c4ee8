"""Models built with the real CLI (`python -m model_builder build`), one per configuration.

Candidates are imported (`--candidates`, ids = row numbers) and the validation
queries are the materialized query tower (`--query-embeddings`), so the
auto-tuner and the recall gate work on held-out queries that the benchmark's
test queries never overlap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import PYTHON, dir_size_mb, log, run_streaming
from benchmarks.profiles import CONFIGS, TUNED_FALLBACKS
from model_builder.build_runner import BuildRun, build_command, version_dir_of


@dataclass(frozen=True)
class Built:
    """A published version (or a failed build) and what building it took."""

    config: str
    flags: list[str]
    ok: bool
    wall_s: float
    version_dir: Path | None = None
    info: dict | None = None
    error: str = ""

    def to_dict(self) -> dict:
        """The build figures for the results JSON."""
        out: dict = {"config": self.config, "flags": self.flags, "ok": self.ok, "build_wall_s": round(self.wall_s, 1)}
        if not self.ok:
            out["error"] = self.error
            return out
        info = self.info or {}
        index, tuning = info.get("index", {}), info.get("tuning") or {}
        out.update(
            {
                "version_dir": str(self.version_dir),
                "savedmodel_mb": dir_size_mb(self.version_dir),
                "variables_mb": dir_size_mb(self.version_dir / "variables"),
                "index": index,
                "index_build_s": index.get("build_seconds", 0.0),
                "tuning_s": round(tuning.get("seconds", 0.0), 2),
                "tuned": {k: tuning.get(k) for k in ("leaves_to_search", "reorder", "recall", "target")}
                if tuning
                else None,
                "gate_recall": info.get("verification", {}).get("recall_at_k"),
            }
        )
        search = info.get("index_search")
        if search:
            out["index_search"] = {
                k: search.get(k)
                for k in ("objective", "batch", "budget_s", "seconds", "within_budget", "chosen", "frontier")
            }
        return out


def build(config: str, flags: list[str], paths: dict[str, Path], models: Path, timeout_s: float, logs: Path) -> Built:
    """One `model_builder build` in a fresh process; a failed recall gate is a result, not a crash."""
    name = config.replace("_", "-")
    cmd = build_command(
        "--candidates",
        str(paths["candidates"]),
        "--query-embeddings",
        str(paths["queries"]),
        "--query",
        "user",
        "--out",
        str(models),
        "--model-name",
        name,
        *flags,
        python=PYTHON,
    )
    log(f"build {config}: {' '.join(flags) or '(defaults)'}")
    started = time.perf_counter()
    code, lines = run_streaming(cmd, f"build {config}", timeout_s, logs / f"build-{name}.log")
    wall = time.perf_counter() - started
    if code != 0:
        error = next((line for line in reversed(lines) if line.startswith("error:")), f"exit {code}")
        search_line = next((line for line in reversed(lines) if line.startswith("index search: chose")), "")
        log(f"build {config}: FAILED after {wall:.0f} s: {error}")
        return Built(config, flags, False, wall, error=(search_line + " | " + error).strip(" |"))
    version_dir = version_dir_of("\n".join(lines))
    info = BuildRun(version_dir, "", "").build_info()
    log(f"build {config}: {version_dir} in {wall:.0f} s")
    return Built(config, flags, True, wall, version_dir, info)


def build_all(
    paths: dict[str, Path], models: Path, timeout_s: float, logs: Path, extra_flags: tuple[str, ...] = ()
) -> dict[str, Built]:
    """Every configuration of CONFIGS; a failed tuned build is kept (`<config>_default_failed`) and retried
    with each fallback. `extra_flags` go to every build (the quick profile's shorter index search)."""
    out: dict[str, Built] = {}
    for config, flags in CONFIGS.items():
        out[config] = build(config, [*flags, *extra_flags], paths, models, timeout_s, logs)
        if config.startswith("tuned") and not out[config].ok:
            out[f"{config}_default_failed"] = out.pop(config)
            for fallback in TUNED_FALLBACKS:
                attempt = build(config, [*flags, *extra_flags, *fallback], paths, models, timeout_s, logs)
                if attempt.ok:
                    out[config] = attempt
                    break
    return out
