"""Log-probabilities of a response given a conversation: what evaluation and the signal agent measure.

``response_logprob(model, tokenizer, messages, response)`` renders
``messages`` with the tokenizer's chat template (ready for the assistant's
reply), appends ``response`` and returns the mean log-probability of the
response's tokens (natural log, per token) and their count. The end-of-turn
token is not scored, so two responses compare on their own words.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["response_logprob", "response_token_logprobs"]


def _split_ids(tokenizer, messages: Sequence[dict[str, str]], response: str) -> tuple[list[int], int]:
    prompt = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    # BPE may merge across the seam; count the response from the first id that differs
    n = 0
    while n < min(len(prompt_ids), len(full_ids)) and prompt_ids[n] == full_ids[n]:
        n += 1
    return full_ids, n


def response_token_logprobs(model, tokenizer, messages: Sequence[dict[str, str]], response: str):
    """Per-token log-probabilities (a 1-D float tensor) of ``response`` after ``messages``."""
    import torch

    ids, start = _split_ids(tokenizer, messages, response)
    if start >= len(ids):
        raise ValueError("the response is empty once tokenized")
    if start == 0:
        raise ValueError("the rendered prompt is empty; the model's chat template produced no text")
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, start - 1: -1].float()
    return torch.log_softmax(logits, dim=-1).gather(1, x[0, start:, None])[:, 0]


def response_logprob(model, tokenizer, messages: Sequence[dict[str, str]], response: str) -> tuple[float, int]:
    """(mean log-probability per token, number of tokens) of ``response`` after ``messages``."""
    lp = response_token_logprobs(model, tokenizer, messages, response)
    return float(lp.mean()), int(lp.numel())
