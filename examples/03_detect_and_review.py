"""Detecting corrections in logged conversations, and reviewing the flags as a person would.

    .venv/bin/python examples/03_detect_and_review.py            # MiniLM + the SmolLM2 reader
    .venv/bin/python examples/03_detect_and_review.py --fast     # hashing embedder, no reader (what CI runs)

Expected runtime: about 1 minute on 2 CPU cores (loading MiniLM and SmolLM2,
which reads each of the 93 follow-ups); about 20 s with ``--fast`` (the
detector trains itself from the seed set for the hashing embedder). Offline;
writes only to a temporary directory (or ``--home DIR``, emptied first).

What it shows:

1. the scripted conversations in ``examples/data/conversations.jsonl`` and
   ``corrections.jsonl`` are logged into a fresh memory graph
   (``mindloop log import``);
2. the training-signal agent scores every (assistant reply, next user turn)
   pair (``mindloop detect --all``) and lists its flags with type,
   confidence and evidence (``mindloop flags list``), then groups them into
   patterns (``mindloop patterns``);
3. a reviewer opens one flag (``mindloop flags show ID``: the conversation
   before it, the reply, the correction, the evidence, similar flags), then
   confirms the flags on conversations where the user really corrected the
   assistant, writes a better response for one (``flags edit``), and rejects
   the rest: with ``--fast`` (no reader) the detector flags a user agreeing
   with a push-back, which is not a correction; with the reader it flags no
   such turn in this data, and there is nothing to reject;
4. the statuses are read back from the graph and the patterns are regrouped:
   rejected flags leave them, and only confirmed flags will train.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from _common import (
    CORRECTED_SESSIONS,
    arguments,
    console,
    data_dir,
    detect,
    goodbye,
    import_scripted,
    open_graph,
    section,
    show_patterns,
    signal_agent,
)
from rich.table import Table

# the response a reviewer wrote for one flagged reply (`mindloop flags edit ID --response ...`)
EDITS = {"alt-21": "apple, banana, cherry, fig, pear"}


def flag_table(flags, title: str, rows: int = 12) -> Table:
    shown = sorted(flags, key=lambda f: (f.session.startswith("alt-"), f.session))
    table = Table(title=title, title_justify="left",
                  caption=f"(+{len(shown) - rows} more)" if len(shown) > rows else None, caption_justify="left")
    for col, width in (("session", 11), ("type", 21), ("conf", 4), ("status", 6), ("correction", None)):
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width)
    for f in shown[:rows]:
        table.add_row(f.session, f.type, f"{f.confidence:.2f}", f.status, f.reason.split(" || ")[0][:40])
    return table


def show_one(agent, flag) -> None:
    view = agent.show(flag.id)
    console.print(f"[bold]mindloop flags show {flag.id}[/]  ({flag.type}, confidence {flag.confidence:.2f})")
    for m in view["window"]:
        console.print(f"  {m['role']:>9}: {m['text'][:100]}", markup=False)
    console.print(f"  [yellow]  flagged: {view['flagged'][:100]}[/]")
    console.print(f"  [yellow]correction: {view['correction'][:100]}[/]")
    if view["reply_after_correction"]:
        console.print(f"  then: {view['reply_after_correction'][:100]}", markup=False)
    console.print(f"  evidence: {'; '.join(flag.evidence[:4])}", markup=False)
    console.print(f"  similar flags: {len(view['similar'])}; patterns: {', '.join(view['patterns']) or 'none'}")


def review(agent, flags) -> None:
    """Confirm real corrections (one with an edited response), reject the others: what a person does in the UI."""
    for f in sorted(flags, key=lambda f: f.session):
        if f.session in EDITS:
            agent.edit(f.id, EDITS[f.session])
            console.print(f"mindloop flags edit {f.id} --response {EDITS[f.session]!r}   ({f.session})")
        elif f.session in CORRECTED_SESSIONS:
            agent.confirm(f.id)
        else:
            agent.reject(f.id)
            console.print(f"mindloop flags reject {f.id}   ({f.session}: {f.reason.split(' || ')[0][:60]!r})",
                          markup=False)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__).parse_args(argv)
    started = time.perf_counter()
    with data_dir(args.home, fast=args.fast) as home, open_graph(home, fast=args.fast) as graph:
        section("log the scripted conversations")
        console.print(f"data dir: {home}  (embedder {graph.embedder.name})")
        import_scripted(graph)

        section("detect corrections: mindloop detect --all")
        agent = signal_agent(graph, fast=args.fast)
        flags = detect(agent)
        console.print(flag_table(flags, "mindloop flags list"))
        patterns = show_patterns(graph, agent)

        section("review: mindloop flags show / confirm / edit / reject")
        if patterns:
            members = agent.flags(pattern=patterns[0].id)
            show_one(agent, max(members, key=lambda f: f.confidence))
        review(agent, flags)
        after = agent.flags()  # read back from the graph
        status = Counter(f.status for f in after)
        edited = sum(1 for f in after if f.better_response)
        console.print(f"review: {len(after)} flags: confirmed {status['confirmed']} ({edited} edited with a better "
                      f"response), rejected {status['rejected']}, new {status['new']}")
        wrong = [f.session for f in after if f.status == "confirmed" and f.session not in CORRECTED_SESSIONS]
        missed = sorted(CORRECTED_SESSIONS - {f.session for f in after})
        console.print(f"confirmed flags on conversations that were not corrections: {len(wrong)}; scripted "
                      f"corrections the detector missed: {len(missed)}" + (f" ({', '.join(missed)})" if missed else ""))

        section("patterns after review: rejected flags leave them, confirmed ones will train")
        show_patterns(graph, agent)
        goodbye(started, home, bool(args.home), ["flags list --status confirmed", "patterns",
                                                 "ui   # the flags page: review in the browser"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
