"""Records: one dataclass per node kind, JSON round-trip, validation."""

from __future__ import annotations

import json

import pytest

from mindloop.graph import (
    Alert,
    Checkpoint,
    Edge,
    EdgeKind,
    Eval,
    Example,
    Flag,
    InvalidRecord,
    InvalidText,
    Memory,
    NodeKind,
    Pattern,
    Run,
    Session,
    TextTooLarge,
    Turn,
    UnknownKind,
    record_from_json,
)
from mindloop.graph.records import NODE_CLASSES, check_text, edge_from_json

SAMPLES = [
    Session(scope="a", session="s1", title="first"),
    Turn(scope="a", session="s1", role="assistant", text="Done — renamed.", index=3, model="m", checkpoint="c",
         latency_ms=12.5, meta={"tokens": 7}),
    Memory(scope="a", text="prefers tabs", memory_kind="preference", source=["turn_1"]),
    Flag(scope="a", turn="turn_1", correction="turn_2", type="unwanted_alternatives", confidence=0.93,
         evidence=["no, I asked"], status="confirmed", reason="suggested alternatives", better_response="ok"),
    Pattern(scope="a", name="suggests alternatives", description="after clear direction"),
    Example(scope="a", pattern="pattern_1", example_kind="pushback", prompt=[{"role": "user", "content": "rm -rf /"}],
            completion="I won't run that.", rejected="Sure!", split="heldout"),
    Run(scope="a", objective="dpo", method="full", status="done", base_model="smollm2", config={"lr": 1e-5},
        metrics={"loss": [1.0, 0.5]}, finished=2.0),
    Checkpoint(scope="a", path="checkpoints/c1", parent="c0", base_model="smollm2", status="promoted",
               manifest={"sha256": "ab"}),
    Eval(scope="a", checkpoint="c1", probes="builtin", metrics={"target": {"mean_margin": 0.2}}),
    Alert(scope="a", checkpoint="c1", reason="pattern recurred", details={"p": 0.01}),
]


def test_every_node_kind_has_a_sample():
    assert {s.kind for s in SAMPLES} == {k.value for k in NodeKind} == set(NODE_CLASSES)


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: r.kind)
def test_json_round_trip(record):
    through_text = json.loads(json.dumps(record.to_json()))
    back = record_from_json(through_text)
    assert back == record
    assert type(back) is type(record)


def test_edge_round_trip_and_kinds():
    e = Edge(src="a", dst="b", kind=EdgeKind.CORRECTS, scope="x", data={"w": 1})
    assert e.kind == "corrects"
    assert edge_from_json(json.loads(json.dumps(e.to_json()))) == e
    assert {k.value for k in EdgeKind} == {
        "next", "surfaced", "corrects", "flags", "member_of", "similar_to", "derived_from", "trained_on",
        "produced", "evaluated", "rolled_back",
    }


def test_unknown_kinds_name_the_allowed_ones():
    with pytest.raises(UnknownKind, match="allowed: next, surfaced"):
        Edge(src="a", dst="b", kind="likes")
    with pytest.raises(UnknownKind, match="'widget'"):
        record_from_json({"kind": "widget"})
    with pytest.raises(UnknownKind, match="flag type"):
        Flag(scope="a", turn="t", type="rude")


def test_bad_records_are_rejected():
    with pytest.raises(InvalidRecord, match="role 'robot'"):
        Turn(session="s", role="robot", text="x")
    with pytest.raises(InvalidRecord, match="confidence"):
        Flag(turn="t", confidence=1.5)
    with pytest.raises(InvalidRecord, match="unknown fields: colour"):
        record_from_json({"kind": "memory", "text": "x", "colour": "red"})
    with pytest.raises(InvalidRecord, match="scope"):
        Memory(scope=" ", text="x")
    assert isinstance(InvalidRecord("x"), ValueError)


def test_to_messages():
    t = SAMPLES[1]
    assert t.to_messages() == [{"role": "assistant", "content": "Done — renamed."}]
    ex = SAMPLES[5]
    assert ex.to_messages()[-1] == {"role": "assistant", "content": "I won't run that."}


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("", InvalidText, "empty"),
        (" \n\t", InvalidText, "empty"),
        (None, InvalidText, "must be a string"),
        (b"bytes", InvalidText, "must be a string"),
        ("ok \ud800 there", InvalidText, "lone surrogate '\\\\ud800' at offset 3"),
        ("x" * 11, TextTooLarge, "11 bytes; the limit is 10"),
    ],
)
def test_check_text_rejects(text, error, message):
    with pytest.raises(error, match=message):
        check_text(text, max_bytes=10)


def test_check_text_counts_utf8_bytes_not_characters():
    assert check_text("ééééé", max_bytes=10) == "ééééé"  # 5 characters, 10 bytes
    with pytest.raises(TextTooLarge):
        check_text("éééééé", max_bytes=10)
