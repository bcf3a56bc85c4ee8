"""Data in: the interactions format, MovieLens 100K, and a synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_builder.data import movielens, synthetic
from model_builder.data.interactions import Dataset, Interactions, read_interactions, read_item_titles
from model_builder.errors import DataError

__all__ = ["BUILTIN_DATASETS", "Dataset", "Interactions", "load_dataset"]

BUILTIN_DATASETS = (movielens.NAME, synthetic.NAME)


def load_dataset(spec: str, items_path: Path | None = None) -> Dataset:
    """Loads `spec`: a built-in name, a GroupLens ml-100k folder, or an interactions file."""
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
        kind = np.int64 if dataset.interactions.item_ids.dtype == np.int64 else np.dtype(object)
        titles = read_item_titles(items_path, kind)
        dataset = Dataset(dataset.name, dataset.interactions, titles, dataset.default_min_weight)
    return dataset
