"""The HTML report of a data directory: what was trained, what it changed, what the watch saw.

    mindloop report [--out FILE]            # default: $MINDLOOP_HOME/report.html

One self-contained file (plots are PNGs inlined as data URIs, no scripts,
nothing fetched), for a reviewer or an attachment to a ticket. It holds:

* the counts of the graph and the checkpoint in use;
* every training run, oldest first: its settings, the before/after table of
  the trainer's evaluation (per probe kind, the pattern's held-out examples,
  perplexity) with a chart of the mean margins, its loss curve, and the
  gate's checks of its checkpoint;
* every promotion surface-observe watched: the one-sided rate tests before
  and after, as a table and a chart, and the verdict;
* alerts and rollbacks;
* optionally the caller's traffic table (the demo passes the scripted user's
  correction rates per model).

Every text from the graph is escaped. The inspection UI (``mindloop ui``) is
the interactive view of the same data; this is the static one.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mindloop.graph import MemoryGraph

if TYPE_CHECKING:
    from mindloop.agents.cycle.watch import WatchReport

__all__ = ["html_report", "write_report"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176e2c}.bad{color:#b3261e;font-weight:600}.dim{color:#777}
.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}img{max-width:520px;border:1px solid #eee}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            raw = isinstance(cell, _Raw)
            cells.append(f"<td{' class=n' if i in numeric else ''}>{cell.html if raw else _e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


class _Raw:
    """Markup we built ourselves (already escaped), for a table cell."""

    def __init__(self, markup: str) -> None:
        self.html = markup


def _verdict(ok: bool, text: str) -> _Raw:
    return _Raw(f"<span class={'ok' if ok else 'bad'}>{_e(text)}</span>")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bars(title: str, labels: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str) -> str:
    """A grouped bar chart (one group per label, one bar per series), as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
    ax.set_xticks(range(len(labels)), [lab if len(lab) <= 22 else lab[:21] + "…" for lab in labels],
                  rotation=15, ha="right", fontsize=8)
    ax.axhline(0, color="#444", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def _loss_png(path: Path) -> str:
    if not path.exists():
        return '<p class=dim>(no loss curve)</p>'
    return f'<img alt="loss curve" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _metric_rows(before: dict | None, after: dict | None) -> tuple[list[list[Any]], list[str], list, list]:
    before, after = before or {}, after or {}
    rows, labels, b_vals, a_vals = [], [], [], []
    for kind in sorted(set(before.get("kinds", {})) | set(after.get("kinds", {}))):
        b, a = before.get("kinds", {}).get(kind, {}), after.get("kinds", {}).get(kind, {})
        rows.append([f"{kind}: mean margin", _num(b.get("mean_margin"), "+.3f"), _num(a.get("mean_margin"), "+.3f")])
        rows.append([f"{kind}: win rate", _num(b.get("win_rate"), ".3f"), _num(a.get("win_rate"), ".3f")])
        labels.append(kind)
        b_vals.append(b.get("mean_margin"))
        a_vals.append(a.get("mean_margin"))
    for kind in sorted(set(before.get("heldout", {})) | set(after.get("heldout", {}))):
        b, a = before.get("heldout", {}).get(kind, {}), after.get("heldout", {}).get(kind, {})
        rows.append([f"held-out {kind}: mean margin", _num(b.get("mean_margin"), "+.3f"),
                     _num(a.get("mean_margin"), "+.3f")])
        labels.append(f"held-out {kind}")
        b_vals.append(b.get("mean_margin"))
        a_vals.append(a.get("mean_margin"))
    rows.append(["perplexity", _num(before.get("perplexity"), ".3f"), _num(after.get("perplexity"), ".3f")])
    return rows, labels, b_vals, a_vals


def _runs(graph: MemoryGraph, store, home: Path, scope: str | None) -> str:
    from mindloop.agents.cycle.promotion import checkpoint_status, checkpoint_statuses

    runs = sorted(graph.nodes(kind="run", scope=scope), key=lambda r: r.created)
    if not runs:
        return "<p class=dim>No training run yet.</p>"
    statuses = checkpoint_statuses(store)
    gates = {}
    for ev in graph.nodes(kind="eval", scope=scope):
        if ev.probes == "gate":  # type: ignore[attr-defined]
            gates[ev.checkpoint] = ev.metrics.get("gate", {})  # type: ignore[attr-defined]
    out = []
    for run in runs:
        cfg = run.config  # type: ignore[attr-defined]
        produced = [e.dst for e in graph.edges(run.id, kinds=["produced"], direction="out")]
        ckpt = produced[0] if produced else None
        status = checkpoint_status(graph, store, ckpt, statuses=statuses) if ckpt else None
        out.append(f"<h3>{_e(run.id)} <span class=dim>({_e(run.status)}"  # type: ignore[attr-defined]
                   f"{'; checkpoint ' + _e(ckpt) + ', ' + _e(status) if ckpt else ''})</span></h3>")
        settings = ", ".join(f"{k} {cfg[k]}" for k in ("objective", "method", "learning_rate", "epochs", "max_steps",
                                                         "examples", "context_frozen", "pattern") if k in cfg)
        out.append(f"<p>{_e(settings)}{'; error: ' + _e(cfg['error']) if cfg.get('error') else ''}</p>")
        metrics = run.metrics or {}  # type: ignore[attr-defined]
        if metrics.get("before") or metrics.get("after"):
            rows, labels, b, a = _metric_rows(metrics.get("before"), metrics.get("after"))
            chart = _bars("mean margin (desired - undesired log-prob per token)", labels,
                          {"before": b, "after": a}, "margin")
            out.append("<div class=row>" + _table(["metric", "before", "after"], rows, numeric=(1, 2)) + chart
                       + "</div>")
        out.append("<div class=row>" + _loss_png(home / "runs" / run.id / "loss.png"))
        gate = gates.get(ckpt)
        if gate:
            checks = [[c.get("name", ""), _verdict(bool(c.get("ok")), "ok" if c.get("ok") else "FAIL"),
                       c.get("detail", "")] for c in gate.get("checks", [])]
            out.append(f"<div><b>gate: {'PASS' if gate.get('promote') else 'REJECT'}</b>"
                       + _table(["check", "", "detail"], checks) + "</div>")
        out.append("</div>")
    return "\n".join(out)


def _watch(rep: WatchReport) -> str:
    if not rep.checkpoints:
        return "<p class=dim>Nothing promoted yet, so nothing watched.</p>"
    out = []
    for c in rep.checkpoints:
        out.append(f"<h3>{_e(c.id)} against {_e(c.parent or 'the base model')}: "
                   f"{_e(c.verdict)}</h3><p class=dim>{c.n_before} turns before, {c.n_after} after</p>")
        rows, labels, before, after = [], [], [], []
        for t in c.tests:
            rows.append([t.what, _num(t.before_rate, ".3f"), _num(t.after_rate, ".3f"), _num(t.p_value, ".4f"),
                         _num(t.level, ".4f"), _verdict(t.verdict != "rose", t.verdict)])
            labels.append(t.key)
            before.append(t.before_rate)
            after.append(t.after_rate)
        chart = _bars("rate of turns before / after the promotion", labels, {"before": before, "after": after},
                      "rate") if rows else ""
        out.append("<div class=row>" + _table(["rate of turns that ...", "before", "after", "p (one-sided)",
                                               "level", "verdict"], rows, numeric=(1, 2, 3, 4)) + chart + "</div>")
    return "\n".join(out)


def html_report(graph: MemoryGraph, store, *, scope: str | None = None, observe_config=None,
                traffic: dict[str, dict[str, Any]] | None = None, title: str = "mindloop report") -> str:
    """The report as one HTML string. ``traffic``: ``{model: {"failed": {kind: n}, "total": {kind: n}}}``."""
    from mindloop.agents.cycle.watch import report as observe_report

    home = Path(graph.config.home)
    stats = graph.stats()
    rep = observe_report(graph, store, observe_config, scope=scope)
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class=dim>{_e(home)} · written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
             "<p>" + _e("nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["nodes"].items()))) + "</p>",
             f"<p>in use: <b>{_e(rep.in_use or 'the base model')}</b></p>"]
    if traffic:
        kinds = sorted({k for t in traffic.values() for k in t["total"]})
        rows = [[model] + [f"{t['failed'].get(k, 0)}/{t['total'].get(k, 0)}" for k in kinds]
                for model, t in traffic.items()]
        rates = {model: [t["failed"].get(k, 0) / t["total"][k] if t["total"].get(k) else None for k in kinds]
                 for model, t in traffic.items()}
        parts.append("<h2>Traffic: replies the user had to correct</h2><div class=row>"
                     + _table(["model"] + kinds, rows) + _bars("share of replies corrected", kinds, rates, "share")
                     + "</div>")
    parts.append("<h2>Training runs</h2>" + _runs(graph, store, home, scope))
    parts.append("<h2>surface-observe: the watch</h2>" + _watch(rep))
    alerts = [[a.kind, _verdict(not a.open, "open" if a.open else "resolved"), a.checkpoint or "", a.message,
               a.action or ""] for a in rep.alerts]
    parts.append("<h2>Alerts</h2>" + (_table(["kind", "state", "checkpoint", "message", "action"], alerts)
                                      if alerts else "<p class=dim>None.</p>"))
    rollbacks = [[r.checkpoint, r.to or "the base model", r.reason,
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at))] for r in rep.rollbacks]
    parts.append("<h2>Rollbacks</h2>" + (_table(["checkpoint", "back to", "reason", "at"], rollbacks)
                                         if rollbacks else "<p class=dim>None.</p>"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | os.PathLike, graph: MemoryGraph, store, **kw) -> Path:
    """Write :func:`html_report` to ``path`` whole (temporary file, then rename)."""
    path = Path(path)
    text = html_report(graph, store, **kw)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
