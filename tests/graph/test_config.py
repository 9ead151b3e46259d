"""The config loader: defaults, then TOML, then MINDLOOP_* environment, then CLI flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from mindloop.graph import ConfigError, GraphConfig, load_config


def test_precedence(tmp_path):
    toml = tmp_path / "config.toml"
    toml.write_text('[graph]\nsearch_hops = 2\nsearch_k = 7\nrrf_k = 30\nhome = "/from/file"\n')
    env = {"MINDLOOP_GRAPH_SEARCH_K": "5", "MINDLOOP_HOME": "/from/env"}
    cfg = load_config(GraphConfig, "graph", file=toml, env=env, overrides={"rrf_k": 10, "search_hops": None})
    assert (cfg.search_hops, cfg.search_k, cfg.rrf_k) == (2, 5, 10)  # file, env, flag; None flag ignored
    assert cfg.home == Path("/from/env")


def test_home_config_file_is_found(tmp_path):
    (tmp_path / "config.toml").write_text('[graph]\nchroma_url = "http://127.0.0.1:9"\n')
    cfg = load_config(GraphConfig, "graph", env={"MINDLOOP_HOME": str(tmp_path)})
    assert cfg.chroma_url == "http://127.0.0.1:9" and cfg.home == tmp_path


def test_short_env_names_and_tuples():
    env = {"MINDLOOP_CHROMA_URL": "http://h:1", "MINDLOOP_GRAPH_SEARCH_EDGE_KINDS": "next, corrects"}
    cfg = load_config(GraphConfig, "graph", env=env)
    assert cfg.chroma_url == "http://h:1" and cfg.search_edge_kinds == ("next", "corrects")
    assert load_config(GraphConfig, "graph", env={"MINDLOOP_CHROMA_URL": "off"}).chroma_url is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MINDLOOP_GRAPH_SEARCH_K": "many"}, "graph.search_k: cannot read 'many' as int"),
        ({"MINDLOOP_GRAPH_SEARCH_K": "0"}, "search_k must be at least 1"),
        ({"MINDLOOP_GRAPH_DURABILITY": "sometimes"}, "'full' or 'normal'"),
        ({"MINDLOOP_GRAPH_EMBEDDER": "word2vec"}, "'minilm' or 'hashing'"),
        ({"MINDLOOP_GRAPH_EMBED_DTYPE": "float16"}, "embed_dtype must be 'auto', 'model' or 'bfloat16'"),
        ({"MINDLOOP_GRAPH_EMBED_QUERY_RUNTIME": "tensorrt"},
         "embed_query_runtime must be 'auto', 'onnx' or 'torch', got 'tensorrt'"),
        ({"MINDLOOP_GRAPH_SEARCH_EDGE_KINDS": "next,likes"}, "unknown kinds \\['likes'\\]"),
    ],
)
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GraphConfig, "graph", env=env)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GraphConfig, "graph", file=tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[graph\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(GraphConfig, "graph", file=bad, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[graph]\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match="unknown keys: colour"):
        load_config(GraphConfig, "graph", file=unknown, env={})


def test_every_field_has_help():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(GraphConfig))
