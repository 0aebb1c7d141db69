"""Evaluation (trainer/evaluate.py): loss, accuracy, tokens and model time over batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from packer.contract.packed_folder import batch_path
from packer.contract.schema import PackedBatch
from tests.trainer.trainer_synthetic import (
    learnable_batches,
    make_batch,
    write_arrow,
)
from trainer.data import to_device
from trainer.evaluate import batch_sums, evaluate, evaluate_batches
from trainer.model import MODEL_INPUTS, build_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny", 4, patch_size=4).eval()


def _direct(model, batches: list[PackedBatch]) -> tuple[float, float, int]:
    """(mean loss, accuracy, labelled) computed straight from the model's logits."""
    losses, hits = [], []
    for batch in batches:
        tensors = to_device(batch, "cpu")
        labels = tensors.pop("labels")
        with torch.no_grad():
            logits = model(**{name: tensors[name] for name in MODEL_INPUTS}).float()
        keep = labels >= 0
        losses += F.cross_entropy(logits[keep], labels[keep], reduction="none").tolist()
        hits += (logits[keep].argmax(-1) == labels[keep]).tolist()
    return sum(losses) / len(losses), sum(hits) / len(hits), len(hits)


def test_scores_equal_the_models_logits_over_labelled_images_only():
    batches = learnable_batches(3, num_sequences=3, seq_len=48, seed=1)
    batches[0].labels[:2] = -1  # unlabelled images: counted as images and tokens only
    model = _model()
    result = evaluate_batches(model, batches)
    loss, accuracy, labelled = _direct(model, batches)
    assert result.labelled == labelled
    assert result.images == sum(b.num_images for b in batches) == labelled + 2
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.accuracy == pytest.approx(accuracy)
    assert result.tokens == sum(b.real_tokens for b in batches)
    assert result.tokens_per_image == result.tokens / result.images
    assert result.seconds > 0 and result.images_per_s == result.images / result.seconds


def test_the_same_model_and_batches_give_the_same_scores_twice():
    batches = learnable_batches(4, seed=2)
    model = _model(3)
    first, second = evaluate_batches(model, batches), evaluate_batches(model, batches)
    for name in ("images", "labelled", "accuracy", "loss", "tokens"):
        assert getattr(first, name) == getattr(second, name)


def test_padding_batches_add_nothing_and_the_model_keeps_its_mode():
    batches = learnable_batches(2, seed=4)
    model = _model().train()
    padded = evaluate_batches(model, [PackedBatch.empty(4, 64, 4), *batches])
    plain = evaluate_batches(model, batches)
    assert model.training  # restored after the pass
    assert (padded.images, padded.tokens, padded.loss) == (plain.images, plain.tokens, plain.loss)
    assert evaluate_batches(model, []).images == 0


def test_a_label_beyond_the_models_classes_is_an_error_naming_it():
    batch = make_batch([[(2, 2), (1, 3)]], seq_len=16, labels=[1, 9])
    with pytest.raises(ValueError, match="label 9 >= the model's num_classes=4"):
        batch_sums(_model(), batch, torch.device("cpu"))


def test_folder_evaluation_matches_the_batch_evaluation(tmp_path):
    batches = learnable_batches(3, seed=5)
    for j, batch in enumerate(batches):
        write_arrow(batch, batch_path(tmp_path / "val", 0, j))
    model = _model(1)
    record = evaluate(model, tmp_path / "val", step=7)
    result = evaluate_batches(model, batches)
    assert record["eval"] is True and record["step"] == 7
    assert record["eval_images"] == result.labelled
    assert record["eval_loss"] == pytest.approx(result.loss, rel=1e-9)
    assert record["eval_accuracy"] == pytest.approx(result.accuracy)
