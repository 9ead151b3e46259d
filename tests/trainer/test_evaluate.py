"""Evaluation probes and metrics on a tiny local model."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from mindloop.trainer.errors import InvalidDataset  # noqa: E402
from mindloop.trainer.evaluate import (Probe, attention_mass, builtin_probes, default_text, evaluate, perplexity,  # noqa: E402
                              read_probes)


@pytest.fixture(scope="module")
def lm(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), AutoTokenizer.from_pretrained(tiny_lm)


PROBES = [
    Probe([{"role": "user", "content": "rename the function to a file"}], "done", "no use tabs", "target"),
    Probe([{"role": "user", "content": "use tabs"}], "no", "sure it is done", "pushback"),
    Probe([{"role": "user", "content": "what is it"}], "it is a file", "it is a class", "capability"),
]


def test_builtin_probe_sets_ship_with_the_package():
    probes = builtin_probes()
    kinds = {k: sum(p.kind == k for p in probes) for k in ("target", "pushback", "capability")}
    assert all(n >= 40 for n in kinds.values()), kinds


def test_bad_probe_lines_are_named(tmp_path):
    f = tmp_path / "p.jsonl"
    good = {"prompt": [{"role": "user", "content": "hi"}], "desired": "a", "undesired": "b", "kind": "target"}
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "kind": "vibes"}) + "\n")
    with pytest.raises(InvalidDataset, match="line 2: 'kind' must be one of target, pushback, capability"):
        read_probes(f)
    f.write_text(json.dumps({**good, "desired": " "}) + "\n")
    with pytest.raises(InvalidDataset, match="line 1: 'desired' must be non-empty"):
        read_probes(f)


def test_report_shape_and_margins_flip_when_swapped(lm):
    model, tok = lm
    text = "hello the function is a file " * 20
    report = evaluate(model, tok, PROBES, text=text, checkpoint="ck1")
    assert set(report["kinds"]) == {"target", "pushback", "capability"} and report["checkpoint"] == "ck1"
    assert all(v["n"] == 1 and v["win_rate"] in (0.0, 1.0) for v in report["kinds"].values())
    assert report["perplexity"] > 1 and 0.0 <= report["attention_mass"] <= 1.0
    assert report["steering"]["layer"] == 1
    swapped = [Probe(p.prompt, p.undesired, p.desired, p.kind) for p in PROBES]
    again = evaluate(model, tok, swapped, text=text, attention=False)
    for k in report["kinds"]:
        assert again["kinds"][k]["mean_margin"] == pytest.approx(-report["kinds"][k]["mean_margin"], abs=1e-3)


def test_perplexity_is_exp_of_the_mean_next_token_loss(lm):
    model, tok = lm
    text = "hello the function is a file please"
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids[:, :-1]).logits[0], ids[0, 1:])
    assert perplexity(model, tok, text) == pytest.approx(math.exp(float(loss)), rel=1e-4)
    with pytest.raises(InvalidDataset, match="shorter than two tokens"):
        perplexity(model, tok, "hello")


def test_attention_mass_is_a_share_and_attention_is_restored(lm):
    model, tok = lm
    before = model.config._attn_implementation
    share = attention_mass(model, tok, PROBES[:1])
    assert 0.0 < share < 1.0 and model.config._attn_implementation == before


def test_default_text_ships_with_python():
    text = default_text()
    assert len(text) > 5000 and "the" in text


def test_batched_scores_equal_one_at_a_time(lm):
    """Left-padded batches with their own positions compute what each row computes alone."""
    from mindloop.trainer.scoring import response_logprob, response_logprobs

    model, tok = lm
    items = [(p.prompt, r) for p in PROBES for r in (p.desired, p.undesired)]
    items.append(([{"role": "user", "content": "hello hi rename the function to a file please ok done sure"}], "ok"))
    batched = response_logprobs(model, tok, items, batch_size=3)
    for (messages, response), (mean, n) in zip(items, batched):
        alone, n_alone = response_logprob(model, tok, messages, response)
        assert n == n_alone and mean == pytest.approx(alone, abs=1e-5)


def test_batched_hidden_states_equal_one_at_a_time(lm):
    from mindloop.trainer.evaluate import _hiddens
    from mindloop.trainer.scoring import split_ids

    model, tok = lm
    items = [(p.prompt, p.desired) for p in PROBES] + [(PROBES[0].prompt, "sure it is done no")]
    means, lasts = _hiddens(model, tok, items, layer=1, batch_size=2)
    for (messages, response), mean, last in zip(items, means, lasts):
        ids, n = split_ids(tok, messages, response)
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
        assert torch.allclose(mean, hs[n:].mean(0), atol=1e-5) and torch.allclose(last, hs[n - 1], atol=1e-5)
