"""Startup and loading like tensorflow_model_server 2.11: first load before the ports, retries, refusals.

model_servers/server.cc BuildAndStart (ports after ServerCore::Create; batching file without
--enable_batching refused), server_core.cc WaitUntilModelsAvailable (a failed first load stops
the server), core/loader_harness.cc + util/retrier.cc (--max_num_load_retries,
--load_retry_interval_micros), bundle_factory_util.cc WrapSessionForBatching
(allowed_batch_sizes), batching_util.h ComputeTensorBatchSize (a Run without inputs).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import model_builder.scann_import  # noqa: F401  (Scann ops before loading)
import support
from model_builder.export import warmup
from support import harness


def _exit(server: support.RunningServer, timeout: float = 180) -> tuple[int, str]:
    code = server.proc.wait(timeout)
    return code, server.log()


def test_a_first_load_that_fails_exits_non_zero_after_the_retries(tmp_path, items_model):
    version = harness.publish_copy(items_model, tmp_path / "models" / harness.MODEL, 1)
    data = (version / "saved_model.pb").read_bytes()
    (version / "saved_model.pb").write_bytes(data[: len(data) // 2])
    with support.local_server(
        tmp_path / "models",
        harness.MODEL,
        "--max_num_load_retries",
        "2",
        "--load_retry_interval_micros",
        "100000",
        log_dir=tmp_path,
    ) as server:
        code, log = _exit(server)
    assert code == 1, log[-3000:]
    assert "retry: 1" in log and "retry: 2" in log and "retry: 3" not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith(
        "error: Failed to start server. Error: UNKNOWN: 1 model(s) did not become available: "
        "{{name: scann_model version: 1} due to error: "
    ), last
    assert "serving scann_model" not in log, "ports must not open when the first load failed"


class _NoInput(tf.Module):
    """The shape of the old `examples` signature: no input at all."""

    @tf.function(input_signature=[])
    def examples(self):
        return {"query_ids": tf.constant([1, 2], tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
    def echo(self, ids):
        return {"ids": ids}


def _no_input_model(root) -> None:
    module = _NoInput()
    tf.saved_model.save(
        module,
        str(root / harness.MODEL / "1"),
        signatures={"serving_default": module.echo, "examples": module.examples},
    )


def test_a_run_without_inputs_is_refused_by_the_batcher(tmp_path):
    _no_input_model(tmp_path / "models")
    examples = harness.predict_request("examples")
    echo = harness.predict_request(inputs={"ids": np.array([4, 5], np.int64)})
    with support.local_server(tmp_path / "models", harness.MODEL, log_dir=tmp_path) as server:
        server.wait_available(1)
        raw = harness.Raw(server.target)
        refused = harness.rpc_error(raw.predict, examples)
        assert harness.outputs(raw.predict(echo))["ids"].tolist() == [4, 5]
        raw.close()
    assert (refused.code().name, refused.details()) == (
        "INVALID_ARGUMENT",
        "Batching Run() must have at least one input tensor",
    )
    with support.local_server(tmp_path / "models", harness.MODEL, log_dir=tmp_path, batching=False) as server:
        server.wait_available(1)
        raw = harness.Raw(server.target)
        assert harness.outputs(raw.predict(examples))["query_ids"].tolist() == [1, 2]  # only batching refuses it
        raw.close()


def test_a_warmup_record_without_inputs_fails_the_load_under_batching(tmp_path):
    """Issue 10's first bug: the old examples record in the warmup file would crash-loop the pods."""
    _no_input_model(tmp_path / "models")
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=harness.predict_request("examples"))
    )
    warmup.write(tmp_path / "models" / harness.MODEL / "1", [log])
    with support.local_server(
        tmp_path / "models", harness.MODEL, "--max_num_load_retries", "0", log_dir=tmp_path
    ) as server:
        code, text = _exit(server)
    assert code == 1 and "Batching Run() must have at least one input tensor" in text.strip().splitlines()[-1], text[
        -2000:
    ]


@pytest.mark.parametrize(
    ("config", "code", "message"),
    [
        (
            "max_batch_size { value: 16 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n",
            1,
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 8; expected 16",
        ),
        (
            "max_batch_size { value: 16 }\nenable_large_batch_splitting { value: true }\nmax_execution_batch_size { value: 32 }\n",
            1,
            "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than or equal to max_execution_batch_size",
        ),
        ("num_batch_threads { value: 0 }\n", 2, "num_batch_threads must be positive; was 0"),
        (
            "max_batch_size { value: 16 }\nmax_enqueued_batchs { value: 4 }\n",
            2,
            "not a valid BatchingParameters text proto",
        ),
    ],
    ids=["allowed-batch-sizes", "execution-above-max", "no-threads", "unknown-field"],
)
def test_batching_parameters_tf_serving_refuses_stop_the_server(tmp_path, items_model, config, code, message):
    harness.publish_copy(items_model, tmp_path / "models" / harness.MODEL, 1)
    (tmp_path / "batching.txt").write_text(config)
    with support.local_server(
        tmp_path / "models",
        harness.MODEL,
        "--batching_parameters_file",
        str(tmp_path / "batching.txt"),
        "--max_num_load_retries",
        "0",
        log_dir=tmp_path,
    ) as server:
        exit_code, log = _exit(server)
    last = log.strip().splitlines()[-1]
    assert exit_code == code and last.startswith("error: ") and message in last, log[-2000:]


def test_a_batching_file_without_enable_batching_is_refused(tmp_path, items_model):
    harness.publish_copy(items_model, tmp_path / "models" / harness.MODEL, 1)
    with support.local_server(
        tmp_path / "models",
        harness.MODEL,
        "--batching_parameters_file",
        str(support.IMAGE_BATCHING_FILE),
        log_dir=tmp_path,
        batching=False,
    ) as server:
        code, log = _exit(server)
    [line] = [line for line in log.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and "--batching_parameters_file is set without --enable_batching" in line, log[-2000:]


def test_allowed_batch_sizes_pad_merged_batches_and_answers_stay_exact(tmp_path, items_model):
    harness.publish_copy(items_model, tmp_path / "models" / harness.MODEL, 1)
    (tmp_path / "batching.txt").write_text(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 0 }\n"
        "allowed_batch_sizes: 4\nallowed_batch_sizes: 64\n"
    )
    loaded = tf.saved_model.load(str(items_model))
    with support.local_server(
        tmp_path / "models",
        harness.MODEL,
        "--batching_parameters_file",
        str(tmp_path / "batching.txt"),
        log_dir=tmp_path,
    ) as server:
        server.wait_available(1)  # the warmup's 1-, 8- and 64-row records went through the padding
        raw = harness.Raw(server.target)
        for size in (1, 3, 5, 64):
            ids = [f"sku-{i * 13}" for i in range(size)]
            got = harness.outputs(raw.predict(harness.ids_request(ids)))
            want = loaded.signatures["serving_default"](ids=tf.constant(ids))
            assert got["ids"].tolist() == want["ids"].numpy().tolist()
        raw.close()
