"""The distribution PyPI would get: `python -m build` output passes `twine check --strict`, and
its metadata carries the SPDX license, the LICENSE file, classifiers, URLs and the tested ranges."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser

import pytest

import support


def wheel_metadata(wheel) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


def test_twine_check_strict_passes_for_sdist_and_wheel(client_dist):
    run = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(client_dist["sdist"]), str(client_dist["wheel"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("PASSED") == 2, run.stdout


def test_wheel_metadata_license_classifiers_urls_and_ranges(client_dist):
    meta = wheel_metadata(client_dist["wheel"])
    assert meta["Name"] == "scann-serving-client"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier")
    assert not [c for c in classifiers if c.startswith("License ::")], (
        "PEP 639: the expression replaces license classifiers"
    )
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Typing :: Typed" in classifiers
    urls = meta.get_all("Project-URL")
    assert urls and all(", https://" in url for url in urls), urls
    assert meta["Requires-Python"] == ">=3.10"
    requires = sorted(meta.get_all("Requires-Dist"))
    assert requires == ["grpcio>=1.60.0", "numpy>=1.22.0", "protobuf<8,>=4.25.1"], requires
    assert meta["Description-Content-Type"] == "text/markdown"


def test_wheel_and_sdist_hold_the_license_protos_and_stubs(client_dist):
    with zipfile.ZipFile(client_dist["wheel"]) as archive:
        names = archive.namelist()
        [license_name] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert "Apache License" in archive.read(license_name).decode()[:200]
    for module in ("tensor", "model", "predict", "get_model_metadata", "get_model_status"):
        for suffix in (".proto", "_pb2.py", "_pb2.pyi"):
            assert f"retrieval_client/protos/{module}{suffix}" in names
    assert "retrieval_client/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/"))]
    with tarfile.open(client_dist["sdist"]) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= members


def test_nothing_in_the_client_package_names_tensorflow(client_dist):
    # The client installs into services without TensorFlow: neither its requirements nor any
    # other field of its metadata or pyproject.toml may name it.
    assert "tensorflow" not in (support.REPO / "client" / "pyproject.toml").read_text().lower()
    metadata = wheel_metadata(client_dist["wheel"])
    assert not [r for r in metadata.get_all("Requires-Dist", []) if "tensorflow" in r.lower()]
    assert "tensorflow" not in str(metadata.get("Keywords", "")).lower()


@pytest.mark.parametrize("field", ["Summary", "Keywords"])
def test_summary_and_keywords_are_set(client_dist, field):
    assert wheel_metadata(client_dist["wheel"])[field]
