"""Log-probabilities of a response given a conversation: what evaluation and the signal agent measure.

``response_logprob(model, tokenizer, messages, response)`` renders
``messages`` with the tokenizer's chat template (ready for the assistant's
reply), appends ``response`` and returns the mean log-probability of the
response's tokens (natural log, per token) and their count. The end-of-turn
token is not scored, so two responses compare on their own words.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["left_padded", "response_logprob", "response_logprobs", "response_token_logprobs", "split_ids"]


def split_ids(tokenizer, messages: Sequence[dict[str, str]], response: str) -> tuple[list[int], int]:
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

    ids, start = split_ids(tokenizer, messages, response)
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


def left_padded(tokenizer, rows: Sequence[list[int]], device):
    """``rows`` of ids as one left-padded batch: ``input_ids``, ``attention_mask`` and the ``position_ids`` each
    row would have alone (so a padded row computes what it computes unpadded)."""
    import torch

    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def response_logprobs(model, tokenizer, items: Sequence[tuple[Sequence[dict[str, str]], str]], *,
                      batch_size: int = 8) -> list[tuple[float, int]]:
    """:func:`response_logprob` for many ``(messages, response)`` pairs, run in left-padded batches.

    Only the positions that predict response tokens go through the vocabulary
    projection (``logits_to_keep``), which is most of the cost on a CPU.
    """
    import torch

    split = [split_ids(tokenizer, m, r) for m, r in items]
    for ids, start in split:
        if start >= len(ids):
            raise ValueError("the response is empty once tokenized")
        if start == 0:
            raise ValueError("the rendered prompt is empty; the model's chat template produced no text")
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    # similar lengths together, so little of each batch is padding
    order = sorted(range(len(split)), key=lambda i: len(split[i][0]))
    results: dict[int, tuple[float, int]] = {}
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            rows = [split[i][0] for i in idx]
            ids, mask, pos = left_padded(tokenizer, rows, device)
            keep = max(len(split[i][0]) - split[i][1] for i in idx) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            width = ids.shape[1]
            for j, i in enumerate(idx):
                full, start = split[i]
                n = len(full) - start
                # logits row k (of the last `keep`) predicts token width - keep + k + 1
                lp = logp[j, keep - n - 1: keep - 1].gather(1, ids[j, width - n:, None])[:, 0]
                results[i] = (float(lp.mean()), n)
    out = [results[i] for i in range(len(split))]
    return out
