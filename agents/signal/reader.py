"""The reader: a chat model reading the user's follow-up in its conversation, as detector features.

:class:`Reader` renders the conversation (context, the assistant's reply, the
user's follow-up) with the model's chat template, runs it once without
gradient and returns the mean hidden state of the follow-up's tokens at one
layer. A linear classifier over these features (:mod:`mindloop.agents.signal.detect`)
separates corrections from other follow-ups far better than sentence
embeddings of the follow-up alone: the model has read the reply the
follow-up answers.

The default reader is the bundled SmolLM2-135M-Instruct base model at layer
15 of 30 (the middle layers carried the most signal on the seed set: see
docs/signal.md). It always reads with the *base* weights, never a promoted
checkpoint, so trained classifier weights stay valid when the chat model
changes. Pass ``backend=`` to share an already loaded :class:`LocalBackend`.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Sequence

import numpy as np

__all__ = ["Reader"]


class _Enough(Exception):
    """Raised by the layer hook: the forward pass has computed what the reader needs."""

log = logging.getLogger(__name__)


class Reader:
    """Mean hidden state of the follow-up tokens, read in context. ``name`` identifies model and layer."""

    def __init__(self, model: str = "bundled", *, layer: int = 15, max_tokens: int = 512, backend=None) -> None:
        from mindloop.agents.chat.backends import LocalBackend

        self.layer = layer
        self.max_tokens = max_tokens
        self.backend = backend if backend is not None else LocalBackend(model)
        self.name = f"{self.backend.model_id}@layer{layer}"

    def _base(self):
        """The base model (adapters disabled) and the tokenizer."""
        self.backend.load()
        model = self.backend._model
        guard = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
        return (model if hasattr(model, "disable_adapter") else self.backend._base), self.backend._tokenizer, guard

    def features(self, pairs: Sequence) -> np.ndarray:
        """One row per pair: the follow-up's mean hidden state at ``layer``.

        The forward pass stops at ``layer``: a hook on that decoder layer
        captures its output and aborts the rest (the remaining layers and the
        vocabulary projection are half the cost and not needed).
        """
        import torch

        model, tok, guard = self._base()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layers = getattr(getattr(base, "model", base), "layers", None)
        if layers is None or not 1 <= self.layer <= len(layers):
            n = len(layers) if layers is not None else "an unknown number of"
            raise ValueError(f"reader layer {self.layer} does not exist; the model has {n} layers")
        captured: list = []

        def stop(_module, _inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Enough

        rows = []
        handle = layers[self.layer - 1].register_forward_hook(stop)
        try:
            with self.backend._gen_lock, guard, torch.no_grad():
                for p in pairs:
                    ids, n_follow = self._ids(tok, p)
                    captured.clear()
                    try:
                        model(input_ids=ids, use_cache=False)
                    except _Enough:
                        pass
                    rows.append(captured[0][0, -n_follow:].float().mean(0).numpy())
        finally:
            handle.remove()
        return np.asarray(rows, dtype=np.float64)

    def _ids(self, tok, p):
        before = [*p.context, {"role": "assistant", "content": p.response}]
        prefix = tok.apply_chat_template(before, tokenize=False)
        full = tok.apply_chat_template([*before, {"role": "user", "content": p.followup}], tokenize=False)
        n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"])
        ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_follow = max(1, ids.shape[1] - n_prefix)
        ids = ids[:, -self.max_tokens:]  # long conversations: keep the end, which holds the follow-up
        return ids, min(n_follow, ids.shape[1])

    def _features_full(self, pairs: Sequence) -> np.ndarray:
        """The same features through ``output_hidden_states`` (the reference the hook path is tested against)."""
        import torch

        model, tok, guard = self._base()
        rows = []
        with self.backend._gen_lock, guard, torch.no_grad():
            for p in pairs:
                ids, n_follow = self._ids(tok, p)
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
                rows.append(hidden[self.layer][0, -n_follow:].float().mean(0).numpy())
        return np.asarray(rows, dtype=np.float64)
