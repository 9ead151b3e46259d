"""mindloop's memory graph: durable, vector-backed, LLM-free logging and retrieval.

SQLite (WAL) is the source of truth; Chroma holds one vector per embeddable
node, computed by us in a background worker; a networkx view serves
neighbourhoods, paths and communities; ``search`` fuses vector, lexical and
graph signals. This package imports nothing else of mindloop and never torch
(the MiniLM embedder loads it lazily, on first use).

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig, HashingEmbedder, MemoryGraph
    >>> with MemoryGraph.open(GraphConfig(home=tempfile.mkdtemp()), embedder=HashingEmbedder()) as g:
    ...     _ = g.log_turn("s1", "user", "use tabs, not spaces")
    ...     [h.node.text for h in g.search("tabs")]
    ['use tabs, not spaces']
"""

from mindloop.graph.config import ConfigError, GraphConfig, default_home, load_config
from mindloop.graph.embed import Embedder, HashingEmbedder, MiniLMEmbedder, make_embedder
from mindloop.graph.errors import (
    DiskFull,
    GraphError,
    IndexUnavailable,
    InvalidRecord,
    InvalidText,
    NodeNotFound,
    ScopeMismatch,
    StoreCorrupt,
    TextTooLarge,
    UnknownKind,
)
from mindloop.graph.index import ChromaIndex, VectorIndex
from mindloop.graph.memory_graph import MemoryGraph, session_id, turn_id
from mindloop.graph.records import (
    Alert,
    Checkpoint,
    Edge,
    EdgeKind,
    Eval,
    Example,
    Flag,
    FlagType,
    Memory,
    Node,
    NodeKind,
    Pattern,
    Run,
    Session,
    Turn,
    record_from_json,
)
from mindloop.graph.search import Hit
from mindloop.graph.store import Store
from mindloop.graph.view import GraphView

__all__ = [
    "Alert",
    "Checkpoint",
    "ChromaIndex",
    "ConfigError",
    "DiskFull",
    "Edge",
    "EdgeKind",
    "Embedder",
    "Eval",
    "Example",
    "Flag",
    "FlagType",
    "GraphConfig",
    "GraphError",
    "GraphView",
    "HashingEmbedder",
    "Hit",
    "IndexUnavailable",
    "InvalidRecord",
    "InvalidText",
    "Memory",
    "MemoryGraph",
    "MiniLMEmbedder",
    "Node",
    "NodeKind",
    "NodeNotFound",
    "Pattern",
    "Run",
    "ScopeMismatch",
    "Session",
    "Store",
    "StoreCorrupt",
    "TextTooLarge",
    "Turn",
    "UnknownKind",
    "VectorIndex",
    "default_home",
    "load_config",
    "make_embedder",
    "record_from_json",
    "session_id",
    "turn_id",
]
