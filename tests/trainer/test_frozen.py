"""The context-frozen gradient: same logits, the detached-context gradient, a loss that goes down."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mindloop.trainer.frozen import frozen_response_logits, frozen_response_loss, ordinary_response_loss  # noqa: E402


@pytest.fixture
def model(tiny_lm):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()


def _ids(seed=0, prompt=12, response=5, vocab=30):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(8, vocab, (1, prompt), generator=g), torch.randint(8, vocab, (1, response), generator=g))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _detached_context_loss(model, prompt, response):
    """The ordinary forward over prompt + response, with the keys and values of prompt[:-1] detached by hooks."""
    n = prompt.shape[1] - 1
    handles = []

    def detach_prompt(_module, _inputs, out):
        return torch.cat([out[:, :n].detach(), out[:, n:]], dim=1)

    for name, module in model.named_modules():
        if name.endswith(("k_proj", "v_proj")):  # the whole projection, LoRA included
            handles.append(module.register_forward_hook(detach_prompt))
    try:
        return ordinary_response_loss(model, prompt, response)
    finally:
        for h in handles:
            h.remove()


def test_response_logits_equal_the_ordinary_forward(model):
    prompt, response = _ids()
    full = model(input_ids=torch.cat([prompt, response], 1)).logits[:, prompt.shape[1] - 1: -1]
    assert torch.allclose(frozen_response_logits(model, prompt, response), full, atol=1e-5)


def test_the_context_forward_computes_no_logits_it_does_not_read(model):
    # the context's logits are never read: the LM head sees one context position, then the live part
    prompt, response = _ids(prompt=40, response=5)
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[1]))
    try:
        frozen_response_logits(model, prompt, response)
    finally:
        handle.remove()
    assert seen == [1, response.shape[1]]


def test_gradient_equals_the_ordinary_gradient_with_the_context_detached(model):
    prompt, response = _ids(1)
    frozen_response_loss(model, prompt, response).backward()
    frozen = _grads(model)
    model.zero_grad()
    _detached_context_loss(model, prompt, response).backward()
    reference = _grads(model)
    model.zero_grad()
    ordinary_response_loss(model, prompt, response).backward()
    ordinary = _grads(model)
    assert frozen.keys() == reference.keys()
    for name in frozen:
        assert torch.allclose(frozen[name], reference[name], atol=1e-6, rtol=1e-4), name
    # and it is a different gradient from the plain one: the test can tell them apart
    assert any(not torch.allclose(frozen[n], ordinary[n], atol=1e-6) for n in frozen if "k_proj" in n)


def test_loss_decreases_with_the_frozen_gradient(model):
    prompt, response = _ids(2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = frozen_response_loss(model, prompt, response)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] * 0.5


def test_works_for_lora(model):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                            lora_dropout=0.0, init_lora_weights=False))
    prompt, response = _ids(3)
    full = lora(input_ids=torch.cat([prompt, response], 1)).logits[:, prompt.shape[1] - 1: -1]
    assert torch.allclose(frozen_response_logits(lora, prompt, response), full, atol=1e-5)
    frozen_response_loss(lora, prompt, response).backward()
    frozen = _grads(lora)
    assert frozen and all("lora_" in n for n in frozen)
    lora.zero_grad()
    _detached_context_loss(lora, prompt, response).backward()
    reference = _grads(lora)
    for name in frozen:
        assert torch.allclose(frozen[name], reference[name], atol=1e-6, rtol=1e-4), name


def test_needs_tokens_on_both_sides(model):
    prompt, response = _ids()
    with pytest.raises(ValueError, match="at least one token"):
        frozen_response_loss(model, prompt, response[:, :0])


def test_batched_frozen_loss_equals_the_per_example_losses(model):
    from mindloop.trainer.frozen import frozen_batch_loss

    pairs = [_ids(10, prompt=9, response=4), _ids(11, prompt=1, response=6), _ids(12, prompt=15, response=2)]
    prompts, responses = [p[0] for p, _ in pairs], [r[0] for _, r in pairs]
    total, n = frozen_batch_loss(model, prompts, responses, pad_id=1)
    assert n == 12
    each = sum(frozen_response_loss(model, p[None], r[None], reduction="sum") for p, r in zip(prompts, responses))
    assert torch.allclose(total, each, atol=1e-4)
    total.backward()
    batched = _grads(model)
    model.zero_grad()
    each.backward()
    for name, g in _grads(model).items():
        assert torch.allclose(batched[name], g, atol=1e-5, rtol=1e-3), name


# -- the context pass in bfloat16 ----------------------------------------------------------------------------------


def test_the_context_dtype_setting_resolves_by_model_and_cpu(model, monkeypatch):
    import mindloop.trainer.frozen as frozen

    assert frozen.resolve_context_dtype(model, "model") is None
    assert frozen.resolve_context_dtype(model, "bfloat16") is torch.bfloat16
    monkeypatch.setattr(frozen, "_cpu_has_native_bf16", lambda: True)
    assert frozen.resolve_context_dtype(model, "auto") is torch.bfloat16
    monkeypatch.setattr(frozen, "_cpu_has_native_bf16", lambda: False)
    assert frozen.resolve_context_dtype(model, "auto") is None  # emulated bfloat16 would be slower than float32
    half = model.to(torch.bfloat16)
    assert frozen.resolve_context_dtype(half, "bfloat16") is None  # already bfloat16: nothing to cast
    with pytest.raises(ValueError, match="context dtype must be one of auto, model, bfloat16"):
        frozen.resolve_context_dtype(model, "fp8")


def test_a_bfloat16_context_gives_a_float32_cache_and_nearly_the_exact_logits(model):
    from mindloop.trainer.frozen import _context_cache

    prompt, response = _ids(4, prompt=24)
    past = _context_cache(model, torch.bfloat16, input_ids=prompt[:, :-1])
    assert {layer.keys.dtype for layer in past.layers} == {layer.values.dtype for layer in past.layers} == {
        torch.float32}
    exact = frozen_response_logits(model, prompt, response)
    approx = frozen_response_logits(model, prompt, response, context_dtype=torch.bfloat16)
    assert approx.dtype == torch.float32
    assert not torch.equal(approx, exact)  # the context really ran in bfloat16
    assert torch.allclose(approx, exact, atol=2e-3), (approx - exact).abs().max()


def test_a_bfloat16_context_keeps_the_gradient_and_the_batched_loss(model):
    from mindloop.trainer.frozen import frozen_batch_loss

    prompt, response = _ids(5, prompt=20)
    frozen_response_loss(model, prompt, response).backward()
    exact = _grads(model)
    model.zero_grad()
    frozen_response_loss(model, prompt, response, context_dtype=torch.bfloat16).backward()
    approx = _grads(model)
    model.zero_grad()
    flat = torch.cat([exact[n].flatten() for n in exact]), torch.cat([approx[n].flatten() for n in exact])
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.999
    total, n = frozen_batch_loss(model, [prompt[0], prompt[0, :7]], [response[0], response[0]], pad_id=1,
                                 context_dtype=torch.bfloat16)
    each = sum(frozen_response_loss(model, p, response, reduction="sum", context_dtype=torch.bfloat16)
               for p in (prompt, prompt[:, :7]))
    assert n == 2 * response.shape[1] and torch.allclose(total, each, atol=1e-2)
