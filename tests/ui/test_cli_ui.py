"""`mindloop ui`: its help, the refusal to bind without a token, what it starts (uvicorn faked), and the real
command serving and stopping."""

from __future__ import annotations

import json

import pytest

from mindloop.agents.cli import main


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ui", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert e.value.code == 0 and out.startswith("usage: mindloop ui")
    assert "--host" in out and "default 127.0.0.1" in out and "--port" in out and "default 8765" in out
    assert "--token" in out and "unset = none, loopback only" in out


@pytest.fixture
def served(monkeypatch):
    """uvicorn.run replaced by a recorder: the third-party boundary, so nothing listens."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def test_refuses_a_public_address_without_a_token(home, served, capsys, monkeypatch):
    monkeypatch.delenv("MINDLOOP_UI_TOKEN", raising=False)
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without a token" in err and served == []


def test_serves_loopback_by_default_and_prints_the_url(home, served, capsys):
    assert main(["ui"]) == 0
    (app, kw), = served
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8765
    assert "mindloop UI on http://127.0.0.1:8765/" in capsys.readouterr().err
    assert "/api/flags" in app.openapi()["paths"]


def test_a_token_from_the_environment_opens_a_public_address(home, served, capsys, monkeypatch):
    monkeypatch.setenv("MINDLOOP_UI_TOKEN", "from-the-environment")
    assert main(["ui", "--host", "0.0.0.0", "--port", "9001"]) == 0
    (_, kw), = served
    assert (kw["host"], kw["port"]) == ("0.0.0.0", 9001)
    assert "http://127.0.0.1:9001/?token=from-the-environment" in capsys.readouterr().err


def test_bad_flags_are_errors(home, served, capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--port", "0"])
    assert main(["ui", "--token", "short"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err and served == []


def test_serves_over_http_and_closes_the_graph_on_sigterm(demo_template, tmp_path):
    """The real command in a subprocess: it answers, and SIGTERM (what service managers send) closes the graph
    before exiting, so embedded Chroma is not rebuilt on the next open."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path / "home"
    shutil.copytree(demo_template, home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MINDLOOP_HOME": str(home), "MINDLOOP_GRAPH_EMBEDDER": "hashing"}
    proc = subprocess.Popen([sys.executable, "-m", "mindloop.agents.cli", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/flags", timeout=2) as r:
                    assert json.loads(r.read())["total"] > 0
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mindloop ui did not start"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err  # not killed by the signal (-15): it shut down
    assert f"mindloop UI on http://127.0.0.1:{port}/" in err
    assert (home / "chroma.lock").read_text().strip() == "closed"
