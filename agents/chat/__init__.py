"""Serving: the chat loop (surface -> respond -> log -> signal), surfacing memories into a turn, and the chat backends.

    mindloop chat --session work                 # the terminal chat (mindloop.agents.terminal) over this loop
    mindloop serve --port 8000                   # the OpenAI-compatible proxy (mindloop.agents.server) over it

Modules: :mod:`~mindloop.agents.chat.loop` (the LangGraph loop), :mod:`~mindloop.agents.chat.surface`
(memories within a token budget) and :mod:`~mindloop.agents.chat.backends` (the bundled model, any transformers
model, an OpenAI-compatible upstream, a scripted fake). Imports ``graph`` and ``trainer`` only.
"""

from mindloop.agents.chat.backends import (BackendError, ChatBackend, LocalBackend, ModelConfig, ScriptedBackend,
                                           OpenAIBackend, make_backend)
from mindloop.agents.chat.loop import ChatLoop, TurnResult, open_checkpointer
from mindloop.agents.chat.surface import SurfaceConfig, Surfaced, Surfacer, with_memories

__all__ = ["BackendError", "ChatBackend", "ChatLoop", "LocalBackend", "ModelConfig", "OpenAIBackend", "ScriptedBackend",
           "SurfaceConfig", "Surfaced", "Surfacer", "TurnResult", "make_backend", "open_checkpointer", "with_memories"]
