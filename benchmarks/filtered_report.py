"""summary.json's `filtered` entry and the chart of benchmarks/filtered.py's results
(filtered-<catalogue>.json in the results folder, measured by `python -m benchmarks.filtered`)."""

from __future__ import annotations

import json
from pathlib import Path

GOAL = 0.95
# (key in summary.json, label, where its per-level entries live in filtered-<catalogue>.json)
ENGINES = (
    ("faiss_ivf", "Faiss IVF-Flat + IDSelectorBitmap", ("faiss", "ivf")),
    ("faiss_hnsw", "Faiss HNSW32 + IDSelectorBitmap", ("faiss", "hnsw")),
    ("hnswlib", "hnswlib M16 + filter callable (measured apart, busier)", ("hnswlib",)),
)


def _levels_of(data: dict, where: tuple[str, ...]) -> dict:
    for key in where:
        data = data.get(key, {})
    return data.get("levels", {})


def _engine_row(level: dict) -> tuple[dict, dict | None]:
    """(the entry at equal recall, the sweep's first setting reaching GOAL) of one engine at one level."""
    matched = level["matched"]
    if matched:
        equal = {k: matched[k] for k in ("recall_at_10", "p50_ms", "param", "cpu_p50_ms") if k in matched}
    else:
        equal = {"matched": False, "best_recall_at_10": max(s["recall_at_10"] for s in level["sweep"])}
        if level.get("stopped"):
            equal["stopped_at_param"] = level["stopped"]
    # The goal (0.95) as a second reference point: the sweep's first setting reaching it.
    goal = next((s for s in level["sweep"] if s["recall_at_10"] >= GOAL), None)
    return equal, goal and {k: goal[k] for k in ("recall_at_10", "p50_ms", "param", "cpu_p50_ms") if k in goal}


def summary_of(out: Path) -> dict | None:
    """Per catalogue and selectivity: our recall@10 and p50, unfiltered p50, Faiss's and hnswlib's p50 at equal recall."""
    found = sorted(out.glob("filtered-*.json"))
    if not found:
        return None
    catalogues = {}
    for path in found:
        data = json.loads(path.read_text())
        levels = {}
        for fraction, ours in data["levels"].items():
            row = {"recall_at_10": ours["recall_at_10"], "p50_ms": ours["p50_ms"], "path": ours["path"]}
            for key, _, where in ENGINES:
                level = _levels_of(data, where).get(fraction)
                if level is not None:
                    row[key], row[f"{key}_at_goal"] = _engine_row(level)
            levels[fraction] = row
        entry = {
            "unfiltered": {k: data["unfiltered"][k] for k in ("recall_at_10", "p50_ms")},
            "levels": levels,
            "ours": data["ours"],
            "queries": data["queries"],
            "repeats": data["repeats"],
            "commit": data["commit"],
            "uptime": data.get("uptime_start"),
            "load_average_end": data.get("load_average_end"),
            "file": path.name,
        }
        if "hnswlib_run" in data:  # hnswlib measured later than ours and Faiss (--hnswlib-only)
            run = data["hnswlib_run"]
            entry["hnswlib_run"] = {
                k: run.get(k)
                for k in ("commit", "uptime_start", "uptime_end", "load_average_start", "load_average_end")
            }
        catalogues[data["catalogue"]] = entry
    return catalogues


def png(out: Path) -> Path | None:
    """filtered.png: p50 latency per selectivity, ours vs unfiltered vs Faiss / hnswlib at equal recall, one panel per catalogue."""
    summary = summary_of(out)
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6.5 * len(summary), 4.8), constrained_layout=True, squeeze=False)
    for ax, (name, cat) in zip(axes[0], summary.items()):
        fractions = sorted(cat["levels"], key=float, reverse=True)
        x = [100 * float(f) for f in fractions]
        ours = [cat["levels"][f]["p50_ms"] for f in fractions]
        ax.plot(x, ours, "o-", color="tab:blue", label="ours (search_by_vector_filtered)")
        for f, xi, yi in zip(fractions, x, ours):
            ax.annotate(f"{cat['levels'][f]['recall_at_10']:.3f}", (xi, yi), textcoords="offset points", xytext=(4, 4))
        for (key, label, _), style, colour in zip(
            ENGINES, ("s--", "^--", "v--"), ("tab:green", "tab:orange", "tab:red")
        ):
            points = [
                (xi, cat["levels"][f][key]["p50_ms"])
                for f, xi in zip(fractions, x)
                if cat["levels"][f].get(key, {}).get("p50_ms") is not None
            ]
            if points:
                ax.plot(*zip(*points), style, color=colour, label=f"{label} (equal recall)")
            cpu = [
                (xi, cat["levels"][f][key]["cpu_p50_ms"])
                for f, xi in zip(fractions, x)
                if cat["levels"][f].get(key, {}).get("cpu_p50_ms") is not None
            ]
            if cpu:  # wall p50 of long calls is inflated on a loaded machine; CPU time is not
                ax.plot(*zip(*cpu), style[0] + ":", color=colour, mfc="none", label=f"{label}, CPU time per call")
        ax.axhline(cat["unfiltered"]["p50_ms"], color="gray", linestyle=":", label="ours, unfiltered")
        ax.set(xscale="log", yscale="log", xlabel="selectivity (% of items allowed)", ylabel="p50 ms, one-row calls")
        ax.set_title(f"{name}: filtered search (labels: our recall@10)")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    path = out / "filtered.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu(entry: dict) -> str:
    """'; CPU 1.23' when the entry has the per-call CPU time (measured since the hnswlib runs)."""
    return f"; CPU {entry['cpu_p50_ms']:.2f}" if "cpu_p50_ms" in entry else ""


def markdown(out: Path) -> str:
    """The README table: one line per catalogue and selectivity."""
    summary = summary_of(out) or {}
    lines = [
        "| catalogue | allowed | ours recall@10 | ours p50 ms (path) | unfiltered p50 ms | Faiss IVF p50 ms (nprobe) | Faiss HNSW p50 ms (efSearch) | hnswlib p50 ms (ef) | IVF at ≥ 0.95 | HNSW at ≥ 0.95 | hnswlib at ≥ 0.95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cat in summary.items():
        for fraction, row in sorted(cat["levels"].items(), key=lambda kv: -float(kv[0])):
            cells = []
            for key, _, _ in ENGINES:
                peer = row.get(key)
                if peer is None:
                    cells.append("–")
                elif "p50_ms" in peer:
                    cells.append(f"{peer['p50_ms']:.2f} ({peer['param']}{_cpu(peer)})")
                else:
                    stopped = f", swept to {peer['stopped_at_param']}: budget" if "stopped_at_param" in peer else ""
                    cells.append(f"not reached (best {peer['best_recall_at_10']:.3f}{stopped})")
            for key, _, _ in ENGINES:
                goal = row.get(f"{key}_at_goal")
                cells.append(
                    f"{goal['p50_ms']:.2f} ({goal['param']}, {goal['recall_at_10']:.3f}{_cpu(goal)})" if goal else "–"
                )
            lines.append(
                f"| {name} | {100 * float(fraction):g}% | {row['recall_at_10']:.3f} | {row['p50_ms']:.2f} ({row['path']}) "
                f"| {cat['unfiltered']['p50_ms']:.2f} | {' | '.join(cells)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    print(png(folder))
    print(markdown(folder))
