"""The optional LLM judge: a chat model asked whether the user's follow-up corrects the reply.

Off by default (``signal.judge = "off"``). When on, its yes/no is averaged into
the detector's confidence as a third opinion beside the rules and the
classifier. Any :class:`mindloop.agents.chat.backends.ChatBackend` works: the local model or
an OpenAI-compatible upstream.

    >>> from mindloop.agents.chat.backends import ScriptedBackend
    >>> from mindloop.agents.signal.detect import Pair
    >>> judge = LLMJudge(ScriptedBackend(["Yes."]))
    >>> judge(Pair(context=[], response="Use YAML instead.", followup="No, JSON as I asked.")).probability
    0.9
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from mindloop.agents.chat.backends import BackendError, ChatBackend

__all__ = ["LLMJudge", "Verdict"]

log = logging.getLogger(__name__)

_PROMPT = """Read the end of a conversation between a user and an assistant.

User request: {request}
Assistant reply: {response}
User's next message: {followup}

Does the user's next message say that the assistant's reply was wrong or not what they asked for?
A new request, thanks, a question about the reply, or the user changing their own request is NOT a correction.
Answer with one word: yes or no."""


@dataclass
class Verdict:
    answer: str
    probability: float  # the judge's P(correction): 0.9 for yes, 0.1 for no


class LLMJudge:
    """Asks ``backend`` for a yes/no; an answer it cannot read, or a failing backend, abstains (None)."""

    def __init__(self, backend: ChatBackend, *, max_tokens: int = 4) -> None:
        self.backend = backend
        self.max_tokens = max_tokens

    def __call__(self, pair) -> Verdict | None:
        prompt = _PROMPT.format(request=pair.request or "(none)", response=pair.response, followup=pair.followup)
        try:
            answer = self.backend.complete([{"role": "user", "content": prompt}], max_tokens=self.max_tokens,
                                           temperature=0.0)
        except BackendError as e:
            log.warning("LLM judge abstained: %s", e)
            return None
        word = re.match(r"\W*(yes|no)\b", answer.strip().lower())
        if not word:
            return None
        return Verdict(answer=answer.strip(), probability=0.9 if word.group(1) == "yes" else 0.1)
