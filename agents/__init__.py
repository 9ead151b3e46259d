"""mindloop's agents: the command line today; the chat loop, the training-signal
agent, surface-observe and the scheduler as their issues land.

Layering: ``agents`` may import ``graph`` and ``trainer``; nothing imports ``agents``.
"""

__all__: list[str] = []
