"""The bundled embedder exported to ONNX, for the graph's search queries (graph/embed.py).

The graph never imports torch (ARCHITECTURE.md: graph is the bottom layer, and torch is the trainer's), yet the
fast path for a search's query is MiniLM on ONNX Runtime, and only torch's exporter can produce that graph. So the
export lives here and is handed down: :func:`graph_embedder` is the embedder a ``GraphConfig`` names, able to
export MiniLM once when no export is cached yet, and :func:`open_graph` opens a graph with it. Whatever opens the
graph for a user (the CLI, the examples) opens it through here; the benchmarks hand :func:`onnx_export` to the
embedder they build.

    >>> import tempfile
    >>> from mindloop.graph import GraphConfig
    >>> with open_graph(GraphConfig(home=tempfile.mkdtemp(), embedder="hashing")) as g:
    ...     g.embedder.name
    'hashing-384'
"""

from __future__ import annotations

import logging
import warnings

from mindloop.graph import Embedder, GraphConfig, MemoryGraph, make_embedder
from mindloop.graph.embed import HEAVY_IMPORTS

__all__ = ["graph_embedder", "onnx_export", "open_graph"]


def graph_embedder(config: GraphConfig) -> Embedder:
    """The embedder ``config`` names, with :func:`onnx_export` to make its query model when none is cached."""
    return make_embedder(config.embedder, config.embed_dtype, config.embed_query_runtime, onnx_exporter=onnx_export)


def open_graph(config: GraphConfig | None = None, *, embedder: Embedder | None = None, **kwargs) -> MemoryGraph:
    """:meth:`MemoryGraph.open` with :func:`graph_embedder` unless ``embedder`` is given."""
    config = config or GraphConfig()
    return MemoryGraph.open(config, embedder=embedder or graph_embedder(config), **kwargs)


def onnx_export(path: str) -> bytes:
    """The sentence-transformers model in folder ``path`` as one float32 ONNX graph, serialised.

    Its inputs are the model's tokenizer outputs (``input_ids``, ``attention_mask``, ...), any batch size and
    length; its output is the sentence embedding, pooling and normalisation included, exactly as
    ``SentenceTransformer.forward`` computes it. Exported with torch's own exporter
    (``torch.onnx.export(dynamo=True)``, which needs the ``onnx`` and ``onnxscript`` packages). An export takes
    seconds (docs/benchmarks.md), which is why :func:`mindloop.graph.embed.onnx_session` keeps the result.
    """
    with HEAVY_IMPORTS:
        import torch
        from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")  # float32 as shipped, whatever the embedder runs batches in
    model.requires_grad_(False).eval()
    prepare = getattr(model, "preprocess", None) or model.tokenize
    sample = prepare(["an example sentence for tracing the graph", "and a shorter one"])
    names = [k for k, v in sample.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in sample.items() if k not in names}  # e.g. sentence-transformers 6's "modality"

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model({**constants, **dict(zip(names, tensors))})["sentence_embedding"]

    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=max(model.max_seq_length or 512, 16))
    # one line per torchvision operator it skips ("torchvision is not installed"): not ours to act on
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # the exporter's notes on deprecated torch.export internals
            warnings.simplefilter("ignore")
            program = torch.onnx.export(Pipeline(), tuple(sample[n] for n in names), dynamo=True, input_names=names,
                                        dynamic_shapes=(tuple({0: batch, 1: length} for _ in names),),
                                        optimize=True, verbose=False)
    finally:
        registration.setLevel(level)
    return program.model_proto.SerializeToString()
