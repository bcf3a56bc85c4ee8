"""The text catalogue's parts: WordNet parsing, and all-MiniLM-L6-v2 as run here against its published outputs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import text_embeddings, wordnet


def test_wordnet_line_gives_lemmas_definition_and_examples():
    line = (
        "02084071 05 n 05 dog 0 domestic_dog 0 Canis_familiaris 0 x 0 y 0 001 @ 02083346 n 0000 | a member of the "
        'genus Canis; "the dog barked all night"; "a loyal dog"  '
    )
    text, examples = wordnet.parse_line(line)
    assert text == "dog, domestic dog, Canis familiaris, x, y: a member of the genus Canis"
    assert examples == ["the dog barked all night", "a loyal dog"]
    assert wordnet.parse_line("  1 This software and database is being provided to you, the LICENSEE, by  ") is None


def test_wordnet_corpus_is_installed_and_complete():
    # `make datasets` installs Debian's wordnet-base; a missing copy is a failure with the hint, not a skip.
    assert (wordnet.WORDNET / "data.noun").is_file(), f"missing: {wordnet.WORDNET_HINT}"
    corpus = wordnet.load()
    assert len(corpus.items) == 117_659  # WordNet 3.0's synsets
    assert len(corpus.examples) > 40_000 and all(corpus.examples[:100])
    assert not set(corpus.examples) & set(corpus.items[:1000])


@pytest.fixture(scope="module")
def encoder():
    return text_embeddings.MiniLM()


def test_minilm_matches_the_similarities_sentence_transformers_publishes(encoder):
    # sbert.net, "Semantic Textual Similarity" (all-MiniLM-L6-v2): cosine similarities printed to 4 decimals.
    left = encoder.encode(["The new movie is awesome", "The cat sits outside", "A man is playing guitar"])
    right = encoder.encode(["The dog plays in the garden", "The new movie is so great", "A woman watches TV"])
    published = np.array([[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310], [0.2277, -0.0136, -0.0327]])
    assert np.abs(left @ right.T - published).max() < 6e-5
    # sbert.net quickstart: "The weather is lovely today." / "It's so sunny outside!" / "He drove to the stadium."
    e = encoder.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert np.abs((e @ e.T)[np.triu_indices(3, 1)] - [0.6660, 0.1046, 0.1411]).max() < 6e-5


def test_minilm_rows_are_unit_and_independent_of_batching(encoder):
    texts = ["a", "a considerably longer sentence that needs more tokens than the others", "mid length text"]
    together = encoder.encode(texts)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert together.shape == (3, 384) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-5), "padding must not change a sentence's embedding"
