"""Generated protobuf modules, wire-compatible with TF Serving's API.

The .proto sources beside these modules use the package
`retrieval_client.tfs`, so they never clash with `tensorflow` or
`tensorflow_serving` messages loaded in the same process. Regenerate with
`make protos` (client/tools/gen_protos.py); never edit the *_pb2 files.
"""
