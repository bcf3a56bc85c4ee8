"""The serving-rules gate: what TF Serving 2.11 (`--enable_batching`) will do with a version and a batching file.

Each rule names the TF Serving / TensorFlow 2.11 source file whose behaviour it mirrors; a
version or file that breaks one is refused with a message naming the rule. Run by
`check-compat` and by the build before a version is published. The server-side arithmetic is
shared with the local server (model_builder/compat/tfs_batching.py), so the gate and the
stand-in cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_builder import settings
from model_builder.compat.tfs_batching import BatchingParameters, QueueOptions, round_to_allowed_batch_size
from model_builder.errors import BuilderError

MAX_WARMUP_RECORDS = 1000
# Where the image's batching file lives in a checkout (docker/serving copies it to /etc/tfserving/).
IMAGE_BATCHING_FILE = settings.IMAGE_BATCHING_FILE


@dataclass(frozen=True)
class Rule:
    """One thing TF Serving 2.11 does, and the file it is read from."""

    name: str
    source: str


BATCHING_FIELDS = Rule("batching-fields", "tensorflow_serving/servables/tensorflow/session_bundle_config.proto")
BATCHING_VALUES = Rule("batching-values", "tensorflow/core/kernels/batching_util/shared_batch_scheduler.h")
QUEUE_CAPACITY = Rule("queue-capacity", "tensorflow/core/kernels/batching_util/shared_batch_scheduler.h")
ALLOWED_BATCH_SIZES = Rule("allowed-batch-sizes", "tensorflow_serving/servables/tensorflow/bundle_factory_util.cc")
ALLOWED_BATCH_SIZES_ORDER = Rule("allowed-batch-sizes-order", "tensorflow_serving/batching/batching_options.h")
ALLOWED_BATCH_SIZES_PADDING = Rule("allowed-batch-sizes-padding", "tensorflow_serving/batching/batching_session.cc")
MODEL_MAX_BATCH = Rule("model-max-batch-size", "tensorflow/core/kernels/batching_util/shared_batch_scheduler.h")
BATCHABLE_SIGNATURES = Rule("batchable-signatures", "tensorflow_serving/batching/batching_util.h")
BATCHED_OUTPUTS = Rule("batched-outputs", "tensorflow_serving/batching/batching_session.cc")
FIXED_WIDTH = Rule("fixed-width-inputs", "tensorflow_serving/batching/batching_session.cc")
WARMUP_RECORDS = Rule("warmup-records", "tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc")
WARMUP_REQUESTS = Rule("warmup-requests", "tensorflow_serving/servables/tensorflow/predict_util.cc")
WARMUP_BATCH = Rule("warmup-batch", "tensorflow/core/kernels/batching_util/shared_batch_scheduler.h")
OPS = Rule("ops-registered", "model_builder/compat/registry (TF 2.11 + scann 1.2.9 op registry)")


@dataclass(frozen=True)
class Violation:
    """A broken rule, with what to fix."""

    rule: Rule
    message: str

    def __str__(self) -> str:
        return f"serving rule '{self.rule.name}' ({self.rule.source}): {self.message}"


class ServingRuleError(BuilderError):
    """TF Serving 2.11 would refuse or misserve this version with this batching file (exit 2)."""


def check_batching(params: BatchingParameters, model_max_batch_size: int | None = None) -> list[Violation]:
    """Rules on the batching file alone (plus the model's --max-batch-size when known)."""
    out = []
    options = params.queue_options()
    problem = options.invalid_reason()
    if problem:
        out.append(Violation(BATCHING_VALUES, f"{problem} (TF Serving fails every model load)"))
    if params.num_batch_threads is not None and params.num_batch_threads < 1:
        out.append(
            Violation(
                BATCHING_VALUES,
                f"num_batch_threads must be positive; was {params.num_batch_threads} (TF Serving does not start)",
            )
        )
    out += _allowed_batch_sizes(params, options)
    capacity = options.idle_capacity()
    if not problem and capacity < options.input_batch_size_limit:
        out.append(
            Violation(
                QUEUE_CAPACITY,
                (
                    f"an idle queue holds {capacity} rows ((max_enqueued_batches {options.max_enqueued_batches} - 1) x "
                    f"{options.execution_batch_size} + {options.execution_batch_size}) but max_batch_size is "
                    f"{options.input_batch_size_limit}: requests of {capacity + 1}-{options.input_batch_size_limit} rows are always "
                    f"refused UNAVAILABLE; raise max_enqueued_batches to at least "
                    f"{-(-options.input_batch_size_limit // options.execution_batch_size)}"
                ),
            )
        )
    if model_max_batch_size is not None and model_max_batch_size > options.input_batch_size_limit:
        out.append(
            Violation(
                MODEL_MAX_BATCH,
                (
                    f"the model accepts {model_max_batch_size} rows per request (build --max-batch-size) but the batching file's "
                    f"max_batch_size is {options.input_batch_size_limit}: bigger requests get INVALID_ARGUMENT 'Task size N is "
                    "larger than maximum input batch size'; build with a smaller --max-batch-size or raise max_batch_size"
                ),
            )
        )
    return out


def _allowed_batch_sizes(params: BatchingParameters, options: QueueOptions) -> list[Violation]:
    sizes = params.allowed_batch_sizes
    if not sizes:
        return []
    out = []
    problem = params.allowed_batch_sizes_problem()
    if problem:
        out.append(Violation(ALLOWED_BATCH_SIZES, f"{problem} (TF Serving fails every model load)"))
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
        out.append(
            Violation(
                ALLOWED_BATCH_SIZES_ORDER,
                f"allowed_batch_sizes {list(sizes)} must be positive and increasing: "
                "a batch is padded to the first entry >= its size",
            )
        )
    elif options.enable_large_batch_splitting:
        padded = round_to_allowed_batch_size(sizes, options.execution_batch_size)
        if padded > options.execution_batch_size:
            out.append(
                Violation(
                    ALLOWED_BATCH_SIZES_PADDING,
                    (
                        f"every full execution batch ({options.execution_batch_size} rows) is padded to {padded} rows before it "
                        f"runs: add {options.execution_batch_size} to allowed_batch_sizes"
                    ),
                )
            )
    return out


def check_version(version_dir: Path, params: BatchingParameters | None) -> list[Violation]:
    """Rules on the SavedModel's signatures and its warmup file under this batching file.

    Without a batching file (None) the model is checked alone: warmup records against its own
    --max-batch-size.
    """
    from model_builder.compat.ops import saved_model_signatures
    from model_builder.export.version_store import read_build_info

    signatures = saved_model_signatures(version_dir)
    out = _signature_rules(signatures)
    model_max = read_build_info(version_dir).get("serving", {}).get("max_batch_size")
    if params is not None:
        out += check_batching(params, model_max)
        options = params.queue_options()
    else:
        options = QueueOptions(input_batch_size_limit=model_max or QueueOptions().input_batch_size_limit)
    out += width_rules(signatures, params is not None and params.pad_variable_length_inputs)
    out += _warmup_rules(version_dir, signatures, options)
    return out


def width_rules(signatures: dict, padding: bool) -> list[Violation]:
    """Inputs must have fixed non-batch dimensions unless pad_variable_length_inputs is on.

    MergeInputTensors concatenates the tasks of a batch along dimension 0; tasks whose other
    dimensions differ fail the whole batch ("... different shapes and padding is turned off")
    unless padding is on, which pads with the tensor's first element (batching_util.h
    AddPadding). Per-row lists (the filtered signatures' tokens and ids) therefore have a width
    fixed at build time.
    """
    if padding:
        return []
    out = []
    for name, sig in sorted(signatures.items()):
        for alias, info in sorted(sig.inputs.items()):
            dims = [d.size for d in info.tensor_shape.dim]
            if any(d < 0 for d in dims[1:]):
                out.append(
                    Violation(
                        FIXED_WIDTH,
                        f"input '{alias}' of signature '{name}' has shape {dims}: requests of different widths "
                        "cannot be merged with pad_variable_length_inputs off; give it a fixed width",
                    )
                )
    return out


def _signature_rules(signatures: dict) -> list[Violation]:
    out = []
    for name, sig in sorted(signatures.items()):
        if name.startswith("__"):
            continue  # __saved_model_init_op: never requested
        if not sig.inputs:
            out.append(
                Violation(
                    BATCHABLE_SIGNATURES,
                    f"signature '{name}' has no input: every Run of it fails "
                    "'Batching Run() must have at least one input tensor'",
                )
            )
        for kind, infos in (("input", sig.inputs), ("output", sig.outputs)):
            for alias, info in sorted(infos.items()):
                dims = [d.size for d in info.tensor_shape.dim]
                if info.tensor_shape.unknown_rank or not dims or dims[0] != -1:
                    why = (
                        "'Batching Run() input tensors must have at least one dimension'"
                        if kind == "input"
                        else "'Batched output tensor has 0 dimensions' or a 0th dimension that is not the batch's"
                    )
                    out.append(
                        Violation(
                            BATCHABLE_SIGNATURES if kind == "input" else BATCHED_OUTPUTS,
                            f"{kind} '{alias}' of signature '{name}' has shape {dims or 'unknown'}, not "
                            f"[batch, ...]: TF Serving's batcher needs a leading batch dimension ({why})",
                        )
                    )
    return out


def _warmup_rules(version_dir: Path, signatures: dict, options: QueueOptions) -> list[Violation]:
    from model_builder.export import warmup

    try:
        records = warmup.read(version_dir)
    except Exception as err:
        return [Violation(WARMUP_RECORDS, f"{warmup.WARMUP_FILE} cannot be read: {str(err).splitlines()[0]}")]
    out = []
    if len(records) > MAX_WARMUP_RECORDS:
        out.append(
            Violation(
                WARMUP_RECORDS,
                f"{len(records)} warmup records, TF Serving reads at most {MAX_WARMUP_RECORDS} "
                "and fails the load beyond",
            )
        )
    limit = min(options.input_batch_size_limit, options.idle_capacity())
    for i, record in enumerate(records[: MAX_WARMUP_RECORDS + 1]):
        problem = _record_problem(record, signatures)
        if problem:
            out.append(Violation(WARMUP_REQUESTS, f"warmup record {i}: {problem} (the load fails)"))
            continue
        rows = _record_rows(record)
        if isinstance(rows, str):
            out.append(Violation(BATCHABLE_SIGNATURES, f"warmup record {i}: {rows} (the load fails)"))
        elif rows > limit:
            out.append(
                Violation(
                    WARMUP_BATCH,
                    f"warmup record {i} has {rows} rows; the batcher takes at most {limit} "
                    "on an idle queue (the load fails)",
                )
            )
    return out


def _record_problem(record, signatures: dict) -> str | None:
    """Why RunPredict would refuse this warmup record before the batcher sees it (None: it would not)."""
    import tensorflow as tf

    kind = record.WhichOneof("log_type")
    if kind != "predict_log":
        return f"a {kind} record (our models serve Predict only)"
    request = record.predict_log.request
    name = request.model_spec.signature_name or "serving_default"
    sig = signatures.get(name)
    if sig is None:
        return f'Serving signature key "{name}" not found.'
    if set(request.inputs) != set(sig.inputs):
        return f"inputs {sorted(request.inputs)} do not match signature '{name}' inputs {sorted(sig.inputs)}"
    for alias, proto in request.inputs.items():
        if proto.dtype != sig.inputs[alias].dtype:
            want, got = tf.dtypes.as_dtype(sig.inputs[alias].dtype).name, tf.dtypes.as_dtype(proto.dtype).name
            return f"input '{alias}' is {got}, signature '{name}' takes {want}"
        dims = [d.size for d in sig.inputs[alias].tensor_shape.dim]
        shape = [d.size for d in proto.tensor_shape.dim]
        if len(dims) != len(shape) or any(d not in (-1, s) for d, s in zip(dims, shape)):
            return f"input '{alias}' has shape {shape}, signature '{name}' takes {dims}"
    unknown = [a for a in request.output_filter if a not in sig.outputs]
    return f"output_filter names {unknown} not in signature '{name}'" if unknown else None


def _record_rows(record) -> int | str:
    """ComputeTensorBatchSize on the record's inputs: the rows it puts in the queue, or why it cannot."""
    sizes = {tuple(d.size for d in p.tensor_shape.dim)[:1] for p in record.predict_log.request.inputs.values()}
    if not sizes:
        return "'Batching Run() must have at least one input tensor'"
    if () in sizes:
        return "'Batching Run() input tensors must have at least one dimension'"
    if len(sizes) > 1:
        return "'Batching Run() input tensors must have equal 0th-dimension size'"
    return sizes.pop()[0]


def enforce(violations: list[Violation]) -> None:
    """Raises ServingRuleError naming every broken rule (one line)."""
    if violations:
        raise ServingRuleError("; ".join(str(v) for v in violations))


def default_batching_file() -> Path | None:
    """The image's batching file when running from a checkout (the builder image has no k8s/)."""
    return IMAGE_BATCHING_FILE if IMAGE_BATCHING_FILE.is_file() else None


def check_all(version_dir: Path, batching_file: Path | None, runtime: str | None = None) -> list[Violation]:
    """Everything the build and check-compat gate on: ops in the serving runtime, then the serving rules."""
    from model_builder.compat import ops
    from model_builder.errors import ConfigError

    report = ops.check(version_dir, runtime)
    violations = (
        [Violation(OPS, f"ops not registered in {report.runtime}: {', '.join(report.missing_ops)}")]
        if not report.ok
        else []
    )
    params = None
    if batching_file is not None:
        if not Path(batching_file).is_file():
            raise ConfigError(f"--batching-parameters {batching_file}: no such file")
        try:
            params = BatchingParameters.from_file(Path(batching_file), "--batching-parameters")
        except ConfigError as err:  # a field 2.11 does not know, or a malformed file: the server does not start
            return [*violations, Violation(BATCHING_FIELDS, f"{err} (TF Serving 2.11 does not start)")]
    return violations + check_version(version_dir, params)
