"""The full-text (FTS5) side of the store: query building and the lexical reads, BM25 over a bounded set of rows.

``nodes_fts`` (graph/schema.py) indexes each node's text in one of two
columns, ``memory_text`` for memories and ``log_text`` for every other kind;
a search for memories only, or for no memories, reads only its column. The
functions here read through a connection the caller gives them; the
:class:`~mindloop.graph.store.Store` settles the queued text first
(``Store.lexical``, ``Store.term_counts``, ``Store.match_counts``).

    >>> fts_query('Please rename "foo" to bar')
    '"rename" OR "foo" OR "bar"'
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Callable, Sequence

__all__ = ["JOINT_TRIES", "bounded_query", "count_matches", "count_terms", "fts_query", "fts_terms",
           "lexical_matches"]

# Words too common to help a lexical match; dropping them keeps BM25 queries short.
_STOPWORDS = frozenset(
    """a an and are as at be but by can could did do does for from had has have how i if in into is it its
    me my no not of on or our please so that the their them then there these they this to was we were what
    when where which who why will with would you your""".split()
)


def fts_terms(text: str, max_terms: int = 16) -> list[str]:
    """The distinctive words of ``text`` (no stopwords, no single letters), in order, at most ``max_terms``."""
    seen: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        if len(word) > 1 and word not in _STOPWORDS and word not in seen:
            seen.append(word)
        if len(seen) == max_terms:
            break
    return seen


def _any_of(terms: Sequence[str]) -> str:
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in terms)


def fts_query(text: str, max_terms: int = 16) -> str | None:
    """An FTS5 query that ORs the distinctive words of ``text``; None if it has none."""
    terms = fts_terms(text, max_terms)
    return _any_of(terms) if terms else None


JOINT_TRIES = 4  # counts a lexical search may spend on narrowing its rarest words down (one FTS5 count each)


def _all_of(terms: Sequence[str]) -> str:
    return " AND ".join('"' + w.replace('"', '""') + '"' for w in terms)


def bounded_query(terms: Sequence[str], counts: dict[str, int], budget: int, *,
                  count_all: Callable[[Sequence[str]], int] | None = None, least: int = 1) -> tuple[str, int] | None:
    """The FTS5 query for ``terms`` that ranks at most about ``budget`` rows, given each term's row count,
    and how many rows (counted up to ``budget + 1``) its picking part matches; None if no term matches.

    BM25 has to score every row an OR query matches, and a few common words
    match a large share of a big store (docs/benchmarks.md). When the
    terms together match more than ``budget`` rows, the query becomes
    ``(rarest OR ...) AND (every term OR ...)``: the rarest terms whose counts
    fit the budget pick the rows (at least the rarest term), and every term
    still scores them, the rare ones counted twice. A term that matches
    nothing is left out. Within the budget it is the plain OR of the terms.

    When even the rarest term matches more than ``budget`` rows, the rows that
    hold the rarest terms together pick instead: ``count_all(terms)`` counts
    the rows holding all of them, and terms are added rarest first until that
    count fits the budget; a term is left out when fewer than ``least`` rows
    would hold them all. At most ``JOINT_TRIES`` terms are tried.
    Those rows are the ones BM25 ranks first anyway (each of the rarest terms
    adds to their score); without them the budget could only keep the newest
    rows of the rarest term.
    """
    present = [t for t in terms if counts.get(t, 0) > 0]
    if not present:
        return None
    everything = sum(counts[t] for t in present)
    if everything <= budget:
        return _any_of(present), everything
    by_rarity = sorted(present, key=lambda t: counts[t])
    rare: list[str] = []
    total = 0
    for t in by_rarity:
        if rare and total + counts[t] > budget:
            break
        rare.append(t)
        total += counts[t]
    pick, rows = _any_of(rare), total
    if counts[by_rarity[0]] > budget and count_all is not None:
        together = by_rarity[:1]
        for t in by_rarity[1 : 1 + JOINT_TRIES]:
            joint = count_all([*together, t])
            if joint < least:
                continue  # too few rows hold this one with the others: leave it out
            together.append(t)
            pick, rows = _all_of(together), joint
            if joint <= budget:
                break
    return f"({pick}) AND ({_any_of(present)})", rows


def _fts_column(kinds: Sequence[str] | None) -> str | None:
    """The one FTS5 column a search for ``kinds`` needs to read, or None when it needs both."""
    if not kinds:
        return None
    if all(k == "memory" for k in kinds):
        return "memory_text"
    return None if "memory" in kinds else "log_text"



def lexical_matches(conn: sqlite3.Connection, terms: Sequence[str], *, scope: str, kinds: Sequence[str] | None,
                    since: float | None, limit: int, budget: int | None = None) -> list[tuple[str, float]]:
    """BM25 matches of ``terms`` (:func:`fts_terms`, at least one) in one scope: (id, bm25), best first.

    A search for memories only, or for no memories, reads only that FTS5 column, so its words are counted
    and ranked among the rows it can return. With ``budget``, a query whose words match more rows than
    that ranks the rows holding its rarest words (:func:`bounded_query`; each word's row count comes from
    FTS5, up to ``budget + 1``), or, when even the rarest word is over the budget, the rows holding the
    rarest words together; of those at most the ``budget`` newest: BM25 then scores a bounded number of
    rows however common the words are. When the rarest words are rare because other scopes hold
    them, the newest rows with any of the words fill the result up.
    """
    column = _fts_column(kinds)
    if budget is None:
        return _bm25(conn, _any_of(terms), column, scope, kinds, since, limit, window=None)
    counts = count_terms(conn, terms, cap=budget + 1, column=column)
    bounded = bounded_query(terms, counts, budget, least=limit,
                            count_all=lambda ts: count_matches(conn, [_all_of(ts)], cap=budget + 1, column=column)[0])
    if bounded is None:
        return []
    query, picked = bounded
    out = _bm25(conn, query, column, scope, kinds, since, limit, window=budget)
    if " AND " in query and len(out) < min(limit, picked):  # the filters dropped rows the rarest words picked
        seen = {i for i, _ in out}
        wider = _bm25(conn, _any_of([t for t in terms if counts.get(t)]), column, scope, kinds, since, limit,
                      window=budget)
        out += [hit for hit in wider if hit[0] not in seen][: limit - len(out)]
    return out


def _bm25(conn: sqlite3.Connection, query: str, column: str | None, scope: str, kinds: Sequence[str] | None,
          since: float | None, limit: int, *, window: int | None) -> list[tuple[str, float]]:
    """The ``limit`` best of the rows matching ``query`` in ``scope`` (of the ``window`` newest, if given).

    FTS5 ranks first and only the best ``4 * limit`` rows are looked up in ``nodes`` for the filters; when
    too few of those pass (other scopes or kinds hold most of the matches), the filters run on every row.
    """
    match = f"{{{column}}}: ({query})" if column else query
    ranked = "SELECT rowid, bm25(nodes_fts) AS s FROM nodes_fts WHERE nodes_fts MATCH ?"
    params: list[Any] = [match]
    if window is not None:  # FTS5 walks its rows newest first and stops there; bm25 scores only those
        ranked = f"SELECT * FROM ({ranked} ORDER BY rowid DESC LIMIT ?)"
        params.append(window)
    filters, fparams = "n.scope = ?", [scope]
    if kinds:
        filters += f" AND n.kind IN ({','.join('?' * len(kinds))})"
        fparams += list(kinds)
    if since is not None:
        filters += " AND n.created >= ?"
        fparams.append(since)
    join = f"SELECT n.id, f.s FROM ({{}}) f JOIN nodes n ON n.rowid = f.rowid WHERE {filters} ORDER BY f.s, f.rowid"
    over = 4 * limit
    best = conn.execute(join.format(f"{ranked} ORDER BY s, rowid LIMIT ?"), [*params, over, *fparams])
    rows = best.fetchall()
    if len(rows) < limit and conn.execute(f"SELECT count(*) FROM ({ranked} LIMIT ?)",
                                          [*params, over + 1]).fetchone()[0] > over:
        rows = conn.execute(join.format(ranked) + " LIMIT ?", [*params, *fparams, limit]).fetchall()
    return [(r[0], r[1]) for r in rows[:limit]]


def count_terms(conn: sqlite3.Connection, terms: Sequence[str], *, cap: int,
                column: str | None = None) -> dict[str, int]:
    """How many rows of the lexical index (every scope) each term matches, counting at most ``cap`` each.

    FTS5 counts through its own tokenizer (Porter stems), so a count is exactly what a query for the
    term would match; the cap keeps a common word's count cheap. ``column`` counts in one column only
    (``memory_text`` or ``log_text``).
    """
    return dict(zip(terms, count_matches(conn, [_any_of([t]) for t in terms], cap=cap, column=column)))


def count_matches(conn: sqlite3.Connection, queries: Sequence[str], *, cap: int,
                  column: str | None = None) -> list[int]:
    """How many rows of the lexical index (every scope) each FTS5 query matches, up to ``cap`` each, in one
    statement."""
    one = f"(SELECT count(*) FROM (SELECT 1 FROM nodes_fts WHERE nodes_fts MATCH ? LIMIT {int(cap)}))"
    sql = " UNION ALL ".join(f"SELECT {i}, {one}" for i in range(len(queries)))
    prefix = f"{{{column}}}: " if column else ""
    rows = conn.execute(sql, [f"{prefix}({q})" for q in queries]).fetchall()
    out = [0] * len(queries)
    for i, n in rows:
        out[i] = n
    return out
