"""The context-frozen gradient: the context runs without gradient, only the response runs with it.

For a prompt ``p`` (the conversation, rendered by the chat template) and a
response ``r``, the ordinary response-only loss runs the whole sequence
``p + r`` with gradient and masks the prompt out of the loss; backpropagation
then still goes through every prompt position, so time and memory grow with
the conversation. Here:

1. ``p[:-1]`` runs under ``torch.no_grad()`` and leaves its keys and values
   in a cache;
2. ``p[-1:] + r[:-1]`` runs with gradient on top of that cache; its logits are
   exactly the ones predicting each response token.

The logits equal the ordinary forward's; the gradient equals the ordinary
gradient with the prompt's keys and values detached (the prompt is context to
condition on, not something to change). Time and memory then grow with the
response. Works for any causal LM that takes a KV cache (``cache``, or
``past_key_values`` before transformers 5.25; see :func:`_cache_arg`): the
bundled Llama-architecture SmolLM2, and PEFT/LoRA-wrapped models.

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                  num_attention_heads=2, num_key_value_heads=1))
    >>> p, r = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6]])
    >>> full = m(input_ids=torch.cat([p, r], 1)).logits[:, 3:5]
    >>> torch.allclose(frozen_response_logits(m, p, r), full, atol=1e-5)
    True
"""

from __future__ import annotations

__all__ = ["CONTEXT_DTYPES", "frozen_batch_loss", "frozen_response_logits", "frozen_response_loss",
           "ordinary_response_loss", "resolve_context_dtype"]


def _cache_arg() -> str:
    """The name transformers gives a forward's KV cache, as argument and as output field: ``cache`` from 5.25,
    ``past_key_values`` before (5.25 still reads the old name, with a deprecation warning)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def resolve_context_dtype(model, setting: str = "auto"):
    """The dtype the context forward runs in, or ``None`` for the model's own.

    ``"model"``: the model's dtype, exact (the logits equal the ordinary forward's). ``"bfloat16"``: the context
    runs under bfloat16 autocast; no gradient flows through it, so it needs inference precision, not training
    precision, and its keys and values are cast back to the model's dtype for the live part. ``"auto"``: bfloat16
    where the model is float32 on a CPU with native bfloat16 matrix multiplies (AVX512-BF16 or AMX, where they run
    faster than float32), the model's dtype elsewhere (on CUDA the bundled model is bfloat16 already).
    """
    import torch

    if setting not in CONTEXT_DTYPES:
        raise ValueError(f"context dtype must be one of {', '.join(CONTEXT_DTYPES)}, got {setting!r}")
    param = next(model.parameters())
    if setting == "model":
        return None
    if setting == "bfloat16":
        return None if param.dtype == torch.bfloat16 else torch.bfloat16
    if param.dtype == torch.float32 and param.device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


CONTEXT_DTYPES = ("auto", "model", "bfloat16")


def _cpu_has_native_bf16() -> bool:
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def _context_cache(model, dtype=None, **inputs):
    """Run the context without gradient; its keys and values. Its logits are never read, so only one is computed
    where the model takes ``logits_to_keep``: SmolLM2's 49k-word head is a fifth of a forward's multiply-adds.
    With ``dtype`` (see :func:`resolve_context_dtype`) it runs under autocast, and the cache comes back in the model's dtype.
    """
    import contextlib

    import torch

    param = next(model.parameters())
    cast = torch.autocast(param.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.no_grad(), cast:
        try:
            out = model(**inputs, use_cache=True, logits_to_keep=1)
        except TypeError:  # a model without logits_to_keep
            out = model(**inputs, use_cache=True)
    past = getattr(out, _cache_arg())
    if dtype is not None:
        for layer in getattr(past, "layers", ()):
            if getattr(layer, "is_initialized", False):
                layer.keys, layer.values = layer.keys.to(param.dtype), layer.values.to(param.dtype)
                layer.dtype = param.dtype
    return past


def frozen_response_logits(model, prompt_ids, response_ids, context_dtype=None):
    """Logits ``[batch, len(response), vocab]`` predicting each response token, the prompt run without gradient.

    ``prompt_ids`` and ``response_ids`` are ``[batch, length]`` tensors without padding (one length per batch).
    ``context_dtype``: see :func:`resolve_context_dtype` (``None``: the model's own, exact).
    """
    import torch

    if prompt_ids.shape[1] < 1 or response_ids.shape[1] < 1:
        raise ValueError("the prompt and the response need at least one token each")
    context = prompt_ids[:, :-1]
    live = torch.cat([prompt_ids[:, -1:], response_ids[:, :-1]], dim=1)
    past = _context_cache(model, context_dtype, input_ids=context) if context.shape[1] else None
    return model(input_ids=live, **{_cache_arg(): past}, use_cache=past is not None).logits


def frozen_response_loss(model, prompt_ids, response_ids, reduction: str = "mean", context_dtype=None):
    """Cross-entropy of the response tokens with the context-frozen gradient."""
    import torch.nn.functional as F

    logits = frozen_response_logits(model, prompt_ids, response_ids, context_dtype)
    return F.cross_entropy(logits.flatten(0, 1).float(), response_ids.flatten(), reduction=reduction)


def ordinary_response_loss(model, prompt_ids, response_ids, reduction: str = "mean"):
    """The ordinary response-only loss: the whole sequence with gradient, the prompt masked out of the loss."""
    import torch
    import torch.nn.functional as F

    ids = torch.cat([prompt_ids, response_ids], dim=1)
    n = prompt_ids.shape[1]
    logits = model(input_ids=ids).logits[:, n - 1: -1]
    return F.cross_entropy(logits.flatten(0, 1).float(), response_ids.flatten(), reduction=reduction)


def frozen_batch_loss(model, prompts, responses, pad_id: int = 0, context_dtype=None):
    """Summed response cross-entropy and response token count for a batch of unequal lengths, in two forwards.

    ``prompts`` and ``responses`` are lists of 1-D id tensors. The contexts
    (``prompt[:-1]``) are left-padded and run once under ``torch.no_grad()``;
    the live parts (``prompt[-1:] + response[:-1]``) are right-padded and run
    once with gradient on top of the cache, with position ids continuing each
    row's own context. One gradient-carrying forward per batch keeps it
    compatible with DDP/FSDP wrappers. ``context_dtype``: see :func:`resolve_context_dtype`.
    """
    import torch
    import torch.nn.functional as F

    if not prompts or len(prompts) != len(responses):
        raise ValueError("need one response per prompt, and at least one of each")
    if any(p.numel() < 1 for p in prompts) or any(r.numel() < 1 for r in responses):
        raise ValueError("the prompt and the response need at least one token each")
    device = prompts[0].device
    b = len(prompts)
    ctx = [p[:-1] for p in prompts]
    live = [torch.cat([p[-1:], r[:-1]]) for p, r in zip(prompts, responses)]
    lc, ll = max(len(c) for c in ctx), max(len(x) for x in live)
    ctx_ids = torch.full((b, lc), pad_id, dtype=torch.long, device=device)
    ctx_mask = torch.zeros((b, lc), dtype=torch.long, device=device)
    live_ids = torch.full((b, ll), pad_id, dtype=torch.long, device=device)
    live_mask = torch.zeros((b, ll), dtype=torch.long, device=device)
    labels = torch.full((b, ll), -100, dtype=torch.long, device=device)
    for i, (c, x, r) in enumerate(zip(ctx, live, responses)):
        if len(c):
            ctx_ids[i, lc - len(c):] = c
            ctx_mask[i, lc - len(c):] = 1
        live_ids[i, : len(x)] = x
        live_mask[i, : len(x)] = 1
        labels[i, : len(r)] = r
    lengths = ctx_mask.sum(-1, keepdim=True)
    live_pos = lengths + torch.arange(ll, device=device)[None]
    past = None
    if lc:
        ctx_pos = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
        past = _context_cache(model, context_dtype, input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=ctx_pos)
    mask = torch.cat([ctx_mask, live_mask], dim=1) if lc else live_mask
    logits = model(input_ids=live_ids, attention_mask=mask, position_ids=live_pos, **{_cache_arg(): past},
                   use_cache=past is not None).logits
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())
