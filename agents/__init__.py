"""mindloop's agents, one subpackage per subsystem, and the front ends over them.

- :mod:`mindloop.agents.chat`: the chat loop, surfacing, the chat backends;
- :mod:`mindloop.agents.signal`: correction detection, patterns, balanced examples, memory dependence;
- :mod:`mindloop.agents.cycle`: gate, watch, plans, promotion and rollback, the scheduler;
- the front ends: :mod:`~mindloop.agents.cli` (the ``mindloop`` command), :mod:`~mindloop.agents.server` (the
  OpenAI-compatible proxy), :mod:`~mindloop.agents.terminal` (terminal chat), :mod:`~mindloop.agents.ui`,
  :mod:`~mindloop.agents.report` and :mod:`~mindloop.agents.doctor`.

Layering (checked by tests/test_layering.py): ``agents`` may import ``graph`` and ``trainer``; inside it, chat and
signal come first, cycle imports them, and the front ends import all three. Nothing imports the front ends.
"""

__all__: list[str] = []
