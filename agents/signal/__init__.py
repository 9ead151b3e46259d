"""The training signal: find where users corrected the assistant, group the corrections into patterns, compose
balanced examples, and score how much a reply depended on a surfaced memory.

    mindloop detect --all                        # flag corrected replies in the stored logs, update patterns
    mindloop compose --pattern P --out p.jsonl   # accept + push-back + 25% general replay

Modules: :mod:`~mindloop.agents.signal.rules` (phrase and structure cues), :mod:`~mindloop.agents.signal.reader`
(the local model reading a follow-up), :mod:`~mindloop.agents.signal.detect` (the detector over both),
:mod:`~mindloop.agents.signal.judge` (an optional LLM judge), :mod:`~mindloop.agents.signal.agent` (flags in the
graph, review), :mod:`~mindloop.agents.signal.patterns` (clusters of flags), :mod:`~mindloop.agents.signal.compose`
(balanced examples) and :mod:`~mindloop.agents.signal.dependence` (memory-dependence scores). ``data/`` holds the
seed set, the shipped detector weights, the general prompts and the push-back scenarios. Imports ``graph`` and
``trainer``, and ``chat`` for its backends.
"""

from mindloop.agents.signal.agent import SignalAgent, SignalConfig, flag_id
from mindloop.agents.signal.compose import ComposeConfig, Composed, compose, write_jsonl
from mindloop.agents.signal.detect import Detection, Detector, Pair
from mindloop.agents.signal.patterns import resolve_pattern, update_patterns

__all__ = ["ComposeConfig", "Composed", "Detection", "Detector", "Pair", "SignalAgent", "SignalConfig", "compose",
           "flag_id", "resolve_pattern", "update_patterns", "write_jsonl"]
