"""Logging and search through the Python API, on the bundled MiniLM embedder.

    .venv/bin/python examples/01_log_and_search.py

Expected runtime: about 10 s on 2 CPU cores (loading MiniLM). Offline; writes
only to a temporary directory.
"""

from __future__ import annotations

import sys
import tempfile

from mindloop.graph import GraphConfig, Memory, MemoryGraph


def main() -> int:
    with tempfile.TemporaryDirectory() as home, MemoryGraph.open(GraphConfig(home=home)) as g:
        g.log_turn("s1", "user", "Rename parse_cfg to load_config.", scope="alice")
        reply = g.log_turn("s1", "assistant", "Maybe split it into a loader and a validator first?", scope="alice")
        fix = g.log_turn("s1", "user", "No, I asked you to just rename it.", scope="alice")
        g.link(fix.id, reply.id, "corrects")
        lesson = g.add(Memory(scope="alice", memory_kind="lesson",
                              text="When Alice gives a clear instruction, do it; do not offer alternatives."))
        g.link(lesson.id, fix.id, "surfaced")
        g.log_turn("s2", "user", "Rename the staging bucket.", scope="bob")
        g.flush()

        for hit in g.search("suggested something else instead of renaming", scope="alice", k=4):
            print(f"{hit.score:.4f} {hit.node.kind:7} {','.join(hit.signals):22} {hit.node.embed_text()}")
        assert all(h.node.scope == "alice" for h in g.search("rename", scope="alice"))
        print("neighbours of the correction:", sorted(g.view.neighbourhood(fix.id).nodes) == sorted(
            [reply.id, fix.id, lesson.id]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
