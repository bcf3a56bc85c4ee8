"""The committed generated modules match the .proto files; packaging metadata agrees with them."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

CLIENT = Path(__file__).resolve().parents[2] / "client"
GEN_PROTOS = CLIENT / "tools" / "gen_protos.py"


def load_gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos_under_test", GEN_PROTOS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_protos_are_up_to_date():
    run = subprocess.run([sys.executable, str(GEN_PROTOS), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_mode_catches_stale_and_extra_files(tmp_path, monkeypatch, capsys):
    gen = load_gen_protos()
    src = tmp_path / "src"
    shutil.copytree(CLIENT / "src" / "retrieval_client" / "protos", src / "retrieval_client" / "protos")
    monkeypatch.setattr(gen, "SRC_DIR", src)
    monkeypatch.setattr(gen, "PROTO_DIR", src / "retrieval_client" / "protos")
    assert gen.main(["--check"]) == 0

    proto = src / "retrieval_client" / "protos" / "model.proto"
    proto.write_text(
        proto.read_text().replace("string signature_name = 3;", "string signature_name = 3;\n  string extra = 9;")
    )
    (src / "retrieval_client" / "protos" / "gone_pb2.py").write_text("# left over\n")
    assert gen.main(["--check"]) == 1
    out = capsys.readouterr()
    assert "model_pb2.py" in out.out and "gone_pb2.py" in out.out and "make protos" in out.err

    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert not (src / "retrieval_client" / "protos" / "gone_pb2.py").exists()


def test_generated_code_imports_through_the_package():
    for path in (CLIENT / "src" / "retrieval_client" / "protos").glob("*_pb2.py"):
        imports = re.findall(r"^from (\S+) import \S+_pb2", path.read_text(), re.M)
        assert all(i in ("retrieval_client.protos", "google.protobuf") for i in imports), (path.name, imports)


def test_pyproject_dependencies_fit_the_gencode():
    pyproject = tomllib.loads((CLIENT / "pyproject.toml").read_text())
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0]: d for d in pyproject["project"]["dependencies"]}
    assert set(deps) == {"grpcio", "protobuf", "numpy"}, "no TensorFlow, nothing beyond grpcio/protobuf/numpy"
    assert all(">=" in d for d in deps.values()), "every runtime dependency has a lower bound"
    gencode = load_gen_protos().gencode_version()
    lower = re.search(r">=\s*([0-9.]+)", deps["protobuf"]).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    # The gencode's builder API exists from its own version on; it must not be newer than the floor.
    assert as_tuple(lower) >= as_tuple(gencode), f"protobuf lower bound {lower} < gencode {gencode}: raise it"
    # Gencode from protoc >= 26 validates the runtime and refuses older ones (issue 14): the
    # committed modules must come from the pinned 4.25 generator, so the 4.25 floor holds.
    assert as_tuple(gencode)[:2] == (4, 25), f"gencode {gencode}: regenerate with requirements/protoc.txt"
    for path in (CLIENT / "src" / "retrieval_client" / "protos").glob("*_pb2.py"):
        assert "ValidateProtobufRuntimeVersion" not in path.read_text(), path.name
    assert pyproject["project"]["scripts"]["retrieval-client"] == "retrieval_client._cli:main"


@pytest.mark.parametrize("module", ["tensor", "model", "predict", "get_model_metadata", "get_model_status"])
def test_proto_files_use_our_own_package(module):
    text = (CLIENT / "src" / "retrieval_client" / "protos" / f"{module}.proto").read_text()
    assert "package retrieval_client.tfs;" in text
    assert not re.search(r"^\s*service\s", text, re.M), "call TF Serving's method paths; declare no services"
