"""The OpenAI-compatible proxy, called by the official ``openai`` client: what it answers and what it logs.

    .venv/bin/python examples/02_proxy_openai.py                 # the bundled SmolLM2-135M, MiniLM, the reader
    .venv/bin/python examples/02_proxy_openai.py --fake --fast   # a scripted model and the test doubles (CI)

Expected runtime: about 30 s on 2 CPU cores (loading MiniLM and SmolLM2,
three replies of up to 48 tokens); 10 to 25 s with ``--fake --fast`` (the
detector trains itself from the seed set for the hashing embedder). Offline: the server
listens on 127.0.0.1 only; writes only to a temporary directory (or ``--home
DIR``, emptied first).

What it shows:

1. a lesson memory is stored, then the proxy ``mindloop serve`` runs is
   started in this process (``mindloop.agents.server.create_app`` under uvicorn, on a
   free port of 127.0.0.1), with the training-signal agent as the loop's
   signal hook, as ``mindloop serve`` wires it;
2. the ``openai`` client lists the models, sends a request without
   streaming, then two streamed ones in the same session (``X-Session-Id``):
   the second request corrects the first reply;
3. the memory graph shows what the proxy logged: each turn with its model,
   the memories surfaced into its context (and their ``surfaced`` edges), and
   the flag the signal hook raised on the corrected reply.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time

from _common import (
    arguments,
    console,
    data_dir,
    goodbye,
    open_graph,
    section,
    signal_agent,
)
from rich.table import Table

SESSION = "example-proxy"
LESSON = "When the user asks to rename something, just rename it; do not suggest alternatives."
REQUESTS = [  # (user message, streamed?)
    ("Rename the variable tmp to total in this line: tmp = a + b", False),
    ("No, I asked you to just rename it. Don't suggest anything else.", True),
    ("What is the capital of France?", True),
]
# --fake: what a model that needed the lesson might have said, then the fixed reply, then an answer
FAKE_REPLIES = ["Have you considered a more descriptive name like sum_ab instead? You could also inline it.",
                "total = a + b", "The capital of France is Paris."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, port: int):
    """``app`` under uvicorn on 127.0.0.1:``port`` in a background thread, until the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the proxy did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def chat(client, model: str, history: list[dict], text: str, stream: bool) -> str:
    """One request through the proxy; prints the reply as it arrives and returns it."""
    history.append({"role": "user", "content": text})
    headers = {"X-Session-Id": SESSION}
    console.print(f"[bold]user>[/] {text}   [dim]({'streamed' if stream else 'not streamed'})[/]", markup=True)
    console.print("[bold]bot>[/] ", end="")
    if stream:
        pieces = []
        for chunk in client.chat.completions.create(model=model, messages=history, stream=True, max_tokens=48,
                                                    temperature=0, extra_headers=headers):
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                pieces.append(delta)
                console.print(delta, end="", markup=False)
        reply = "".join(pieces)
        console.print(f"\n  [dim]{len(pieces)} SSE chunks[/]")
    else:
        response = client.chat.completions.create(model=model, messages=history, max_tokens=48, temperature=0,
                                                  extra_headers=headers)
        reply = response.choices[0].message.content or ""
        extra = (response.model_extra or {}).get("mindloop", {})
        console.print(reply, markup=False)
        console.print(f"  [dim]mindloop fields of the response: session {extra.get('session')}, surfaced "
                      f"{len(extra.get('surfaced', []))} memory(ies)[/]")
    history.append({"role": "assistant", "content": reply})
    return reply


def show_log(graph, agent, lesson, replies: list[str]) -> None:
    turns = graph.session_turns(SESSION)
    table = Table(title=f"turns logged in session {SESSION}", title_justify="left")
    for col, width in (("turn", 11), ("surfaced", 8), ("text", 50)):
        table.add_column(col, no_wrap=True, overflow="ellipsis", min_width=width, max_width=width)
    for t in turns:
        surfaced = ", ".join(s["kind"] for s in t.meta.get("surfaced", [])) if t.role == "assistant" else ""
        table.add_row(f"{t.role}#{t.index}", surfaced, " ".join(t.text.split()))
    console.print(table)
    logged = [t.text for t in turns if t.role == "assistant"]
    console.print(f"models that wrote them: {', '.join(sorted({t.model or '-' for t in turns}))}", markup=False)
    console.print(f"logged {len(turns)} turns in session {SESSION}; the replies the client received are the "
                  f"logged ones: {logged == replies}")
    shown = graph.edges(lesson.id, kinds=["surfaced"], direction="out")
    console.print(f"the lesson memory was surfaced into {len(shown)} of {len(logged)} replies")
    for f in agent.flags():
        correction = graph.get(f.correction)
        console.print(f"signal hook: flag {f.id} on reply #{graph.get(f.turn).index} ({f.type}, confidence "
                      f"{f.confidence:.2f}), corrected by {correction.text!r}", markup=False)
    if not agent.flags():
        console.print("signal hook: no flag raised")


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--fake", action="store_true",
                        help="a scripted chat model instead of the bundled SmolLM2 (no weights loaded)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    from openai import OpenAI

    from mindloop.agents.chat.backends import LocalBackend, ScriptedBackend
    from mindloop.agents.chat.loop import ChatLoop
    from mindloop.agents.server import ServeConfig, create_app
    from mindloop.graph import Memory

    with data_dir(args.home, fast=args.fast) as home, open_graph(home, fast=args.fast) as graph:
        section("start the proxy (what `mindloop serve` runs) in this process")
        lesson = graph.add(Memory(memory_kind="lesson", text=LESSON))
        graph.flush()
        console.print(f"data dir {home}; stored a lesson memory ({lesson.id})")
        t = time.perf_counter()
        if args.fake:
            backend = ScriptedBackend(FAKE_REPLIES, model_id="scripted")
        else:
            backend = LocalBackend("bundled", checkpoints=home / "checkpoints")
            backend.load()
        agent = signal_agent(graph, fast=args.fast, backend=None if args.fake else backend)
        loop = ChatLoop(graph, backend, on_pair=agent.on_pair)
        console.print(f"model {backend.model_id} and detector ready in {time.perf_counter() - t:.1f}s")
        try:
            with serving(create_app(loop, ServeConfig()), free_port()) as url:
                console.print(f"mindloop proxy on {url}")
                section("talk to it with the official openai client")
                client = OpenAI(base_url=url, api_key="unused-on-loopback", max_retries=0, timeout=300)
                models = [m.id for m in client.models.list()]
                console.print(f"client.models.list(): {models}")
                history: list[dict] = []
                replies = [chat(client, models[0], history, text, stream) for text, stream in REQUESTS]
        finally:
            loop.close()
            backend.close()

        section("what the proxy logged into the memory graph")
        show_log(graph, agent, lesson, replies)
        goodbye(started, home, bool(args.home), ["search 'just rename it' --kind turn", "flags list"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
