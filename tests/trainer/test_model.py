"""NaViT over packed batches: attention stays inside images, layout does not change logits."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from bench.padded_baseline import pad_one_image_per_row
from packer.contract.schema import PackedBatch
from tests.trainer.trainer_synthetic import make_batch
from trainer.data import to_device
from trainer.model import (
    MODEL_INPUTS,
    MODEL_SIZES,
    NaViT,
    NaViTConfig,
    build_model,
    dense_image_mask,
    token_image_index,
)

PATCH = 4  # small patches keep CPU tests fast; the model does not care


def logits_of(model: NaViT, batch: PackedBatch) -> torch.Tensor:
    tensors = to_device(batch, "cpu")
    with torch.no_grad():
        return model(**{name: tensors[name] for name in MODEL_INPUTS})


@pytest.fixture(scope="module")
def model() -> NaViT:
    torch.manual_seed(0)
    return build_model("tiny", num_classes=7, patch_size=PATCH, max_grid=8).eval()


def test_token_image_index_worked_example():
    seg = torch.tensor([[1, 1, 2, 0], [1, 1, 1, 0]], dtype=torch.int32)
    index = token_image_index(seg, torch.tensor([2, 1]), num_images=3)
    assert index.tolist() == [[0, 0, 1, 3], [2, 2, 2, 3]]


def test_dense_mask_is_block_diagonal_and_pad_sees_itself():
    mask = dense_image_mask(torch.tensor([[1, 1, 2, 0, 0]]))[0, 0].int().tolist()
    assert mask == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ]


def test_no_token_attends_across_images(model):
    layout = [[(2, 3), (3, 3), (1, 4)], [(2, 2), (3, 2)]]
    batch = make_batch(layout, seq_len=24, patch_size=PATCH, seed=1)
    before = logits_of(model, batch)
    changed = make_batch(layout, seq_len=24, patch_size=PATCH, seed=1)
    target = 1  # the 3x3 image, slot 2 of sequence 0
    span = changed.segment_ids[0] == 2
    changed.patches[0, span] = 255 - changed.patches[0, span]
    after = logits_of(model, changed)
    others = [i for i in range(batch.num_images) if i != target]
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-6)
    assert (after[target] - before[target]).abs().max() > 1e-3


def test_image_logits_same_alone_packed_and_padded(model):
    rng = np.random.default_rng(5)
    patch_dim = PATCH * PATCH * 3
    image = rng.integers(0, 256, (12, patch_dim), dtype=np.uint8)  # a 3x4 image
    others = [rng.integers(0, 256, (n, patch_dim), dtype=np.uint8) for n in (4, 6, 9)]
    alone = make_batch([[(3, 4)]], seq_len=12, patch_size=PATCH, patches=[image])
    packed = make_batch(
        [[(2, 2), (3, 4), (2, 3)], [(3, 3)]],
        seq_len=24,
        patch_size=PATCH,
        patches=[others[0], image, others[1], others[2]],
    )
    padded = make_batch([[(3, 4)]], seq_len=64, patch_size=PATCH, patches=[image])
    reference = logits_of(model, alone)[0]
    torch.testing.assert_close(logits_of(model, packed)[1], reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(model, padded)[0], reference, rtol=0, atol=1e-5)


def test_one_image_per_row_layout_gives_the_packed_logits(model):
    batch = make_batch([[(2, 3), (3, 3), (1, 4)], [(2, 2), (3, 2)]], seq_len=24, patch_size=PATCH)
    padded = pad_one_image_per_row(batch)
    assert padded.segment_ids.shape == (5, 9)  # five rows, the longest image has 9 tokens
    assert padded.images_per_seq.tolist() == [1] * 5
    np.testing.assert_array_equal(padded.labels, batch.labels)
    torch.testing.assert_close(logits_of(model, padded), logits_of(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_mode", ["fractional", "absolute"])
def test_fractional_positions_finite_at_unseen_grid(pos_mode):
    torch.manual_seed(0)
    model = build_model("tiny", 5, patch_size=PATCH, max_grid=4, pos_mode=pos_mode).eval()
    # A 7x9 grid: every side beyond the 4-row tables the model was built with.
    batch = make_batch([[(7, 9), (1, 2)]], seq_len=80, patch_size=PATCH)
    logits = logits_of(model, batch)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_fractional_equals_absolute_when_grid_matches_the_table():
    torch.manual_seed(0)
    fractional = build_model("tiny", 5, patch_size=PATCH, max_grid=4).eval()
    absolute = build_model("tiny", 5, patch_size=PATCH, max_grid=4, pos_mode="absolute").eval()
    absolute.load_state_dict(fractional.state_dict())
    batch = make_batch([[(4, 4)], [(4, 4)]], seq_len=16, patch_size=PATCH)
    torch.testing.assert_close(logits_of(fractional, batch), logits_of(absolute, batch))


def test_flex_attention_path_matches_sdpa_on_cpu_forward(model):
    # CPU flex attention is eager and forward-only; this checks the block mask, not speed.
    flex = NaViT(dataclasses.replace(model.config, attn_impl="flex")).eval()
    flex.load_state_dict(model.state_dict())
    batch = make_batch([[(2, 3), (3, 3), (1, 4)], [(2, 2), (3, 2)]], seq_len=24, patch_size=PATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        flex_logits = logits_of(flex, batch)
    torch.testing.assert_close(flex_logits, logits_of(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("qk_norm", ["layernorm", "rmsnorm"])
def test_all_padding_batch_backward_reaches_every_parameter(qk_norm):
    model = build_model("tiny", 3, patch_size=PATCH, qk_norm=qk_norm)
    tensors = to_device(PackedBatch.empty(2, 16, PATCH), "cpu")
    logits = model(**{name: tensors[name] for name in MODEL_INPUTS})
    assert logits.shape == (0, 3)
    (logits.sum() * 0.0).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.count_nonzero(parameter.grad) == 0, name


def test_named_sizes_and_config_validation():
    assert MODEL_SIZES["b16"] == {"width": 768, "depth": 12, "heads": 12}
    assert NaViTConfig(**MODEL_SIZES["l16"]).head_dim == 64
    with pytest.raises(ValueError, match="divisible"):
        NaViTConfig(width=100, heads=3)
    with pytest.raises(ValueError, match="pos_mode"):
        NaViTConfig(pos_mode="rope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model"):
        build_model("huge", 10)
