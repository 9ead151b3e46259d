"""Subcommands that chat: ``chat`` in the terminal and ``serve``, the OpenAI-compatible proxy.

    mindloop chat --session s1
    mindloop serve --port 8000 --daemon
"""

from __future__ import annotations

import argparse
import sys

from mindloop.agents.cli import common
from mindloop.agents.cli.options import add_field, positive

__all__ = ["declare_chat", "declare_serve"]


def declare_chat(p: argparse.ArgumentParser) -> None:
    common.add_common(p)
    common.add_model_options(p)
    p.add_argument("--session", default="chat", help="session to start or resume (default 'chat')")
    p.set_defaults(run=_cmd_chat)


def declare_serve(p: argparse.ArgumentParser) -> None:
    from mindloop.agents.server import ServeConfig

    common.add_common(p)
    common.add_model_options(p)
    add_field(p, ServeConfig, "host")
    add_field(p, ServeConfig, "port", type=positive)
    p.add_argument("--daemon", action="store_true",
                   help="also run the scheduler (`mindloop daemon`) in a background thread")
    p.set_defaults(run=_cmd_serve)


def _cmd_chat(args) -> int:
    from mindloop.agents.terminal import run_chat

    with common.open_graph(args) as g:
        loop = common.open_loop(args, g)
        try:
            run_chat(loop, args.session, scope=args.scope)
        finally:
            loop.close()
            loop.backend.close()
    return 0


def _cmd_serve(args) -> int:
    import uvicorn

    from mindloop.agents.server import ServeConfig, check_bind, create_app
    from mindloop.graph import load_config

    cfg = load_config(ServeConfig, "serve", file=args.config, overrides={"host": args.host, "port": args.port})
    check_bind(cfg)
    common.sigterm_closes()
    with common.open_graph(args) as g:
        if args.scope:
            g.config.scope = args.scope
        loop = common.open_loop(args, g)
        stop, worker = None, None
        if args.daemon:
            import threading

            scheduler = common.scheduler(args, g)
            stop = threading.Event()
            worker = threading.Thread(target=scheduler.run_forever, args=(stop,), name="mindloop-scheduler",
                                      daemon=True)
            worker.start()
        try:
            print(f"mindloop proxy on http://{cfg.host}:{cfg.port}/v1 (model {loop.backend.model_id}"
                  f"{'; scheduler running' if worker else ''}); Ctrl-C stops", file=sys.stderr)
            uvicorn.run(create_app(loop, cfg), host=cfg.host, port=cfg.port, log_level="warning")
        finally:
            if worker is not None:
                stop.set()  # type: ignore[union-attr]
                worker.join()
            loop.close()
            loop.backend.close()
    return 0
