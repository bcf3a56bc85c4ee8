"""build --shards on trained user -> items data: every shard excludes each user's history in its own
candidate rows, and the merged answer over the shards neither returns a seen item nor misses an
unseen one (recall 1.0 against exact search over the whole catalogue without the history)."""

from __future__ import annotations

import json

import support
from model_builder.export.version_store import read_build_info


def test_user_shards_exclude_the_history_and_merge_to_exact_search(tmp_path):
    out = tmp_path / "models"
    support.run_cli(
        "build", "--out", str(out), "--model-name", "shu", "--dataset", "synthetic", *support.FAST_TRAIN,
        "--shards", "2", check=True,
    )  # fmt: skip
    merged = json.loads((out / "shu.shards-1.json").read_text())["merged_verification"]
    assert merged["passed"] and not merged["seen_returned"], merged
    assert merged["recall_at_k"] == {"serving_default": 1.0, "search_by_vector": 1.0}
    infos = [read_build_info(out / f"shu-shard-{i}" / "1") for i in range(2)]
    assert [i["data"]["sharding"]["shard"] for i in infos] == [0, 1]
    assert sum(i["data"]["sharding"]["candidates"] for i in infos) == infos[0]["data"]["sharding"]["total_candidates"]
    for info in infos:
        assert info["verification"]["seen_excluded"] is True
        assert info["serving"]["items_are_queries"] is False
