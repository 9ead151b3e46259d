"""One conformance suite for every VectorIndex backend: embedded Chroma and a real `chroma run` server.

The contract is in graph/index.py: ids are keyed per scope, upsert is
idempotent, scores are cosine similarities (higher is closer), a query never
returns another scope's ids, and drop_scope removes a scope at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mindloop.graph import ChromaIndex, GraphConfig, HashingEmbedder, IndexUnavailable, MemoryGraph

EMB = HashingEmbedder(dim=64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """A real Chroma server on 127.0.0.1, started from the installed `chroma` command."""
    exe = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    port = _free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as response:
                response.read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chroma run did not start on {url} (exit {proc.poll()})")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(params=["embedded", pytest.param("server", marks=pytest.mark.slow)])
def index(request, tmp_path):
    if request.param == "embedded":
        idx = ChromaIndex(path=tmp_path / "chroma")
    else:
        idx = ChromaIndex(url=request.getfixturevalue("chroma_server"))
        for scope in idx.scopes():  # the server is shared by the module's tests
            idx.drop_scope(scope)
    yield idx
    idx.close()


def meta(kind="turn", created=0.0):
    return {"kind": kind, "created": created}


def test_query_scores_are_similarities_higher_is_closer(index):
    texts = ["rename the function", "rename a function", "bake bread at home"]
    index.upsert("a", ["n0", "n1", "n2"], EMB.embed(texts), [meta()] * 3)
    hits = index.query("a", EMB.embed(["rename the function"])[0], 3)
    assert [i for i, _ in hits] == ["n0", "n1", "n2"]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert hits[0][1] > hits[1][1] > hits[2][1]


def test_upsert_is_idempotent_and_replaces(index):
    v = EMB.embed(["one", "two"])
    index.upsert("a", ["x"], v[:1], [meta()])
    index.upsert("a", ["x"], v[:1], [meta()])
    assert index.count("a") == 1 and index.ids("a") == {"x"}
    index.upsert("a", ["x"], v[1:], [meta()])
    assert index.query("a", v[1], 1)[0][1] == pytest.approx(1.0, abs=1e-4)


def test_scopes_never_mix(index):
    v = EMB.embed(["shared words here"])
    index.upsert("a", ["in-a"], v, [meta()])
    index.upsert("b", ["in-b"], v, [meta()])
    assert [i for i, _ in index.query("a", v[0], 10)] == ["in-a"]
    assert [i for i, _ in index.query("b", v[0], 10)] == ["in-b"]
    assert index.query("nobody", v[0], 10) == []
    assert set(index.scopes()) == {"a", "b"}


def test_filters_and_k_larger_than_collection(index):
    v = EMB.embed(["alpha", "beta", "gamma"])
    index.upsert("a", ["t", "m", "old"], v, [meta("turn", 100.0), meta("memory", 100.0), meta("memory", 1.0)])
    assert {i for i, _ in index.query("a", v[0], 50, kinds=["memory"])} == {"m", "old"}
    assert {i for i, _ in index.query("a", v[0], 50, kinds=["memory"], since=50.0)} == {"m"}
    assert len(index.query("a", v[0], 50)) == 3


def test_delete_and_drop_scope(index):
    v = EMB.embed(["a", "b"])
    index.upsert("a", ["x", "y"], v, [meta()] * 2)
    index.delete("a", ["x", "absent"])
    assert index.ids("a") == {"y"}
    index.drop_scope("a")
    assert index.ids("a") == set() and index.count("a") == 0 and "a" not in index.scopes()
    index.drop_scope("a")  # absent: not an error
    index.delete("a", ["y"])


def test_ids_pages_through_large_collections(index):
    n = 10_050
    vecs = np.tile(EMB.embed(["x"]), (n, 1))
    for i in range(0, n, 2500):
        ids = [f"n{j}" for j in range(i, min(n, i + 2500))]
        index.upsert("big", ids, vecs[: len(ids)], [meta()] * len(ids))
    assert len(index.ids("big")) == n


@pytest.mark.slow
def test_memory_graph_on_a_chroma_server(chroma_server, tmp_path):
    """Two graphs (as two processes would be) share one server: both write vectors, both search them."""
    cfg = GraphConfig(home=tmp_path / "h", chroma_url=chroma_server, embedder="hashing")
    g1 = MemoryGraph.open(cfg, embedder=HashingEmbedder())
    g2 = MemoryGraph.open(cfg, embedder=HashingEmbedder())
    try:
        assert g1.index is not None and g2.index is not None  # no single-writer lock with a server
        t1 = g1.log_turn("s", "user", "server mode rename request", scope="srv")
        t2 = g2.log_turn("s2", "user", "server mode refactor request", scope="srv")
        assert g1.flush() and g2.flush()
        assert g1.index.ids("srv") == {t1.id, t2.id}
        hit = g2.search("rename request", scope="srv", hops=0)[0]
        assert hit.node.id == t1.id and "vector" in hit.signals
    finally:
        g2.close()
        g1.close()


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(IndexUnavailable, match="not reachable"):
        ChromaIndex(url=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(IndexUnavailable, match="http://host:port"):
        ChromaIndex(url="ftp://nowhere")


def test_embedded_chroma_has_one_writer(tmp_path):
    first = ChromaIndex(path=tmp_path / "c")
    try:
        with pytest.raises(IndexUnavailable, match=f"in use by pid {os.getpid()}"):
            ChromaIndex(path=tmp_path / "c")
    finally:
        first.close()
    ChromaIndex(path=tmp_path / "c").close()  # released on close


def test_every_kind_with_text_has_a_collection():
    from mindloop.graph.index import EMBEDDED_KINDS
    from mindloop.graph.records import NODE_CLASSES, Node

    with_text = {k for k, cls in NODE_CLASSES.items() if cls.embed_text is not Node.embed_text}
    assert set(EMBEDDED_KINDS) == with_text


def test_kinds_query_only_their_collections(index):
    v = EMB.embed(["same text", "same text"])
    index.upsert("a", ["t1", "m1"], v, [meta("turn"), meta("memory")])
    assert [i for i, _ in index.query("a", v[0], 5, kinds=["memory"])] == ["m1"]
    assert {i for i, _ in index.query("a", v[0], 5)} == {"t1", "m1"}
    assert index.ids("a") == {"t1", "m1"} and index.count("a") == 2
    index.delete("a", ["m1"])
    assert index.query("a", v[0], 5, kinds=["memory"]) == []
