"""Recall-vs-QPS charts in the style of ann-benchmarks: up and to the right is better."""

from __future__ import annotations

from pathlib import Path

SERIES_STYLE = {
    "scann": ("ScaNN (TF ops, same index as 'tuned')", "tab:blue", "o-"),
    "hnsw": ("Faiss HNSW (efSearch sweep)", "tab:orange", "s-"),
    "ivfpq": ("Faiss IVF-PQ + refine (nprobe x k_factor)", "tab:green", "^-"),
}
SERVED_STYLE = {
    "exact": ("served: exact (matmul+top_k)", "black", "X"),
    "rule_of_thumb": ("served: rule of thumb (--no-tune)", "tab:red", "D"),
    "tuned": ("served: index search, --optimize latency (default build)", "tab:purple", "*"),
    "tuned_throughput": ("served: index search, --optimize throughput", "tab:pink", "P"),
}


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The frontier: points no other point beats on both recall and QPS, by ascending recall."""
    frontier, best_qps = [], -1.0
    for recall, qps in sorted(points, key=lambda p: (-p[0], -p[1])):
        if qps > best_qps:
            frontier.append((recall, qps))
            best_qps = qps
    return sorted(frontier)


def recall_qps_png(result: dict, path: Path) -> Path:
    """Two panels (single-query QPS, batch-of-64 QPS) vs recall@10 for one dataset's results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    recalls: list[float] = []
    for ax, key, served_key, title in (
        (axes[0], "single_qps", "latency_1", "one query per call"),
        (axes[1], "batch64_qps", "throughput_64", "batches of 64 queries"),
    ):
        for name, curve in result.get("curves", {}).items():
            label, colour, style = SERIES_STYLE[name]
            points = pareto([(p["recall_at_10"], p[key]) for p in curve if p[key] > 0])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colour, label=label, ms=5, lw=1.5)
                recalls += [p[0] for p in points]
        for name, served in result.get("served", {}).items():
            if name not in SERVED_STYLE or "recall_at_10" not in served:
                continue
            label, colour, marker = SERVED_STYLE[name]
            chosen = (served.get("index_search") or {}).get("chosen")
            if chosen:
                label += f": {chosen['family']}" + (
                    f" {chosen['num_leaves']} leaves" if chosen.get("num_leaves") else ""
                )
            qps = served[served_key]["qps"]
            ax.scatter(
                [served["recall_at_10"]],
                [qps],
                marker=marker,
                s=140,
                color=colour,
                label=label,
                zorder=5,
                edgecolors="white",
                linewidths=0.8,
            )
            recalls.append(served["recall_at_10"])
            graph = served.get("graph") or {}
            graph_qps = (
                1e3 / graph["p50_ms_1"]
                if served_key == "latency_1" and graph.get("p50_ms_1")
                else graph.get("qps_64")
                if served_key == "throughput_64"
                else None
            )
            if graph_qps:  # the same model through TF's C API: without the Python session harness
                ax.scatter(
                    [served["recall_at_10"]],
                    [graph_qps],
                    marker=marker,
                    s=140,
                    facecolors="none",
                    edgecolors=colour,
                    linewidths=1.5,
                    zorder=5,
                    label=f"{SERVED_STYLE[name][0]}, via TF's C API (what TF Serving pays)",
                )
        for name, peer in result.get("faiss", {}).items():
            # Per query: the setting matched to the latency-tuned model; per batch: the one matched to the
            # throughput-tuned model (runs before it kept one setting for both).
            point = peer.get("batch_matched") if served_key == "throughput_64" and peer.get("batch_matched") else peer
            if "recall_at_10" in point:
                qps = point[served_key]["qps"]
                ax.scatter(
                    [point["recall_at_10"]],
                    [qps],
                    marker="o",
                    s=90,
                    facecolors="none",
                    edgecolors=SERIES_STYLE[name][1],
                    linewidths=2,
                    zorder=5,
                    label=f"Faiss {name} at matched recall ({point['params_text']})",
                )
                recalls.append(point["recall_at_10"])
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (vs exact search, held-out queries)")
        ax.set_ylabel("queries per second (log)")
        ax.set_title(f"{title}, in-process, {result['machine_cores']} cores")
        ax.grid(True, which="both", alpha=0.3)
        ax.axvline(0.95, color="grey", ls=":", lw=1)
    low = max(0.0, min([r for r in recalls if r >= 0.5] or [0.5]) - 0.03)
    off_chart = [
        f"{SERVED_STYLE[name][0]}: recall {served['recall_at_10']:.2f}, off the chart"
        for name, served in result.get("served", {}).items()
        if name in SERVED_STYLE and served.get("recall_at_10", 1.0) < low
    ]
    for ax in axes:
        ax.set_xlim(low, 1.005)
        if off_chart:
            ax.text(0.02, 0.98, "\n".join(off_chart), transform=ax.transAxes, va="top", fontsize=8, color="tab:red")
    axes[0].legend(fontsize=7.5, loc="lower left")
    fig.suptitle(
        f"{result['dataset']['name']}: recall vs throughput (ScaNN and Faiss curves: Pareto frontiers "
        f"of their sweeps; served points: the exported SavedModels)",
        fontsize=11,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
