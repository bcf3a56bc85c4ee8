"""User/item feature files: the typed-column format, its one-line errors, MovieLens 100K's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import support
from model_builder.data import load_dataset, movielens
from model_builder.data.features import read_features
from model_builder.errors import DataError

INT = np.dtype(np.int64)
STR = np.dtype(object)


def _csv(tmp_path: Path, text: str, name: str = "users.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_every_type_missing_cells_and_options(tmp_path):
    path = _csv(
        tmp_path,
        "user_id,age:numeric:buckets=4,zip:categorical:prefix=2,tags:multi\n"
        "1,24, 85711 ,a|b\n2,,94043,\n3,31.5,,| c |\n",
    )
    table = read_features(path, "user", INT)
    assert table.ids.tolist() == [1, 2, 3] and table.names() == ["age", "zip", "tags"]
    age, zip_code, tags = table.columns
    assert age.kind == "numeric" and age.buckets == 4 and age.values[0] == 24 and np.isnan(age.values[1])
    assert (
        zip_code.kind == "categorical" and zip_code.prefix == 2 and zip_code.values.tolist() == ["85711", "94043", ""]
    )
    assert tags.values.tolist() == [("a", "b"), (), ("c",)], "tokens trimmed, empty tokens dropped"


def test_parquet_types_are_inferred_and_can_be_overridden(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": ["i1", "i2"],
                "year": [1995, None],
                "genre": ["Drama", None],
                "tags": [["x", "y"], []],
                "code:categorical": [7, 8],
            }
        ),
        path,
    )
    table = read_features(path, "item", STR)
    kinds = {c.name: c.kind for c in table.columns}
    assert kinds == {"year": "numeric", "genre": "categorical", "tags": "multi", "code": "categorical"}
    assert table.columns[2].values.tolist() == [("x", "y"), ()] and table.columns[3].values.tolist() == ["7", "8"]
    assert np.isnan(table.columns[0].values[1]) and table.columns[1].values.tolist() == ["Drama", ""]


def test_align_gives_missing_values_to_ids_without_a_row(tmp_path):
    table = read_features(_csv(tmp_path, "user_id,age:numeric,g:categorical,t:multi\n1,30,F,a|b\n"), "user", INT)
    aligned = table.align(np.array([5, 1], np.int64))
    assert np.isnan(aligned.columns[0].values[0]) and aligned.columns[0].values[1] == 30
    assert aligned.columns[1].values.tolist() == ["", "F"] and aligned.columns[2].values.tolist() == [(), ("a", "b")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty (expected a header line with user_id"),
        ("id,age:numeric\n1,2\n", "missing required column 'user_id' (found columns: id, age:numeric)"),
        ("user_id,age:numeric\n", "no rows"),
        ("user_id,age\n1,2\n", "column 'age' has no type: name it age:categorical, age:numeric or age:multi"),
        ("user_id,age:number\n1,2\n", "column 'age:number': unknown type 'number'"),
        ("user_id,age:numeric:prefix=2\n1,2\n", "unknown option 'prefix' for numeric (allowed: buckets)"),
        ("user_id,zip:categorical:prefix=x\n1,2\n", "option prefix needs a positive integer, got 'x'"),
        ("user_id,age:numeric\n1,30\n2,old\n", "row 3, column 'age:numeric': 'old' is not a number"),
        ("user_id,age:numeric\n1,inf\n", "row 2, column 'age:numeric': infinite value"),
        ("user_id,g:categorical\n1,a\n2,b\n1,c\n", "row 4, column 'user_id': id 1 already on row 2"),
        ("user_id\n1\n", "no feature columns besides 'user_id'"),
        ("user_id,2age:numeric\n1,2\n", "column '2age:numeric': feature names must be letters"),
        ("user_id,a:numeric,a:categorical\n1,2,3\n", "feature 'a' appears twice"),
        (
            "user_id,g:categorical\nalice,a\n",
            "column 'user_id' holds non-integer ids but the interactions' user ids are integers",
        ),
        ("user_id,g:categorical\n,a\n", "row 2, column 'user_id': empty id"),
    ],
)
def test_bad_feature_files_name_file_row_and_column(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_features(path, "user", INT)
    assert message in str(err.value) and str(path) in str(err.value)


def test_parquet_list_value_with_the_wire_separator_is_rejected(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": [1], "tags": [["a|b"]]}), path)
    with pytest.raises(DataError, match="row 1, column 'tags': a value contains '|'"):
        read_features(path, "item", INT)


def test_cli_bad_feature_file_exits_2_with_one_line(tmp_path):
    inter = _csv(tmp_path, "user_id,item_id\n1,10\n2,11\n", name="inter.csv")
    users = _csv(tmp_path, "user_id,age:numeric\n1,x\n")
    proc = support.run_cli(
        "build", "--dataset", str(inter), "--user-features", str(users), "--out", str(tmp_path / "m")
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: {users}: row 2, column 'age:numeric': 'x' is not a number (leave the cell empty for a missing value)"
    )


def test_cli_feature_file_with_no_features_is_a_config_error(tmp_path):
    users = _csv(tmp_path, "user_id,age:numeric\n1,3\n")
    proc = support.run_cli("build", "--user-features", str(users), "--no-features", "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "drop --candidates and --no-features" in proc.stderr.strip().splitlines()[-1]


def test_movielens_100k_features_from_the_recbole_wheel():
    ds = load_dataset("movielens-100k")
    users, items = ds.user_features, ds.item_features
    assert len(users) == 943 and users.names() == ["age", "gender", "occupation", "zip_code"]
    assert users.columns[3].prefix == movielens.ZIP_PREFIX and users.columns[0].kind == "numeric"
    row = users.ids.tolist().index(1)
    assert [c.values[row] for c in users.columns] == [24.0, "M", "technician", "85711"]
    assert len(items) == 1682 and items.names() == ["release_year", "genres"]
    toy_story = items.ids.tolist().index(1)
    assert items.columns[0].values[toy_story] == 1995 and items.columns[1].values[toy_story] == (
        "Animation",
        "Children's",
        "Comedy",
    )
    assert int(np.isnan(items.columns[0].values).sum()) == 2, (
        "the wheel's two broken years ('unkonwn', 'V') are missing values"
    )


def test_grouplens_folder_features(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t100\n2\t2\t4\t101\n")
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    (tmp_path / "u.item").write_bytes(
        ("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n").encode("latin-1")
    )
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n")
    ds = load_dataset(str(tmp_path))
    assert (
        ds.item_features.columns[1].values.tolist() == [("Action", "Comedy")]
        and ds.item_features.columns[0].values[0] == 1995
    )
    assert ds.user_features.columns[2].values.tolist() == ["technician"]


def test_feature_file_replaces_the_builtin_features(tmp_path):
    items = _csv(tmp_path, "item_id,decade:categorical\n1,90s\n2,90s\n", name="items.csv")
    ds = load_dataset("movielens-100k", item_features=items)
    assert ds.item_features.names() == ["decade"] and ds.user_features.names()[0] == "age"
