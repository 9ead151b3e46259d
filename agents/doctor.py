"""``mindloop doctor``: check a data directory, and repair what can be repaired without losing anything.

    mindloop doctor                 # report every problem; exit 0 when healthy, 1 when problems remain
    mindloop doctor --repair        # repair, then report each problem with what was done
    mindloop doctor --repair --json

Each subsystem checks and repairs itself; the doctor runs them in order and
reports what they found and did:

- ``graph.db`` and the vectors in ``chroma/`` (derived from it):
  :mod:`mindloop.graph.check`;
- ``checkpoints/`` and ``promoted.json``: :mod:`mindloop.trainer.checkpoint_check`;
- ``loop.db`` (LangGraph's checkpointer), when present: SQLite's
  ``integrity_check``, and the same backup-and-recover as graph.db
  (:func:`mindloop.graph.check.check_sqlite_file`).

Repairs never delete the only copy of anything: a damaged SQLite file is
kept as ``<name>.damaged-<time>`` beside the rows recovered from it, a
corrupt checkpoint is quarantined, old vectors beside a lost graph.db are
moved aside. Run it while no other mindloop process (serve, daemon, ui) uses
the data directory: a repair that replaces graph.db refuses while embedded
Chroma is held by another process.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mindloop.graph import GraphConfig
from mindloop.graph import check as graph_check
from mindloop.graph.check import Findings, Problem, check_sqlite_file
from mindloop.trainer import checkpoint_check

__all__ = ["Problem", "Report", "doctor"]


@dataclass(kw_only=True)
class Report(Findings):
    """What :func:`doctor` found and did, over every subsystem. ``healthy`` when every problem found was repaired
    (or none was)."""

    home: str
    repaired: bool

    @property
    def healthy(self) -> bool:
        return all(p.fixed for p in self.problems)

    def states(self) -> dict[str, str]:
        """Each check's outcome: ``ok``, ``repaired`` (every problem it found was) or ``problem``."""
        out = {}
        for name in self.checks:
            found = [p for p in self.problems if p.check == name]
            out[name] = "ok" if not found else "repaired" if all(p.fixed for p in found) else "problem"
        return out

    def to_json(self) -> dict[str, Any]:
        return {"home": self.home, "healthy": self.healthy, "repaired": self.repaired, "checks": self.states(),
                "problems": [asdict(p) for p in self.problems], "recovered": self.recovered, "notes": self.notes}

    def format(self) -> str:
        remaining = [p for p in self.problems if not p.fixed]
        head = (f"{self.home}: healthy" if not self.problems else
                f"{self.home}: {len(self.problems)} problem(s), {len(self.problems) - len(remaining)} repaired, "
                f"{len(remaining)} remaining")
        lines = [head]
        for name, state in self.states().items():
            lines.append(f"  {name:<12} {state}")
        for p in self.problems:
            mark = "repaired" if p.fixed else "PROBLEM"
            lines.append(f"- {mark}: {p.path}: {p.problem}")
            if p.repair:
                lines.append(f"    done: {p.repair}")
        for table, counts in self.recovered.items():
            lines.append(f"  recovered {table}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines += [f"  note: {n}" for n in self.notes]
        if remaining and not self.repaired:
            lines.append("run `mindloop doctor --repair` to repair what can be repaired")
        return "\n".join(lines)


def doctor(home: str | os.PathLike, *, repair: bool = False, config=None, embedder=None,
           flush_timeout_s: float = 600.0) -> Report:
    """Check the data directory ``home`` (and repair it with ``repair=True``); see the module docstring.

    ``config`` is the :class:`graph.GraphConfig` to open the graph with
    (default: one for ``home``); ``embedder`` overrides the one it names.
    """
    home = Path(home)
    config = config or GraphConfig(home=home)
    report = Report(home=str(home), repaired=repair)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if repair:
        graph_check.repair(config, report, stamp=stamp, embedder=embedder, flush_timeout_s=flush_timeout_s)
        checkpoint_check.repair(home / "checkpoints", report, stamp=stamp)
    else:
        graph_check.check(config, report, embedder=embedder)
        checkpoint_check.check(home / "checkpoints", report)
    _check_loop_db(home / "loop.db", report, repair, stamp)
    return report


def _check_loop_db(path: Path, report: Report, repair: bool, stamp: str) -> None:
    """LangGraph's checkpointer, when present: SQLite's integrity check, and the same backup-and-recover as
    graph.db (every table its own schema names)."""
    if path.exists():
        check_sqlite_file(path, "loop.db", report, repair=repair, stamp=stamp)
