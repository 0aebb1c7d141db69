"""Flags derived from a config dataclass keep its defaults, types and choices."""

import argparse
import dataclasses

import pytest

from deploy.cli.options import add_dataclass_arguments, dataclass_argv, dataclass_from_args
from trainer.config import TrainConfig


def parse(argv, **kwargs):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig, required=("source", "steps"), **kwargs)
    return parser.parse_args(argv)


def test_flags_carry_the_dataclass_defaults():
    config = dataclass_from_args(TrainConfig, parse(["--source", "d", "--steps", "5"]))
    assert config == TrainConfig(source="d", steps=5)


def test_renamed_negated_and_typed_flags():
    argv = ["--source", "d", "--steps", "5", "--ckpt", "c", "--no-progress", "--resume"]
    argv += ["--lr", "0.5", "--stop-at", "3", "--attn-impl", "sdpa"]
    config = dataclass_from_args(TrainConfig, parse(argv))
    assert (config.ckpt_dir, config.progress, config.resume) == ("c", False, True)
    assert (config.lr, config.stop_at, config.attn_impl) == (0.5, 3, "sdpa")


def test_overridden_defaults_show_in_the_parsed_config():
    args = parse(["--source", "d", "--steps", "5"], defaults={"lr": 2e-3, "ckpt_every": 50})
    assert dataclass_from_args(TrainConfig, args).lr == 2e-3


@pytest.mark.parametrize("argv", [["--steps", "5"], ["--source", "d", "--model", "huge"]])
def test_missing_or_unknown_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("lr", float("nan")), ("lr", 0.0), ("grad_clip", -1.0), ("prefetch", -1)],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(source="d", steps=5).replace(**{field: value})


def test_dataclass_argv_parses_back_into_the_same_config():
    config = TrainConfig(source="grpc://127.0.0.1:9", steps=7).replace(
        lr=2e-3, progress=False, resume=True, rank=1, num_classes=4, attn_impl="sdpa"
    )
    argv = dataclass_argv(config)
    assert "--no-progress" in argv and "--resume" in argv and "--lr=0.002" in argv
    assert not any(a.startswith("--weight-decay") for a in argv)  # defaults stay implicit
    assert dataclass_from_args(TrainConfig, parse(argv)) == config
    assert "--rank=1" not in dataclass_argv(config, exclude=("rank",))


def test_a_negative_switch_says_what_giving_it_does():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    (switch,) = [a for a in parser._actions if "--no-progress" in a.option_strings]
    assert switch.help.startswith("show no progress")


def test_a_true_default_without_switch_help_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Settings:
        colour: bool = dataclasses.field(default=True, metadata={"help": "use colour"})

    with pytest.raises(ValueError, match="switch_help"):
        add_dataclass_arguments(argparse.ArgumentParser(), Settings)
