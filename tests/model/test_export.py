"""Export: TF Serving layout, immutable numbered versions, atomic publication, concurrent builds."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import support
from model_builder.data.synthetic import clustered_embeddings
from model_builder.errors import ExportError
from model_builder.export import version_store, warmup


@pytest.fixture(scope="module")
def candidates_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cands") / "items.npz"
    np.savez(path, ids=np.array([f"sku-{i}" for i in range(3000)]), vectors=clustered_embeddings(3000, 16, seed=3))
    return path


def _build_args(candidates_file: Path) -> list[str]:
    return ["--candidates", str(candidates_file), "--query", "item", "--verify-queries", "100"]


def test_tf_serving_layout_and_build_info(synthetic_model):
    version_dir = synthetic_model
    assert version_dir.name.isdigit() and version_dir.parent.name == "synthetic"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert (version_dir / warmup.WARMUP_FILE).is_file()
    info = version_store.read_build_info(version_dir)
    assert info["versions"]["tensorflow"] == "2.20.0" and info["versions"]["scann"] == "1.4.2"
    assert info["index"]["algorithm"] == "brute_force" and info["serving"]["k"] == 10
    assert info["data"]["users"] == 300 and info["verification"]["passed"] is True
    assert set(info["training"]["two_tower"]) >= {"hit_rate@10", "recall@10", "hit_rate@100", "recall@100"}
    assert len(info["git_commit"]) == 40 or info["git_commit"] == "unknown"
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".tmp-")]


def test_next_version_is_max_plus_one_and_existing_is_never_overwritten(tmp_path, candidates_file):
    model_dir = tmp_path / "scann_model"
    (model_dir / "7").mkdir(parents=True)
    (model_dir / "7" / "marker").write_text("keep me")
    (model_dir / "not-a-version").mkdir()
    built = support.build(tmp_path, *_build_args(candidates_file))
    assert built.name == "8"
    proc = support.run_cli("build", "--out", str(tmp_path), "--version", "7", *_build_args(candidates_file))
    assert proc.returncode == 2 and "already exists: versions are immutable" in proc.stderr
    assert (model_dir / "7" / "marker").read_text() == "keep me"
    assert version_store.versions(model_dir) == [7, 8]


def test_publish_removes_the_temp_folder_when_the_check_fails(tmp_path):
    def write(tmp: Path, version: int) -> None:
        (tmp / "saved_model.pb").write_bytes(b"x")

    def check(tmp: Path) -> None:
        raise ExportError("check failed on purpose")

    with pytest.raises(ExportError, match="on purpose"):
        version_store.publish(tmp_path, "m", None, write, check)
    assert [p.name for p in (tmp_path / "m").iterdir() if not p.name.startswith(".build")] == []


def test_publish_never_reads_another_builds_temp_folder(tmp_path):
    # Another live build's temp folder whose files vanish mid-walk (here: a dangling link, as
    # when that build renames its folder into place) must not fail this build's publication.
    other = tmp_path / "m" / f".tmp-v7-pid{os.getppid()}"
    other.mkdir(parents=True)
    (other / "saved_model.pb").symlink_to(tmp_path / "renamed-away")

    def write(tmp: Path, version: int) -> None:
        (tmp / "saved_model.pb").write_bytes(b"x")

    final = version_store.publish(tmp_path, "m", None, write, lambda tmp: None)
    assert final.name == "8" and (final / "saved_model.pb").read_bytes() == b"x"
    assert other.is_dir(), "a live build's temp folder was swept"


def _running_build(out: Path, candidates_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "model_builder", "build", "--out", str(out), *_build_args(candidates_file)],
        env=support.ENV,
        cwd=support.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_export_never_leaves_a_version_folder(tmp_path, candidates_file):
    model_dir = tmp_path / "scann_model"
    rng = random.Random(7)
    for attempt in range(3):
        proc = _running_build(tmp_path, candidates_file)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            model_dir.is_dir() and any(p.name.startswith(".tmp-") for p in model_dir.iterdir())
        ):
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before the export started"
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside save / warmup / verification
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert version_store.versions(model_dir) == [], (
            f"attempt {attempt}: a version folder was published by a killed build"
        )
    # The next build sweeps the dead builds' temp folders and publishes version 1.
    assert support.build(tmp_path, *_build_args(candidates_file)).name == "1"
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_concurrent_builds_get_distinct_complete_versions(tmp_path, candidates_file):
    procs = [_running_build(tmp_path, candidates_file) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    versions = sorted(json.loads(o.strip().splitlines()[-1])["version"] for o in outputs)
    assert versions == [1, 2]
    for v in versions:
        assert support.run_cli("verify", str(tmp_path / "scann_model" / str(v)), "--queries", "50").returncode == 0


def test_out_path_that_cannot_be_written_is_a_clear_error(tmp_path, candidates_file):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = support.run_cli("build", "--out", str(blocker), *_build_args(candidates_file))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and str(blocker) in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_out_of_disk_space_leaves_nothing_half_written(tmp_path, candidates_file):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        proc = support.run_cli("build", "--out", str(mount), *_build_args(candidates_file))
        assert proc.returncode == 2, proc.stderr
        assert "no space left on device" in proc.stderr.strip().splitlines()[-1]
        model_dir = mount / "scann_model"
        assert version_store.versions(model_dir) == [] and not [
            p for p in model_dir.iterdir() if p.name.startswith(".tmp-")
        ]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
