"""One conformance suite for every Embedder: HashingEmbedder, and the bundled MiniLM (slow).

The contract is in graph/embed.py: ``embed(texts)`` returns one L2-normalised
float32 row per text, of width ``dim``; equal texts give equal rows, run after
run; cosine similarity (a dot product) is higher for closer texts; and
``embed_query(text)`` is a row of ``embed``. A row does not depend on the batch
it came in. MiniLM's batches and queries may run on different runtimes and
precisions (bfloat16 batches, a float32 query), so its rows are compared by
cosine similarity to within 0.999, the agreement graph/embed.py promises.
"""

from __future__ import annotations

import numpy as np
import pytest

from mindloop.graph import Embedder, HashingEmbedder, MiniLMEmbedder

TEXTS = ["rename the function", "rename that function", "bake a cake", "use tabs, not spaces", ""]


@pytest.fixture(scope="module", params=["hashing", pytest.param("minilm", marks=pytest.mark.slow)])
def embedder(request) -> Embedder:
    return HashingEmbedder(dim=256) if request.param == "hashing" else MiniLMEmbedder()


def agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Rows that are the same vector, up to the precision an embedder's runtimes differ by."""
    return bool(np.all(np.sum(a * b, axis=-1) > 0.999))


def test_one_unit_float32_row_per_text(embedder):
    vectors = embedder.embed(TEXTS)
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the empty text too
    assert isinstance(embedder.dim, int) and embedder.dim > 0 and isinstance(embedder.name, str) and embedder.name


def test_closer_texts_score_higher(embedder):
    rename, rename_too, cake, tabs, _ = embedder.embed(TEXTS)
    assert rename @ rename_too > rename @ cake
    assert rename @ rename_too > rename @ tabs
    assert rename @ rename > rename @ rename_too  # nothing is closer to a text than itself


def test_equal_texts_equal_rows_run_after_run(embedder):
    first = embedder.embed(TEXTS + TEXTS[:2])
    assert np.array_equal(first[0], first[len(TEXTS)]) and np.array_equal(first[1], first[len(TEXTS) + 1])
    assert agree(first, embedder.embed(TEXTS + TEXTS[:2]))


def test_a_row_does_not_depend_on_its_batch(embedder):
    batch = embedder.embed(TEXTS)
    singles = np.stack([embedder.embed([t])[0] for t in TEXTS])
    assert agree(batch, singles)
    assert agree(batch[::-1], embedder.embed(TEXTS[::-1]))


def test_a_query_is_a_row_of_embed(embedder):
    batch = embedder.embed(TEXTS[:4])
    queries = np.stack([embedder.embed_query(t) for t in TEXTS[:4]])
    assert queries.shape == batch.shape and agree(queries, batch)


@pytest.mark.parametrize("texts", [[], ()], ids=["list", "tuple"])
def test_no_texts_no_rows(embedder, texts):
    vectors = embedder.embed(texts)
    assert vectors.shape == (0, embedder.dim) and vectors.dtype == np.float32
