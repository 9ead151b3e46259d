"""Options generated from config dataclasses: the flag, type, choices, help and default all come from the field."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from mindloop.agents.cli.options import add_field, field_help, positive


def _home() -> str:
    """``$DEMO_HOME``, else nowhere."""
    return "nowhere"


@dataclass
class DemoConfig:
    steps: int = field(default=-1, metadata={"help": "training steps; -1 = one epoch"})
    rate: float | None = field(default=None, metadata={"help": "learning rate; unset = the method's"})
    mode: str = field(default="fast", metadata={"help": "how to run", "choices": ("fast", "exact")})
    ratio: float = field(default=1 / 3, metadata={"help": "share of replay"})
    evaluate: bool = field(default=True, metadata={"help": "evaluate before and after"})
    reuse: bool = field(default=False, metadata={"help": "reuse trained examples"})
    kinds: tuple[str, ...] = field(default=("a", "b"), metadata={"help": "kinds kept"})
    home: str = field(default_factory=_home, metadata={"help": "data directory"})


def _parser(**flags) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    for name in ("steps", "rate", "mode", "ratio", "evaluate", "reuse", "home"):
        add_field(p, DemoConfig, name, **flags.get(name, {}))
    return p


def test_flags_are_named_for_the_fields_and_default_to_none():
    p = _parser()
    assert vars(p.parse_args([])) == dict.fromkeys(("steps", "rate", "mode", "ratio", "evaluate", "reuse", "home"))
    args = p.parse_args(["--steps", "7", "--rate", "0.5", "--mode", "exact", "--no-evaluate", "--reuse", "--home", "h"])
    assert (args.steps, args.rate, args.mode, args.evaluate, args.reuse, args.home) == (7, 0.5, "exact", False, True, "h")


def test_the_fields_type_and_choices_check_the_value(capsys):
    p = _parser()
    for argv, message in ((["--steps", "x"], "invalid int value: 'x'"), (["--rate", "y"], "invalid float value"),
                          (["--mode", "slow"], "invalid choice: 'slow'")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_flag_can_be_renamed_and_checked_more_strictly(capsys):
    p = _parser(steps={"flag": "--max-steps", "type": positive}, evaluate={"flag": "--no-eval"})
    args = p.parse_args(["--max-steps", "3", "--no-eval"])
    assert args.steps == 3 and args.evaluate is False
    assert "--max-steps MAX_STEPS" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--max-steps", "-1"])
    assert "-1 must be at least 1" in capsys.readouterr().err


def test_help_is_the_fields_help_then_its_default():
    assert field_help(DemoConfig, "steps") == "training steps; -1 = one epoch (default -1)"
    assert field_help(DemoConfig, "rate") == "learning rate; unset = the method's"  # unset: the help says what it means
    assert field_help(DemoConfig, "mode") == "how to run (default fast)"
    assert field_help(DemoConfig, "ratio") == "share of replay (default 0.3333)"
    assert field_help(DemoConfig, "evaluate") == "evaluate before and after (default on; this flag turns it off)"
    assert field_help(DemoConfig, "reuse") == "reuse trained examples (default off)"
    assert field_help(DemoConfig, "kinds") == "kinds kept (default a,b)"
    assert field_help(DemoConfig, "home") == "data directory (default $DEMO_HOME, else nowhere)"



def test_every_config_field_has_help():
    """Each setting documents itself once, in its field: the CLI, config.toml and the docs read it from there."""
    import dataclasses

    from mindloop.agents.chat.backends import ModelConfig
    from mindloop.agents.chat.surface import SurfaceConfig
    from mindloop.agents.cycle import ObserveConfig
    from mindloop.agents.cycle.scheduler import SchedulerConfig
    from mindloop.agents.server import ServeConfig
    from mindloop.agents.signal.agent import SignalConfig
    from mindloop.agents.signal.compose import ComposeConfig
    from mindloop.agents.ui.config import UIConfig
    from mindloop.graph import GraphConfig
    from mindloop.trainer.run import TrainConfig

    configs = (GraphConfig, SignalConfig, SurfaceConfig, ServeConfig, ObserveConfig, ComposeConfig, TrainConfig,
               UIConfig, ModelConfig, SchedulerConfig)
    missing = [f"{c.__name__}.{f.name}" for c in configs for f in dataclasses.fields(c) if not f.metadata.get("help")]
    assert missing == []
