#!/usr/bin/env python3
"""Regenerate (or check) the client's protobuf modules.

    python client/tools/gen_protos.py          # rewrite *_pb2.py / *_pb2.pyi
    python client/tools/gen_protos.py --check  # exit 1 if that would change anything

The .proto files live in client/src/retrieval_client/protos/ and import each
other as "retrieval_client/protos/x.proto", with client/src as the only
include root. protoc therefore emits `from retrieval_client.protos import
x_pb2` on its own: nothing is patched after generation.

The generator is pinned (requirements/protoc.in -> protoc.txt, `make lock`)
and runs in its own venv, build/protoc-venv (or $PROTOC_VENV), created here on
first use: it needs protobuf < 5, the build env runs protobuf 7. Its protoc
25.1 emits gencode without a runtime version check, which is what lets the
client run on protobuf 4.25 through 7.x (tests/client/test_client_matrix.py).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parents[1]
SRC_DIR = CLIENT_DIR / "src"
PROTO_DIR = SRC_DIR / "retrieval_client" / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")
REPO = CLIENT_DIR.parent
LOCK = REPO / "requirements" / "protoc.txt"


def generator_venv() -> Path:
    """The venv holding the pinned grpcio-tools; (re)created when protoc.txt changed."""
    venv = Path(os.environ.get("PROTOC_VENV") or REPO / "build" / "protoc-venv")
    if not venv.is_absolute():
        venv = REPO / venv
    stamp = venv / ".lock-sha256"
    want = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == want:
        return venv
    print(f"creating the protobuf generator venv {venv} from {LOCK.relative_to(REPO)}", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(LOCK),
        ],
    ]
    for step in steps:
        run = subprocess.run(step, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"error: {' '.join(step)} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    stamp.write_text(want + "\n")
    return venv


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto file, writing the package tree into out_dir.

    Returns the generated files relative to out_dir.
    """
    protos = sorted(p.relative_to(SRC_DIR).as_posix() for p in PROTO_DIR.glob("*.proto"))
    if not protos:
        sys.exit(f"error: no .proto files in {PROTO_DIR}")
    python = generator_venv() / "bin" / "python"
    find_protos = "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"
    well_known = subprocess.run(
        [str(python), "-c", find_protos],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [
        str(python),
        "-m",
        "grpc_tools.protoc",
        f"-I{SRC_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *protos,
    ]
    run = subprocess.run(command, cwd=SRC_DIR, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: protoc failed ({run.returncode}):\n{run.stderr}")
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*") if p.is_file())


def committed_files() -> set[Path]:
    """Generated files currently beside the .proto files, relative to SRC_DIR."""
    return {p.relative_to(SRC_DIR) for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def gencode_version() -> str | None:
    """The protobuf gencode version recorded in the committed modules."""
    for path in sorted(PROTO_DIR.glob("*_pb2.py")):
        match = re.search(r"^# Protobuf Python Version: (\S+)$", path.read_text(), re.M)
        if match:
            return match.group(1)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed files differ from a fresh generation",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        fresh = {rel: (out_dir / rel).read_bytes() for rel in generate(out_dir)}

    stale = committed_files() - set(fresh)
    changed = {
        rel: data for rel, data in fresh.items() if not (SRC_DIR / rel).exists() or (SRC_DIR / rel).read_bytes() != data
    }

    if args.check:
        if not changed and not stale:
            print(f"protos up to date ({len(fresh)} generated files)")
            return 0
        for rel, data in sorted(changed.items()):
            old_path = SRC_DIR / rel
            old = old_path.read_text().splitlines() if old_path.exists() else []
            diff = difflib.unified_diff(
                old, data.decode().splitlines(), f"committed/{rel}", f"fresh/{rel}", lineterm="", n=1
            )
            print("\n".join(list(diff)[:40]))
        for rel in sorted(stale):
            print(f"stale: {rel} has no .proto source any more")
        print(
            "error: generated protobuf modules are out of date; "
            "run `make protos` (client/tools/gen_protos.py) and commit the result",
            file=sys.stderr,
        )
        return 1

    for rel, data in sorted(changed.items()):
        (SRC_DIR / rel).write_bytes(data)
        print(f"wrote {rel}")
    for rel in sorted(stale):
        (SRC_DIR / rel).unlink()
        print(f"removed {rel}")
    if not changed and not stale:
        print("protos already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
