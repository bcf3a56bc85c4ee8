"""search_filtered against exact filtered search in numpy: allow, deny, where, exclude, crowding,
a 1% filter (exact path), and rows with different filters in one batch answered as if alone.

The model is exported and loaded back (tf.saved_model.load), so the signatures tested are the
ones TF Serving runs. Catalogue: 3,000 int64 items, item -> similar items (the query item is
excluded too), ScaNN brute force, fetch 500: rows above 4 * 10 / 500 = 8% selectivity take the
over-fetch path, rows below it the exact path.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import model_builder.scann_import  # noqa: F401  (ScaNN ops before loading)
from model_builder.contract import Catalogue
from model_builder.export import version_store
from model_builder.export.filters import FilterOptions
from model_builder.export.serving_graph import RetrievalModule, ServingOptions
from model_builder.index import config as index_config
from model_builder.index.attributes import AttributeTables, _tables, brute_force_filter

N, D, K, TOKENS, EXCLUDE = 3_000, 16, 10, 8, 16
GENRES = ("a", "b", "c", "d")


def catalogue_attributes(rng) -> AttributeTables:
    genres = [tuple(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)) for _ in range(N)]
    # "rare" on 1% of the items: a filter on it is far below the approximate path's threshold.
    rare = np.zeros(N, bool)
    rare[rng.choice(N, N // 100, replace=False)] = True
    tags = [("rare",) if r else () for r in rare]
    year = rng.integers(1950, 2000, N).astype(np.float32)
    year[::97] = np.nan  # items without a year fail every bounded range
    return _tables({"genre": genres, "tag": tags}, {"year": year}, N, "genre", "test")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    ids = np.arange(N, dtype=np.int64) + 1000
    tables = catalogue_attributes(rng)
    resolved = index_config.resolve(index_config.IndexConfig(algorithm="brute_force"), N, D, K)
    searcher, _ = index_config.build_searcher(vectors, resolved, K)
    options = ServingOptions(
        k=K, attributes=tables, filters=FilterOptions(tokens_width=TOKENS, exclude_width=EXCLUDE, fetch=500)
    )
    module = RetrievalModule(Catalogue(ids, None, ids, vectors), resolved, searcher, options)
    folder = tmp_path_factory.mktemp("filters") / "1"
    version_store.save_module(module, module.signatures(), folder)
    return folder, vectors, ids, tables


@pytest.fixture(scope="module")
def model(exported):
    folder, vectors, ids, tables = exported
    return tf.saved_model.load(str(folder)).signatures, vectors, ids, tables


def request(rows: list[dict], ids: np.ndarray) -> dict:
    """Filter dicts -> the signature's fixed-width tensors (what the client sends)."""

    def tokens(spec):
        flat = [f"{ns}={t}" for ns, ts in (spec or {}).items() for t in ts]
        return flat + [""] * (TOKENS - len(flat))

    lower = [[(r.get("where") or {}).get("year", (-np.inf, np.inf))[0]] for r in rows]
    upper = [[(r.get("where") or {}).get("year", (-np.inf, np.inf))[1]] for r in rows]
    return {
        "ids": tf.constant([r["q"] for r in rows], tf.int64),
        "allow": tf.constant([tokens(r.get("allow")) for r in rows]),
        "deny": tf.constant([tokens(r.get("deny")) for r in rows]),
        "exclude": tf.constant(
            [list(r.get("exclude", [])) + [-1] * (EXCLUDE - len(r.get("exclude", []))) for r in rows], tf.int64
        ),
        "lower": tf.constant(lower, tf.float32),
        "upper": tf.constant(upper, tf.float32),
        "max_per": tf.constant([r.get("max_per", 0) for r in rows], tf.int32),
    }


def exact(row: dict, vectors, ids, tables, drop_query: bool = True) -> list[int]:
    """Exact filtered (and crowded) top-k in numpy: the reference."""
    q = int(row["q"]) - 1000
    keep = brute_force_filter(tables, row.get("allow"), row.get("deny"), row.get("where"))
    keep[q] = keep[q] and not drop_query
    keep[np.isin(ids, row.get("exclude", []))] = False
    scores = vectors @ vectors[q]
    out, per_group = [], {}
    for i in np.argsort(-scores, kind="stable"):
        if not keep[i]:
            continue
        group = tables.crowd_group[i]
        if row.get("max_per") and per_group.get(group, 0) >= row["max_per"]:
            continue
        per_group[group] = per_group.get(group, 0) + 1
        out.append(int(ids[i]))
        if len(out) == K:
            break
    return out


def served(signatures, rows, ids) -> list[list[int]]:
    out = signatures["search_filtered"](**request(rows, ids))
    assert out["found"].numpy().all()
    return [[int(i) for i, s in zip(r, sc) if s > -np.inf] for r, sc in zip(out["ids"].numpy(), out["scores"].numpy())]


CASES = [
    {},
    {"allow": {"genre": ["a"]}},
    {"allow": {"genre": ["a", "c"]}, "deny": {"genre": ["b"]}},
    {"deny": {"genre": ["a", "b"]}, "where": {"year": (1990, np.inf)}},
    {"where": {"year": (1960, 1969)}},
    {"allow": {"tag": ["rare"]}},  # 1% of the catalogue: the exact path
    {"allow": {"tag": ["rare"], "genre": ["d"]}},  # ~0.4%
    {"where": {"year": (1977, 1977)}, "allow": {"genre": ["b"]}},  # ~0.8%
    {"max_per": 1},
    {"max_per": 2, "allow": {"genre": ["a", "b"]}},
    {"max_per": 1, "allow": {"tag": ["rare"]}},
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_filtered_answer_is_the_exact_filtered_top_k(model, case):
    signatures, vectors, ids, tables = model
    rows = [{"q": int(ids[q]), **CASES[case]} for q in (3, 500, 1234, 2999)]
    got = served(signatures, rows, ids)
    for row, answer in zip(rows, got):
        assert answer == exact(row, vectors, ids, tables), row
    if CASES[case].get("allow", {}).get("tag"):
        selectivity = brute_force_filter(tables, CASES[case].get("allow"), None, CASES[case].get("where")).mean()
        assert selectivity <= 0.011  # really below the 8% threshold: the exact path answered


def test_excluded_ids_are_never_returned(model):
    signatures, vectors, ids, tables = model
    q = int(ids[42])
    first = served(signatures, [{"q": q}], ids)[0]
    row = {"q": q, "exclude": first[:5] + [987654]}  # an unknown id excludes nothing
    got = served(signatures, [row], ids)[0]
    assert not set(got) & set(first[:5]) and got == exact(row, vectors, ids, tables)


def test_rows_with_different_filters_in_one_batch_are_answered_as_if_alone(model):
    signatures, vectors, ids, tables = model
    rng = np.random.default_rng(1)
    rows = [{"q": int(ids[rng.integers(N)]), **CASES[i % len(CASES)]} for i in range(33)]
    together = served(signatures, rows, ids)
    for row, answer in zip(rows, together):
        assert answer == served(signatures, [row], ids)[0] == exact(row, vectors, ids, tables), row


def test_unknown_tokens_match_nothing_when_allowed_and_exclude_nothing_when_denied(model):
    signatures, vectors, ids, tables = model
    q = int(ids[7])
    rows = [
        {"q": q, "allow": {"genre": ["no-such-genre"]}},
        {"q": q, "allow": {"nope": ["x"]}},
        {"q": q, "deny": {"genre": ["no-such-genre"], "nope": ["x"]}},
        {"q": q},
    ]
    got = served(signatures, rows, ids)
    assert got[0] == [] and got[1] == []
    assert got[2] == got[3] == exact({"q": q}, vectors, ids, tables)


def test_a_row_of_the_wrong_width_is_refused_by_its_shape(model):
    signatures, _, ids, _ = model
    inputs = request([{"q": int(ids[0])}], ids)
    inputs["allow"] = tf.constant([[""] * (TOKENS + 1)])
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        signatures["search_filtered"](**inputs)


def test_filter_schema_publishes_vocabulary_numeric_attributes_and_crowding(model):
    signatures, _, _, tables = model
    out = signatures["filter_schema"](index=tf.range(64, dtype=tf.int64))
    size = int(out["size"].numpy()[0])
    entries = [e.decode() for e in out["entry"].numpy()[:size]]
    assert entries[: len(tables.vocabulary)] == [f"token:{t}" for t in tables.vocabulary]
    assert "numeric:year" in entries and "crowding:genre" in entries and "fetch:500" in entries
    assert out["found"].numpy().sum() == size


def test_item_attributes_file_is_the_item_features_format(tmp_path):
    from model_builder.data.features import read_features
    from model_builder.errors import ConfigError
    from model_builder.index.attributes import from_feature_table

    path = tmp_path / "attributes.csv"
    path.write_text(
        "item_id,genre:multi,studio:categorical,year:numeric\n2,Comedy|Drama,A24,1999\n1,Horror,,\n9,Drama,X,2001\n"
    )
    candidates = np.asarray([1, 2, 3], np.int64)  # 3 has no row; 9 is not in the catalogue
    table = read_features(path, "item", candidates.dtype)
    tables = from_feature_table(table, candidates, crowding="genre")
    assert tables.vocabulary == ("genre=Comedy", "genre=Drama", "genre=Horror", "studio=A24")
    assert tables.membership.tolist() == [[False, False, True, False], [True, True, False, True], [False] * 4]
    assert tables.numeric_names == ("year",) and np.isnan(tables.numeric[[0, 2], 0]).all()
    assert tables.numeric[1, 0] == 1999
    # Crowding: an item's first token in the namespace; an item without one is a group of its own.
    assert tables.crowd_group[0] == 2 and tables.crowd_group[1] == 0 and tables.crowd_group[2] == 4 + 2
    with pytest.raises(ConfigError, match="'genres' is not a token namespace"):
        from_feature_table(table, candidates, crowding="genres")


def test_search_by_vector_filtered_filters_the_same_way(model):
    signatures, vectors, ids, tables = model
    rows = [{"q": int(ids[q]), **CASES[i]} for i, q in ((1, 5), (3, 900), (5, 1500), (9, 2000))]
    inputs = request(rows, ids)
    inputs.pop("ids")
    rows_q = [int(r["q"]) - 1000 for r in rows]
    out = signatures["search_by_vector_filtered"](vectors=tf.constant(vectors[rows_q]), **inputs)
    for row, got, scores in zip(rows, out["ids"].numpy(), out["scores"].numpy()):
        # No query item to drop here: a vector has no item.
        got = [int(i) for i, s in zip(got, scores) if s > -np.inf]
        assert got == exact(row, vectors, ids, tables, drop_query=False), row


def test_empty_batches_and_unknown_queries_under_filters(model):
    signatures, vectors, ids, _ = model
    empty = request([], ids)
    empty["ids"] = tf.zeros([0], tf.int64)
    for name in ("allow", "deny"):
        empty[name] = tf.zeros([0, TOKENS], tf.string)
    empty["exclude"] = tf.zeros([0, EXCLUDE], tf.int64)
    empty["lower"], empty["upper"] = tf.zeros([0, 1]), tf.zeros([0, 1])
    assert signatures["search_filtered"](**empty)["ids"].shape == (0, K)
    # An unknown id (and a NaN vector) is found = false with padding; its neighbour is answered.
    inputs = request([{"q": 10**9}, {"q": int(ids[3]), **CASES[1]}], ids)
    out = signatures["search_filtered"](**inputs)
    assert out["found"].numpy().tolist() == [False, True] and (out["ids"].numpy()[0] == -1).all()
    inputs.pop("ids")
    queries = np.stack([np.full(D, np.nan, np.float32), vectors[3]])
    out = signatures["search_by_vector_filtered"](vectors=tf.constant(queries), **inputs)
    assert out["found"].numpy().tolist() == [False, True] and np.isneginf(out["scores"].numpy()[0]).all()


def test_the_over_fetch_path_of_a_tree_ah_index_keeps_recall(tmp_path):
    # The index re-scores only `reorder` (100) candidates by default: the filtered pool of `fetch`
    # (1024) must be re-scored whole, or the allowed among it are ranked by AH codes alone
    # (recall@10 0.57 at 10% selectivity on 100k x 32 before this was fixed).
    from model_builder.data.synthetic import clustered_embeddings

    n, dim = 30_000, 16
    rng = np.random.default_rng(5)
    vectors = clustered_embeddings(n, dim, num_clusters=100, seed=2).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    tokens = [("p50",) * int(r < 0.5) + ("p10",) * int(r < 0.1) for r in rng.random(n)]
    tables = _tables({"s": tokens}, {}, n, None, "test")
    cfg = index_config.IndexConfig(algorithm="tree_ah", num_leaves=170, num_leaves_to_search=17)
    resolved = index_config.resolve(cfg, n, dim, K)
    searcher, _ = index_config.build_searcher(vectors, resolved, K)
    module = RetrievalModule(
        Catalogue(ids, None, ids, vectors), resolved, searcher, ServingOptions(k=K, attributes=tables)
    )
    version_store.save_module(module, module.signatures(), tmp_path / "1")
    search = tf.saved_model.load(str(tmp_path / "1")).signatures["search_by_vector_filtered"]
    queries = vectors[rng.choice(n, 100, replace=False)]
    for token in ("p50", "p10"):
        allow = np.full((100, 16), b"", dtype=object)
        allow[:, 0] = f"s={token}".encode()
        out = search(
            vectors=tf.constant(queries),
            allow=tf.constant(allow),
            deny=tf.constant(np.full((100, 16), b"", dtype=object)),
            exclude=tf.constant(np.full((100, 64), -1, np.int64)),
            lower=tf.zeros([100, 0]),
            upper=tf.zeros([100, 0]),
            max_per=tf.zeros([100], tf.int32),
        )["ids"].numpy()
        sims = queries @ vectors.T
        sims[:, ~tables.membership[:, tables.vocabulary.index(f"s={token}")]] = -np.inf
        truth = np.argsort(-sims, axis=1)[:, :K]
        recall = np.mean([len(set(o) & set(t)) / K for o, t in zip(out, truth)])
        assert recall >= 0.95, (token, recall)


def test_serving_rules_require_fixed_widths_and_the_filtered_signatures_have_them(exported, tmp_path):
    from model_builder.compat import serving_rules
    from model_builder.compat.ops import saved_model_signatures

    class Ragged(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="allow")])
        def run(self, allow):
            return {"n": tf.shape(allow)[:1]}

    module = Ragged()
    tf.saved_model.save(module, str(tmp_path / "ragged"), signatures={"serving_default": module.run})
    [violation] = serving_rules.width_rules(saved_model_signatures(tmp_path / "ragged"), padding=False)
    assert violation.rule is serving_rules.FIXED_WIDTH and "'allow'" in str(violation)
    assert serving_rules.width_rules(saved_model_signatures(tmp_path / "ragged"), padding=True) == []
    signatures = saved_model_signatures(exported[0])
    assert "search_filtered" in signatures and serving_rules.width_rules(signatures, padding=False) == []


def test_packed_token_bits_span_several_words():
    """70 tokens (3 int32 words per item), namespaces straddling word boundaries: allow/deny from the
    packed bitsets equal the numpy reference, bit 31 (the int32 sign bit) included."""
    from model_builder.export.filters import FilterTables

    rng = np.random.default_rng(3)
    n = 500
    colour = [tuple(f"c{i}" for i in rng.choice(40, rng.integers(0, 4), replace=False)) for _ in range(n)]
    size = [tuple(f"s{i}" for i in rng.choice(30, rng.integers(0, 3), replace=False)) for _ in range(n)]
    tables = _tables({"colour": colour, "size": size}, {}, n, None, "test")
    assert len(tables.vocabulary) == 70
    filters = FilterTables(tables, np.arange(n, dtype=np.int64), FilterOptions(tokens_width=4), K)
    assert filters.words == 3
    sign_bit = tables.vocabulary[31].split("=")  # the token stored in bit 31 of word 0
    specs = [
        ({"colour": ["c0", "c39"]}, None),
        ({sign_bit[0]: [sign_bit[1]]}, {"size": ["s29"]}),
        ({"colour": ["c5"], "size": ["s1", "s2"]}, {"colour": ["c6"]}),
        (None, {"size": ["s0", "s10", "s20"], "colour": ["c31"]}),
    ]

    def tokens(spec):
        flat = [f"{ns}={t}" for ns, ts in (spec or {}).items() for t in ts]
        return flat + [""] * (4 - len(flat))

    got = filters.allowed(
        tf.constant([tokens(a) for a, _ in specs]),
        tf.constant([tokens(d) for _, d in specs]),
        tf.fill([len(specs), EXCLUDE], tf.constant(-1, tf.int64)),
        tf.zeros([len(specs), 0]),
        tf.zeros([len(specs), 0]),
        tf.zeros([len(specs), 0], tf.int64),
    ).numpy()
    for row, (a, d) in zip(got, specs):
        reference = brute_force_filter(tables, a, d)
        assert 0 < reference.sum() < n
        assert row.tolist() == reference.tolist(), (a, d)
