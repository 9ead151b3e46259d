"""The bundled model's de-quantised cache (trainer/model.py): made on the first load, read back the same."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mindloop.trainer.model import bundled_cache, load_model  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_bundled_model_is_cached_once_and_reads_back_identical(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(blocked / "cache"))  # cannot be created: GGUF every time
    model, tok = load_model("bundled", device="cpu", dtype=torch.float32)
    assert not bundled_cache(torch.float32).exists()

    monkeypatch.setenv("MINDLOOP_MODEL_CACHE", str(tmp_path / "cache"))
    load_model("bundled", device="cpu", dtype=torch.float32)  # from GGUF, then written to the cache
    cache = bundled_cache(torch.float32)
    assert (cache / "model.safetensors").exists() and not list(cache.parent.glob(".*tmp*"))
    cached, cached_tok = load_model("bundled", device="cpu", dtype=torch.float32)
    assert cached.config._name_or_path == str(cache)  # this one came from the cache

    msgs = [{"role": "user", "content": "Rename tmp to total, please."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(ids, cached_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                                           return_dict=True)["input_ids"])
    assert cached_tok.pad_token == tok.pad_token and cached_tok.chat_template == tok.chat_template
    with torch.no_grad():
        assert torch.equal(model(ids).logits, cached(ids).logits)
