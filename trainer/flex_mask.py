"""The flex attention path of the model's attention (trainer/model.py, section 5): the
block mask of one batch and the compiled kernel.

The mask is the same as the model's dense one: a token attends to the tokens of its own
image, a padding token only to itself. flex attention skips every 128 x 128 block of
tokens that holds no pair of the same image, which is where packing pays off over a
dense L x L mask. Imported lazily by torch: CPU-only or older builds never touch it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def flex_image_block_mask(segment_ids: Tensor) -> Any:
    """A flex attention BlockMask with the same pattern as `dense_image_mask`.

    Imported lazily: CPU-only or older torch builds never touch flex attention. Blocks
    of 128 x 128 tokens that hold no pair of the same image are skipped entirely, which
    is where packing pays off over a dense L x L mask.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids  # [B, L] int32 on the model's device

    def same_image(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        real_pair = (seg[batch, q_idx] == seg[batch, kv_idx]) & (seg[batch, q_idx] > 0)
        return real_pair | (q_idx == kv_idx)  # padding queries see themselves: no NaN

    batch_size, length = seg.shape
    return create_block_mask(same_image, batch_size, None, length, length, device=seg.device)


_compiled_flex_attention: Any = None


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask: Any) -> Tensor:
    """flex_attention, compiled once on CUDA (eager flex attention is a slow reference).

    Inside a torch.compile'd model the plain function is traced by the outer compile. On
    CPU the eager version runs (forward only: torch has no CPU flex backward), which is
    what the tests use to check it against the SDPA path.
    """
    global _compiled_flex_attention
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention(q, k, v, block_mask=block_mask)
