"""Every numbered example runs, offline, as its docstring says (slow: they load the bundled MiniLM)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))


def test_examples_are_numbered_and_documented():
    assert [p.name[:2] for p in EXAMPLES] == [f"{i:02d}" for i in range(len(EXAMPLES))]
    for path in EXAMPLES:
        doc = path.read_text().split('"""')[1]
        assert ".venv/bin/python examples/" in doc or "make demo" in doc, f"{path.name}: no command in docstring"
        assert "Expected runtime" in doc, f"{path.name}: no expected runtime in docstring"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo trains twice and replays 48 requests three times: about 18 min on 2 cores
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, tmp_path):
    args = [sys.executable, str(path)]
    if path.name == "00_demo.py":
        args += ["--home", str(tmp_path / "demo")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=1500, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join(out.stdout.split())  # rich wraps at the terminal width
    if path.name == "00_demo.py":
        assert "searching for it again finds 0 of them" in text
        assert "ClickHouse" in text  # bob's scope answers bob's question
        assert "signal: this turn corrects the previous reply" in text
        assert "pattern pattern_" in text and "unwanted alternatives" in text
        assert "compose --pattern" in text and "accept" in text and "pushback" in text and "general" in text
        # the scheduler's cycle: ripe -> compose -> train -> gate -> promote -> watch -> verdict
        assert "scheduler: pattern pattern_" in text and "is ripe" in text and "scheduler: training run_" in text
        assert "target mean margin" in text and "perplexity" in text and "scheduler: gate ok" in text
        assert "scheduler: promoted ckpt_" in text and "scheduler: watch verdict for ckpt_" in text
        assert "surface-observe: ckpt_" in text
        # the over-trained checkpoint: the gate objects, the operator promotes it, the watch rolls it back
        assert "gate: REJECT" in text and "FAIL perplexity" in text
        assert "ALERT alert_" in text and "rolled back: rolled back to ckpt_" in text
        assert "mindloop ui --home" in text
    else:
        assert "neighbours of the correction: True" in text
