"""benchmarks/feature_quality.py's summary and flag parsing (the training it runs is the build's own)."""

from __future__ import annotations

import pytest

from benchmarks import feature_quality


def _seed(features10: float, id10: float, features100: float, id100: float, cold10: float) -> dict[str, float]:
    values = dict.fromkeys(feature_quality.METRICS, 0.1)
    values.update(
        {
            "warm_features_hr@10": features10,
            "warm_id_only_hr@10": id10,
            "warm_features_hr@100": features100,
            "warm_id_only_hr@100": id100,
            "cold_features_hr@10": cold10,
        }
    )
    return values


def test_summary_spreads_and_verdict_on_means():
    # Seed 1 has features behind at @10, but the mean is ahead: the verdict is on means.
    out = feature_quality.summarize({0: _seed(0.20, 0.18, 0.6, 0.61, 0.2), 1: _seed(0.17, 0.18, 0.6, 0.62, 0.05)})
    diff = out["metrics"]["warm_features_minus_id_only_hr@10"]
    assert diff["per_seed"] == [0.02, -0.01] and diff["mean"] == pytest.approx(0.005)
    assert out["metrics"]["warm_id_only_hr@10"]["sd"] == 0.0
    assert out["metrics"]["warm_features_hr@10"]["sd"] == pytest.approx(0.0212, abs=1e-4)
    assert out["verdict"] == {
        "warm_features_ge_id_only_hr@10": True,
        "warm_features_ge_id_only_hr@100": False,
        "cold_features_gt_popular_hr@10": True,
        "cold_features_gt_popular_hr@100": False,  # 0.1 vs 0.1: not beaten
    }


def test_overrides_take_the_field_type_and_refuse_unknown_names():
    assert feature_quality.train_overrides(["id_dropout=0.1", "epochs=30"]) == {"id_dropout": 0.1, "epochs": 30}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        feature_quality.train_overrides(["dropout=0.1"])
    with pytest.raises(SystemExit, match="not of type int"):
        feature_quality.train_overrides(["epochs=many"])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        feature_quality.train_overrides(["seed=3"])  # seeds come from --seeds
