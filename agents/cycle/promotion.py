"""Promotion and rollback, and the one answer to "which checkpoint is in use, and what became of each".

    mindloop checkpoints promote C       # serve C from the chat model's next reply
    mindloop checkpoints rollback        # go back to the promoted checkpoint's parent

The truth is ``checkpoints/`` (:class:`mindloop.trainer.checkpoints.Checkpoints`):
``history.jsonl``, the write-ahead log of promotions and rollbacks, and
``promoted.json``, the pointer the chat model follows (replaced by an atomic
rename). :func:`in_use` is the pointer, rolled forward when a kill came between
the two. A Checkpoint node's ``status`` is derived from that history when read
(:func:`checkpoint_status`): ``promoted`` or ``rolled_back`` for a checkpoint
the history names, else the node's own (``candidate``, ``rejected`` by the
gate). :func:`promote` and :func:`rollback` also write the nodes' statuses, in
the same call and nowhere else (every checkpoint the history names, so a node a
kill left behind is repaired too), so that the graph read on its own agrees
once they return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mindloop.graph import Alert, Checkpoint, MemoryGraph, NodeNotFound

__all__ = ["checkpoint_node", "checkpoint_status", "checkpoint_statuses", "checkpoints_of", "in_use", "promote",
           "rollback"]


def checkpoints_of(graph: MemoryGraph):
    """The checkpoints folder of the graph's data directory."""
    from mindloop.trainer.checkpoints import Checkpoints

    return Checkpoints(Path(graph.config.home) / "checkpoints")


def checkpoint_node(graph: MemoryGraph, checkpoint_id: str | None) -> Checkpoint | None:
    """The graph's Checkpoint node, or None (no id, or trained outside this data directory's graph)."""
    if not checkpoint_id:
        return None
    try:
        node = graph.get(checkpoint_id)
    except NodeNotFound:
        return None
    return node if isinstance(node, Checkpoint) else None


def in_use(store) -> dict[str, Any] | None:
    """The promoted pointer (None: the base model), rolled forward to the history's last event first."""
    return store.recover()


def checkpoint_statuses(store) -> dict[str, str]:
    """``promoted`` or ``rolled_back`` for each checkpoint the history names: its last event's."""
    last: dict[str, str] = {}
    for ev in store.history():
        last[ev["checkpoint"]] = "promoted" if ev["event"] == "promote" else "rolled_back"
    return last


def checkpoint_status(graph: MemoryGraph, store, checkpoint_id: str | None, *,
                      statuses: dict[str, str] | None = None) -> str | None:
    """A checkpoint's status: the history's (``statuses``, when read already), else its node's, else None."""
    statuses = checkpoint_statuses(store) if statuses is None else statuses
    if checkpoint_id in statuses:
        return statuses[checkpoint_id]
    node = checkpoint_node(graph, checkpoint_id)
    return node.status if node is not None else None


def _write_statuses(graph: MemoryGraph, store) -> None:
    """Write the history's status onto the nodes of the checkpoints it names."""
    for checkpoint_id, status in checkpoint_statuses(store).items():
        node = checkpoint_node(graph, checkpoint_id)
        if node is not None and node.status != status:
            node.status = status
            graph.update(node)


def promote(graph: MemoryGraph, store, checkpoint_id: str, *, reason: str = "") -> dict[str, Any]:
    """Serve ``checkpoint_id`` (idempotent: promoting what is already promoted changes nothing)."""
    current = in_use(store)
    if current and current["checkpoint"] == checkpoint_id:
        pointer = current
    else:
        pointer = store.promote(checkpoint_id, reason=reason)
    _write_statuses(graph, store)
    return pointer


def rollback(graph: MemoryGraph, store, *, reason: str, alert: Alert | None = None) -> dict[str, Any] | None:
    """Roll the promoted checkpoint back to its parent, and link the alert that caused it."""
    before = in_use(store)
    pointer = store.rollback(reason=reason)
    if before:
        _write_statuses(graph, store)
        if alert is not None and checkpoint_node(graph, before["checkpoint"]) is not None:
            graph.link(alert.id, before["checkpoint"], "rolled_back", {"reason": reason})
    return pointer
