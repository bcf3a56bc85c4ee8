"""The serving-rules gate (check-compat, and the build before publishing): what TF Serving 2.11 does with a
version and a batching file. Each broken rule fails with one line naming it (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import support
from model_builder.compat import serving_rules, tfs_config
from model_builder.compat.tfs_batching import BatchingParameters
from model_builder.export import warmup

SHIPPED = sorted((support.REPO / "k8s").rglob("batching_parameters.txt"))
# The image's numbers before issue 10: an idle queue held 100 x 8 = 800 rows of a 1024 limit.
OLD_IMAGE_FILE = """max_batch_size { value: 1024 }
enable_large_batch_splitting { value: true }
max_execution_batch_size { value: 8 }
batch_timeout_micros { value: 400 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


def test_every_shipped_batching_file_holds_a_max_size_request_on_an_idle_queue():
    """TF 2.11 shared_batch_scheduler.h SchedulingCapacityInternal, derived here from each file's own numbers."""
    assert len(SHIPPED) == 3, SHIPPED  # base, dev, prod
    for path in SHIPPED:
        proto = tfs_config.parse("BatchingParameters", path, str(path))
        limit = proto.max_batch_size.value
        size = proto.max_execution_batch_size.value if proto.enable_large_batch_splitting.value else limit
        # An idle queue: one empty open batch, (max_enqueued_batches - 1) batches that may still be started.
        capacity = (proto.max_enqueued_batches.value - 1) * size + (size - 0)
        assert capacity >= limit, f"{path}: an idle queue holds {capacity} rows, max_batch_size is {limit}"
        assert serving_rules.check_batching(BatchingParameters.from_file(path), model_max_batch_size=1024) == [], path


def _check_compat(version_dir: Path, batching: Path | None) -> tuple[int, str, str]:
    args = ["check-compat", str(version_dir)] + (["--batching-parameters", str(batching)] if batching else [])
    proc = support.run_cli(*args)
    return proc.returncode, proc.stdout, proc.stderr


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and stderr.strip().splitlines()[-1] == lines[0], stderr[-2000:]
    return lines[0]


def test_check_compat_passes_our_model_with_each_shipped_file(synthetic_model):
    for path in SHIPPED:
        code, out, err = _check_compat(synthetic_model, path)
        assert code == 0 and "serving rules of TF Serving 2.11 --enable_batching: ok" in out, err[-2000:]


def test_check_compat_fails_on_a_batching_file_whose_capacity_is_below_max_batch_size(synthetic_model, tmp_path):
    (tmp_path / "old.txt").write_text(OLD_IMAGE_FILE)
    code, _, err = _check_compat(synthetic_model, tmp_path / "old.txt")
    line = _one_line_error(err)
    assert (
        code == 2
        and "serving rule 'queue-capacity' (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h)" in line
    )
    assert "an idle queue holds 800 rows" in line and "raise max_enqueued_batches to at least 128" in line, line


class _Unbatchable(tf.Module):
    @tf.function(input_signature=[])
    def examples(self):
        return {"query_ids": tf.constant([1, 2], tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
    def total(self, ids):
        return {"sum": tf.reduce_sum(ids)}  # a scalar: no row per request


def test_check_compat_fails_on_a_signature_without_a_batch_input(tmp_path):
    module = _Unbatchable()
    version = tmp_path / "m" / "1"
    tf.saved_model.save(module, str(version), signatures={"serving_default": module.total, "examples": module.examples})
    code, _, err = _check_compat(version, support.IMAGE_BATCHING_FILE)
    line = _one_line_error(err)
    assert code == 2 and "serving rule 'batchable-signatures' (tensorflow_serving/batching/batching_util.h)" in line, (
        line
    )
    assert "signature 'examples' has no input" in line
    assert "serving rule 'batched-outputs'" in line and "output 'sum' of signature 'serving_default'" in line, line


def _record(signature: str, inputs: dict) -> prediction_log_pb2.PredictionLog:
    from support import harness

    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=harness.predict_request(signature, inputs))
    )


@pytest.mark.parametrize(
    ("records", "rule", "fragment"),
    [
        (
            lambda ids: [_record("serving_default", {"ids": np.repeat(ids, 2000)[:2000]})],
            "warmup-batch",
            "warmup record 0 has 2000 rows; the batcher takes at most 1024",
        ),
        (lambda ids: [_record("serving_default", {"ids": ids[:1]})] * 1001, "warmup-records", "1001 warmup records"),
        (
            lambda ids: [_record("serving_default", {"ids": np.array([1], np.int64)})],
            "warmup-requests",
            "input 'ids' is int64, signature 'serving_default' takes string",
        ),
        (
            lambda ids: [_record("examples", {})],
            "warmup-requests",
            "inputs [] do not match signature 'examples' inputs ['index']",
        ),
        (lambda ids: [_record("nope", {"ids": ids[:1]})], "warmup-requests", 'Serving signature key "nope" not found.'),
    ],
    ids=["above-max-batch-size", "too-many", "wrong-dtype", "no-input", "unknown-signature"],
)
def test_check_compat_fails_on_warmup_records_tf_serving_would_refuse(
    synthetic_model, tmp_path, records, rule, fragment
):
    version = tmp_path / "synthetic" / "1"
    shutil.copytree(synthetic_model, version)
    ids = tf.make_ndarray(warmup.read(version)[0].predict_log.request.inputs["ids"])
    warmup.write(version, records(ids))
    code, _, err = _check_compat(version, support.IMAGE_BATCHING_FILE)
    line = _one_line_error(err)
    assert code == 2 and f"serving rule '{rule}'" in line and fragment in line, line


@pytest.mark.parametrize(
    ("config", "rule", "fragment"),
    [
        (
            "max_batch_size { value: 1024 }\nmax_enqueued_batchs { value: 128 }\n",
            "batching-fields",
            "max_enqueued_batchs",
        ),
        (
            OLD_IMAGE_FILE.replace("100", "128") + "allowed_batch_sizes: 8\nallowed_batch_sizes: 512\n",
            "allowed-batch-sizes",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 512; expected 1024",
        ),
        (
            OLD_IMAGE_FILE.replace("100", "128") + "allowed_batch_sizes: 1024\n",
            "allowed-batch-sizes-padding",
            "every full execution batch (8 rows) is padded to 1024 rows",
        ),
        (
            OLD_IMAGE_FILE.replace("100", "128")
            + "allowed_batch_sizes: 16\nallowed_batch_sizes: 8\nallowed_batch_sizes: 1024\n",
            "allowed-batch-sizes-order",
            "must be positive and increasing",
        ),
        (
            OLD_IMAGE_FILE.replace("100", "128").replace(
                "max_batch_size { value: 1024 }", "max_batch_size { value: 512 }"
            ),
            "model-max-batch-size",
            "the model accepts 1024 rows per request",
        ),
        (
            OLD_IMAGE_FILE.replace("max_execution_batch_size { value: 8 }", "max_execution_batch_size { value: 2048 }"),
            "batching-values",
            "input_batch_size_limit must be greater than or equal to max_execution_batch_size",
        ),
    ],
    ids=[
        "unknown-field",
        "allowed-last",
        "allowed-padding",
        "allowed-order",
        "model-above-file",
        "execution-above-max",
    ],
)
def test_check_compat_fails_on_batching_files_tf_serving_would_refuse_or_misuse(
    synthetic_model, tmp_path, config, rule, fragment
):
    (tmp_path / "batching.txt").write_text(config)
    code, _, err = _check_compat(synthetic_model, tmp_path / "batching.txt")
    line = _one_line_error(err)
    assert code == 2 and f"serving rule '{rule}'" in line and fragment in line, line


def test_the_build_does_not_publish_a_version_that_breaks_a_rule(tmp_path):
    path = tmp_path / "items.npz"
    np.savez(
        path,
        ids=np.array([f"sku-{i}" for i in range(300)]),
        vectors=np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32),
    )
    (tmp_path / "old.txt").write_text(OLD_IMAGE_FILE)
    proc = support.run_cli(
        "build",
        "--out",
        str(tmp_path / "m"),
        "--candidates",
        str(path),
        "--query",
        "item",
        "--verify-queries",
        "50",
        "--batching-parameters",
        str(tmp_path / "old.txt"),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: serving rule 'queue-capacity'"), line
    assert not [p for p in (tmp_path / "m" / "scann_model").iterdir() if p.name.isdigit() or p.name.startswith(".tmp-")]


def test_check_compat_json_lists_the_broken_rules(synthetic_model, tmp_path):
    (tmp_path / "old.txt").write_text(OLD_IMAGE_FILE)
    proc = support.run_cli(
        "check-compat", str(synthetic_model), "--batching-parameters", str(tmp_path / "old.txt"), "--json"
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 2 and report["ok"] is False
    assert [v["rule"] for v in report["serving_rules_broken"]] == ["queue-capacity"]
