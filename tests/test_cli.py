"""The `mindloop` command: help for every subcommand, human and --json output, clear errors."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import pytest

from mindloop.agents.cli import build_parser, main

SUBCOMMANDS = [[], ["log"], ["log", "import"], ["search"], ["graph"], ["graph", "stats"], ["forget"], ["export"],
               ["import"], ["chat"], ["serve"], ["detect"], ["flags"], ["flags", "list"], ["flags", "show"],
               ["flags", "confirm"], ["flags", "reject"], ["flags", "edit"], ["patterns"], ["compose"], ["train"],
               ["eval"], ["checkpoints"], ["checkpoints", "list"], ["checkpoints", "show"],
               ["checkpoints", "promote"], ["checkpoints", "rollback"], ["observe"], ["daemon"], ["status"], ["ui"],
               ["doctor"], ["report"]]

CONVERSATIONS = [
    {"session": "s1", "messages": [
        {"role": "user", "content": "Rename parse_config to load_config."},
        {"role": "assistant", "content": "You could also consider splitting the module instead."},
        {"role": "user", "content": "No, I asked you to just rename it."}]},
    {"session": "s2", "scope": "bob", "messages": [{"role": "user", "content": "bob's own rename question"}]},
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "mindloop")
def test_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mindloop")
    if words in (["search"], ["log", "import"]):
        assert "--json" in out and "default" in out


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """Every (words, parser) of the command line, subcommands declared as they are met."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sub.format_help()  # declares its options
                yield (*words, name), sub
                yield from _commands(sub, (*words, name))


def test_every_subcommand_has_a_help_test():
    assert sorted([list(words) for words, _ in _commands(build_parser())]) == sorted(SUBCOMMANDS[1:])


def test_no_help_names_a_default_twice():
    """A generated flag's help is the field's help, then its default: the field's help must not name it too."""
    twice = {f"{' '.join(words)} {'/'.join(a.option_strings)}": a.help for words, p in _commands(build_parser())
             for a in p._actions if a.help and len(re.findall(r"\bdefault\b", a.help)) > 1}
    assert twice == {}


def test_generated_flags_carry_the_config_defaults():
    """A flag left out is None, so config.toml and MINDLOOP_* decide; the help shows the dataclass default."""
    from mindloop.agents.cycle.scheduler import SchedulerConfig

    parser = build_parser()
    args = parser.parse_args(["daemon", "--interval", "5", "--min-flags", "3", "--no-generate"])
    assert (args.interval_s, args.min_flags, args.generate) == (5.0, 3, False)
    assert args.cooldown_s is None and args.idle_s is None and args.objective is None
    daemon = " ".join(dict(_commands(parser))[("daemon",)].format_help().split())
    assert f"(default {SchedulerConfig.cooldown_s:g})" in daemon and "--objective {sft,dpo,kto}" in daemon


def test_help_does_not_declare_the_subcommands():
    """`mindloop --help` lists the subcommands without declaring their options (nor importing their configs)."""
    parser = build_parser()
    parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert all(len(p._actions) == 1 for p in sub.choices.values())  # only -h so far


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def logfile(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CONVERSATIONS) + "\n")
    return path


def test_import_search_stats_export_forget(home, logfile, tmp_path, capsys):
    code, out, _ = run(capsys, "log", "import", str(logfile))
    assert code == 0 and "2 conversation(s): 4 turn(s) added" in out
    code, out, _ = run(capsys, "log", "import", str(logfile), "--json")
    assert json.loads(out)["turns_present"] == 4

    code, out, _ = run(capsys, "search", "rename parse_config", "--json", "--k", "2")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 2
    assert hits[0]["node"]["text"] == "Rename parse_config to load_config."
    assert all(h["node"]["scope"] == "default" for h in hits)
    code, out, _ = run(capsys, "search", "rename", "--scope", "bob")
    assert "bob's own rename question" in out and "parse_config" not in out

    code, out, _ = run(capsys, "graph", "stats", "--json")
    stats = json.loads(out)
    assert stats["nodes"] == {"session": 2, "turn": 4} and stats["vectors_in_index"] == 4
    code, out, _ = run(capsys, "graph", "stats")
    assert "turn 4" in out and "4 indexed, 0 pending" in out

    dump = tmp_path / "default.jsonl"
    code, out, _ = run(capsys, "export", "--scope", "default", "--out", str(dump))
    assert code == 0 and "4 node(s)" in out and len(dump.read_text().splitlines()) == 1 + 4 + 2

    code, out, _ = run(capsys, "forget", "--session", "s1", "--json")
    assert json.loads(out) == {"forgotten": 4}
    code, out, _ = run(capsys, "search", "parse_config", "--json")
    assert json.loads(out)["hits"] == []

    code, out, _ = run(capsys, "import", str(dump))
    assert code == 0 and "imported 4 node(s) and 2 edge(s)" in out
    code, out, _ = run(capsys, "search", "parse_config", "--json", "--hops", "0")
    assert json.loads(out)["hits"][0]["node"]["session"] == "s1"


def test_bad_input_is_a_clear_error_and_writes_nothing(home, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CONVERSATIONS[0]) + "\n" + '{"messages": [{"role": "wizard", "content": "x"}]}\n')
    code, _, err = run(capsys, "log", "import", str(bad))
    assert code == 2 and "line 2: message 0: role 'wizard'" in err and "nothing was imported" in err
    code, out, _ = run(capsys, "graph", "stats", "--json")
    assert json.loads(out)["nodes"] == {}

    code, out, _ = run(capsys, "log", "import", str(bad), "--skip-bad")
    assert code == 0 and "skipped 1 bad line(s)" in out and "line 2" in out

    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"messages": [{"role": "user", "content": "ok"}]}\n{"messages": [{"role": "user", '
                       b'"content": "caf\xe9"}]}\n')
    code, _, err = run(capsys, "log", "import", str(latin1))
    assert code == 2 and "line 2: not valid UTF-8" in err

    code, _, err = run(capsys, "log", "import", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl: no such file" in err

    code, _, err = run(capsys, "search", "   ")
    assert code == 2 and "query is empty" in err


def test_argument_errors_name_the_problem(home, capsys):
    for argv, message in [
        (["search", "x", "--k", "0"], "0 must be at least 1"),
        (["search", "x", "--since", "yesterday"], "--since 'yesterday'"),
        (["search", "x", "--hops", "-1"], "-1 must be 0 or more"),
        (["export"], "--scope"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    assert main(["search", "x", "--since", "7d", "--json"]) == 0


def test_forget_needs_a_target(home):
    with pytest.raises(SystemExit, match="give --session S or --scope S"):
        main(["forget"])


def test_console_script_entry_point(home):
    """The installed `mindloop` command runs main() (checked through the module, as CI has no PATH guarantees)."""
    out = subprocess.run([sys.executable, "-m", "mindloop.agents.cli", "graph", "stats", "--json"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout)["nodes"] == {}


def test_parser_lists_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"log", "search", "graph", "forget", "export", "import", "chat", "serve", "detect",
                                "flags", "patterns", "compose", "train", "eval", "checkpoints", "observe", "daemon",
                                "status", "ui", "doctor", "report"}


def test_home_flag_reads_that_homes_config_file(home, logfile, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text("[graph]\nmax_text_bytes = 20\n")
    # --home D reads D/config.toml (here: a 20-byte limit on texts), as MINDLOOP_HOME=D does
    code, _, err = run(capsys, "log", "import", str(logfile), "--home", str(other))
    assert code == 2 and "20" in err
    code, _, err = run(capsys, "log", "import", str(logfile))  # $MINDLOOP_HOME has no such file
    assert code == 0, err
