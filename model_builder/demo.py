"""`make demo`: MovieLens 100K -> two verified models -> local gRPC servers -> queries through the client CLI.

Trains the feature towers once, publishes a user -> movies model and a movie ->
similar movies model, starts one local server per model (the same gRPC API as
TF Serving, batching with the image's batching file as production does), waits
until AVAILABLE, asks for recommendations with the `retrieval-client` CLI (a
known user, a movie, and a brand-new user described only by features) and prints
them with their titles, then the cold-start quality table, then stops the servers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from model_builder import settings
from model_builder.errors import BuilderError, ConfigError
from model_builder.serve import process

SAMPLE_USER = 1
SAMPLE_MOVIE = 50  # Star Wars (1977): a title most readers can judge similar movies for
# A user who is not in MovieLens, described only by the features a sign-up form would ask for
# (no id: the client sends the padding id, which no feature model knows).
NEW_USER = {"age": 25, "gender": "F", "occupation": "writer", "zip_code": "10025"}


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _client_cli() -> list[str]:
    exe = shutil.which("retrieval-client", path=str(Path(sys.executable).parent))
    if exe is None:
        raise ConfigError(
            "the retrieval-client CLI is not installed in this venv: pip install -e ./client (make venv does it)"
        )
    return [exe]


def _cli(*args: str) -> dict | list:
    proc = subprocess.run([*_client_cli(), *args, "--json"], capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise BuilderError(f"retrieval-client {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


# The serving image's batching file: the demo serves as production does (TF Serving --enable_batching).
BATCHING_FILE = settings.IMAGE_BATCHING_FILE


def _start_server(out: Path, name: str, port: int, rest_port: int, log_dir: Path) -> process.ServerProcess:
    if not BATCHING_FILE.is_file():
        raise ConfigError(f"{BATCHING_FILE} not found: run the demo from a checkout of the repository")
    return process.start(out, name, log_dir / f"{name}.server.log", port=port, rest_port=rest_port, batching=True)


def _show(title: str, ids: list, scores: list, titles: dict) -> None:
    print(title)
    for rank, (item, score) in enumerate(zip(ids, scores), 1):
        print(f"  {rank:2}. {titles.get(int(item), item)}  (score {score:.3f})")


def _filtered_query(args: argparse.Namespace, titles: dict, items, has: set[int]) -> None:
    """One filtered query (signature search_filtered): only comedies released in 1990 or later.

    `items` is the dataset's item FeatureTable: the answer is checked against u.item, not trusted.
    """
    flags = ["--allow", "genre=Comedy", "--where", "year=1990:"]
    target = ["--target", f"127.0.0.1:{args.port}", "--model", args.model_name]
    rec = _cli("search", *target, "--id", str(SAMPLE_USER), "-k", "10", *flags)
    ids = [int(i) for i in rec["results"][0]["ids"]]
    _show(
        f"\nTop-10 comedies from 1990 on for user {SAMPLE_USER} (retrieval-client search {' '.join(flags)}):",
        ids,
        rec["results"][0]["scores"],
        titles,
    )
    columns = {c.name: c.values for c in items.columns}
    row = {int(i): r for r, i in enumerate(items.ids.tolist())}
    passing = [i for i in ids if "Comedy" in columns["genres"][row[i]] and columns["release_year"][row[i]] >= 1990]
    print(
        f"  ({len(passing)} of {len(ids)} are comedies from 1990 on by u.item; "
        f"{len(has & set(ids))} rated by user {SAMPLE_USER})"
    )


def _build_models(args: argparse.Namespace):
    from model_builder.build_config import BuildConfig
    from model_builder.index.config import IndexConfig
    from model_builder.pipeline import build, prepare_trained
    from model_builder.towers.training import TrainConfig

    # Per-request filters on the user model: genres and release year from u.item (search_filtered).
    users_cfg = BuildConfig(
        dataset="movielens-100k",
        out=str(args.out),
        model_name=args.model_name,
        item_attributes="dataset",
        crowding_attribute="genre",
    )
    items_cfg = BuildConfig(
        dataset="movielens-100k", out=str(args.out), model_name=f"{args.model_name}_items", query="item"
    )
    _banner("1/4 train the two towers on MovieLens 100K")
    prepared = prepare_trained(users_cfg, TrainConfig(), print)
    _banner(f"2/4 index + export + verify: {users_cfg.model_name} (user -> movies)")
    users = build(users_cfg, TrainConfig(), IndexConfig(), print, prepared=prepared)
    _banner(f"2/4 index + export + verify: {items_cfg.model_name} (movie -> similar movies)")
    items = build(items_cfg, TrainConfig(), IndexConfig(), print, prepared=prepared.as_item_to_item())
    return prepared, users, items


def run(args: argparse.Namespace) -> int:
    """The demo; returns 0 when every step worked."""
    from model_builder.data import movielens

    args.out = Path(args.out)
    prepared, users, items = _build_models(args)
    titles = prepared.titles
    q = prepared.quality
    _banner("3/4 serve both models with the local TF-Serving-API server")
    servers = {
        name: _start_server(args.out, name, port, rest, args.out)
        for name, port, rest in (
            (args.model_name, args.port, args.rest_port),
            (f"{args.model_name}_items", args.port + 2, args.rest_port + 2),
        )
    }
    try:
        for name, port in ((args.model_name, args.port), (f"{args.model_name}_items", args.port + 2)):
            status = _cli("wait", "--target", f"127.0.0.1:{port}", "--model", name, "--timeout-s", "120")
            print(f"{name} on 127.0.0.1:{port}: {json.dumps(status)}")
        _banner("4/4 query over gRPC with the retrieval-client CLI")
        movielens_100k = movielens.load_recbole()
        rated, rated_items = movielens_100k.interactions, movielens_100k.item_features
        liked = [
            int(i) for u, i, w in zip(rated.user_ids, rated.item_ids, rated.weights) if u == SAMPLE_USER and w >= 5
        ][:5]
        print(f"user {SAMPLE_USER} rated 5 stars, among others: " + "; ".join(titles.get(i, str(i)) for i in liked))
        rec = _cli(
            "search",
            "--target",
            f"127.0.0.1:{args.port}",
            "--model",
            args.model_name,
            "--id",
            str(SAMPLE_USER),
            "-k",
            "10",
        )
        _show(
            f"\nTop-10 for user {SAMPLE_USER} ({args.model_name}, version {users.info['version']}):",
            rec["results"][0]["ids"],
            rec["results"][0]["scores"],
            titles,
        )
        has = {int(i) for u, i in zip(rated.user_ids, rated.item_ids) if u == SAMPLE_USER}
        again = has & {int(i) for i in rec["results"][0]["ids"]}
        rule = (
            "the model excludes what a user has, build --exclude-seen"
            if users.info["serving"].get("exclude_seen")
            else "built with --no-exclude-seen"
        )
        print(f"  ({len(again)} of the {len(has)} movies user {SAMPLE_USER} rated are in this list: {rule})")
        _filtered_query(args, titles, rated_items, has)
        sim = _cli(
            "search",
            "--target",
            f"127.0.0.1:{args.port + 2}",
            "--model",
            f"{args.model_name}_items",
            "--id",
            str(SAMPLE_MOVIE),
            "-k",
            "10",
        )
        _show(
            f"\nTop-10 similar to '{titles.get(SAMPLE_MOVIE)}' ({args.model_name}_items, version {items.info['version']}):",
            sim["results"][0]["ids"],
            sim["results"][0]["scores"],
            titles,
        )
        if users.info["serving"].get("features"):
            features = [arg for name, value in NEW_USER.items() for arg in ("--feature", f"{name}={value}")]
            new = _cli(
                "search", "--target", f"127.0.0.1:{args.port}", "--model", args.model_name, *features, "-k", "10"
            )
            _show(
                f"\nTop-10 for a brand-new user (no id), described only by features {json.dumps(NEW_USER)} "
                "(signature search_by_features):",
                new["results"][0]["ids"],
                new["results"][0]["scores"],
                titles,
            )
    finally:
        # SIGINT, as Ctrl-C: the servers behave like TF Serving 2.11 in its image, which ignores SIGTERM.
        codes = [server.stop() for server in servers.values()]
    _banner("summary")
    if "cold_start" in q:
        from model_builder.towers.feature_build import quality_table

        print("\n".join(quality_table(q)))
    else:
        for k in (10, 100):
            print(
                f"two-tower hit-rate@{k} {q['two_tower'][f'hit_rate@{k}']:.3f} vs most-popular {q['most_popular'][f'hit_rate@{k}']:.3f}"
            )
    for result in (users, items):
        verification = result.info["verification"]["recall_at_k"]
        print(
            f"{result.version_dir}: index {result.info['index']['algorithm']}, recall@10 vs exact "
            + ", ".join(f"{k} {v:.3f}" for k, v in verification.items())
        )
    # A server ended by SIGINT (as by Ctrl-C) exits with -SIGINT: that is a clean stop here.
    unexpected = [code for code in codes if code not in (0, -signal.SIGINT)]
    state = f"stopped, unexpected exit codes {unexpected}" if unexpected else "stopped"
    print(f"servers {state}; logs in {args.out}/*.server.log")
    print("next: `make test`; serve it yourself with `make serve`; deploy with `make image push deploy` (README.md)")
    return 1 if unexpected else 0
