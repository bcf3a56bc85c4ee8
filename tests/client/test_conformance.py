"""Our messages are wire-compatible with the real tensorflow_serving / tensorflow ones.

Two layers: every field of every message we declare matches upstream's number,
type and cardinality (descriptor check), and real values survive
serialize-with-one / parse-with-the-other in both directions.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from tensorflow.core.framework import tensor_pb2 as up_tensor
from tensorflow.core.framework import tensor_shape_pb2 as up_shape
from tensorflow.core.framework import types_pb2 as up_types
from tensorflow.core.protobuf import error_codes_pb2 as up_codes
from tensorflow.core.protobuf import meta_graph_pb2 as up_meta
from tensorflow_serving.apis import get_model_metadata_pb2 as up_metadata
from tensorflow_serving.apis import get_model_status_pb2 as up_status
from tensorflow_serving.apis import model_pb2 as up_model
from tensorflow_serving.apis import predict_pb2 as up_predict
from tensorflow_serving.apis import status_pb2 as up_status_proto

from retrieval_client import _requests as rq
from retrieval_client import _responses as rs
from retrieval_client._requests import ModelRef
from retrieval_client._tensors import from_tensor_proto, to_tensor_proto
from retrieval_client.protos import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2, tensor_pb2

# Each of our top-level types and its upstream twin.
PAIRS = [
    (tensor_pb2.TensorProto, up_tensor.TensorProto),
    (tensor_pb2.TensorShapeProto, up_shape.TensorShapeProto),
    (model_pb2.ModelSpec, up_model.ModelSpec),
    (predict_pb2.PredictRequest, up_predict.PredictRequest),
    (predict_pb2.PredictResponse, up_predict.PredictResponse),
    (get_model_metadata_pb2.TensorInfo, up_meta.TensorInfo),
    (get_model_metadata_pb2.SignatureDef, up_meta.SignatureDef),
    (get_model_metadata_pb2.SignatureDefMap, up_metadata.SignatureDefMap),
    (get_model_metadata_pb2.GetModelMetadataRequest, up_metadata.GetModelMetadataRequest),
    (get_model_metadata_pb2.GetModelMetadataResponse, up_metadata.GetModelMetadataResponse),
    (get_model_status_pb2.StatusProto, up_status_proto.StatusProto),
    (get_model_status_pb2.GetModelStatusRequest, up_status.GetModelStatusRequest),
    (get_model_status_pb2.ModelVersionStatus, up_status.ModelVersionStatus),
    (get_model_status_pb2.GetModelStatusResponse, up_status.GetModelStatusResponse),
]
ENUMS = [
    (tensor_pb2.DataType.DESCRIPTOR, up_types.DataType.DESCRIPTOR),
    (get_model_status_pb2.ErrorCode.DESCRIPTOR, up_codes.Code.DESCRIPTOR),
]
TWIN = {ours.DESCRIPTOR.full_name: up.DESCRIPTOR.full_name for ours, up in PAIRS}
TWIN.update({ours.full_name: up.full_name for ours, up in ENUMS})


def twin_name(full_name: str) -> str:
    """Map ours (possibly nested, e.g. ...PredictRequest.InputsEntry) to upstream's name."""
    for ours, up in sorted(TWIN.items(), key=lambda kv: -len(kv[0])):
        if full_name == ours or full_name.startswith(ours + "."):
            return up + full_name[len(ours) :]
    return full_name  # google.protobuf.* types are shared


def assert_enum_matches(ours: EnumDescriptor, up: EnumDescriptor) -> None:
    up_values = {v.name: v.number for v in up.values}
    for value in ours.values:
        assert up_values.get(value.name) == value.number, f"{ours.full_name}.{value.name}"


def assert_message_matches(ours: Descriptor, up: Descriptor) -> None:
    assert twin_name(ours.full_name) == up.full_name
    up_fields = {f.name: f for f in up.fields}
    for field in ours.fields:
        where = f"{ours.full_name}.{field.name}"
        twin = up_fields.get(field.name)
        assert twin is not None, f"{where} does not exist upstream"
        assert (field.number, field.type, field.is_repeated) == (twin.number, twin.type, twin.is_repeated), where
        assert field.is_packed == twin.is_packed, where
        if field.message_type is not None:
            assert twin_name(field.message_type.full_name) == twin.message_type.full_name, where
            if field.message_type.full_name.startswith("retrieval_client."):
                assert_message_matches(field.message_type, twin.message_type)
        if field.enum_type is not None:
            assert twin_name(field.enum_type.full_name) == twin.enum_type.full_name, where
            assert_enum_matches(field.enum_type, twin.enum_type)
        if field.containing_oneof is not None:
            assert twin.containing_oneof is not None and twin.containing_oneof.name == field.containing_oneof.name
    for nested in ours.enum_types:
        assert_enum_matches(nested, up.enum_types_by_name[nested.name])


@pytest.mark.parametrize("ours, up", PAIRS, ids=lambda m: m.DESCRIPTOR.name)
def test_every_field_matches_upstream(ours, up):
    assert ours.DESCRIPTOR.full_name.startswith("retrieval_client.tfs.")
    assert_message_matches(ours.DESCRIPTOR, up.DESCRIPTOR)


@pytest.mark.parametrize("ours, up", ENUMS, ids=lambda e: e.name)
def test_enums_match_upstream(ours, up):
    assert_enum_matches(ours, up)


def test_version_states_match_upstream():
    ours = get_model_status_pb2.ModelVersionStatus.State
    assert dict(ours.items()) == {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}
    assert_enum_matches(ours.DESCRIPTOR, up_status.ModelVersionStatus.State.DESCRIPTOR)


def convert(message, to_type):
    return to_type.FromString(message.SerializeToString())


@pytest.mark.parametrize(
    "ref, field, value",
    [
        (ModelRef("scann_model", version=7), "version", 7),
        (ModelRef("m", version_label="canary"), "version_label", "canary"),
        (ModelRef("m"), None, None),
    ],
)
def test_model_spec_both_ways(ref, field, value):
    theirs = convert(ref.spec("search_by_vector"), up_model.ModelSpec)
    assert (theirs.name, theirs.signature_name) == (ref.name, "search_by_vector")
    assert theirs.WhichOneof("version_choice") == field
    if field == "version":
        assert theirs.version.value == value
    elif field:
        assert theirs.version_label == value
    back = convert(theirs, model_pb2.ModelSpec)
    assert back == ref.spec("search_by_vector")


@pytest.mark.parametrize(
    "ids, dtype",
    [(["item-1", "é-2", "3"], "string"), ([42, -7, 2**62], "int64")],
)
def test_predict_request_ids_read_by_upstream(ids, dtype):
    ref = ModelRef("scann_model", version=3)
    request = rq.predict_request(ref, "serving_default", {"ids": rq.ids_tensor(ids, dtype, "m")})
    theirs = convert(request, up_predict.PredictRequest)
    assert theirs.model_spec.version.value == 3 and theirs.model_spec.signature_name == "serving_default"
    array = tf.make_ndarray(theirs.inputs["ids"])
    expected = [i.encode() for i in ids] if dtype == "string" else ids
    assert array.tolist() == expected
    assert theirs.inputs["ids"].dtype == (up_types.DT_STRING if dtype == "string" else up_types.DT_INT64)


def test_predict_request_vectors_batch_read_by_upstream():
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    request = rq.predict_request(ModelRef("m"), "search_by_vector", {"vectors": to_tensor_proto(vectors)})
    theirs = convert(request, up_predict.PredictRequest)
    np.testing.assert_array_equal(tf.make_ndarray(theirs.inputs["vectors"]), vectors)
    assert [d.size for d in theirs.inputs["vectors"].tensor_shape.dim] == [3, 4]


@pytest.mark.parametrize("id_kind", ["string", "int64"])
def test_predict_response_from_upstream_parses(id_kind):
    ids = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object) if id_kind == "string" else np.array([[5, 6], [7, 8]])
    scores = np.array([[0.9, 0.5], [0.8, -0.1]], dtype=np.float32)
    response = up_predict.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 12
    response.outputs["ids"].CopyFrom(tf.make_tensor_proto(ids))
    response.outputs["scores"].CopyFrom(tf.make_tensor_proto(scores))
    ours = convert(response, predict_pb2.PredictResponse)
    assert rs.response_version(ours.model_spec) == 12
    results = rs.parse_neighbours(ours, None, 2, "m").results(None)
    assert [r.found for r in results] == [True, True], "no `found` output: a model from before contract v2"
    want_ids = [["a", "b"], ["c", "d"]] if id_kind == "string" else [[5, 6], [7, 8]]
    assert [r.ids.tolist() for r in results] == want_ids
    np.testing.assert_array_equal(np.stack([r.scores for r in results]), scores)
    # And back: upstream reads our copy of the response unchanged.
    assert convert(ours, up_predict.PredictResponse) == response


def _signature_def_map() -> up_metadata.SignatureDefMap:
    signatures = up_metadata.SignatureDefMap()
    sig = signatures.signature_def["serving_default"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["ids"].name = "serving_default_ids:0"
    sig.inputs["ids"].dtype = up_types.DT_INT64
    sig.inputs["ids"].tensor_shape.dim.add(size=-1)
    scores = sig.outputs["scores"]
    scores.dtype = up_types.DT_FLOAT
    scores.tensor_shape.dim.add(size=-1)
    scores.tensor_shape.dim.add(size=10)
    sig.outputs["unknown"].dtype = up_types.DT_FLOAT
    sig.outputs["unknown"].tensor_shape.unknown_rank = True
    return signatures


def test_metadata_any_with_upstream_signature_def_map():
    response = up_metadata.GetModelMetadataResponse()
    response.model_spec.name = "scann_model"
    response.model_spec.version.value = 5
    response.metadata["signature_def"].Pack(_signature_def_map())
    assert response.metadata["signature_def"].type_url.endswith("/tensorflow.serving.SignatureDefMap")
    ours = convert(response, get_model_metadata_pb2.GetModelMetadataResponse)
    metadata = rs.parse_metadata(ours, ModelRef("scann_model"))
    assert metadata.version == 5
    sig = metadata.signatures["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert (sig.inputs["ids"].dtype, sig.inputs["ids"].shape) == ("int64", [-1])
    assert (sig.outputs["scores"].dtype, sig.outputs["scores"].shape) == ("float32", [-1, 10])
    assert sig.outputs["unknown"].shape is None
    # Our SignatureDefMap bytes unpack as upstream's.
    packed = ours.metadata["signature_def"]
    ours_map = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    assert convert(ours_map, up_metadata.SignatureDefMap) == _signature_def_map()


def test_metadata_with_a_foreign_any_type_is_rejected():
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.metadata["signature_def"].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/foo.Bar", value=b""))
    with pytest.raises(rq.IncompatibleModelError, match="foo.Bar"):
        rs.parse_metadata(response, ModelRef("m"))


def test_metadata_request_read_by_upstream():
    theirs = convert(rq.metadata_request(ModelRef("m", version=2)), up_metadata.GetModelMetadataRequest)
    assert list(theirs.metadata_field) == ["signature_def"] and theirs.model_spec.version.value == 2


def test_status_with_error_from_upstream():
    response = up_status.GetModelStatusResponse()
    response.model_version_status.add(version=2, state=up_status.ModelVersionStatus.AVAILABLE)
    failed = response.model_version_status.add(version=3, state=up_status.ModelVersionStatus.END)
    failed.status.error_code = up_codes.Code.NOT_FOUND
    failed.status.error_message = "Op type not registered 'Scann>TensorsToScann'"
    ours = convert(response, get_model_status_pb2.GetModelStatusResponse)
    statuses = rs.parse_status(ours)
    assert [(s.version, s.state, s.error_code) for s in statuses] == [(2, "AVAILABLE", "OK"), (3, "END", "NOT_FOUND")]
    assert "Scann>TensorsToScann" in statuses[1].error_message
    assert convert(ours, up_status.GetModelStatusResponse) == response
    request = convert(rq.status_request(ModelRef("m", version_label="stable")), up_status.GetModelStatusRequest)
    assert request.model_spec.version_label == "stable"


def test_tensor_shape_both_ways():
    shape = up_shape.TensorShapeProto(dim=[up_shape.TensorShapeProto.Dim(size=-1, name="batch")], unknown_rank=False)
    ours = convert(shape, tensor_pb2.TensorShapeProto)
    assert (ours.dim[0].size, ours.dim[0].name) == (-1, "batch")
    assert convert(ours, up_shape.TensorShapeProto) == shape


def test_upstream_tensor_with_typed_vals_parses():
    proto = up_tensor.TensorProto(dtype=up_types.DT_INT64, int64_val=[1, 2, 3, 4])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    np.testing.assert_array_equal(from_tensor_proto(convert(proto, tensor_pb2.TensorProto)), [[1, 2], [3, 4]])
