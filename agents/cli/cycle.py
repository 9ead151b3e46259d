"""Subcommands of the learning cycle: ``observe`` checkpoints in use, the ``daemon`` that trains when a pattern is
ripe, its ``status``, and the HTML ``report``.

    mindloop observe --watch
    mindloop daemon --once
    mindloop status
    mindloop report --out report.html
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mindloop.agents.cli import common
from mindloop.agents.cli.options import add_field, non_negative_float, positive, positive_float

if TYPE_CHECKING:
    from mindloop.agents.cycle.watch import Assessment

__all__ = ["declare_daemon", "declare_observe", "declare_report", "declare_status"]


def declare_observe(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--scope", help="scope of the turns and flags (default: the configured scope)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--gate", metavar="CHECKPOINT", help="run the gate on a candidate checkpoint")
    act.add_argument("--watch", action="store_true",
                     help="assess the checkpoint in use now; on a significant rise raise an alert and roll back")
    act.add_argument("--resolve", metavar="ALERT", help="close an open alert (the scheduler waits while one is open)")
    p.add_argument("--promote", action="store_true", help="with --gate: promote the candidate when it passes")
    p.set_defaults(run=_cmd_observe)


def declare_daemon(p: argparse.ArgumentParser) -> None:
    from mindloop.agents.cycle.scheduler import SchedulerConfig

    common.add_common(p)
    common.add_model_options(p)
    add_field(p, SchedulerConfig, "interval_s", flag="--interval", type=positive_float)
    add_field(p, SchedulerConfig, "min_flags", type=positive)
    add_field(p, SchedulerConfig, "cooldown_s", flag="--cooldown", type=non_negative_float)
    add_field(p, SchedulerConfig, "idle_s", flag="--idle", type=non_negative_float)
    add_field(p, SchedulerConfig, "method")
    add_field(p, SchedulerConfig, "objective")
    add_field(p, SchedulerConfig, "max_steps", type=positive)
    add_field(p, SchedulerConfig, "generate")
    p.add_argument("--once", action="store_true", help="one tick (a whole cycle when a pattern is ripe), then exit")
    p.set_defaults(run=_cmd_daemon)


def declare_status(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--scope", help="scope (default: the configured scope)")
    p.set_defaults(run=_cmd_status)


def declare_report(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--out", help="where to write it (default: <home>/report.html)")
    p.add_argument("--scope", help="scope (default: the configured scope)")
    p.set_defaults(run=_cmd_report)


def _cmd_observe(args) -> int:
    from mindloop.agents import cycle as ob
    from mindloop.trainer.checkpoints import Checkpoints

    from mindloop.graph import load_config

    cfg = load_config(ob.ObserveConfig, "observe", file=args.config)
    with common.open_graph(args) as g:
        store = Checkpoints(Path(g.config.home) / "checkpoints")
        if args.gate:
            result = ob.gate_checkpoint(g, store, args.gate, cfg, scope=args.scope)
            lines = [f"gate for {args.gate} (parent {result.parent or 'base model'}): "
                     f"{'PASS' if result.promote else 'REJECT'}"]
            lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.detail}" for c in result.checks]
            out = result.to_json()
            if result.promote and args.promote:
                ob.promote(g, store, args.gate, reason="gate passed (mindloop observe --gate --promote)")
                lines.append(f"promoted {args.gate}")
                out["promoted"] = True
            common.emit(args, out, "\n".join(lines))
            return 0 if result.promote else 1
        if args.resolve:
            from mindloop.graph import Alert

            alert = g.get(args.resolve, args.scope)
            if not isinstance(alert, Alert):
                print(f"mindloop: error: {args.resolve} is a {alert.KIND.value}, not an alert", file=sys.stderr)
                return 2
            alert.status = "resolved"
            g.update(alert)
            common.emit(args, {"resolved": alert.id}, f"resolved {alert.id}")
            return 0
        if args.watch:
            result = ob.watch(g, store, cfg, scope=args.scope)
            text = (_format_assessment(result.assessment) if result.assessment
                    else f"{result.id or 'base model'}: {result.verdict}")
            common.emit(args, result.to_json(), text + (
                f"\nALERT {result.alert}: rolled back {result.id}" if result.rolled_back else ""))
            return 0
        rep = ob.report(g, store, cfg, scope=args.scope)
    lines = [f"in use: {rep.in_use or 'the base model'}"]
    for c in rep.checkpoints:
        lines.append(_format_assessment(c))
    opened = [a for a in rep.alerts if a.open]
    lines.append(f"alerts: {len(rep.alerts)} ({len(opened)} open)")
    for a in rep.alerts[:10]:
        lines.append(f"  {'OPEN ' if a.open else '     '}{a.id} [{a.kind}] {a.message}"
                     + (f" -> {a.action}" if a.action else ""))
    for r in rep.rollbacks:
        lines.append(f"rollback {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.at))}: {r.checkpoint} -> "
                     f"{r.to or 'base model'} ({r.reason})")
    common.emit(args, rep.to_json(), "\n".join(lines))
    return 0


def _format_assessment(c: Assessment) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.promoted_at))
    lines = [f"{c.id} (promoted {when} after {c.parent or 'base model'}; pattern {c.pattern or '-'}): "
             f"{c.verdict.upper()}  turns before {c.n_before}, after {c.n_after}"]
    for t in c.tests:
        rates = f"{t.before_rate if t.before_rate is not None else '-'} -> " \
                f"{t.after_rate if t.after_rate is not None else '-'}"
        p = f"p={t.p_value:.4f}" if t.p_value is not None else ""
        lines.append(f"    {t.what:<48} {rates:<18} {p:<10} {t.verdict}")
    return "\n".join(lines)


def _cmd_daemon(args) -> int:
    common.sigterm_closes()
    with common.open_graph(args) as g:
        if args.scope:
            g.config.scope = args.scope
        scheduler = common.scheduler(args, g)
        try:
            if args.once:
                state = scheduler.tick()
                out = {k: state.get(k) for k in ("phase", "pattern", "run_id", "checkpoint", "note", "error", "last")}
                common.emit(args, out, f"phase {out['phase'] or 'wait'}: {out['note'] or out['error'] or ''}")
            else:
                print(f"mindloop daemon: ticking every {scheduler.config.interval_s:g}s; Ctrl-C stops", file=sys.stderr)
                scheduler.run_forever()
        finally:
            scheduler.close()
    return 0


def _cmd_status(args) -> int:
    from mindloop.agents.cycle import ObserveConfig, SchedulerConfig
    from mindloop.agents.cycle.service import status
    from mindloop.graph import load_config

    cfg = load_config(SchedulerConfig, "scheduler", file=args.config)
    ocfg = load_config(ObserveConfig, "observe", file=args.config)
    with common.open_graph(args) as g:
        out = status(g, cfg, ocfg, scope=args.scope)
    ready = out["patterns"]
    s = out["scheduler"]
    lines = [f"in use: {out['in_use'] or 'the base model'}",
             f"scheduler: phase {s['phase'] or 'wait'}"
             + (f", pattern {s['pattern']}, run {s['run_id']}" if s.get("run_id") else "")
             + (f" ({s['note']})" if s.get("note") else "")
             + (f"; resumes at {s['resuming'][0]}" if s.get("resuming") else "")]
    if s.get("last"):
        last = s["last"]
        lines.append(f"last cycle: {last.get('pattern')} run {last.get('run')} -> {last.get('verdict')}"
                     + (f" ({last['error']})" if last.get("error") else ""))
    lines.append(f"patterns ({len(ready)}; queue: {', '.join(out['queue']) or 'empty'}):")
    for r in ready:
        lines.append(f"  {'RIPE ' if r['ripe'] else '     '}{r['pattern']} {r['name'][:40]!r}: {r['confirmed']} "
                     f"confirmed, {r['untrained']} untrained; plan lr {r['plan']['lr']:g}, general "
                     f"{r['plan']['general_ratio']:.0%}, examples {r['plan']['max_examples'] or 'all'}"
                     + (f"; waiting for {'; '.join(r['waiting_for'])}" if r["waiting_for"] else ""))
        for adj in r["adjustments"][-2:]:
            lines.append(f"        adjusted: {adj['why']} -> {adj['to']}")
    lines.append("recent runs: " + (", ".join(f"{r['id']} ({r['status']})" for r in out["runs"]) or "none"))
    for w in out["watch"][-3:]:
        lines.append(f"watch {w['id']}: {w['verdict']} (turns before {w['n_before']}, after {w['n_after']})")
    lines.append(f"open alerts: {len(out['alerts'])}")
    for a in out["alerts"]:
        lines.append(f"  {a['id']}: {a['message']}")
    common.emit(args, out, "\n".join(lines))
    return 0


def _cmd_report(args) -> int:
    from mindloop.agents.cycle import ObserveConfig
    from mindloop.agents.report import write_report
    from mindloop.graph import load_config
    from mindloop.trainer.checkpoints import Checkpoints

    with common.open_graph(args) as g:
        out = Path(args.out) if args.out else g.config.home / "report.html"
        if out.is_dir():
            raise SystemExit(f"mindloop report: --out {out} is a directory; name a file")
        if not out.parent.is_dir():
            raise SystemExit(f"mindloop report: the folder of --out {out} does not exist")
        path = write_report(out, g, Checkpoints(g.config.home / "checkpoints"), scope=args.scope,
                            observe_config=load_config(ObserveConfig, "observe", file=args.config))
    common.emit(args, {"report": str(path)}, f"wrote {path}")
    return 0
