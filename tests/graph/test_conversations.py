"""Importing OpenAI-style conversation logs: validation by line, idempotence, all-or-nothing."""

from __future__ import annotations

import json

import pytest

from mindloop.graph import InvalidRecord
from mindloop.graph.conversations import import_conversations, parse_conversation


def line(messages, **extra):
    return json.dumps({"messages": messages, **extra})


GOOD = [
    line([{"role": "user", "content": "rename foo"}, {"role": "assistant", "content": "done"}], session="s1"),
    line([{"role": "system", "content": "be brief"},
          {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
         session="s2", scope="bob"),
    "",
    line([{"role": "user", "content": "no session given"}]),
]


def test_import_good_file(graph):
    report = import_conversations(graph, GOOD)
    assert (report.conversations, report.turns_added, report.turns_present) == (3, 5, 0)
    assert [t.text for t in graph.session_turns("s1")] == ["rename foo", "done"]
    assert [t.text for t in graph.session_turns("s2", scope="bob")] == ["be brief", "part one\npart two"]
    derived = [t for t in graph.nodes(kind="turn") if t.session.startswith("import-")]
    assert [t.text for t in derived] == ["no session given"]


def test_reimport_adds_nothing(graph):
    import_conversations(graph, GOOD)
    seq = graph.store.last_seq()
    report = import_conversations(graph, GOOD)
    assert (report.turns_added, report.turns_present) == (0, 5)
    assert graph.store.last_seq() == seq


def test_a_continuation_line_appends_to_the_session(graph):
    import_conversations(graph, [GOOD[0]])
    import_conversations(graph, [line([{"role": "user", "content": "and now bar"}], session="s1")])
    assert [t.index for t in graph.session_turns("s1")] == [0, 1, 2]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{nope", "line 2: not JSON"),
        ("[1, 2]", "line 2: expected an object"),
        (json.dumps({"messages": []}), "line 2: 'messages' must be a non-empty list"),
        (line([{"role": "robot", "content": "x"}]), "line 2: message 0: role 'robot'"),
        (line([{"role": "user", "content": 5}]), "line 2: message 0: content must be a string"),
        (line([{"role": "user", "content": [{"type": "image_url"}]}]), "content part 0 is not a text part"),
        (line([{"role": "user", "content": "   "}]), "line 2: message 0 content is empty"),
        (line([{"role": "user", "content": "a \ud800 b"}]), "lone surrogate"),
        (line([{"role": "user", "content": "x"}], session=""), "'session' must be a non-empty string"),
    ],
)
def test_bad_line_rejects_the_whole_file_and_names_the_line(graph, bad, message):
    with pytest.raises(InvalidRecord, match=message):
        import_conversations(graph, [GOOD[0], bad, GOOD[1]])
    assert graph.nodes(kind="turn") == [] and graph.store.last_seq() == 0


def test_skip_bad_imports_the_rest_and_reports(graph):
    report = import_conversations(graph, [GOOD[0], "{nope", GOOD[1], "[]"], skip_bad=True)
    assert report.conversations == 2
    assert [e.split(":")[0] for e in report.errors] == ["line 2", "line 4"]


def test_parse_blank_line_is_none():
    assert parse_conversation("   ", 7) is None
