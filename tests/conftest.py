"""Shared fixtures: a fresh data directory and a memory graph on the fake embedder."""

from __future__ import annotations

import pytest

from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty MINDLOOP_HOME, also set in the environment for CLI calls."""
    d = tmp_path / "home"
    monkeypatch.setenv("MINDLOOP_HOME", str(d))
    monkeypatch.setenv("MINDLOOP_GRAPH_EMBEDDER", "hashing")
    monkeypatch.setenv("MINDLOOP_SIGNAL_READER", "off")  # the bundled reader model runs in slow tests only
    return d


@pytest.fixture
def config(home):
    return GraphConfig(home=home, embedder="hashing", embed_poll_s=0.2)


@pytest.fixture
def graph(config):
    g = MemoryGraph.open(config, embedder=HashingEmbedder())
    yield g
    g.close()


TINY_WORDS = ("hello hi rename the function to a file please ok done sure no yes it is was what how you i "
              "do not use tabs spaces class make".split())


def build_tiny_lm(path, seed: int = 0):
    """A tiny randomly initialised Llama and a word-level tokenizer with a chat template, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(TINY_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=2, eos_token_id=3, pad_token_id=1)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def as_version_1(db) -> None:
    """Rewrite a graph.db in the layout of schema version 1: one FTS5 column over ``nodes.text``."""
    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        for name in ("nodes_ai", "nodes_ad", "nodes_au"):
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP TABLE nodes_fts")
        conn.execute("DROP INDEX nodes_unindexed")  # schema 4's queued text, and its column
        conn.execute("ALTER TABLE nodes DROP COLUMN fts")
        conn.execute("ALTER TABLE nodes DROP COLUMN memory_text")
        conn.execute("ALTER TABLE nodes DROP COLUMN log_text")
        conn.execute("CREATE VIRTUAL TABLE nodes_fts USING fts5(text, content='nodes', content_rowid='rowid', "
                     "tokenize='porter unicode61 remove_diacritics 2')")
        conn.execute("CREATE TRIGGER nodes_ai AFTER INSERT ON nodes WHEN new.text IS NOT NULL BEGIN "
                     "INSERT INTO nodes_fts(rowid, text) VALUES (new.rowid, new.text); END")
        conn.execute("INSERT INTO nodes_fts(rowid, text) SELECT rowid, text FROM nodes WHERE text IS NOT NULL")
        conn.execute("PRAGMA user_version = 1")
    conn.close()


@pytest.fixture
def version_1():
    """:func:`as_version_1`, for tests in other folders (conftest is not importable under importlib mode)."""
    return as_version_1


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Path of a tiny causal LM (random weights, built locally) with a tokenizer and chat template."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


# The longest tests, started first: under `make test` (pytest-xdist, two workers) one worker runs them while
# the other works through everything else, so the run takes about as long as the longest of them, not the sum.
# xdist keeps two tests queued per worker: the one after the demo waits for it, so that one is short.
LONGEST_FIRST = ("test_examples.py::test_example_runs[00_demo.py]", "test_examples.py::test_examples_are_numbered",
                 "test_load.py::", "test_kill_cycle.py::", "test_examples.py::test_examples_on_the_bundled_models")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, key in enumerate(LONGEST_FIRST) if key in item.nodeid), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
