"""The model on the device named by NAVIT_TEST_DEVICE (default cpu): `bench/gpu_check.sh`
runs this file with NAVIT_TEST_DEVICE=cuda, so the flex attention path (compiled, with its
backward) and bf16 autocast are checked where they really run.

The other trainer tests pin "cpu"; this file is the one that follows the variable.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.trainer_synthetic import make_batch
from trainer.data import to_device
from trainer.flex_mask import flex_attend, flex_image_block_mask
from trainer.model import (
    MODEL_INPUTS,
    NaViT,
    build_model,
    dense_image_mask,
)

PATCH = 4
DEVICE = torch.device(os.environ.get("NAVIT_TEST_DEVICE", "cpu"))
LAYOUT = [[(2, 3), (3, 3), (1, 4)], [(2, 2), (3, 2), (4, 4)]]


@pytest.fixture(scope="module", autouse=True)
def _device_present() -> None:
    # A run that asks for CUDA must not quietly test the CPU instead.
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"NAVIT_TEST_DEVICE={DEVICE} but torch.cuda.is_available() is False")


def _model(attn_impl: str) -> NaViT:
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=7, patch_size=PATCH, max_grid=8)
    return NaViT(dataclasses.replace(model.config, attn_impl=attn_impl)).to(DEVICE)


def _inputs(batch) -> dict[str, torch.Tensor]:
    tensors = to_device(batch, DEVICE)
    return {name: tensors[name] for name in MODEL_INPUTS}


def test_flex_attention_equals_sdpa_with_the_dense_mask_on_packed_sequences():
    batch = make_batch(LAYOUT, seq_len=40, patch_size=PATCH, seed=3)
    segment_ids = torch.from_numpy(batch.segment_ids).to(DEVICE)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 16, generator=generator).to(DEVICE) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is not compiled
        flex = flex_attend(q, k, v, flex_image_block_mask(segment_ids))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_image_mask(segment_ids))
    relative = (flex - sdpa).norm() / sdpa.norm()
    assert relative < 1e-3, float(relative)


def test_no_token_attends_across_images_on_the_device():
    model = _model("auto").eval()
    batch = make_batch(LAYOUT, seq_len=40, patch_size=PATCH, seed=1)
    changed = make_batch(LAYOUT, seq_len=40, patch_size=PATCH, seed=1)
    span = changed.segment_ids[0] == 2  # the 3x3 image, image 1 of the batch
    changed.patches[0, span] = 255 - changed.patches[0, span]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = model(**_inputs(batch)), model(**_inputs(changed))
    others = [i for i in range(batch.num_images) if i != 1]
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-5)
    assert (after[1] - before[1]).abs().max() > 1e-3


def test_bf16_training_steps_on_the_device_fit_one_batch():
    # On CUDA this is flex attention's compiled forward and backward under bf16 autocast;
    # on CPU the SDPA path (torch has no CPU flex backward), also under bf16 autocast.
    model = _model("auto").train()
    batch = make_batch(LAYOUT, seq_len=40, patch_size=PATCH, seed=2, learnable=True)
    inputs = _inputs(batch)
    labels = torch.from_numpy(batch.labels).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            logits = model(**inputs)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
