"""`mindloop train | eval | checkpoints` on a tiny local model."""

from __future__ import annotations

import json

import pytest

from mindloop.agents.cli import main

PROMPT = [{"role": "user", "content": "rename the function"}]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def dataset(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": PROMPT, "completion": [{"role": "assistant", "content": "done"}]})
                           for _ in range(4)) + "\n")
    return f


@pytest.fixture
def probes(tmp_path):
    f = tmp_path / "probes.jsonl"
    f.write_text(json.dumps({"prompt": PROMPT, "desired": "done", "undesired": "no use tabs", "kind": "target"}) + "\n")
    return f


def test_train_eval_promote_rollback(home, tiny_lm, dataset, probes, capsys):
    code, out, err = run(capsys, "train", "--dataset", str(dataset), "--model", str(tiny_lm), "--max-steps", "2",
                         "--batch-size", "2", "--no-eval", "--json")
    assert code == 0, err
    result = json.loads(out)  # --json: one document on stdout, nothing else
    ckpt = result["checkpoint"]
    assert result["parent"] is None and result["steps"] == 2 and result["config"]["context_frozen"] is True
    code, out, _ = run(capsys, "checkpoints", "list")
    assert code == 0 and ckpt in out and "promoted: none" in out
    code, out, _ = run(capsys, "eval", "--checkpoint", ckpt, "--probes", str(probes), "--model", str(tiny_lm),
                       "--json")
    report = json.loads(out)
    assert code == 0 and report["checkpoint"] == ckpt and report["kinds"]["target"]["n"] == 1
    assert run(capsys, "checkpoints", "promote", ckpt)[0] == 0
    code, out, _ = run(capsys, "checkpoints", "list", "--json")
    assert json.loads(out)["promoted"] == ckpt
    code, out, _ = run(capsys, "checkpoints", "rollback")
    assert code == 0 and "now serving the base model" in out
    code, _, err = run(capsys, "checkpoints", "rollback")
    assert code == 2 and "nothing is promoted" in err
    code, _, err = run(capsys, "checkpoints", "promote", "ckpt_nope")
    assert code == 2 and "no checkpoint 'ckpt_nope'" in err


def test_train_refuses_bad_data_and_writes_nothing(home, tiny_lm, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run(capsys, "train", "--dataset", str(empty), "--model", str(tiny_lm))
    assert code == 2 and "empty" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    code, _, err = run(capsys, "train", "--dataset", str(bad), "--model", str(tiny_lm))
    assert code == 2 and "line 1" in err and "missing completion" in err
    code, _, err = run(capsys, "train", "--pattern", "nothing-here", "--model", str(tiny_lm))
    assert code == 2 and "matches no pattern" in err
    assert not (home / "checkpoints").exists() or not any((home / "checkpoints").iterdir())
