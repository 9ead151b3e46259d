"""The correction detector: reading labelled files, rules, the classifier, the judge, evaluation."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mindloop.agents.chat.backends import BackendError, ScriptedBackend
from mindloop.agents.signal.detect import (ANCHORS, Detector, Pair, Weights, evaluate, read_pairs, seed_pairs, seed_path,
                           shipped_weights_path, train)
from mindloop.agents.signal.judge import LLMJudge
from mindloop.agents.signal.rules import RULES_SHA256, apply_rules
from mindloop.graph import HashingEmbedder, InvalidRecord


def _line(label=True, **kw):
    row = {"context": [{"role": "user", "content": "Add an index on orders(customer_id)."}],
           "response": "You could also partition the table instead.", "followup": "I said add the index.",
           "label": label}
    row.update(kw)
    return json.dumps(row)


@pytest.fixture(scope="module")
def detector():
    return Detector.load(HashingEmbedder())


def test_seed_set_is_large_balanced_and_split():
    pairs = seed_pairs()
    assert len(pairs) >= 400
    assert abs(sum(p.label for p in pairs) - len(pairs) / 2) <= len(pairs) * 0.05
    held = [p for p in pairs if p.split == "heldout"]
    train_ = [p for p in pairs if p.split == "train"]
    assert len(held) + len(train_) == len(pairs) and len(held) >= 80
    assert not {p.id for p in held} & {p.id for p in train_}
    negatives = {p.type for p in pairs if not p.label}
    assert {"new_request", "thanks", "refine_own", "disagree_other", "question"} <= negatives


def test_read_pairs_names_bad_lines_and_rejects_the_file(tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join([_line(), "{not json", _line(label="yes"), _line(response=""), _line(False)]) + "\n")
    with pytest.raises(InvalidRecord) as e:
        read_pairs(f)
    msg = str(e.value)
    assert "line 2: not JSON" in msg and "line 3: 'label' must be true or false" in msg
    assert "line 4: 'response' must be a non-empty string" in msg
    pairs, problems = read_pairs(f, skip_bad=True)
    assert [p.label for p in pairs] == [True, False] and len(problems) == 3


def test_read_pairs_rejects_bad_context_and_invalid_utf8(tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text(_line(context=[{"role": "robot", "content": "hi"}]) + "\n")
    with pytest.raises(InvalidRecord, match=r"line 1: context\[0\]"):
        read_pairs(f)
    f.write_bytes(_line().encode() + b"\n" + b'{"x": "\xff"}\n')
    with pytest.raises(InvalidRecord, match="line 2: not valid UTF-8"):
        read_pairs(f)


@pytest.mark.parametrize("followup", [
    "No worries, now add a day trip to Sintra.",
    "Thanks! Also make it async.",
    "My linter says this is wrong but I think it's a false positive.",
    "Why did you use a dict here?",
])
def test_benign_cues_do_not_read_as_corrections(followup):
    r = apply_rules("Write a function.", "def f(): return {}", followup)
    assert r.type_hint is None or set(r.families) & {"no_worries", "thanks", "other_party", "question"}


def test_rule_type_hints():
    assert apply_rules("Write the SQL.", "SELECT 1", "Too long, one line please.").type_hint == "wrong_format"
    assert apply_rules("Fix the bug.", "Fixed, and I also renamed the tests.",
                       "I didn't ask you to rename the tests.").type_hint == "overstepped_scope"
    assert apply_rules("Capital of Australia?", "Sydney.",
                       "That's wrong, it's actually Canberra.").type_hint == "factual_error"


def test_detector_flags_clear_corrections_and_passes_clear_non_corrections(detector):
    q = [{"role": "user", "content": "Rename parse_cfg to load_config."}]
    yes = detector.detect(Pair(q, "Have you considered splitting it into a loader and a validator instead?",
                               "No, I asked you to just rename it. Don't suggest alternatives."))
    no = detector.detect(Pair(q, "Renamed parse_cfg to load_config in three files.", "Thanks, that's perfect!"))
    assert yes.is_correction and yes.confidence > no.confidence and not no.is_correction
    assert yes.type == "unwanted_alternatives"
    assert any(e.startswith("i_said") for e in yes.evidence) and any(e.startswith("classifier") for e in yes.evidence)


def test_hashing_detector_is_useful_on_the_heldout_split(detector):
    m = evaluate(detector, seed_pairs("heldout"))
    # the fake embedder is weaker than MiniLM; rules and the classifier still separate the classes
    assert m["precision"] >= 0.75 and m["recall"] >= 0.6, m
    c = m["confusion"]
    assert c["tp"] + c["fp"] + c["fn"] + c["tn"] == m["n"]


def test_weights_round_trip(tmp_path, detector):
    path = tmp_path / "w.npz"
    detector.weights.save(path)
    again = Detector(detector.embedder, Weights.read(path))
    pairs = seed_pairs("heldout")[:20]
    assert np.allclose(again.probabilities(pairs)[0], detector.probabilities(pairs)[0])
    assert again.threshold == detector.threshold


def test_training_needs_both_classes():
    pairs = [Pair([], "a", "b", label=True), Pair([], "c", "d", label=True)]
    with pytest.raises(InvalidRecord, match="both corrections and non-corrections"):
        train(pairs, HashingEmbedder())


@pytest.mark.parametrize("reader", [True, False], ids=["reader", "no-reader"])
def test_shipped_weights_were_built_from_the_shipped_seed_set(reader):
    w = Weights.read(shipped_weights_path(reader))
    assert w.meta["embedder"] == "all-MiniLM-L6-v2"
    assert w.meta["reader"] == ("SmolLM2-135M-Instruct@layer15" if reader else None)
    assert w.meta["seed_sha256"] == hashlib.sha256(seed_path().read_bytes()).hexdigest(), \
        "the seed set changed: rebuild the weights with `mindloop detect --train [--reader off]`"
    assert w.meta["rules_sha256"] == RULES_SHA256 and w.meta["anchors"] == list(ANCHORS), \
        "the rules or anchors changed: rebuild the weights with `mindloop detect --train [--reader off]`"


def test_a_reader_adds_its_features_and_must_match_the_weights(tiny_lm):
    from mindloop.agents.signal.reader import Reader

    reader = Reader(str(tiny_lm), layer=1)
    pairs = seed_pairs("train")[:40]
    x = reader.features(pairs[:3])
    assert x.shape == (3, 32) and np.isfinite(x).all()
    assert np.allclose(x, reader._features_full(pairs[:3]), atol=1e-5)  # stopping at the layer changes nothing
    assert not np.allclose(x[0], x[1])  # different follow-ups read differently
    w = train(pairs, HashingEmbedder(), reader=reader, folds=2)
    assert w.meta["reader"] == reader.name and w.mean.shape[0] == 32 + len(w.meta["families"]) + 4 + 11 + 2
    d = Detector(HashingEmbedder(), w, reader=reader)
    assert len(d.score(pairs[:5])) == 5
    with pytest.raises(InvalidRecord, match="need reader"):
        Detector(HashingEmbedder(), w)
    with pytest.raises(ValueError, match="layer 9 does not exist; the model has 2 layers"):
        Reader(str(tiny_lm), layer=9).features(pairs[:1])


def test_judge_is_a_third_opinion(detector):
    pair = Pair([{"role": "user", "content": "Format as JSON."}], "Here it is: {\"a\": 1}", "Why JSON?")
    base = detector.detect(pair).confidence
    yes = Detector(detector.embedder, detector.weights, judge=LLMJudge(ScriptedBackend(["Yes"]))).detect(pair)
    no = Detector(detector.embedder, detector.weights, judge=LLMJudge(ScriptedBackend(["no."]))).detect(pair)
    assert no.confidence < base < yes.confidence
    assert any(e.startswith("judge: 'Yes'") for e in yes.evidence)
    broken = Detector(detector.embedder, detector.weights,
                      judge=LLMJudge(ScriptedBackend(fail=BackendError("down")))).detect(pair)
    assert broken.confidence == pytest.approx(base)  # a failing judge abstains
    rambling = LLMJudge(ScriptedBackend(["Well, it depends."]))(pair)
    assert rambling is None


@pytest.mark.slow
def test_detect_eval_reproduces_the_heldout_figures_in_the_docs(capsys, monkeypatch):
    """`mindloop detect --eval` on the seed set's held-out split prints what docs/benchmarks.md reports."""
    import re
    from pathlib import Path

    from mindloop.agents.cli import main

    monkeypatch.setenv("MINDLOOP_GRAPH_EMBEDDER", "minilm")
    monkeypatch.setenv("MINDLOOP_SIGNAL_READER", "bundled")
    docs = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    recorded = json.loads(re.search(r"detect --eval agents/signal/data/seed.jsonl --split heldout --json\n(\{.*\})",
                                    docs).group(1))
    assert main(["detect", "--eval", str(seed_path()), "--split", "heldout", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    for key in ("precision", "recall", "f1", "threshold", "n"):
        assert measured[key] == pytest.approx(recorded[key], abs=1e-3), key
