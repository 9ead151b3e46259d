"""Errors raised by the memory graph.

Every error here derives from :class:`GraphError`, and also from the builtin
that matches its meaning, so callers may catch either::

    GraphError
    ├── InvalidText(GraphError, ValueError)      empty, whitespace-only, lone surrogates
    │   └── TextTooLarge                         over ``GraphConfig.max_text_bytes``
    ├── NodeNotFound(GraphError, KeyError)       an id that is not in the store
    ├── UnknownKind(GraphError, ValueError)      a node or edge kind we do not define
    ├── ScopeMismatch(GraphError, ValueError)    an edge across two scopes
    ├── InvalidRecord(GraphError, ValueError)    a record or file line that cannot be read
    ├── StoreCorrupt(GraphError, RuntimeError)   graph.db is damaged or not ours
    ├── DiskFull(GraphError, OSError)            graph.db could not be written: no space, file too large
    └── IndexUnavailable(GraphError, RuntimeError)  the vector index cannot be used

A failed call raises before, or rolls back, its transaction: nothing partial
is written.
"""

from __future__ import annotations

__all__ = [
    "DiskFull",
    "GraphError",
    "IndexUnavailable",
    "InvalidRecord",
    "InvalidText",
    "NodeNotFound",
    "ScopeMismatch",
    "StoreCorrupt",
    "TextTooLarge",
    "UnknownKind",
]


class GraphError(Exception):
    """Base class of every error raised by ``graph``."""


class InvalidText(GraphError, ValueError):
    """Text that cannot be stored: empty, whitespace only, or not valid Unicode."""


class TextTooLarge(InvalidText):
    """Text longer than the configured hard limit (``max_text_bytes``)."""


class NodeNotFound(GraphError, KeyError):
    """No node with this id exists (in this scope, where a scope was given)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "node not found"


class UnknownKind(GraphError, ValueError):
    """A node kind or edge kind that the graph does not define."""


class ScopeMismatch(GraphError, ValueError):
    """An edge whose two ends live in different scopes; scopes never connect."""


class InvalidRecord(GraphError, ValueError):
    """A record, or a line of an import file, that does not have the expected shape."""


class StoreCorrupt(GraphError, RuntimeError):
    """``graph.db`` cannot be opened as a mindloop store."""


class DiskFull(GraphError, OSError):
    """``graph.db`` could not be written: the disk is full, the file-size limit was reached, or the
    device failed. The call's transaction was rolled back; what was acknowledged before is intact."""


class IndexUnavailable(GraphError, RuntimeError):
    """The vector index cannot be used (owned by another process, or a server is down)."""
