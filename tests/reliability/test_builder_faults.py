"""Builder faults not covered by tests/model/test_export.py: corrupt or partial inputs and embeddings that don't
match. Each build goes through the real CLI into a base path that already holds a good version: it exits 2 with one
line naming the file, publishes nothing, and leaves the good version byte for byte as it was.

(Killed mid-export, out of disk space, unwritable --out and concurrent builds are in tests/model/test_export.py.)
"""

from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_builder.export import version_store
from support import harness


def _interactions_csv(rows: int = 400) -> str:
    lines = ["user_id,item_id,weight,timestamp"] + [f"u{i % 40},i{i % 70},4,{1000 + i}" for i in range(rows)]
    return "\n".join(lines) + "\n"


def _truncated_csv(path: Path) -> Path:
    text = _interactions_csv()
    path.write_text(text[: len(text) // 2 + 3])  # cut inside a row, as a copy interrupted mid-way
    return path


def _nul_csv(path: Path) -> Path:
    path.write_bytes(b"\0" * 4096)  # preallocated, never written
    return path


def _gzip_as_csv(path: Path) -> Path:
    path.write_bytes(gzip.compress(_interactions_csv().encode(), mtime=0))  # compressed, named .csv
    return path


def _truncated_parquet(path: Path) -> Path:
    full = path.with_name("full.parquet")
    pq.write_table(
        pa.table({"user_id": [f"u{i % 40}" for i in range(400)], "item_id": [f"i{i % 70}" for i in range(400)]}), full
    )
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _npz(path: Path, ids, vectors) -> Path:
    np.savez(path, ids=np.asarray(ids), vectors=np.asarray(vectors, np.float32))
    return path


def _items(n: int = 300, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.array([f"sku-{i}" for i in range(n)]), rng.normal(size=(n, dim)).astype(np.float32)


def _nan_row(path: Path) -> Path:
    ids, vectors = _items()
    vectors[17, 3] = np.nan
    return _npz(path, ids, vectors)


def _duplicate_ids(path: Path) -> Path:
    ids, vectors = _items()
    ids[200] = "sku-5"
    return _npz(path, ids, vectors)


def _ids_vectors_count(path: Path) -> Path:
    ids, vectors = _items()
    return _npz(path, ids[:-1], vectors)


def _items_16(path: Path) -> Path:
    return _npz(path, *_items())


def _users_8(path: Path) -> Path:
    return _npz(path, np.array([f"user-{i}" for i in range(50)]), np.ones((50, 8), np.float32))


def _users_nan(path: Path) -> Path:
    vectors = np.ones((50, 16), np.float32)
    vectors[9] = np.inf
    return _npz(path, np.array([f"user-{i}" for i in range(50)]), vectors)


# (case, {file name: writer}, build args ({stem} = that file), the file the error must name, message fragment)
CASES = [
    (
        "interactions-truncated-mid-row",
        {"inter.csv": _truncated_csv},
        ["--dataset", "{inter}"],
        "inter",
        "cannot parse file",
    ),
    ("interactions-nul-bytes", {"inter.csv": _nul_csv}, ["--dataset", "{inter}"], "inter", "binary data (NUL bytes)"),
    (
        "interactions-gzip-named-csv",
        {"inter.csv": _gzip_as_csv},
        ["--dataset", "{inter}"],
        "inter",
        "rename it to inter.csv.gz",
    ),
    (
        "interactions-truncated-parquet",
        {"inter.parquet": _truncated_parquet},
        ["--dataset", "{inter}"],
        "inter",
        "Parquet magic bytes not found",
    ),
    (
        "candidates-nan-row",
        {"items.npz": _nan_row},
        ["--candidates", "{items}", "--query", "item"],
        "items",
        "row 17 holds NaN or Inf",
    ),
    (
        "candidates-duplicate-ids",
        {"items.npz": _duplicate_ids},
        ["--candidates", "{items}", "--query", "item"],
        "items",
        "id 'sku-5' appears 2 times; ids must be unique",
    ),
    (
        "candidates-ids-vs-vectors",
        {"items.npz": _ids_vectors_count},
        ["--candidates", "{items}", "--query", "item"],
        "items",
        "299 ids but 300 vectors",
    ),
    (
        "query-embeddings-dimension-mismatch",
        {"items.npz": _items_16, "users.npz": _users_8},
        ["--candidates", "{items}", "--query-embeddings", "{users}"],
        "users",
        "queries have 8 dims but",
    ),
    (
        "query-embeddings-inf-row",
        {"items.npz": _items_16, "users.npz": _users_nan},
        ["--candidates", "{items}", "--query-embeddings", "{users}"],
        "users",
        "row 9 holds NaN or Inf",
    ),
]


@pytest.fixture(scope="module")
def fault_builds(tmp_path_factory, items_model):
    """Runs every faulty build at once (2 at a time) into one base path holding a good version 1."""
    root = tmp_path_factory.mktemp("builder-faults")
    out = root / "models"
    good = harness.publish_copy(items_model, out / harness.MODEL, 1)
    digest = harness.tree_digest(good)

    def run(case):
        name, files, args, _, _ = case
        folder = root / name
        folder.mkdir()
        paths = {Path(f).stem: writer(folder / f) for f, writer in files.items()}
        proc = harness.cli_async(
            "build",
            "--out",
            str(out),
            "--model-name",
            harness.MODEL,
            "--verify-queries",
            "50",
            *[a.format(**paths) for a in args],
        )
        stdout, stderr = proc.communicate(timeout=600)
        return name, (proc.returncode, stdout, stderr, paths)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, CASES))
    return results, out / harness.MODEL, good, digest


@pytest.mark.parametrize(("name", "named", "message"), [(c[0], c[3], c[4]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_file_exits_2_with_one_line_naming_it(fault_builds, name, named, message):
    results, _, _, _ = fault_builds
    code, stdout, stderr, paths = results[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stdout[-2000:], stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    assert str(paths[named]) in lines[0] and message in lines[0], lines[0]


def test_the_last_good_version_stays_untouched(fault_builds):
    _, model_dir, good, digest = fault_builds
    assert version_store.versions(model_dir) == [1]
    assert harness.tree_digest(good) == digest
    assert [p.name for p in model_dir.iterdir() if p.name != ".build.lock"] == ["1"], "no temp folder left behind"
