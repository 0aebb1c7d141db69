"""TrainConfig: defaults, every bad value an error naming its field, rank resolution."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig


def test_only_source_and_steps_are_needed():
    config = TrainConfig(source="runs/packed", steps=10)
    assert (config.model, config.ckpt_dir, config.lr, config.progress) == (
        "tiny",
        "runs/train",
        1e-3,
        True,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", ""),
        ("steps", 0),
        ("steps", True),
        ("log_every", 0),
        ("ckpt_every", -1),
        ("warmup_steps", 1.5),
        ("eval_every", -2),
        ("prefetch", -1),
        ("seed", -1),
        ("stop_at", 0),
        ("num_classes", 0),
        ("world_size", 0),
        ("rank", -1),
        ("model", "huge"),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("weight_decay", -0.1),
        ("grad_clip", float("inf")),
        ("pos_mode", "relative"),
        ("attn_impl", "xformers"),
    ],
)
def test_bad_value_is_an_error_naming_the_field(field, value):
    settings = {"source": "runs/packed", "steps": 10, field: value}
    with pytest.raises(ValueError, match=rf"^{field}: "):
        TrainConfig(**settings)


def test_rank_and_world_size_come_from_fields_then_torchrun_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = TrainConfig(source="d", steps=1)
    assert config.resolved_rank() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert config.resolved_rank() == (2, 4)
    assert config.replace(rank=1, world_size=2).resolved_rank() == (1, 2)


def test_rank_outside_the_world_is_an_error_naming_rank(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="^rank: "):
        TrainConfig(source="d", steps=1, rank=3, world_size=2).resolved_rank()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="^rank: "):
        TrainConfig(source="d", steps=1, rank=2).resolved_rank()
