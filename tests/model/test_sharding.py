"""build --shards: the partition is stable and balanced, bad flags exit 2 naming the problem, and a
shard's catalogue keeps the whole query side (the served builds are tests/client/test_sharded_client.py)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import support
from model_builder.build_config import BuildConfig
from model_builder.contract import Catalogue
from model_builder.errors import ConfigError
from model_builder.sharding import check_names, shard_of, shard_prepared
from model_builder.towers.history import SEEN_PADDING, SeenItems
from model_builder.towers.prepare import Prepared


def test_the_shard_of_an_id_is_crc32_of_its_text_and_balanced():
    ids = np.array([f"sku-{i}" for i in range(30_000)])
    shards = shard_of(ids, 4)
    assert shards[7] == zlib.crc32(b"sku-7") % 4  # computable anywhere with a CRC-32
    assert shard_of(np.array([42, 7], np.int64), 3).tolist() == [zlib.crc32(b"42") % 3, zlib.crc32(b"7") % 3]
    sizes = np.bincount(shards, minlength=4)
    assert np.abs(sizes - 7500).max() < 4 * np.sqrt(7500), sizes


def test_a_bad_shard_flag_exits_2_with_one_line(tmp_path):
    # One real CLI process (its parser imports TensorFlow, ~4 s a process); the other bad flags
    # raise the same ConfigError in-process below, which main() prints the same way.
    proc = support.run_cli("build", "--out", str(tmp_path), "--shards", "0")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shards must be at least 1" in lines[0], proc.stderr


def test_the_unknown_ids_fallback_with_shards_is_a_config_error():
    with pytest.raises(ConfigError, match="--unknown-ids fallback with --shards") as caught:
        BuildConfig(shards=2, unknown_ids="fallback").validate()
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_a_shard_name_too_long_for_kubernetes_fails_before_any_work(tmp_path):
    from model_builder.index.config import IndexConfig
    from model_builder.sharding import build_sharded
    from model_builder.towers.training import TrainConfig

    cfg = BuildConfig(dataset="synthetic", out=str(tmp_path / "models"), model_name="a" * 40, shards=3)
    with pytest.raises(ConfigError, match="not a Kubernetes name"):
        build_sharded(cfg, TrainConfig(), IndexConfig(), log=lambda _: None)
    assert not any(tmp_path.iterdir()), "nothing may be read or written before the names are checked"


def test_names_fold_to_kubernetes_names():
    check_names("scann_model", 12)  # scann-model-shard-11
    check_names("x" * 32, 10)  # 40 characters with "-shard-9"
    with pytest.raises(ConfigError, match="at most 32 characters"):
        check_names("x" * 33, 10)


def test_a_user_shard_keeps_every_user_and_its_history_in_shard_rows():
    rng = np.random.default_rng(0)
    cand = np.arange(20, dtype=np.int64)
    catalogue = Catalogue(np.array([100, 101]), rng.normal(size=(2, 4)), cand, rng.normal(size=(20, 4)))
    table = np.full((2, 5), SEEN_PADDING, np.int32)
    table[0, :3], table[1, :1] = [1, 4, 9], [2]
    prepared = Prepared(catalogue, {}, {}, {}, seen=SeenItems(table, 5, 3, 0))
    shards = shard_of(cand, 2)
    part = shard_prepared(prepared, shards, 0, 2)
    members = np.flatnonzero(shards == 0)
    assert (
        part.catalogue.query_ids.tolist() == [100, 101]
        and part.catalogue.candidate_ids.tolist() == cand[members].tolist()
    )
    for user, history in enumerate(([1, 4, 9], [2])):
        kept = sorted(int(np.flatnonzero(members == h)[0]) for h in history if h in members)
        row = part.seen.table[user]
        assert row[row != SEEN_PADDING].tolist() == kept
    assert part.data_info["sharding"]["candidates"] == len(members)


def test_an_item_shard_keeps_every_item_as_a_query_and_maps_it_to_its_row_here():
    ids = np.array([f"i{n}" for n in range(12)])
    vectors = np.eye(12, 4, dtype=np.float32)
    prepared = Prepared(Catalogue(ids, None, ids, vectors), {}, {}, {})
    shards = shard_of(ids, 3)
    part = shard_prepared(prepared, shards, 1, 3).catalogue
    assert part.items_are_queries and part.query_ids.tolist() == ids.tolist()
    own = part.self_rows
    for q, row in enumerate(own):
        assert (row == -1) == (shards[q] != 1)
        if row >= 0:
            assert part.candidate_ids[row] == ids[q]
