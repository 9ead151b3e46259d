"""LocalBackend on a tiny locally built LM: chat template, streaming, following the promoted checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mindloop.agents.chat.backends import LocalBackend

MESSAGES = [{"role": "user", "content": "rename the function please"}]


def logits(backend, messages=MESSAGES):
    model, _ = backend.load()
    with torch.no_grad():
        return model(backend.prompt_ids(messages)).logits[0, -1]


def test_streams_a_reply_built_from_the_chat_template(tiny_lm):
    b = LocalBackend(str(tiny_lm))
    pieces = list(b.stream(MESSAGES, max_tokens=5))
    assert "".join(pieces) == b.complete(MESSAGES, max_tokens=5)  # greedy: the same reply twice
    ids = b.prompt_ids(MESSAGES)[0].tolist()
    _, tok = b.load()
    assert tok.convert_ids_to_tokens(ids)[0] == "<|user|>" and tok.convert_ids_to_tokens(ids)[-1] == "<|assistant|>"
    assert b.checkpoint is None and b.model_id == str(tiny_lm)


def _promote(checkpoints, name, kind="lora"):
    tmp = checkpoints / "promoted.json.tmp"
    tmp.write_text(json.dumps({"checkpoint": name, "path": name, "kind": kind}))
    os.replace(tmp, checkpoints / "promoted.json")  # atomic, as promotion does


def test_follows_promotion_and_rollback_of_lora_adapters(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    checkpoints = tmp_path / "checkpoints"
    for seed, name in ((1, "ckpt_a"), (2, "ckpt_b")):
        torch.manual_seed(seed)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                                    LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        peft_model.save_pretrained(checkpoints / name)

    b = LocalBackend(str(tiny_lm), checkpoints=checkpoints)
    base = logits(b)
    assert b.checkpoint is None

    _promote(checkpoints, "ckpt_a")
    a = logits(b)
    assert b.checkpoint == "ckpt_a" and not torch.allclose(a, base)

    _promote(checkpoints, "ckpt_b")
    bb = logits(b)
    assert b.checkpoint == "ckpt_b" and not torch.allclose(bb, a) and not torch.allclose(bb, base)

    (checkpoints / "promoted.json").unlink()  # rolled back to the base model
    assert torch.allclose(logits(b), base, atol=1e-6) and b.checkpoint is None

    _promote(checkpoints, "ckpt_a")
    assert torch.allclose(logits(b), a, atol=1e-6)  # the same adapter gives the same model again


def test_a_bad_promoted_checkpoint_falls_back_to_the_base(tiny_lm, tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    b = LocalBackend(str(tiny_lm), checkpoints=checkpoints)
    base = logits(b)
    _promote(checkpoints, "missing")
    assert torch.allclose(logits(b), base) and b.checkpoint is None
    assert "cannot load the checkpoint promoted" in caplog.text


def test_missing_model_is_a_clear_error(tmp_path):
    from mindloop.agents.chat.backends import BackendError

    with pytest.raises(BackendError, match="cannot load model"):
        LocalBackend(str(tmp_path / "nope")).complete(MESSAGES)
