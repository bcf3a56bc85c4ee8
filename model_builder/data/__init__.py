"""Data in: the interactions format, user/item feature files, MovieLens 100K, and a synthetic generator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from model_builder.data import movielens, synthetic
from model_builder.data.features import FeatureTable, read_features
from model_builder.data.interactions import Dataset, Interactions, read_interactions, read_item_titles
from model_builder.errors import DataError

__all__ = ["BUILTIN_DATASETS", "Dataset", "FeatureTable", "Interactions", "load_dataset"]

BUILTIN_DATASETS = (movielens.NAME, synthetic.NAME)


def load_dataset(
    spec: str, items_path: Path | None = None, user_features: Path | None = None, item_features: Path | None = None
) -> Dataset:
    """Loads `spec`: a built-in name, a GroupLens ml-100k folder, or an interactions file.

    Feature files (see data/features.py) replace the built-in dataset's own features.
    """
    if spec == movielens.NAME:
        dataset = movielens.load_recbole()
    elif spec == synthetic.NAME:
        dataset = synthetic.interactions()
    else:
        path = Path(spec)
        if path.is_dir():
            dataset = movielens.load_grouplens(path)
        elif path.exists():
            inter = read_interactions(path)
            dataset = Dataset(path.stem, inter, {})
        else:
            known = ", ".join(BUILTIN_DATASETS)
            raise DataError(f"dataset '{spec}' is neither a built-in ({known}) nor an existing file or folder")
    if items_path is not None:
        titles = read_item_titles(items_path, _id_kind(dataset.interactions.item_ids))
        dataset = replace(dataset, titles=titles)
    inter = dataset.interactions
    if user_features is not None:
        dataset = replace(dataset, user_features=read_features(user_features, "user", _id_kind(inter.user_ids)))
    if item_features is not None:
        dataset = replace(dataset, item_features=read_features(item_features, "item", _id_kind(inter.item_ids)))
    return dataset


def _id_kind(ids: np.ndarray) -> np.dtype:
    return np.dtype(np.int64) if ids.dtype == np.int64 else np.dtype(object)
