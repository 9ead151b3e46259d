"""Shared fixtures: a fresh data directory and a memory graph on the fake embedder."""

from __future__ import annotations

import pytest

from graph import GraphConfig, HashingEmbedder, MemoryGraph


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty MINDLOOP_HOME, also set in the environment for CLI calls."""
    d = tmp_path / "home"
    monkeypatch.setenv("MINDLOOP_HOME", str(d))
    monkeypatch.setenv("MINDLOOP_GRAPH_EMBEDDER", "hashing")
    return d


@pytest.fixture
def config(home):
    return GraphConfig(home=home, embedder="hashing", embed_poll_s=0.2)


@pytest.fixture
def graph(config):
    g = MemoryGraph.open(config, embedder=HashingEmbedder())
    yield g
    g.close()
