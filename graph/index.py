"""The vector index: derived data, rebuilt or reconciled from ``graph.db``.

Contract of a :class:`VectorIndex` backend (one conformance suite,
``tests/graph/test_index_conformance.py``, runs against each):

- vectors are keyed by node id inside a scope; ``upsert`` of the same id
  replaces (it is idempotent), ``delete`` of an absent id is not an error;
- ``query`` returns ``(id, similarity)`` pairs, best first, where similarity
  is cosine similarity: **higher is closer**, 1.0 for the same direction;
- a query never returns ids of another scope; ``drop_scope`` removes a
  scope's vectors at once.

Backends: embedded Chroma (``PersistentClient`` under ``home/chroma``) and a
Chroma server (``HttpClient``) when a URL is configured. Each scope has one
Chroma collection per node kind, so scopes are separate by construction and
a search for some kinds (surfacing asks for memories only) queries just
their collections: a query through Chroma's metadata filter is far
slower than an unfiltered one (docs/benchmarks.md). Embedded Chroma
must have a single writer process; the process that opens it holds
``chroma.lock`` until it closes, and other processes get
:class:`IndexUnavailable` (they still log; the owner embeds their nodes).

Embedded Chroma writes its HNSW files in place, so a process killed while
it persists them leaves files that fail to load or crash the loader
outright. The lock file therefore also records whether the last owner closed
the index cleanly; when it did not, the next owner deletes ``chroma/`` before
opening it, and reconciliation re-embeds every node from ``graph.db``. Files
damaged after a clean close (a full disk, a bad copy) are caught the same
way: before Chroma loads them, :func:`damaged_segments` checks each HNSW
segment's sizes and neighbour ids against its header (hnswlib reads them
unchecked and segfaults), and after opening every collection is read once;
either failure deletes ``chroma/`` and the vectors are rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np

from mindloop.graph.errors import IndexUnavailable

__all__ = ["ChromaIndex", "VectorIndex", "collection_name", "damaged_segments"]

log = logging.getLogger(__name__)


# Node kinds that have vectors (those whose records define embed_text); each gets its own collection.
EMBEDDED_KINDS = ("turn", "memory", "flag", "pattern")


def collection_name(scope: str, kind: str) -> str:
    """A Chroma-legal collection name for a scope's vectors of one kind ([a-zA-Z0-9._-], 3-512 chars)."""
    return f"mindloop-{hashlib.sha256(scope.encode('utf-8')).hexdigest()[:24]}-{kind}"


# hnswlib's header.bin as Chroma writes it: a format version, then hnswlib's own header fields.
_HNSW_HEADER = struct.Struct("<i6QiI3QdQ")


def damaged_segments(root: str | os.PathLike) -> list[str]:
    """What is wrong with the HNSW segment files under an embedded Chroma folder (empty: nothing seen).

    Checks each segment folder's ``header.bin`` against the sizes of
    ``data_level0.bin``, ``length.bin`` and ``link_lists.bin``, the level-0
    neighbour ids against the element count, and that
    ``index_metadata.pickle`` is whole (a pickle ends with ``.``). A torn
    file fails one of these; hnswlib itself would read past its end.
    """
    problems: list[str] = []
    for header in sorted(Path(root).glob("*/header.bin")):
        seg = header.parent
        try:
            problem = _segment_problem(seg)
        except OSError as e:
            problem = f"cannot be read ({e})"
        if problem:
            problems.append(f"{seg.name}: {problem}")
    return problems


def _segment_problem(seg: Path) -> str | None:
    raw = (seg / "header.bin").read_bytes()
    if len(raw) != _HNSW_HEADER.size:
        return f"header.bin is {len(raw)} bytes, not {_HNSW_HEADER.size}"
    (_, off0, max_elements, count, per_element, _, off_data, max_level, entry, max_m, max_m0, _, _,
     _) = _HNSW_HEADER.unpack(raw)
    if count > max_elements or per_element < off_data or off_data != off0 + 4 * (max_m0 + 1) or \
            (count and max_level < 0):  # an empty segment has level -1
        return "header.bin holds impossible values"
    if count and entry >= count:
        return f"header.bin names entry point {entry} of {count} elements"
    sizes = {name: (seg / name).stat().st_size if (seg / name).exists() else -1
             for name in ("data_level0.bin", "length.bin", "link_lists.bin")}
    # the files may be allocated for more elements than the header counts (a fresh segment), never fewer
    if sizes["data_level0.bin"] < count * per_element:
        return f"data_level0.bin is {sizes['data_level0.bin']} bytes, header.bin needs {count * per_element}"
    if sizes["length.bin"] < count * 4:
        return f"length.bin is {sizes['length.bin']} bytes, header.bin needs {count * 4}"
    links = (seg / "link_lists.bin").read_bytes() if sizes["link_lists.bin"] >= 0 else b""
    pos, block = 0, 4 * (max_m + 1)
    for _ in range(count):  # each element: its upper levels' size in bytes, then the levels
        if pos + 4 > len(links):
            return "link_lists.bin is cut short"
        (size,) = struct.unpack_from("<I", links, pos)
        if size % block:
            return "link_lists.bin holds a list of impossible size"
        pos += 4 + size
    if count:
        rows = np.fromfile(seg / "data_level0.bin", dtype=np.uint8, count=count * per_element).reshape(count, per_element)
        level0 = np.ascontiguousarray(rows[:, off0 : off0 + 4 * (max_m0 + 1)]).view("<u4")
        n = level0[:, 0] & 0xFFFF
        ids = level0[:, 1:]
        if (n > max_m0).any() or (ids[np.arange(max_m0)[None, :] < n[:, None]] >= count).any():
            return "data_level0.bin holds neighbour ids out of range"
    meta = seg / "index_metadata.pickle"
    if meta.exists():
        with open(meta, "rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0 or (fh.seek(-1, os.SEEK_END) and fh.read(1) != b"."):
                return "index_metadata.pickle is cut short"
    return None


_pool: ThreadPoolExecutor | None = None


def _query_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=len(EMBEDDED_KINDS), thread_name_prefix="mindloop-vector")
    return _pool


class VectorIndex:
    """Base class; see the module docstring for the contract."""

    def upsert(self, scope: str, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict]) -> None:
        raise NotImplementedError

    def delete(self, scope: str, ids: Sequence[str]) -> None:
        raise NotImplementedError

    def drop_scope(self, scope: str) -> None:
        raise NotImplementedError

    def query(self, scope: str, vector: np.ndarray, k: int, *, kinds: Sequence[str] | None = None,
              since: float | None = None) -> list[tuple[str, float]]:
        raise NotImplementedError

    def ids(self, scope: str) -> set[str]:
        raise NotImplementedError

    def scopes(self) -> list[str]:
        raise NotImplementedError

    def count(self, scope: str | None = None) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (the writer lock of embedded Chroma)."""


class ChromaIndex(VectorIndex):
    """Chroma, embedded under ``path`` or a server at ``url``.

        >>> import tempfile, numpy as np
        >>> index = ChromaIndex(path=tempfile.mkdtemp())
        >>> index.upsert("alice", ["n1"], np.eye(3, dtype="float32")[:1], [{"kind": "turn", "created": 0.0}])
        >>> index.query("alice", np.eye(3, dtype="float32")[0], 1)
        [('n1', 1.0)]
        >>> index.close()
    """

    def __init__(self, *, path: str | os.PathLike | None = None, url: str | None = None) -> None:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (embedded Chroma) or url (Chroma server)")
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        self._lock_fh = None
        self.rebuilt = False
        self._collections: dict[tuple[str, str], Any] = {}
        self._missing: dict[tuple[str, str], float] = {}
        if url is not None:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise IndexUnavailable(f"Chroma URL {url!r} must look like http://host:port")
            self.where = url
            try:
                self._client = chromadb.HttpClient(
                    host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https", settings=settings,
                )
                self._client.heartbeat()
            except Exception as e:  # the client raises several types for "not reachable"
                self.close()
                raise IndexUnavailable(f"Chroma server at {url} is not reachable: {e}") from None
        else:
            root = Path(path)
            root.mkdir(parents=True, exist_ok=True)
            self.where = str(root)
            lock_path = root.parent / f"{root.name}.lock"
            fh = open(lock_path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip().removeprefix("in use by ") or "another process"
                fh.close()
                raise IndexUnavailable(
                    f"embedded Chroma at {root} is in use by {owner}; embedded Chroma has one writer. "
                    "Set MINDLOOP_CHROMA_URL to share a Chroma server between processes."
                ) from None
            fh.seek(0)
            last = fh.read().strip()
            damaged = damaged_segments(root) if last == "closed" else []
            self.rebuilt = (last != "closed" or bool(damaged)) and any(root.iterdir())
            if self.rebuilt:
                why = (f"its HNSW files are damaged ({'; '.join(damaged)})" if last == "closed"
                       else f"it was not closed cleanly ({last or 'no record'})")
                log.warning("embedded Chroma at %s: %s; deleting it, vectors will be rebuilt from graph.db", root, why)
                shutil.rmtree(root)
                root.mkdir()
            self._lock_fh = fh
            self._record(f"in use by pid {os.getpid()}")
            try:
                self._client = chromadb.PersistentClient(path=str(root), settings=settings)
                self._read_every_collection()
            except Exception as e:
                if self.rebuilt or not any(root.iterdir()):
                    self.close()
                    raise IndexUnavailable(f"embedded Chroma at {root} cannot be opened: {e}") from None
                # damaged in a way the file checks do not see; the index is derived data, so start it over
                log.warning("embedded Chroma at %s cannot be read (%s); deleting it, vectors will be rebuilt "
                            "from graph.db", root, e)
                self._drop_client()
                shutil.rmtree(root)
                root.mkdir()
                self.rebuilt = True
                try:
                    self._client = chromadb.PersistentClient(path=str(root), settings=settings)
                except Exception as e2:
                    self.close()
                    raise IndexUnavailable(f"embedded Chroma at {root} cannot be opened: {e2}") from None

    def _read_every_collection(self) -> None:
        """Read one row of each of our collections, so that a segment that fails to load fails here."""
        for coll in self._client.list_collections():
            if coll.name.startswith("mindloop-"):
                self._client.get_collection(coll.name, embedding_function=None).get(limit=1, include=[])

    def _record(self, state: str) -> None:
        fh = self._lock_fh
        fh.seek(0)
        fh.truncate()
        fh.write(state + "\n")
        fh.flush()
        os.fsync(fh.fileno())

    def _collection(self, scope: str, kind: str, create: bool = True):
        key = (scope, kind)
        coll = self._collections.get(key)
        if coll is not None:
            return coll
        name = collection_name(scope, kind)
        if create:
            coll = self._client.get_or_create_collection(
                name, embedding_function=None, metadata={"scope": scope, "kind": kind},
                configuration={"hnsw": {"space": "cosine"}},
            )
        else:
            missed = self._missing.get(key)
            if missed is not None and time.monotonic() - missed < 2.0:
                return None  # asked very recently; another process may create it, so ask again later
            try:
                coll = self._client.get_collection(name, embedding_function=None)
            except Exception:  # chromadb raises NotFoundError / ValueError by version
                self._missing[key] = time.monotonic()
                return None
        self._missing.pop(key, None)
        self._collections[key] = coll
        return coll

    def _present(self, scope: str, kinds=None) -> list:
        """The collections of ``scope`` (for ``kinds``, or every embeddable kind) that exist."""
        found = [self._collection(scope, kind, create=False) for kind in (kinds or EMBEDDED_KINDS)]
        return [c for c in found if c is not None]

    def upsert(self, scope, ids, vectors, metadatas) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        by_kind: dict[str, list[int]] = {}
        for i, meta in enumerate(metadatas):
            by_kind.setdefault(meta.get("kind", "node"), []).append(i)
        for kind, rows in by_kind.items():
            self._collection(scope, kind).upsert(ids=[ids[i] for i in rows], embeddings=vectors[rows],
                                                 metadatas=[metadatas[i] for i in rows])

    def delete(self, scope, ids) -> None:
        if not len(ids):
            return
        for coll in self._present(scope):  # a node id lives in exactly one of them; deleting absent ids is a no-op
            for i in range(0, len(ids), 5000):
                coll.delete(ids=list(ids[i : i + 5000]))

    def drop_scope(self, scope) -> None:
        for kind in EMBEDDED_KINDS:
            self._collections.pop((scope, kind), None)
            self._missing.pop((scope, kind), None)
            try:
                self._client.delete_collection(collection_name(scope, kind))
            except Exception:  # absent collection: nothing to drop
                pass

    def query(self, scope, vector, k, *, kinds=None, since=None) -> list[tuple[str, float]]:
        if k < 1:
            return []
        where = {"created": {"$gte": float(since)}} if since is not None else None
        q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        colls = self._present(scope, kinds)

        def one(coll) -> list[tuple[str, float]]:
            res = coll.query(query_embeddings=q, n_results=k, where=where, include=["distances"])
            return [(i, round(1.0 - float(d), 6)) for i, d in zip(res["ids"][0], res["distances"][0])]

        # Chroma's query releases the GIL: querying the kinds' collections side by side costs about one query
        parts = list(_query_pool().map(one, colls)) if len(colls) > 1 else [one(c) for c in colls]
        hits = [h for part in parts for h in part]
        hits.sort(key=lambda h: -h[1])
        return hits[:k]

    def ids(self, scope) -> set[str]:
        out: set[str] = set()
        page = 10_000
        for coll in self._present(scope):
            offset = 0
            while True:
                got = coll.get(include=[], limit=page, offset=offset)["ids"]
                out.update(got)
                if len(got) < page:
                    break
                offset += page
        return out

    def scopes(self) -> list[str]:
        out = set()
        for coll in self._client.list_collections():
            meta = getattr(coll, "metadata", None) or {}
            if coll.name.startswith("mindloop-") and "scope" in meta:
                out.add(meta["scope"])
        return sorted(out)

    def count(self, scope=None) -> int:
        if scope is not None:
            return sum(c.count() for c in self._present(scope))
        return sum(self.count(s) for s in self.scopes())

    def _drop_client(self) -> None:
        self._collections.clear()
        self._missing.clear()
        client = getattr(self, "_client", None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a client that failed to load is best effort
                pass
            self._client = None
        try:  # a client that failed to load leaves its System cached half-built; the next one must not reuse it
            from chromadb.api.shared_system_client import SharedSystemClient

            system = SharedSystemClient._identifier_to_system.pop(self.where, None)
            if system is not None:
                system.stop()
        except Exception:  # noqa: BLE001 - a System that never started may not stop cleanly
            pass

    def close(self) -> None:
        self._collections.clear()
        client = getattr(self, "_client", None)
        if client is not None:
            # chromadb's HTTP client (and its admin client) never close their httpx sessions
            for owner in (client, getattr(client, "_admin_client", None)):
                session = getattr(getattr(owner, "_server", None), "_session", None)
                if session is not None and hasattr(session, "close"):
                    session.close()
            client.close()  # stops the shared System once its last client closes: files and sockets released
            self._client = None
        if self._lock_fh is not None:
            try:
                self._record("closed")  # Chroma's files are complete: the next owner may trust them
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            finally:
                self._lock_fh.close()
                self._lock_fh = None
