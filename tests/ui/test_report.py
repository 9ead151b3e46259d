"""The static HTML report (`mindloop report`, agents/report.py) over the UI's demo data."""

from __future__ import annotations

import re

import pytest

from mindloop.agents.cli import main
from mindloop.agents.report import html_report, write_report
from mindloop.trainer.checkpoints import Checkpoints

pytest.importorskip("matplotlib")


def _store(graph):
    return Checkpoints(graph.config.home / "checkpoints")


def test_the_report_shows_every_run_the_gate_the_watch_and_the_rollback(demo):
    graph, facts = demo
    page = html_report(graph, _store(graph), traffic={"base": {"failed": {"target": 9}, "total": {"target": 20}},
                                                      facts["checkpoints"][0]: {"failed": {"target": 3},
                                                                                "total": {"target": 20}}})
    for run in facts["runs"]:
        assert f"<h3>{run} " in page
    # the first checkpoint is in use again after the second was rolled back to it
    assert f"in use: <b>{facts['checkpoints'][0]}</b>" in page
    rollback = re.search(r"<h2>Rollbacks</h2><table>.*?</table>", page, re.S).group(0)
    assert facts["checkpoints"][1] in rollback and facts["checkpoints"][0] in rollback
    assert "trained pattern recurred: 0.050 -&gt; 0.180 (p=0.0031)" in page  # the alert, escaped
    assert "9/20" in page and "3/20" in page  # the traffic table
    # a metrics chart per evaluated run, one traffic chart, the watch's charts; all inline, nothing fetched
    assert page.count('src="data:image/png;base64,') >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_every_text_from_the_graph_is_escaped(attacked):
    graph, _ = attacked
    page = html_report(graph, _store(graph))
    assert "__pwned" in page  # the payloads are there, as text
    assert "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "<svg" not in page and "<img src=x" not in page


def test_cli_writes_the_report_whole_and_refuses_a_folder(demo, tmp_path, capsys):
    graph, facts = demo
    out = tmp_path / "r.html"
    assert main(["report", "--home", str(graph.config.home), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!doctype html>") and facts["runs"][0] in out.read_text()
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(SystemExit, match="is a directory"):
        main(["report", "--home", str(graph.config.home), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["report", "--home", str(graph.config.home), "--out", str(tmp_path / "no" / "r.html")])


def test_write_report_leaves_the_old_file_when_rendering_fails(demo, tmp_path, monkeypatch):
    graph, _ = demo
    out = tmp_path / "r.html"
    out.write_text("old")
    monkeypatch.setattr("mindloop.agents.report._watch", lambda rep: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(out, graph, _store(graph))
    assert out.read_text() == "old"
