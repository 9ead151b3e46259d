"""Memory-dependence scores and the log-probabilities they are built on."""

from __future__ import annotations

import math

import pytest

from mindloop.agents.chat.backends import LocalBackend, ScriptedBackend
from mindloop.agents.signal.dependence import candidates, score_turns
from mindloop.graph import Memory


def test_response_logprob_is_the_mean_of_the_response_tokens(tiny_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mindloop.trainer.scoring import response_logprob

    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    messages = [{"role": "user", "content": "rename the function"}]
    mean, n = response_logprob(model, tok, messages, "done it is")
    assert n == 3
    # the same number by hand: the full rendered sequence, the last three positions
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt + "done it is", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
    by_hand = logp[-3:].gather(1, ids[0, -3:, None]).mean().item()
    assert math.isclose(mean, by_hand, rel_tol=1e-5)
    assert mean < 0


def test_scores_replies_that_had_memories_and_stores_the_score(graph, tiny_lm):
    memory = graph.add(Memory(text="do not use tabs", memory_kind="lesson"))
    user, reply = graph.log_turns("s1", [{"role": "user", "text": "make the file"},
                                         {"role": "assistant", "text": "use spaces it is done",
                                          "meta": {"surfaced": [{"id": memory.id, "kind": "lesson"}]}}])
    graph.log_turns("s1", [{"role": "user", "text": "ok"}, {"role": "assistant", "text": "hi"}])  # nothing surfaced
    backend = LocalBackend(str(tiny_lm))
    scored = score_turns(graph, backend)
    assert [s["turn"] for s in scored] == [reply.id]
    dep = graph.get(reply.id).meta["memory_dependence"]
    assert dep["score"] == pytest.approx(dep["with"] - dep["without"], abs=2e-4)
    assert dep["with"] != dep["without"]  # the block changes the context the reply is scored in
    assert score_turns(graph, backend) == []  # already scored
    assert len(score_turns(graph, backend, redo=True)) == 1
    listed = candidates(graph, min_score=-100.0)
    assert [c["turn"] for c in listed] == [reply.id]
    assert candidates(graph, min_score=dep["score"] + 1e-3) == []


def test_needs_a_backend_with_logprobs(graph):
    with pytest.raises(TypeError, match="local model"):
        score_turns(graph, ScriptedBackend())
