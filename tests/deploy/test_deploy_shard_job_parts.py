"""`shard-job --input s3://bucket/prefix/` (model_builder/shard_parts.py): each pod streams a
catalogue exported as part files and keeps only its own rows. Run as the Job's container command
against moto's S3 server: each published shard holds exactly its crc32 rows, the same ids
`build --shards 2 --query-side partitioned` gives from the one-file catalogue, and the two
versions merge to exact search over the whole catalogue (recall 1.0, brute-force shards). Bad
inputs (a replicated or user -> items build, an empty prefix, duplicate ids, mixed dims) fail
before building with one line. Real S3 API (moto), real builds; nothing of ours mocked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from support import ENV, REPO
from support.deploy import aws_env

pytestmark = [pytest.mark.tools]

SHARDS, N, DIM, NAME, VERSION, PARTS = 2, 240, 16, "shp", 3, 3
BUILD = ["--model-name", NAME, "--version", str(VERSION), "--query", "item", "--verify-queries", "100"]


def shard_job(moto: str, *args: str, index: int) -> subprocess.CompletedProcess:
    """The Job's container command for completion index `index`, as the pod runs it."""
    env = {**aws_env(moto), **{k: ENV[k] for k in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}}
    env["JOB_COMPLETION_INDEX"] = str(index)
    command = [sys.executable, "-m", "model_builder", "shard-job", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.fixture
def s3(moto, monkeypatch):
    from pyarrow import fs

    for key, value in aws_env(moto).items():
        monkeypatch.setenv(key, value)
    s3 = fs.S3FileSystem(endpoint_override=moto.split("//")[1], scheme="http", allow_bucket_creation=True)
    s3.create_dir("data")  # the bucket (the job's own filesystem never creates one)
    return s3


def upload(s3, tmp_path, key: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    local = tmp_path / "upload.npz"
    np.savez(local, ids=ids, vectors=vectors)
    with s3.open_output_stream(f"data/{key}") as out:
        out.write(local.read_bytes())


def download_version(s3, tmp_path, index: int):
    prefix = f"data/models/{NAME}-shard-{index}/{VERSION}"
    with s3.open_input_stream(f"{prefix}.published") as src:
        listed = json.loads(src.read())["files"]
    target = tmp_path / "downloaded" / f"{NAME}-shard-{index}" / str(VERSION)
    for name in listed:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        with s3.open_input_stream(f"{prefix}/{name}") as src:
            (target / name).write_bytes(src.read())
    return target


def stored_ids(version_dir) -> list[str]:
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (registers Scann ops before loading)

    return [i.decode() for i in tf.saved_model.load(str(version_dir)).candidate_ids.numpy().tolist()]


def test_each_pod_keeps_only_its_rows_of_the_parts_and_the_shards_merge_to_exact_search(s3, moto, tmp_path):
    from model_builder.build_config import BuildConfig
    from model_builder.data.synthetic import clustered_embeddings
    from model_builder.export.version_store import read_build_info
    from model_builder.index.config import IndexConfig
    from model_builder.sharded_verify import merged_check
    from model_builder.sharding import SHARD_HASH, build_sharded, shard_of
    from model_builder.towers.prepare import prepare_imported
    from model_builder.towers.training import TrainConfig

    ids = np.array([f"sku-{i}" for i in range(N)])
    vectors = clustered_embeddings(N, DIM, seed=3)
    bounds = [0, 70, 160, N]  # uneven parts, as an export writes them
    for p in range(PARTS):
        upload(
            s3, tmp_path, f"parts/part-{p:05d}.npz", ids[bounds[p] : bounds[p + 1]], vectors[bounds[p] : bounds[p + 1]]
        )
    with s3.open_output_stream("data/parts/_SUCCESS") as out:  # Spark's marker: not a part
        out.write(b"")

    homes = shard_of(ids, SHARDS)
    flags = ["--input", "s3://data/parts/", "--output", "s3://data/models", "--shards", str(SHARDS)]
    dirs = []
    with ThreadPoolExecutor(SHARDS) as pool:  # the pods run side by side, as the Job's parallelism runs them
        procs = list(
            pool.map(
                lambda i: shard_job(moto, *flags, "--", *BUILD, "--query-side", "partitioned", index=i), range(SHARDS)
            )
        )
    for index, proc in enumerate(procs):
        assert proc.returncode == 0, proc.stderr[-3000:]
        for p in range(PARTS):
            kept = int((homes[bounds[p] : bounds[p + 1]] == index).sum())
            line = f"shard-job: part {p + 1}/{PARTS} s3://data/parts/part-{p:05d}.npz: kept {kept} of {bounds[p + 1] - bounds[p]} rows"
            assert line in proc.stdout.splitlines(), proc.stdout[-3000:]
        dirs.append(download_version(s3, tmp_path, index))
        info = read_build_info(dirs[-1])
        assert info["verification"]["passed"], info["verification"]
        expected = {"shard": index, "shards": SHARDS, "hash": SHARD_HASH, "candidates": int((homes == index).sum())}
        assert info["data"]["sharding"] == {**expected, "query_side": "partitioned", "total_candidates": N}
        assert stored_ids(dirs[-1]) == ids[homes == index].tolist()  # exactly its crc32 rows, in part order

    local = tmp_path / "items.npz"
    np.savez(local, ids=ids, vectors=vectors)
    cfg = BuildConfig(
        candidates=str(local), query="item", shards=SHARDS, model_name=NAME, query_side="partitioned",
        out=str(tmp_path / "one-file"), verify_queries=100,
    )  # fmt: skip
    whole = build_sharded(cfg, TrainConfig(), IndexConfig(), lambda _: None)
    assert [stored_ids(d) for d in whole.version_dirs] == [stored_ids(d) for d in dirs]

    merged = merged_check(dirs, prepare_imported(cfg, lambda _: None), cfg.k, 100, cfg.target_recall, "partitioned")
    assert merged["passed"] and merged["recall_at_k"]["serving_default"] == 1.0, merged


def test_an_empty_prefix_exits_2_with_one_line(s3, moto, tmp_path):
    # One real process (~6 s: the CLI's parser imports TensorFlow); the other refusals raise the
    # same kind of ConfigError in-process below, which main() prints the same way.
    with s3.open_output_stream("data/empty/_SUCCESS") as out:
        out.write(b"")
    flags = ["--input", "s3://data/empty/", "--output", "s3://data/models", "--shards", str(SHARDS)]
    proc = shard_job(moto, *flags, "--", *BUILD, "--query-side", "partitioned", index=0)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--input s3://data/empty/ holds no .npz parts: upload the parts" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "changes, says",
    [
        ({}, "a replicated shard needs every item as a query: add --query-side partitioned"),
        ({"query": "user", "query_side": "partitioned"}, "a user -> items shard needs the query side"),
    ],
)
def test_a_build_that_needs_other_shards_rows_is_refused_before_any_work(tmp_path, changes, says):
    from model_builder.build_config import BuildConfig
    from model_builder.errors import ConfigError
    from model_builder.shard_job import S3Location, ShardJob, run

    job = ShardJob(S3Location("data", "parts"), S3Location("data", "models"), SHARDS, 0, tmp_path, parts=True)
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        run(job, BuildConfig(**{"model_name": NAME, "query": "item", "version": VERSION, **changes}), None, None)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value) and not any(tmp_path.iterdir())
    assert str(caught.value).startswith("--input s3://data/parts/ (a prefix of parts)")


@pytest.mark.parametrize(
    "second, says",
    [
        ("duplicate", r"id 'sku-\d+' appears 2 times \(in s3://data/bad/a\.npz, s3://data/bad/b\.npz\)"),
        ("dims", r"s3://data/bad/b\.npz: 8-dim vectors but the earlier parts hold 16"),
    ],
)
def test_parts_that_do_not_make_one_catalogue_are_a_data_error_before_building(s3, tmp_path, second, says):
    from model_builder.build_config import BuildConfig
    from model_builder.errors import DataError
    from model_builder.index.config import IndexConfig
    from model_builder.shard_job import S3Location, ShardJob, run

    rng = np.random.default_rng(0)
    ids = np.array([f"sku-{i}" for i in range(40)])
    upload(s3, tmp_path, "bad/a.npz", ids[:30], rng.normal(size=(30, DIM)))
    if second == "duplicate":  # every id once more: whichever shard a copy lands in sees both
        upload(s3, tmp_path, "bad/b.npz", ids, rng.normal(size=(40, DIM)))
    else:
        upload(s3, tmp_path, "bad/b.npz", ids[30:], rng.normal(size=(10, 8)))
    job = ShardJob(S3Location("data", "bad"), S3Location("data", "models"), SHARDS, 0, tmp_path, parts=True)
    cfg = BuildConfig(model_name=NAME, query="item", version=VERSION, query_side="partitioned")
    with pytest.raises(DataError, match=says) as caught:
        run(job, cfg, None, IndexConfig())
    assert caught.value.exit_code == 2 and not any(tmp_path.glob("shard-job-*"))
