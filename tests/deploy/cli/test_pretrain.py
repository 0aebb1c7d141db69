"""`navit pretrain`'s flags: its own, and the trainer's derived from TrainConfig with
pretrain's declared defaults."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.cli.pretrain import add_arguments, options_from_args
from deploy.pretrain.options import SUPERVISED_FIELDS, TRAINER_DEFAULTS, PretrainOptions
from trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_parser_has_the_documented_flags() -> None:
    args = parse("data/sample", "--trainers", "2", "--steps", "5", "--set=a=1")
    assert (args.dataset, args.trainers, args.steps, args.model) == ("data/sample", 2, 5, "tiny")
    assert args.run_dir == Path("runs/pretrain")
    assert (args.api_port, args.flight_port) == (8000, 8815)  # the documented addresses
    assert args.overrides == ["a=1"]


def test_every_train_config_field_but_the_supervised_ones_is_a_flag() -> None:
    args = vars(parse("d"))
    trainer_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert trainer_fields - set(SUPERVISED_FIELDS) <= set(args)
    # The supervised ones are pretrain's own flags (resume) or set per rank (source, ...).
    assert not {"source", "ckpt_dir", "rank", "world_size", "token_file"} & set(args)


def test_trainers_get_pretrains_defaults_and_train_configs_for_the_rest() -> None:
    config = options_from_args(parse("d")).trainer_config("grpc://127.0.0.1:1")
    defaults = TrainConfig(source="x", steps=1)
    assert (config.steps, config.lr, config.ckpt_every) == (300, 2e-3, 50)
    assert config.warmup_steps == 30  # a tenth of the steps
    assert (config.weight_decay, config.grad_clip, config.model) == (
        defaults.weight_decay,
        defaults.grad_clip,
        defaults.model,
    )
    assert (config.progress, config.world_size) == (False, 1)
    assert config.eval_every == 30  # a tenth of the steps
    assert set(TRAINER_DEFAULTS) == {"steps", "lr", "ckpt_every", "warmup_steps", "eval_every"}


def test_given_trainer_flags_reach_every_rank() -> None:
    options = options_from_args(parse("d", "--trainers=2", "--steps=7", "--lr=0.01", "--seed=3"))
    config = options.trainer_config("grpc://127.0.0.1:1", num_classes=4)
    assert (config.steps, config.lr, config.seed, config.warmup_steps) == (7, 0.01, 3, 1)
    assert (config.world_size, config.num_classes, config.ckpt_dir) == (2, 4, "runs/pretrain")


def test_help_shows_pretrains_own_trainer_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pretrain's own defaults: --steps 300, --lr 0.002, --ckpt-every 50" in text
    assert "--warmup-steps a tenth of --steps" in text


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--steps", "0"], "steps"),
        (["--lr", "nan"], "lr"),
        (["--trainers", "0"], "trainers"),
        (["--api-port", "70000"], "api_port"),
        (["--val-fraction", "1"], "val_fraction"),
        (["--val-seed", "-1"], "val_seed"),
    ],
)
def test_a_bad_value_exits_2_with_one_line_naming_it(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pretrain", "data/sample", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"navit: invalid config: {field}:")


def test_options_refuse_a_setting_the_supervisor_owns() -> None:
    with pytest.raises(ValueError, match="rank: not a trainer setting"):
        PretrainOptions("d", training={"rank": 1})
    with pytest.raises(ValueError, match="bogus: not a trainer setting"):
        PretrainOptions("d", training={"bogus": 1})


def test_the_global_verbose_flag_reaches_the_pretrain_options() -> None:
    from deploy.cli import build_parser

    for argv in (["--verbose", "pretrain", "d"], ["pretrain", "d", "--verbose"]):
        assert options_from_args(build_parser("pretrain").parse_args(argv)).verbose
    assert not options_from_args(build_parser("pretrain").parse_args(["pretrain", "d"])).verbose


def test_the_validation_split_is_a_tenth_by_default_and_reaches_the_options() -> None:
    options = options_from_args(parse("d"))
    assert (options.val_fraction, options.val_seed) == (0.1, 0)
    options = options_from_args(
        parse("d", "--val-fraction=0.2", "--val-seed=3", "--set=max_res=96")
    )
    assert (options.val_fraction, options.val_seed) == (0.2, 3)
    assert options.packing_config().max_res == 96
    assert options_from_args(parse("d", "--val-fraction=0")).val_fraction == 0.0


def test_the_pretrain_launcher_validates_trainer_settings_without_loading_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import deploy.cli.pretrain, deploy.pretrain.supervisor\n"
        "from trainer.config import TrainConfig\n"
        "TrainConfig(source='d', steps=1, model='b16')\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _make_recipe(target: str) -> list[str]:
    """The commands of a Makefile target, its variables expanded and `$(BIN)/` dropped:
    what the README should show a user typing."""
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=[ \t]*(.*)$", makefile, re.MULTILINE))
    body = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in body.splitlines()[1:] if line.startswith("\t")]

    def expand(text: str) -> str:
        while "$(" in text:
            text = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], text)
        return text

    binary = expand("$(BIN)/")
    return [" ".join(expand(command).replace(binary, "").split()) for command in commands]


def test_the_readme_shows_the_exact_commands_make_pretrain_runs() -> None:
    commands = _make_recipe("pretrain")
    assert [c.split()[:2] for c in commands] == [["navit", "pretrain"], ["navit", "eval"]]
    readme = {" ".join(line.split()) for line in (REPO / "README.md").read_text().splitlines()}
    assert set(commands) <= readme, commands
