"""`shard-job`: one shard of `build --shards K`, as one pod of a Kubernetes Indexed Job.

The pod's JOB_COMPLETION_INDEX is the shard (batch/v1 Job, completionMode: Indexed). It downloads
the imported candidates (.npz) from object storage into scratch space, builds shard i through the
same path `build --shards K` takes (sharding.build_shard: same crc32 partition, same gates), and
uploads the published version to OUT/<name>-shard-<i>/<version>/, then the marker object
OUT/<name>-shard-<i>/<version>.published last: S3 has no rename, so a reader (the per-shard image
build) takes a version only once its marker exists, and never sees half of one.

Object storage goes through pyarrow.fs.S3FileSystem: pyarrow is already pinned in the build
environment (requirements/build.in), so the builder image needs no new dependency; it reads
credentials through the AWS SDK's default chain (IRSA's web identity token on EKS) and
AWS_ENDPOINT_URL for S3-compatible stores (moto in tests/model/test_shard_job.py).

--input s3://bucket/prefix/ (ending in /) names a folder of part files (*.npz, a Spark/Beam
export): with --query-side partitioned and --query item the pod streams them one at a time and
keeps only its own rows (shard_parts.py), so it holds 1/K of the catalogue plus one part instead
of all of it.

Only imported candidates: K pods training their own towers would give K different query sides,
so train once (or export embeddings) and shard the result. --version is required: K pods cannot
agree on "one above the highest" without talking to each other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from model_builder.build_config import BuildConfig
from model_builder.errors import ConfigError
from model_builder.sharding import build_home_shard, build_shard, check_names, partition, shard_name
from model_builder.towers.prepare import Log


@dataclass(frozen=True)
class S3Location:
    """bucket/key of an s3:// URL, in the form pyarrow.fs paths take."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str, flag: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"{flag} {url!r} is not an s3://bucket/key URL")
        return cls(parsed.netloc, parsed.path.strip("/"))

    def child(self, *parts: str) -> S3Location:
        return S3Location(self.bucket, "/".join(p for p in (self.key, *parts) if p))

    @property
    def path(self) -> str:
        return f"{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ShardJob:
    """One pod's work: which shard of how many, from where, to where."""

    input: S3Location
    output: S3Location
    shards: int
    index: int
    scratch: Path
    # --input ended in "/": a prefix of part files, streamed (shard_parts.py), not one object.
    parts: bool = False


def filesystem():
    """S3 through the AWS SDK's default credential chain; AWS_ENDPOINT_URL for S3-compatible stores."""
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return fs.S3FileSystem(**kwargs)


def _download(s3, source: S3Location, target: Path) -> None:
    from pyarrow import fs

    if s3.get_file_info(source.path).type != fs.FileType.File:
        raise ConfigError(
            f"--input s3://{source.path} does not exist (or is not an object): upload the candidates first"
        )
    with s3.open_input_stream(source.path) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def _refuse_published(s3, target: S3Location) -> S3Location:
    """target's marker location; ConfigError when it exists (a published version is never overwritten)."""
    from pyarrow import fs

    marker = S3Location(target.bucket, f"{target.key}.published")
    if s3.get_file_info(marker.path).type != fs.FileType.NotFound:
        raise ConfigError(f"s3://{marker.path} exists: versions are never overwritten, use another --version")
    return marker


def upload_version(s3, version_dir: Path, target: S3Location, log: Log = print) -> S3Location:
    """Every file of version_dir under target/, then target.published (its file list) last."""

    marker = _refuse_published(s3, target)
    files = sorted(p for p in version_dir.rglob("*") if p.is_file())
    for path in files:
        with (
            path.open("rb") as src,
            s3.open_output_stream(target.child(path.relative_to(version_dir).as_posix()).path) as dst,
        ):
            shutil.copyfileobj(src, dst)
    body = {"files": [p.relative_to(version_dir).as_posix() for p in files], "upload": uuid.uuid4().hex}
    with s3.open_output_stream(marker.path) as dst:
        dst.write(json.dumps(body).encode())
    log(f"shard-job: uploaded {len(files)} files to s3://{target.path}/, then s3://{marker.path}")
    return marker


def run(job: ShardJob, cfg: BuildConfig, train_cfg, index_cfg, log: Log = print) -> S3Location:
    """Downloads the candidates, builds shard job.index of job.shards, uploads it; the marker's location."""
    from model_builder.towers.prepare import prepare_imported

    if not 0 <= job.index < job.shards:
        raise ConfigError(f"--shard-index {job.index} is not in 0..{job.shards - 1} (--shards {job.shards})")
    if cfg.version is None:
        raise ConfigError("shard-job needs --version in the build arguments: every shard's pod must publish one number")
    if cfg.candidates or cfg.dataset != BuildConfig.dataset:
        raise ConfigError(
            "shard-job takes the candidates from --input: drop --candidates/--dataset from the build arguments"
        )
    if job.parts:
        _refuse_parts(job, cfg)
    s3 = filesystem()
    target = job.output.child(shard_name(cfg.model_name, job.index), str(cfg.version))
    _refuse_published(s3, target)  # before the build, not only before the upload
    work = Path(tempfile.mkdtemp(prefix="shard-job-", dir=job.scratch))
    try:
        local = work / "candidates.npz"
        cfg = replace(cfg, candidates=str(local), out=str(work / "models"), shards=job.shards)
        cfg.validate()
        index_cfg.validate()
        check_names(cfg.model_name, cfg.shards)
        if job.parts:
            version_dir = _build_from_parts(s3, job, cfg, train_cfg, index_cfg, work, log)
        else:
            _download(s3, job.input, local)
            prepared = prepare_imported(cfg, log)
            shards, _ = partition(cfg, prepared, log)
            version_dir = build_shard(cfg, train_cfg, index_cfg, prepared, shards, job.index, cfg.version, log)
        return upload_version(s3, version_dir, target, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _refuse_parts(job: ShardJob, cfg: BuildConfig) -> None:
    """A prefix of parts streams only this shard's items: only a partitioned item shard needs no more."""
    where = f"--input s3://{job.input.path.rstrip('/')}/ (a prefix of parts)"
    if cfg.query != "item":
        raise ConfigError(
            f"{where} keeps only this shard's candidates, but a user -> items shard needs the query side: "
            "pass one .npz object as --input"
        )
    if cfg.query_side != "partitioned":
        raise ConfigError(
            f"{where} keeps only this shard's items, but a replicated shard needs every item as a query: "
            "add --query-side partitioned to the build arguments, or pass one .npz object as --input"
        )


def _build_from_parts(s3, job: ShardJob, cfg: BuildConfig, train_cfg, index_cfg, work: Path, log: Log) -> Path:
    """Streams this shard's rows out of the parts (shard_parts.py) and builds the shard from them alone."""
    from model_builder.shard_parts import list_parts, stream_home_rows

    parts = list_parts(s3, job.input.bucket, job.input.key)
    home = stream_home_rows(s3, parts, job.shards, job.index, work, log)
    return build_home_shard(cfg, train_cfg, index_cfg, home.prepared, job.index, cfg.version, home.total_rows, log)


__all__ = ["S3Location", "ShardJob", "filesystem", "run", "upload_version"]
