"""`mindloop detect | flags | patterns | compose` end to end on the fake embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mindloop.agents.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _row(label, followup="No, I asked you to just rename it.", **kw):
    return json.dumps({"context": [{"role": "user", "content": "Rename parse_cfg to load_config."}],
                       "response": "Have you considered splitting it instead?", "followup": followup,
                       "label": label, **kw})


def test_detect_eval_prints_and_reports_json(home, tmp_path, capsys):
    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join([_row(True), _row(False, "Thanks, that's perfect!"),
                            _row(True, "That's not what I asked. Don't suggest alternatives.")]) + "\n")
    code, out, _ = run(capsys, "detect", "--eval", str(f), "--json")
    m = json.loads(out)
    assert code == 0 and {"precision", "recall", "f1", "threshold", "n"} <= set(m) and m["n"] == 3
    assert m["confusion"]["tp"] + m["confusion"]["fn"] == 2
    code, out, _ = run(capsys, "detect", "--eval", str(f), "--threshold", "0.99")
    assert code == 0 and "threshold 0.99" in out and "precision" in out and "predicted yes" in out


def test_detect_eval_rejects_bad_lines_with_their_numbers(home, tmp_path, capsys):
    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join([_row(True), "[1, 2]", _row("maybe"), _row(False, "Thanks!")]) + "\n")
    code, out, err = run(capsys, "detect", "--eval", str(f))
    assert code == 2 and out == ""
    assert "line 2: expected a JSON object" in err and "line 3: 'label' must be true or false" in err
    code, out, err = run(capsys, "detect", "--eval", str(f), "--skip-bad", "--json")
    m = json.loads(out)
    assert code == 0 and m["n"] == 2 and len(m["skipped_lines"]) == 2


def test_detect_eval_split_filter(home, tmp_path, capsys):
    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join([_row(True, split="heldout"), _row(False, "Thanks!", split="train")]) + "\n")
    code, out, _ = run(capsys, "detect", "--eval", str(f), "--split", "heldout", "--json")
    assert code == 0 and json.loads(out)["n"] == 1
    code, _, err = run(capsys, "detect", "--eval", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err


def test_detect_all_review_patterns_and_compose(home, tmp_path, capsys):
    assert run(capsys, "log", "import", str(ROOT / "examples/data/conversations.jsonl"))[0] == 0
    code, out, _ = run(capsys, "detect", "--all", "--json")
    found = json.loads(out)
    assert code == 0 and len(found["flags"]) >= 4 and found["patterns"]
    code, out, _ = run(capsys, "detect", "--all")
    assert "0 new flag(s)" in out
    flags = json.loads(run(capsys, "flags", "list", "--json")[1])["flags"]
    pattern = found["patterns"][0]["id"]
    code, out, _ = run(capsys, "flags", "show", flags[0]["id"])
    assert code == 0 and "flagged reply:" in out and "correction:" in out and "evidence:" in out
    # compose refuses until flags are confirmed, and writes nothing
    out_file = tmp_path / "out" / "ex.jsonl"
    code, _, err = run(capsys, "compose", "--pattern", pattern, "--no-model", "--out", str(out_file))
    assert code == 2 and "no confirmed flags" in err and not out_file.parent.exists()
    for f in json.loads(run(capsys, "flags", "list", "--pattern", pattern, "--json")[1])["flags"]:
        assert run(capsys, "flags", "confirm", f["id"])[0] == 0
    code, out, _ = run(capsys, "flags", "edit", flags[-1]["id"], "--response", "Done, exactly as you asked.")
    assert code == 0 and "confirmed" in out
    code, _, err = run(capsys, "flags", "edit", flags[-1]["id"], "--response", "  ")
    assert code == 2 and "empty" in err
    code, out, _ = run(capsys, "patterns", "--json")
    listed = json.loads(out)["patterns"]
    assert listed[0]["by_status"].get("confirmed", 0) >= 1
    code, out, _ = run(capsys, "compose", "--pattern", pattern, "--no-model", "--out", str(out_file), "--json")
    counts = json.loads(out)
    assert code == 0 and counts["kinds"]["accept"]["train"] + counts["kinds"]["accept"]["heldout"] >= 1
    assert Path(counts["files"]["sft"]).exists() and Path(counts["files"]["kto"]).exists()
    code, _, err = run(capsys, "compose", "--pattern", "nonexistent")
    assert code == 2 and "matches no pattern" in err
    code, _, err = run(capsys, "flags", "reject", "flag_missing")
    assert code == 2 and "flag_missing" in err


@pytest.mark.parametrize("argv,needle", [
    (["detect", "--eval", "x.jsonl", "--threshold", "1.5"], "between 0 and 1"),
    (["compose", "--pattern", "p", "--general-ratio", "1"], "below 1"),
    (["detect"], "one of the arguments"),
])
def test_bad_flags_are_named(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err
