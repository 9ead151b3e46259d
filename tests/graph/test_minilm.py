"""The bundled all-MiniLM-L6-v2 embedder, for real (slow: loads the weights from the installed package)."""

from __future__ import annotations

import numpy as np
import pytest

from mindloop.graph import embed as graph_embed
from mindloop.graph import GraphConfig, MemoryGraph, MiniLMEmbedder
from mindloop.graph.errors import GraphError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    from mindloop.trainer.export import onnx_export  # the graph never imports torch: the exporter comes from the trainer

    return MiniLMEmbedder(onnx_exporter=onnx_export)


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
        monkeypatch.setattr(graph_embed, "cpu_has_native_bf16", lambda native=native: native)
        e = MiniLMEmbedder(dtype="auto")
        e.embed(["x"])
        assert e.dtype_used == want


def test_an_unknown_dtype_or_query_runtime_is_refused_before_loading():
    with pytest.raises(GraphError, match="embedder dtype must be one of auto, model, bfloat16, got 'fp8'"):
        MiniLMEmbedder(dtype="fp8")
    with pytest.raises(GraphError, match="query_runtime must be one of auto, onnx, torch, got 'tvm'"):
        MiniLMEmbedder(query_runtime="tvm")


def test_a_torch_query_runs_on_one_thread_fewer_and_leaves_every_other_thread_alone():
    import threading

    import torch

    minilm = MiniLMEmbedder(query_runtime="torch")
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
    assert q.shape == (384,) and float(q @ ref) > 0.9999 and minilm.query_runtime_used == "torch"


# -- queries on ONNX Runtime ------------------------------------------------------------------------------------


def test_a_query_on_onnx_runtime_is_the_float32_model(minilm):
    """The default query path runs the ONNX export: the float32 model's vectors, not an approximation of them."""
    exact = MiniLMEmbedder(dtype="model", query_runtime="torch")
    got = np.stack([minilm.embed_query(t) for t in TEXTS])
    assert minilm.query_runtime_used == "onnx"
    ref = exact.embed(TEXTS)  # the long text truncated the same way
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    cos = (ref * got).sum(axis=1)
    assert cos.min() > 0.99999, cos  # bfloat16 batches are only above 0.999


@pytest.fixture(scope="module")
def exported(tmp_path_factory, minilm):
    """One real export, read back as bytes, for the cache tests (an export takes about 10 s)."""
    minilm.embed_query("warm up")
    from mindloop.graph.embed import onnx_cache_file

    return onnx_cache_file(minilm.path, minilm.name).read_bytes()


def test_the_export_is_cached_and_the_next_embedder_reads_it(tmp_path, monkeypatch, exported, minilm):
    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    first = MiniLMEmbedder(onnx_exporter=lambda path: calls.append(path) or exported)
    q = first.embed_query("Rename the variable to total_count.")
    cached = graph_embed.onnx_cache_file(first.path, first.name)
    assert calls == [first.path] and cached.read_bytes() == exported
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left behind

    second = MiniLMEmbedder()  # no exporter: what the graph opened on its own gets, once an export is cached
    again = second.embed_query("Rename the variable to total_count.")
    assert calls == [first.path] and second.query_runtime_used == "onnx"  # read, not exported again
    assert np.allclose(q, again, atol=1e-6) and float(q @ minilm.embed_query("Rename the variable to total_count.")) > 0.99999


def test_a_damaged_cached_export_is_exported_again_and_replaced(tmp_path, monkeypatch, exported):
    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(tmp_path / "cache"))
    e = MiniLMEmbedder()
    cached = graph_embed.onnx_cache_file(e.path, e.name)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(exported[: len(exported) // 3])  # torn by a crash mid-write
    without = MiniLMEmbedder()  # nothing to export with: torch, and the torn file is left for one that can
    assert without.embed_query("x").shape == (384,) and without.query_runtime_used == "torch"
    with pytest.raises(GraphError, match="does not load .* and there is no exporter to make it again"):
        MiniLMEmbedder(query_runtime="onnx").embed_query("x")
    calls: list[str] = []
    e.onnx_exporter = lambda path: calls.append(path) or exported
    q = e.embed_query("bake a cake please")
    assert calls == [e.path] and e.query_runtime_used == "onnx" and cached.read_bytes() == exported
    assert float(q @ MiniLMEmbedder(dtype="model").embed(["bake a cake please"])[0]) > 0.99999


def test_a_cache_that_cannot_be_written_costs_only_the_export(tmp_path, monkeypatch, exported):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(blocked / "cache"))  # cannot be created
    e = MiniLMEmbedder(onnx_exporter=lambda path: exported)
    q = e.embed_query("bake a cake please")
    assert e.query_runtime_used == "onnx" and q.shape == (384,) and blocked.read_text() == "not a folder"


def test_without_onnxruntime_auto_falls_back_to_torch_and_onnx_says_what_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    auto = MiniLMEmbedder()
    q = auto.embed_query("Rename the variable to total_count.")
    assert auto.query_runtime_used == "torch" and q.shape == (384,)
    with pytest.raises(GraphError, match="'onnx' needs onnxruntime: pip install onnxruntime"):
        MiniLMEmbedder(query_runtime="onnx").embed_query("x")


def test_a_failed_export_falls_back_to_torch_under_auto_and_is_an_error_under_onnx(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(tmp_path / "cache"))

    def fail(path):
        raise ModuleNotFoundError("No module named 'onnxscript'")

    auto = MiniLMEmbedder(onnx_exporter=fail)
    with caplog.at_level("WARNING", logger="mindloop.graph.embed"):
        q = auto.embed_query("Rename the variable to total_count.")
    assert auto.query_runtime_used == "torch" and q.shape == (384,)
    assert "cannot run all-MiniLM-L6-v2 on ONNX Runtime: No module named 'onnxscript'" in caplog.text
    with pytest.raises(GraphError, match="cannot run all-MiniLM-L6-v2 on ONNX Runtime: No module named 'onnxscript'"):
        MiniLMEmbedder(query_runtime="onnx", onnx_exporter=fail).embed_query("x")
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_without_an_exporter_or_a_cached_export_auto_runs_torch_and_onnx_says_how_to_get_one(tmp_path, monkeypatch,
                                                                                              caplog):
    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(tmp_path / "cache"))
    auto = MiniLMEmbedder()
    with caplog.at_level("INFO", logger="mindloop.graph.embed"):
        q = auto.embed_query("Rename the variable to total_count.")
    assert auto.query_runtime_used == "torch" and q.shape == (384,)
    assert "no ONNX export of all-MiniLM-L6-v2 is cached" in caplog.text
    with pytest.raises(GraphError, match="no ONNX export of all-MiniLM-L6-v2 is cached .* given no exporter: open "
                                         "the graph through mindloop.trainer.export.open_graph"):
        MiniLMEmbedder(query_runtime="onnx").embed_query("x")
    assert not (tmp_path / "cache").exists()


def test_the_mindloop_command_opens_the_graph_with_the_exporter(tmp_path):
    """What a user's graph gets: the trainer's exporter, so its first search makes the ONNX export."""
    from mindloop.trainer.export import graph_embedder, onnx_export, open_graph

    config = GraphConfig(home=tmp_path / "g")
    assert graph_embedder(config).onnx_exporter is onnx_export
    with open_graph(config) as g:
        assert g.embedder.onnx_exporter is onnx_export
    assert graph_embedder(GraphConfig(home=tmp_path / "h", embedder="hashing")).name == "hashing-384"
