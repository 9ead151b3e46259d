"""The bundled all-MiniLM-L6-v2 embedder, for real (slow: loads the weights from the installed package)."""

from __future__ import annotations

import numpy as np
import pytest

import graph.embed
from graph import GraphConfig, MemoryGraph, MiniLMEmbedder
from graph.errors import GraphError

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


TEXTS = ["Rename the variable to total_count.", "word " * 2000, "", "bake a cake please \N{SHORTCAKE}",
         "How many grams of flour go into a loaf of sourdough?"]


def test_the_bfloat16_weights_stay_within_inference_precision_of_float32(minilm):
    exact = MiniLMEmbedder(dtype="model")
    fast = MiniLMEmbedder(dtype="bfloat16")
    assert fast.dtype_used is None  # resolved when the model loads
    ref = exact.embed(TEXTS)
    got = fast.embed(TEXTS)
    assert (exact.dtype_used, fast.dtype_used) == ("float32", "bfloat16") and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cos = (ref * got).sum(axis=1)
    assert cos.min() > 0.999 and np.abs(ref - got).max() > 0  # close, and really computed another way
    # one text goes through the modules directly, more through encode(): the same vectors (the long one truncated)
    one_by_one = np.concatenate([exact.embed([t]) for t in TEXTS])
    assert np.allclose(one_by_one, ref, atol=1e-6)


def test_auto_follows_the_cpu(monkeypatch):
    for native, want in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(graph.embed, "cpu_has_native_bf16", lambda native=native: native)
        e = MiniLMEmbedder(dtype="auto")
        e.embed(["x"])
        assert e.dtype_used == want


def test_an_unknown_dtype_is_refused_before_loading():
    with pytest.raises(GraphError, match="embedder dtype must be one of auto, model, bfloat16, got 'fp8'"):
        MiniLMEmbedder(dtype="fp8")


def test_a_query_runs_on_one_thread_fewer_and_leaves_every_other_thread_alone(minilm):
    import threading

    import torch

    before = torch.get_num_threads()
    seen: dict[str, object] = {}
    real_embed = minilm.embed

    def spy(texts):
        seen["thread"], seen["threads"] = threading.current_thread().name, torch.get_num_threads()
        return real_embed(texts)

    minilm.embed = spy
    try:
        q = minilm.embed_query("Rename the variable to total_count.")
    finally:
        del minilm.embed
    assert seen["thread"].startswith("mindloop-query") and seen["threads"] == max(1, before - 1)
    fresh: list[int] = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == before and fresh == [before]  # the caller's and a new thread's: untouched
    ref = minilm.embed(["Rename the variable to total_count."])[0]
    assert q.shape == (384,) and float(q @ ref) > 0.9999
