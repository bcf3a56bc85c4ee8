"""The run: datasets -> real builds -> in-process figures -> Faiss peers -> e2e, knobs, cold start -> results."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks import (
    builds,
    datasets,
    e2e,
    faiss_index,
    filtered_report,
    knobs,
    plots,
    report,
    scheduler_cxx,
    scheduler_grid,
    timing,
)
from benchmarks.common import load_average, log, machine, run_worker, versions, write_json
from benchmarks.profiles import DatasetSpec, Profile
from model_builder.serve import process

K = 10


def load(spec: DatasetSpec, profile: Profile, work: Path) -> datasets.Dataset:
    """Loads (or generates, or trains) one dataset of the profile."""
    if spec.kind == "synthetic":
        return datasets.synthetic(spec.num, spec.dim, spec.validation, spec.test)
    if spec.kind == "fashion-mnist":
        return datasets.fashion_mnist(spec.validation, spec.test, limit=spec.num or None)
    if spec.kind == "wordnet-minilm":
        return datasets.wordnet_minilm(spec.validation, spec.test, spec.num or None, work / "wordnet-minilm")
    folder = datasets.train_movielens(work / "movielens-embeddings", list(profile.movielens_train_args))
    ml = datasets.movielens(folder)
    if spec.kind == "movielens":
        return ml
    if spec.kind == "movielens-noisy":
        return datasets.replicate_with_noise(ml, spec.num)
    raise ValueError(f"unknown dataset kind {spec.kind}")


def _worker_args(profile: Profile) -> list[str]:
    return [
        "--latency-queries",
        str(profile.latency_queries),
        "--latency-max-s",
        str(profile.latency_max_s),
        "--throughput-s",
        str(profile.throughput_s),
        "--throughput-batches",
        str(profile.throughput_batches),
        "--sweep-latency-queries",
        str(profile.sweep_latency_queries),
        "--sweep-max-s",
        str(profile.sweep_max_s),
    ]


def measure_served(built: builds.Built, paths: dict, profile: Profile, logs: Path, headline: bool) -> dict:
    """Build figures plus the in-process signature figures of one published version."""
    out = built.to_dict()
    if not built.ok:
        return out
    args = [
        "savedmodel",
        "--version-dir",
        str(built.version_dir),
        "--candidates",
        str(paths["candidates"]),
        "--test",
        str(paths["test"]),
        *_worker_args(profile),
    ]
    if built.config == "tuned":
        args.append("--sweep")
        if headline:
            args += ["--batch-sizes", ",".join(map(str, profile.batch_sizes))]
    log(f"measure {built.config}: signature search_by_vector in a fresh process")
    out.update(run_worker(args, f"measure {built.config}", 1800, logs / "workers.log"))
    log(
        f"measure {built.config}: recall {out['recall_at_10']}, p50 {out['latency_1']['p50_ms']} ms, "
        f"p99 {out['latency_1']['p99_ms']} ms, batch-64 {out['throughput_64']['qps']} QPS, RSS {out['rss_serving_mb']} MB"
    )
    return out


def measure_faiss(
    kind: str, paths: dict, target: float, batch_target: float, profile: Profile, work: Path, logs: Path
) -> dict:
    """Builds one Faiss index in a fresh process, then measures it in another: one query per call at the
    `target` recall, batches of 64 at the `batch_target` recall."""
    index = work / f"{kind}.faiss"
    log(f"faiss {kind}: building")
    built = run_worker(
        [
            "faiss-build",
            "--kind",
            kind,
            "--candidates",
            str(paths["candidates"]),
            "--index",
            str(index),
            "--hnsw-m",
            str(profile.hnsw_m),
        ],
        f"faiss-build {kind}",
        3600,
        logs / "workers.log",
    )
    log(f"faiss {kind}: {built['factory']} built in {built['build_s']} s; sweeping for recall >= {target}")
    measured = run_worker(
        [
            "faiss-measure",
            "--kind",
            kind,
            "--index",
            str(index),
            "--candidates",
            str(paths["candidates"]),
            "--test",
            str(paths["test"]),
            "--target-recall",
            str(target),
            "--batch-target-recall",
            str(batch_target),
            *_worker_args(profile),
        ],
        f"faiss-measure {kind}",
        1800,
        logs / "workers.log",
    )
    out = {**built, **measured, "index_path": str(index), "params_text": faiss_index.describe(measured["params"])}
    batch = out["batch_matched"]
    log(
        f"faiss {kind}: {out['params_text']} recall {out['recall_at_10']}, p50 {out['latency_1']['p50_ms']} ms; "
        f"batches: {batch['params_text']} recall {batch['recall_at_10']}, {batch['throughput_64']['qps']} QPS"
    )
    return out


def run_dataset(ds: datasets.Dataset, spec: DatasetSpec, profile: Profile, work: Path) -> dict:
    """Every configuration of one dataset, built and measured in-process."""
    started = time.perf_counter()
    shutil.rmtree(work / "models", ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    paths = datasets.write_inputs(ds, work / "data", K)
    built = builds.build_all(paths, work / "models", profile.build_timeout_s, logs, profile.build_flags)
    served = {name: measure_served(b, paths, profile, logs, spec.headline) for name, b in built.items()}
    tuned = served.get("tuned", {})
    target = tuned.get("recall_at_10", 0.95)
    batch_target = served.get("tuned_throughput", {}).get("recall_at_10", target)
    peers = {
        kind: measure_faiss(kind, paths, target, batch_target, profile, work, logs) for kind in profile.faiss_kinds
    }
    curves = {kind: peer["sweep"] for kind, peer in peers.items()}
    if tuned.get("scann_sweep"):
        curves = {"scann": tuned["scann_sweep"], **curves}
    return {
        "dataset": ds.describe(),
        "headline": spec.headline,
        "served": served,
        "faiss": peers,
        "curves": curves,
        "ratios": report.inprocess_ratios(served, peers),
        "paths": {k: str(v) for k, v in paths.items()},
        "models": str(work / "models"),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": load_average(),
        "machine_cores": machine()["cores"],
    }


def run_serving(result: dict, profile: Profile, work: Path) -> dict:
    """Headline dataset over loopback: thread knobs, e2e vs FastAPI + Faiss, exact e2e, cold start."""
    if "tuned" not in result["served"] or not result["served"]["tuned"].get("ok"):
        return {"skipped": "no tuned model was published"}
    models, logs = Path(result["models"]), work / "logs"
    with np.load(result["paths"]["test"]) as t:
        test, kth = t["vectors"], t["kth"]
    with np.load(result["paths"]["candidates"]) as c:
        base = c["vectors"]
    log("knobs: TF thread pools through the local server")
    threads = knobs.measure_threads(models, "tuned", test, profile, logs)
    chosen = knobs.thread_flags(threads["chosen"]["intra_op"], threads["chosen"]["inter_op"])
    curve = result["served"]["tuned"].get("batch_curve")
    advice = knobs.batching_advice(curve, machine()["cores"], report.TARGET_E2E_P99_MS) if curve else None
    cfg = profile.e2e_config()
    # As the image runs it: TF Serving's batching with the shipped batching file (issue 10); the
    # same server without batching is measured beside it.
    log("e2e: exact model through the local server (single client, batching on)")
    with e2e.local_server(models, "exact", logs / "server-exact.log", chosen, batching=True) as server:
        exact = timing.latency(e2e.make_search(server.spec), test, profile.exact_e2e_requests, profile.e2e_max_s)
    log(
        f"e2e: our client -> local server ({' '.join(chosen)}, batching on and off) vs JSON client -> FastAPI + Faiss, "
        "taking turns"
    )
    with contextlib.ExitStack() as stack:
        servers = {
            "ours": stack.enter_context(
                e2e.local_server(models, "tuned", logs / "server-e2e.log", chosen, batching=True)
            ),
            "ours_unbatched": stack.enter_context(
                e2e.local_server(models, "tuned", logs / "server-e2e-unbatched.log", chosen, batching=False)
            ),
        }
        for kind, peer in result["faiss"].items():
            servers[kind] = stack.enter_context(
                e2e.faiss_service(Path(peer["index_path"]), peer["params_text"], logs / f"faiss-service-{kind}.log")
            )
        measured = e2e.measure_servers(servers, test, kth, base, cfg)
    ours = measured.pop("ours")
    unbatched = measured.pop("ours_unbatched")
    theirs = {kind: {**m, "params": result["faiss"][kind]["params_text"]} for kind, m in measured.items()}
    log("cold start: first request after AVAILABLE, with and without the warmup file")
    cold = {
        "warmup_on": knobs.cold_start(
            models, "tuned", test, profile.coldstart_requests, logs, True, chosen, repeats=profile.coldstart_repeats
        ),
        "warmup_off": knobs.cold_start(models, "tuned", test, profile.coldstart_requests, logs, False, chosen),
    }
    return {
        "dataset": result["dataset"]["name"],
        "threads": threads,
        "batching": advice,
        "e2e": {
            "ours": ours,
            "ours_unbatched": unbatched,
            "exact_single_client": exact,
            "fastapi_faiss": theirs,
            "config": cfg,
            "server_flags": [*chosen, *process.BATCHING_FLAGS],
        },
        "cold_start": cold,
        "load_average": load_average(),
    }


def run_scheduler(result: dict, profile: Profile, work: Path) -> dict:
    """Headline dataset's tuned model: the batch scheduler table (C++ when $TFS_BATCHING_HARNESS names a harness)."""
    tuned = result["served"].get("tuned", {})
    if not tuned.get("ok"):
        return {"skipped": "no tuned model was published"}
    paths = result["paths"]
    return scheduler_cxx.run(
        Path(tuned["version_dir"]),
        Path(paths["test"]),
        scheduler_grid.GRIDS[profile.scheduler_grid],
        scheduler_cxx.harness_binary(),
        f"{result['dataset']['name']}, tuned",
        candidates=Path(paths["candidates"]) if profile.scheduler_peers else None,
        work=work / "concurrency",
    )


def run(profile: Profile, out: Path, work: Path) -> dict:
    """The whole profile; writes <dataset>.json, serving.json, summary.json, PNGs and report.md into `out`."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    meta = {
        "profile": profile.to_dict(),
        "machine": machine(),
        "versions": versions(),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    log(f"profile {profile.name}: {len(profile.datasets)} dataset(s); results -> {out}, work files -> {work}")
    log(f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, load {meta['machine']['load_average']}")
    results, serving = {}, None
    for spec in profile.datasets:
        ds = load(spec, profile, work)
        log(f"dataset {ds.name}: base {ds.base.shape}, {len(ds.validation)} validation + {len(ds.test)} test queries")
        result = run_dataset(ds, spec, profile, work / ds.name)
        results[ds.name] = result
        write_json(out / f"{ds.name}.json", {**meta, **result})
        plots.recall_qps_png(result, out / f"recall_qps_{ds.name}.png")
        log(f"dataset {ds.name}: done in {result['seconds']:.0f} s -> {out / (ds.name + '.json')}")
        if spec.headline and serving is None:
            serving = run_serving(result, profile, work / ds.name)
            write_json(out / "serving.json", {**meta, **serving})
            scheduler = run_scheduler(result, profile, work / ds.name)
            write_json(out / "scheduler_cxx.json", {**meta, **scheduler})
    meta["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = load_average()
    summary = report.summary(results, serving or {}, meta)
    summary["overhead_breakdown"] = report.overhead_breakdown(out / "overhead.json")
    summary["scheduler_cxx"] = scheduler_cxx.summary_of(out / "scheduler_cxx.json")
    # Filtered search is measured apart (python -m benchmarks.filtered, run by `make bench` first).
    summary["filtered"] = filtered_report.summary_of(out)
    filtered_report.png(out)
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report.markdown(results, serving or {}, summary))
    log(f"done in {meta['seconds'] / 60:.1f} min: {out / 'summary.json'}, {out / 'report.md'}")
    return summary


def rerender(out: Path) -> dict:
    """Recomputes everything derived (ratios, batching advice, summary.json, report.md, PNGs) from a run's JSON.

    Nothing is measured again: use it after changing how results are summarized or drawn.
    """
    import json

    results, meta = {}, {}
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        if "served" in data:
            meta = {key: data[key] for key in ("profile", "machine", "versions", "started_at") if key in data}
            data["ratios"] = report.inprocess_ratios(data["served"], data["faiss"])
            results[data["dataset"]["name"]] = data
            write_json(path, data)
            plots.recall_qps_png(data, out / f"recall_qps_{data['dataset']['name']}.png")
    if not results:
        raise FileNotFoundError(f"{out}: no dataset results (*.json with 'served') to render")
    serving = json.loads((out / "serving.json").read_text()) if (out / "serving.json").is_file() else {}
    head = next((r for r in results.values() if r["headline"]), None)
    curve = head and head["served"].get("tuned", {}).get("batch_curve")
    if serving and curve:
        serving["batching"] = knobs.batching_advice(curve, serving["machine"]["cores"], report.TARGET_E2E_P99_MS)
        write_json(out / "serving.json", serving)
    previous = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    meta.update({"seconds": previous.get("run_seconds"), "load_average_end": previous.get("load_average_end")})
    summary = report.summary(results, serving, meta)
    summary["overhead_breakdown"] = report.overhead_breakdown(out / "overhead.json")
    # A scheduler table measured apart from the run (python -m benchmarks.scheduler_cxx) is kept as it was.
    own = (out / "scheduler_cxx.json").is_file() or "scheduler_cxx" not in previous
    summary["scheduler_cxx"] = (
        scheduler_cxx.summary_of(out / "scheduler_cxx.json") if own else previous["scheduler_cxx"]
    )
    summary["filtered"] = filtered_report.summary_of(out)
    filtered_report.png(out)
    write_json(out / "summary.json", summary)
    (out / "report.md").write_text(report.markdown(results, serving, summary))
    log(f"re-rendered {out / 'summary.json'}, {out / 'report.md'} and {len(results)} chart(s)")
    return summary
