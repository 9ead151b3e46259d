"""Subcommands to look after a data directory: the ``doctor`` that checks and repairs it, and the inspection
web ``ui``.

    mindloop doctor --repair
    mindloop ui --port 8765
"""

from __future__ import annotations

import argparse
import sys

from mindloop.agents.cli import common
from mindloop.agents.cli.options import add_field, positive

__all__ = ["declare_doctor", "declare_ui"]


def declare_doctor(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    p.add_argument("--repair", action="store_true",
                   help="repair what can be repaired without losing anything: damaged files are backed up "
                        "beside themselves first, corrupt checkpoints quarantined (default: only report)")
    p.set_defaults(run=_cmd_doctor)


def declare_ui(p: argparse.ArgumentParser) -> None:
    from mindloop.agents.ui.config import UIConfig

    common.add_common(p)
    add_field(p, UIConfig, "host")
    add_field(p, UIConfig, "port", type=positive)
    add_field(p, UIConfig, "token")
    add_field(p, UIConfig, "scope")
    p.set_defaults(run=_cmd_ui)


def _cmd_doctor(args) -> int:
    from mindloop.agents.doctor import doctor
    from mindloop.graph import GraphConfig, load_config

    config = load_config(GraphConfig, "graph", file=args.config, overrides={"home": args.home})
    report = doctor(config.home, repair=args.repair, config=config)
    common.emit(args, report.to_json(), report.format())
    return 0 if report.healthy else 1


def _cmd_ui(args) -> int:

    import uvicorn

    from mindloop.agents.ui import UIConfig, create_app
    from mindloop.graph import load_config

    cfg = load_config(UIConfig, "ui", file=args.config, overrides={"host": args.host, "port": args.port,
                                                                   "token": args.token, "scope": args.scope})
    cfg.check_bind()

    common.sigterm_closes()
    with common.open_graph(args) as g:
        app = create_app(g, cfg)
        print(f"mindloop UI on {cfg.url(with_token=True)} (data {g.config.home}); Ctrl-C stops", file=sys.stderr)
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0
