"""Configuration of the memory graph, and the one loader every mindloop config uses.

Values come, lowest precedence first, from the dataclass defaults, a TOML file
(``$MINDLOOP_HOME/config.toml`` or ``--config``), ``MINDLOOP_*`` environment
variables, then CLI flags::

    # config.toml
    [graph]
    chroma_url = "http://127.0.0.1:8000"
    search_hops = 2

    $ MINDLOOP_GRAPH_SEARCH_HOPS=1 mindloop search "rename"

A handful of settings are also read from short, documented variable names
(``MINDLOOP_HOME``, ``MINDLOOP_CHROMA_URL``); see ``field(metadata={"env": ...})``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from mindloop.graph.errors import GraphError

__all__ = ["ConfigError", "GraphConfig", "cache_root", "default_home", "load_config"]

C = TypeVar("C")


class ConfigError(GraphError, ValueError):
    """A configuration value that is missing, of the wrong type or out of range."""


def default_home() -> Path:
    """``$MINDLOOP_HOME``, else the per-user data directory."""
    env = os.environ.get("MINDLOOP_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("mindloop", appauthor=False))


def cache_root() -> Path:
    """Where derived model files are kept between runs (the de-quantised chat model, MiniLM's ONNX export):
    ``$MINDLOOP_MODEL_CACHE``, else the per-user cache directory. Everything in it can be rebuilt."""
    env = os.environ.get("MINDLOOP_MODEL_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mindloop"))


@dataclass
class GraphConfig:
    """Settings of :class:`graph.MemoryGraph`. Section ``[graph]`` of config.toml."""

    home: Path = field(
        default_factory=default_home,
        metadata={"help": "data directory holding graph.db and chroma/", "env": "MINDLOOP_HOME"},
    )
    chroma_url: str | None = field(
        default=None,
        metadata={
            "help": "Chroma server URL (http://host:port); unset = embedded Chroma under home/chroma",
            "env": "MINDLOOP_CHROMA_URL",
        },
    )
    embedder: str = field(
        default="minilm",
        metadata={"help": "'minilm' (bundled all-MiniLM-L6-v2) or 'hashing' (fast, deterministic, for tests)"},
    )
    embed_dtype: str = field(
        default="auto",
        metadata={"help": "precision MiniLM's weights are loaded in: 'auto' (bfloat16 on a CPU with native bfloat16, "
                          "else float32), 'model' (float32 as shipped) or 'bfloat16'"},
    )
    embed_query_runtime: str = field(
        default="auto",
        metadata={"help": "what embeds a search's query: 'onnx' (MiniLM exported once to ONNX, float32, run by "
                          "ONNX Runtime), 'torch' (the loaded model) or 'auto' (onnx when onnxruntime is "
                          "installed and an export is cached or can be made, else torch)"},
    )
    durability: str = field(
        default="full",
        metadata={"help": "'full' = fsync every commit (survives power loss); 'normal' = survives process crashes only"},
    )
    max_text_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={"help": "hard limit on one text, in UTF-8 bytes; longer text is rejected"},
    )
    embed_max_chars: int = field(
        default=4096,
        metadata={"help": "characters of a text that are embedded; longer texts are stored whole and marked"},
    )
    embed_batch: int = field(default=128, metadata={"help": "nodes embedded per batch by the background worker"})
    embed_poll_s: float = field(
        default=1.0,
        metadata={"help": "seconds between checks for nodes other processes wrote; 0 = only on our own writes"},
    )
    embed_nice: int = field(
        default=10,
        metadata={"help": "scheduling niceness of the embedding worker thread (Linux; 0 = as the caller): "
                          "logging and searching callers get the CPUs first"},
    )
    search_k: int = field(default=10, metadata={"help": "hits returned by search"})
    search_candidates: int = field(
        default=20, metadata={"help": "candidates taken from each signal (vector, lexical) before fusion"}
    )
    search_lexical_budget: int = field(
        default=3000, metadata={"help": "rows BM25 ranks per search at most, about: a query whose words match more "
                                        "ranks the rows holding its rarest words; 0 = no bound"}
    )
    search_hops: int = field(default=1, metadata={"help": "graph expansion hops from the top candidates; 0 = off"})
    search_expand_from: int = field(
        default=5, metadata={"help": "how many top fused candidates seed the graph expansion"}
    )
    search_edge_kinds: tuple[str, ...] = field(
        default=("next", "corrects", "flags", "member_of", "similar_to", "derived_from", "surfaced"),
        metadata={"help": "edge kinds the graph expansion follows (both directions)"},
    )
    rrf_k: int = field(default=60, metadata={"help": "reciprocal-rank-fusion constant: score = sum 1/(rrf_k + rank)"})
    scope: str = field(default="default", metadata={"help": "scope used when a call names none"})

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        if self.durability not in ("full", "normal"):
            raise ConfigError(f"graph.durability must be 'full' or 'normal', got {self.durability!r}")
        if self.embedder not in ("minilm", "hashing"):
            raise ConfigError(f"graph.embedder must be 'minilm' or 'hashing', got {self.embedder!r}")
        from mindloop.graph.embed import EMBED_DTYPES, QUERY_RUNTIMES

        if self.embed_dtype not in EMBED_DTYPES:
            raise ConfigError(f"graph.embed_dtype must be 'auto', 'model' or 'bfloat16', got {self.embed_dtype!r}")
        if self.embed_query_runtime not in QUERY_RUNTIMES:
            raise ConfigError(f"graph.embed_query_runtime must be 'auto', 'onnx' or 'torch', "
                              f"got {self.embed_query_runtime!r}")
        for name in ("max_text_bytes", "embed_max_chars", "embed_batch", "search_k", "search_candidates", "rrf_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"graph.{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0 <= self.embed_nice <= 19:
            raise ConfigError(f"graph.embed_nice must be between 0 and 19, got {self.embed_nice!r}")
        if self.search_hops < 0 or self.search_expand_from < 0 or self.embed_poll_s < 0 or \
                self.search_lexical_budget < 0:
            raise ConfigError("graph.search_hops, search_expand_from, search_lexical_budget and embed_poll_s must not "
                              "be negative")
        from mindloop.graph.records import EdgeKind

        allowed = {k.value for k in EdgeKind}
        bad = [k for k in self.search_edge_kinds if k not in allowed]
        if bad:
            raise ConfigError(f"graph.search_edge_kinds has unknown kinds {bad}; allowed: {', '.join(sorted(allowed))}")
        self.search_edge_kinds = tuple(self.search_edge_kinds)
        if not self.scope.strip():
            raise ConfigError("graph.scope must not be empty")

    @property
    def db_path(self) -> Path:
        return self.home / "graph.db"

    @property
    def chroma_path(self) -> Path:
        return self.home / "chroma"


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Turn a TOML or environment value into the field's type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "off")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return tp(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if tp is Path:
            return Path(value)
        if origin is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def load_config(
    cls: type[C],
    section: str,
    *,
    file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build ``cls`` from defaults, then ``[section]`` of ``file``, then env, then ``overrides``.

    ``overrides`` holds CLI flags; entries whose value is None are ignored,
    so an unset flag never hides a file or environment value.
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if file is None:
        home = env.get("MINDLOOP_HOME")
        candidate = Path(home).expanduser() / "config.toml" if home else None
        file = candidate if candidate is not None and candidate.exists() else None
    if file is not None:
        try:
            with open(file, "rb") as fh:
                table = tomllib.load(fh).get(section, {})
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] in {file} must be a table")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(table) - names
        if unknown:
            raise ConfigError(f"[{section}] in {file} has unknown keys: {', '.join(sorted(unknown))}")
        values.update(table)
    for f in dataclasses.fields(cls):
        for var in (f.metadata.get("env"), f"MINDLOOP_{section.upper()}_{f.name.upper()}"):
            if var and var in env:
                values[f.name] = env[var]
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    typed = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**typed)
