"""mindloop's trainer: datasets from examples, conditional bypass updates with a
context-frozen gradient, evaluation probes and checkpoints (issue: the trainer).

Layering: ``trainer`` may import ``graph``; never ``agents``.
"""

__all__: list[str] = []
