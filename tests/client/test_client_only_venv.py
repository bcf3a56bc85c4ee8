"""`pip install ./client` in a fresh venv pulls grpcio, protobuf and numpy, and nothing else."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"
ALLOWED = {"scann-serving-client", "grpcio", "protobuf", "numpy"}
TOOLING = {"pip", "setuptools", "wheel"}
# Not ours: recent grpcio releases declare typing-extensions; accepted only
# while grpcio's own metadata says so (checked below).
OF_GRPCIO = {"typing-extensions"}


def _python311() -> str:
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    pytest.skip("python3.11 not found")


def _run(*command: str, cwd: Path | None = None) -> str:
    run = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=900)
    assert run.returncode == 0, f"{' '.join(command)}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@pytest.mark.slow
def test_client_installs_alone(tmp_path):
    venv = tmp_path / "venv"
    _run(_python311(), "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in client/.
    source = tmp_path / "client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run(str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source))

    installed = {p["name"].lower().replace("_", "-") for p in json.loads(
        _run(str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"))}
    assert not [name for name in installed if name.startswith("tensorflow")], installed
    extra = installed - TOOLING - ALLOWED
    assert ALLOWED <= installed
    assert extra <= OF_GRPCIO, f"unexpected packages: {sorted(extra - OF_GRPCIO)}"
    if extra:
        grpcio_requires = _run(str(python), "-c", "import importlib.metadata as m; print(m.requires('grpcio'))")
        assert all(name.replace("-", "_") in grpcio_requires.replace("-", "_") for name in extra), grpcio_requires

    probe = (
        "import sys, retrieval_client; "
        "from retrieval_client.protos import predict_pb2; "
        "assert not [m for m in sys.modules if m.startswith(('tensorflow', 'tensorflow_serving'))]; "
        "print(retrieval_client.__version__)"
    )
    assert _run(str(python), "-c", probe).strip()
    help_text = _run(str(venv / "bin" / "retrieval-client"), "--help")
    assert "search-vector" in help_text and "wait" in help_text
    # The .proto sources ship with the package, for users who generate other languages.
    assert _run(str(python), "-c", "import importlib.resources as r; "
                "print(r.files('retrieval_client.protos').joinpath('predict.proto').is_file())").strip() == "True"
