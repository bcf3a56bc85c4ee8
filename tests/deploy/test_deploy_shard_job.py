"""The Indexed Job's container command (`python -m model_builder shard-job`, one pod per shard) run as
local processes against moto's S3 server: each pod's uploaded version is a shard of `build --shards 2`
(same crc32 partition, its own gate passed, one version number), the two answer together as the
whole catalogue (the merged check `build --shards` runs, recall 1.0 for brute-force shards), a
published version is never overwritten and bad jobs fail before any work (ConfigError: exit 2). The
Job manifest renders and validates. Real S3 API (moto), real builds; nothing of ours mocked."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from support import ENV, REPO
from support.deploy import aws_env

pytestmark = [pytest.mark.tools]

SHARDS, N, DIM, NAME, VERSION = 2, 240, 16, "shj", 7


def shard_job(moto: str, *args: str, index: int) -> subprocess.CompletedProcess:
    """The Job's container command for completion index `index`, as the pod runs it."""
    env = {**aws_env(moto), **{k: ENV[k] for k in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}}
    env["JOB_COMPLETION_INDEX"] = str(index)
    command = [sys.executable, "-m", "model_builder", "shard-job", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_each_pod_publishes_its_shard_and_the_shards_merge_to_exact_search(moto, tmp_path, monkeypatch):
    from pyarrow import fs

    from model_builder.build_config import BuildConfig
    from model_builder.data.synthetic import clustered_embeddings
    from model_builder.errors import ConfigError
    from model_builder.export.version_store import read_build_info
    from model_builder.index.config import IndexConfig
    from model_builder.shard_job import S3Location, ShardJob, run
    from model_builder.sharded_verify import merged_check
    from model_builder.sharding import shard_of
    from model_builder.towers.prepare import prepare_imported

    for key, value in aws_env(moto).items():
        monkeypatch.setenv(key, value)
    s3 = fs.S3FileSystem(endpoint_override=moto.split("//")[1], scheme="http", allow_bucket_creation=True)
    s3.create_dir("data")  # the bucket (the job's own filesystem never creates one)
    ids = np.array([f"sku-{i}" for i in range(N)])
    local = tmp_path / "items.npz"
    np.savez(local, ids=ids, vectors=clustered_embeddings(N, DIM, seed=3))
    with s3.open_output_stream("data/items.npz") as out:
        out.write(local.read_bytes())

    flags = ["--input", "s3://data/items.npz", "--output", "s3://data/models", "--shards", str(SHARDS)]
    build = ["--", "--model-name", NAME, "--version", str(VERSION), "--query", "item", "--verify-queries", "100"]
    # A missing input: in-process (the CLI's exit 2 with one line is checked on a republish below).
    missing = ShardJob(S3Location("data", "nope.npz"), S3Location("data", "models"), SHARDS, 0, tmp_path)
    with pytest.raises(ConfigError, match="s3://data/nope.npz does not exist"):
        run(missing, BuildConfig(model_name=NAME, query="item", version=VERSION), None, IndexConfig())
    for index in range(SHARDS):
        proc = shard_job(moto, *flags, *build, index=index)
        assert proc.returncode == 0, proc.stderr[-3000:]
        marker = f"s3://data/models/{NAME}-shard-{index}/{VERSION}.published"
        assert json.loads(proc.stdout.strip().splitlines()[-1])["published"] == marker

    sizes = np.bincount(shard_of(ids, SHARDS), minlength=SHARDS)
    dirs = []
    for index in range(SHARDS):
        prefix = f"data/models/{NAME}-shard-{index}/{VERSION}"
        with s3.open_input_stream(f"{prefix}.published") as src:
            listed = json.loads(src.read())["files"]
        target = tmp_path / "downloaded" / f"{NAME}-shard-{index}" / str(VERSION)
        for name in listed:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            with s3.open_input_stream(f"{prefix}/{name}") as src:
                (target / name).write_bytes(src.read())
        assert s3.get_file_info(fs.FileSelector(prefix, recursive=True))  # the listed files are all there
        info = read_build_info(target)
        assert info["version"] == VERSION and info["verification"]["passed"], info["verification"]
        assert info["data"]["sharding"] | {"total_candidates": N} == info["data"]["sharding"]
        assert (info["data"]["sharding"]["shard"], info["data"]["sharding"]["candidates"]) == (index, sizes[index])
        dirs.append(target)

    cfg = BuildConfig(candidates=str(local), query="item", shards=SHARDS, model_name=NAME)
    merged = merged_check(dirs, prepare_imported(cfg, lambda _: None), cfg.k, 100, cfg.target_recall)
    cfg = BuildConfig(query="item", model_name=NAME, version=VERSION)
    assert merged["passed"] and merged["recall_at_k"]["serving_default"] == 1.0, merged
    # The same version again: refused before building (in-process; main() prints a ConfigError as
    # its one line with exit 2, tests/model/test_sharding.py checks that path through a real process).
    with pytest.raises(ConfigError, match=f"{NAME}-shard-0/{VERSION}.published exists: versions are never overwritten"):
        run(
            ShardJob(S3Location("data", "items.npz"), S3Location("data", "models"), SHARDS, 0, tmp_path),
            cfg,
            None,
            None,
        )
    assert not any(tmp_path.glob("shard-job-*")), "nothing downloaded or built"


def test_the_indexed_job_renders_validates_and_runs_the_shard_job_command(tmp_path):
    import yaml

    from model_builder.cli import parser
    from support.deploy import tool

    rendered = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / "k8s" / "build-job")], capture_output=True, text=True, check=True
    ).stdout
    path = tmp_path / "build-job.yaml"
    path.write_text(rendered)
    for version in ("1.33.0", "1.37.0"):  # scripts/lint.sh KUBE_VERSIONS
        check = [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(path)]
        proc = subprocess.run(check, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {**aws_env("http://127.0.0.1:9"), "BC_SKIP_MAPPING": "TRUE"}
    checkov = [tool("checkov"), "--quiet", "--compact", "--skip-download", "--framework", "kubernetes"]
    proc = subprocess.run(
        [*checkov, "--skip-check", "CKV_K8S_15", "-f", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:]

    objects = {o["kind"]: o for o in yaml.safe_load_all(rendered)}
    job, pod = objects["Job"]["spec"], objects["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["completionMode"] == "Indexed" and job["backoffLimitPerIndex"] >= 1
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert "eks.amazonaws.com/role-arn" in objects["ServiceAccount"]["metadata"]["annotations"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert not any("AWS_SECRET" in e["name"] or "AWS_ACCESS" in e["name"] for e in container.get("env", []))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts["/scratch"]]
    # The container's args are a shard-job command our CLI accepts, one pod per shard.
    args = parser().parse_args(container["args"])
    assert args.command == "shard-job" and args.scratch == "/scratch" and args.shard_index is None
    assert job["completions"] == job["parallelism"] == args.shards


@pytest.mark.parametrize(
    "index, changes, says",
    [
        (2, {"version": 1}, "--shard-index 2 is not in 0..1"),
        (0, {}, "needs --version"),
        (0, {"version": 1, "dataset": "synthetic"}, "drop --candidates/--dataset"),
    ],
)
def test_a_bad_job_is_a_config_error_before_any_work(tmp_path, index, changes, says):
    from model_builder.build_config import BuildConfig
    from model_builder.errors import ConfigError
    from model_builder.shard_job import S3Location, ShardJob, run

    job = ShardJob(S3Location("data", "in.npz"), S3Location("data", "models"), 2, index, tmp_path)
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        run(job, BuildConfig(model_name=NAME, query="item", **changes), None, None)
    assert caught.value.exit_code == 2 and not any(tmp_path.iterdir())
