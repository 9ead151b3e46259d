"""The bundled all-MiniLM-L6-v2 embedder, for real (slow: loads the weights from the installed package)."""

from __future__ import annotations

import numpy as np
import pytest

from graph import GraphConfig, MemoryGraph, MiniLMEmbedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


def test_embeddings_are_normalised_and_semantic(minilm):
    v = minilm.embed(["Rename the variable to total_count.",
                      "Change that identifier's name to total_count.",
                      "The weather in Lisbon is sunny today."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > 0.6 > 0.2 > v[0] @ v[2]


def test_search_finds_a_paraphrase_by_vector_alone(tmp_path, minilm):
    """No shared content words: only the real embedding can connect these."""
    g = MemoryGraph.open(GraphConfig(home=tmp_path), embedder=minilm)
    try:
        target = g.log_turn("s", "user", "Stop proposing other options when I have told you exactly what to do.")
        g.log_turn("s2", "user", "How many grams of flour go into a loaf of sourdough?")
        g.log_turn("s3", "user", "Book a table for two at eight tonight.")
        assert g.flush()
        hits = g.search("quit suggesting alternatives after clear instructions", hops=0)
        assert hits[0].node.id == target.id and hits[0].signals == ["vector"]
    finally:
        g.close()
