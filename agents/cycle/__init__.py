"""The corrective cycle: the gate before a promotion, the watch after it, each pattern's plan, promotion and
rollback, and the scheduler that runs compose -> train -> gate -> promote -> watch on its own.

    mindloop observe --gate C --promote          # promote only if the target improved and nothing regressed
    mindloop daemon                              # the scheduler

Modules: :mod:`~mindloop.agents.cycle.observe` (gate, watch, plans, promotion and rollback) and
:mod:`~mindloop.agents.cycle.scheduler` (the LangGraph workflow). Imports ``graph``, ``trainer``, ``chat`` and
``signal``; the front ends import it.
"""

from mindloop.agents.cycle.observe import ObserveConfig, gate_checkpoint, promote, rollback, watch
from mindloop.agents.cycle.scheduler import Scheduler, SchedulerConfig, readiness

__all__ = ["ObserveConfig", "Scheduler", "SchedulerConfig", "gate_checkpoint", "promote", "readiness", "rollback",
           "watch"]
