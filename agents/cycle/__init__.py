"""The corrective cycle: the gate before a promotion, the watch after it, each pattern's plan, promotion and
rollback, the scheduler that runs compose -> train -> gate -> promote -> watch on its own, and the service the
front ends read it through.

    mindloop observe --gate C --promote          # promote only if the target improved and nothing regressed
    mindloop daemon                              # the scheduler
    mindloop status                              # what the cycle is doing

Modules: :mod:`~mindloop.agents.cycle.gate` (the gate and :class:`ObserveConfig`),
:mod:`~mindloop.agents.cycle.watch` (rate tests, the watch, the observer's report),
:mod:`~mindloop.agents.cycle.plans` (a pattern's next run), :mod:`~mindloop.agents.cycle.promotion`
(promote, roll back, the checkpoint in use), :mod:`~mindloop.agents.cycle.service` (readiness, status, a
pattern's training job) and :mod:`~mindloop.agents.cycle.scheduler` (the LangGraph workflow). Imports
``graph``, ``trainer``, ``chat`` and ``signal``; the front ends import it.
"""

from mindloop.agents.cycle.gate import GateCheck, GateResult, ObserveConfig, gate, gate_checkpoint
from mindloop.agents.cycle.plans import Plan, grow_plan, plan_for, shrink_plan
from mindloop.agents.cycle.promotion import checkpoint_status, in_use, promote, rollback
from mindloop.agents.cycle.scheduler import Scheduler, SchedulerConfig
from mindloop.agents.cycle.service import Readiness, TrainingJob, readiness, status, training_job
from mindloop.agents.cycle.watch import (AlertSummary, Assessment, PatternRate, RateTest, RollbackEvent, WatchReport,
                                         WatchResult, Window, open_alerts, report, watch)

__all__ = ["AlertSummary", "Assessment", "GateCheck", "GateResult", "ObserveConfig", "PatternRate", "Plan", "RateTest",
           "Readiness", "RollbackEvent", "Scheduler", "SchedulerConfig", "TrainingJob", "WatchReport", "WatchResult",
           "Window", "checkpoint_status", "gate", "gate_checkpoint", "grow_plan", "in_use", "open_alerts", "plan_for",
           "promote", "readiness", "report", "rollback", "shrink_plan", "status", "training_job", "watch"]
