"""NaViT (Dehghani et al. 2023, arXiv 2307.06304) over packed token sequences.

The model never patchifies or packs: the packer already cut every image into patches and
packed the patches of many images into fixed-length sequences (see packer/contract/schema.py). A
batch of B sequences of L tokens holding N images in all arrives as

    patches         [B, L, p*p*3] uint8   pixels in (py, px, channel) order, 0 on padding
    segment_ids     [B, L] int32          0 = padding, 1..k = k-th image of the sequence
    patch_rows      [B, L] int16          row of the patch in its image's grid
    patch_cols      [B, L] int16          column of the patch in its image's grid
    image_grid_h    [N] int16             each image's grid height (flat over the batch)
    image_grid_w    [N] int16             each image's grid width
    images_per_seq  [B] int32             k for each sequence

and the model returns logits [N, num_classes] in the order of the batch's labels: row-major
over sequences, slot order within a sequence. Read top to bottom:

    1. config: NaViTConfig and the named sizes (tiny, s16, b16, l16)
    2. which image each token belongs to (global image index from segment ids)
    3. patch embedding: uint8 -> [-1, 1] -> LayerNorm -> Linear -> LayerNorm
    4. factorized positional embeddings (absolute or fractional rows and columns)
    5. attention that never crosses images: a block-diagonal mask (SDPA) or a flex
       attention block mask (CUDA, trainer/flex_mask.py), with query-key normalisation
    6. pre-norm transformer blocks without biases
    7. masked attention pooling (MAP head): one learned query per image over its tokens
    8. NaViT, build_model
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import MODEL_SIZES, AttnImpl, PosMode
from trainer.flex_mask import flex_attend, flex_image_block_mask

QKNorm = Literal["layernorm", "rmsnorm"]

# The keyword arguments of NaViT.forward, in the order of the table above.
MODEL_INPUTS = (
    "patches",
    "segment_ids",
    "patch_rows",
    "patch_cols",
    "image_grid_h",
    "image_grid_w",
    "images_per_seq",
)

# ---------------------------------------------------------------------------------------
# 1. Config


@dataclass(frozen=True)
class NaViTConfig:
    """Sizes and switches of a NaViT; validated once, here."""

    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    patch_size: int = 16
    channels: int = 3
    # Rows of each positional table. `absolute` mode needs max_grid > every grid side it
    # sees (larger indices share the last row); `fractional` mode maps any grid onto it.
    max_grid: int = 64
    pos_mode: PosMode = "fractional"
    qk_norm: QKNorm = "layernorm"
    attn_impl: AttnImpl = "auto"  # auto: flex attention on CUDA, SDPA elsewhere

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads", "num_classes", "patch_size", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"NaViTConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_grid, int) or self.max_grid < 2:
            raise ValueError(f"NaViTConfig.max_grid must be an integer >= 2, got {self.max_grid}")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for name, kind in (("pos_mode", PosMode), ("qk_norm", QKNorm), ("attn_impl", AttnImpl)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels


# ---------------------------------------------------------------------------------------
# 2. Which image each token belongs to


def token_image_index(segment_ids: Tensor, images_per_seq: Tensor, num_images: int) -> Tensor:
    """Global image index of every token [B, L] (long); padding gets `num_images`.

    Worked example: images_per_seq = [2, 1] and segment_ids = [[1, 1, 2, 0], [1, 1, 1, 0]]
    give [[0, 0, 1, 3], [2, 2, 2, 3]] with num_images = 3: sequence 1's first image is the
    batch's third image, the same order as the batch's labels.
    """
    seg = segment_ids.long()  # [B, L]
    counts = images_per_seq.long()  # [B]
    first_image = torch.cumsum(counts, 0) - counts  # [B] exclusive prefix sum
    return torch.where(seg > 0, first_image[:, None] + seg - 1, num_images)  # [B, L]


# ---------------------------------------------------------------------------------------
# 3. Patch embedding


class PatchEmbedding(nn.Module):
    """uint8 patches -> [-1, 1] on the device -> LayerNorm -> Linear -> LayerNorm."""

    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(config.patch_dim)
        self.linear = nn.Linear(config.patch_dim, config.width)
        self.norm_out = nn.LayerNorm(config.width)

    def forward(self, patches: Tensor) -> Tensor:
        # patches [B, L, P] uint8; (x / 255 - 0.5) / 0.5 == x / 127.5 - 1
        x = patches.float() / 127.5 - 1.0  # [B, L, P] float32 in [-1, 1]
        return self.norm_out(self.linear(self.norm_in(x)))  # [B, L, D]


# ---------------------------------------------------------------------------------------
# 4. Factorized positional embeddings


class FactorizedPositions(nn.Module):
    """Learned row table + learned column table, looked up per token and summed.

    absolute: row r uses row_table[r]. fractional: row r of an image with grid height h
    sits at r / h in [0, 1), scaled onto the table and read by linear interpolation, so a
    grid the model never saw still lands between trained rows. Example, max_grid = 64,
    h = 10, r = 3: position 3 * 64 / 10 = 19.2 -> 0.8 * row_table[19] + 0.2 * row_table[20].
    When h == max_grid, fractional equals absolute (position r exactly).
    """

    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.mode = config.pos_mode
        self.max_grid = config.max_grid
        self.row_table = nn.Parameter(torch.randn(config.max_grid, config.width) * 0.02)
        self.col_table = nn.Parameter(torch.randn(config.max_grid, config.width) * 0.02)

    def forward(self, rows: Tensor, cols: Tensor, grid_h: Tensor, grid_w: Tensor) -> Tensor:
        # rows, cols, grid_h, grid_w: [B, L] long (grid sides of each token's image, >= 1)
        return self._lookup(self.row_table, rows, grid_h) + self._lookup(
            self.col_table, cols, grid_w
        )  # [B, L, D]

    def _lookup(self, table: Tensor, index: Tensor, grid: Tensor) -> Tensor:
        last = self.max_grid - 1
        if self.mode == "absolute":
            return table[index.clamp(0, last)]  # [B, L, D]
        # Multiply before dividing so that grid == max_grid gives integers exactly.
        position = (index.float() * self.max_grid) / grid.float()  # [B, L] in [0, max_grid)
        lower = position.floor().long().clamp(0, last)  # [B, L]
        upper = (lower + 1).clamp(max=last)  # [B, L]
        weight = (position - lower.float()).clamp(0.0, 1.0).unsqueeze(-1)  # [B, L, 1]
        return table[lower] * (1.0 - weight) + table[upper] * weight  # [B, L, D]


# ---------------------------------------------------------------------------------------
# 5. Attention within an image only


def make_norm(kind: QKNorm, dim: int) -> nn.Module:
    """Query-key normalisation per head (ViT-22B, NaViT): LayerNorm or RMSNorm, no bias."""
    if kind == "rmsnorm":
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim, bias=False)


def dense_image_mask(segment_ids: Tensor) -> Tensor:
    """Block-diagonal boolean mask [B, 1, L, L]: True where query q may attend to key k.

    A real token attends to the tokens of its own image; a padding token attends only to
    itself, so no row is all False (an all-masked softmax row would be NaN).
    For segment_ids [[1, 1, 2, 0]] the mask rows are 1100, 1100, 0010, 0001.
    """
    seg = segment_ids  # [B, L]
    length = seg.shape[1]
    same_image = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)  # [B, L, L]
    diagonal = torch.eye(length, dtype=torch.bool, device=seg.device)  # [L, L]
    return (same_image | diagonal)[:, None]  # [B, 1, L, L]


class ImageMask:
    """The attention mask of one batch, built once and shared by every block."""

    def __init__(self, segment_ids: Tensor, impl: AttnImpl) -> None:
        if impl == "auto":
            impl = "flex" if segment_ids.device.type == "cuda" else "sdpa"
        self.impl = impl
        if impl == "flex":
            self.block_mask = flex_image_block_mask(segment_ids)
        else:
            self.dense = dense_image_mask(segment_ids)  # [B, 1, L, L] bool

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q, k, v [B, H, L, Dh] -> [B, H, L, Dh]
        if self.impl == "flex":
            return flex_attend(q, k, v, self.block_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense)


class SelfAttention(nn.Module):
    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.q_norm = make_norm(config.qk_norm, config.head_dim)
        self.k_norm = make_norm(config.qk_norm, config.head_dim)
        self.proj = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x: Tensor, mask: ImageMask) -> Tensor:
        batch, length, width = x.shape  # [B, L, D]
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, L, Dh]
        # Under bf16 autocast the norms return float32; attention wants one dtype.
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        out = mask.attend(q, k, v)  # [B, H, L, Dh]
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))  # [B, L, D]


# ---------------------------------------------------------------------------------------
# 6. Transformer block


class MLP(nn.Module):
    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_dim, bias=False)
        self.fc2 = nn.Linear(config.mlp_dim, config.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # [B, L, D] -> [B, L, 4D] -> [B, L, D]


class Block(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); no biases anywhere."""

    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, bias=False)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.width, bias=False)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: ImageMask) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)  # [B, L, D]
        return x + self.mlp(self.norm2(x))  # [B, L, D]


# ---------------------------------------------------------------------------------------
# 7. Masked attention pooling head


class AttentionPoolHead(nn.Module):
    """MAP head: one learned query per image attends to that image's tokens only.

    The query is the same learned vector for every image, so its score against a token
    does not depend on the image: compute one score per token [B*L, H], then a softmax
    within each image's tokens with scatter ops keyed by the token's global image index.
    That is the same as a [N, L] mask over each image's sequence, in O(B*L) memory rather
    than O(N*L). Padding tokens go to an extra bucket N that is dropped.
    """

    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.query = nn.Parameter(torch.randn(config.width) * 0.02)
        self.q = nn.Linear(config.width, config.width, bias=False)
        self.kv = nn.Linear(config.width, 2 * config.width, bias=False)
        self.q_norm = make_norm(config.qk_norm, config.head_dim)
        self.k_norm = make_norm(config.qk_norm, config.head_dim)
        self.proj = nn.Linear(config.width, config.width, bias=False)
        self.norm = nn.LayerNorm(config.width)
        self.classifier = nn.Linear(config.width, config.num_classes)

    def forward(self, x: Tensor, image_index: Tensor, num_images: int) -> Tensor:
        batch, length, width = x.shape  # x [B, L, D], image_index [B, L]
        heads, head_dim = self.heads, width // self.heads
        tokens = batch * length  # T
        k, v = self.kv(x).view(tokens, 2, heads, head_dim).unbind(1)  # each [T, H, Dh]
        q = self.q_norm(self.q(self.query).view(heads, head_dim))  # [H, Dh]
        k = self.k_norm(k)  # [T, H, Dh]
        # Softmax and sums in float32 whatever the autocast dtype (scatter needs one dtype).
        scores = (k.float() * q.float()).sum(-1) / math.sqrt(head_dim)  # [T, H]
        index = image_index.reshape(tokens)  # [T], values 0..N (N = padding)
        buckets = num_images + 1
        # Per-image max for a stable softmax; detached because softmax does not depend on it.
        image_max = scores.new_full((buckets, heads), -math.inf).scatter_reduce(
            0, index[:, None].expand(tokens, heads), scores, reduce="amax"
        )  # [N+1, H]
        exp = torch.exp(scores - image_max.detach()[index])  # [T, H]
        denominator = scores.new_zeros(buckets, heads).index_add(0, index, exp)  # [N+1, H]
        weights = exp / denominator[index]  # [T, H], sums to 1 over each image's tokens
        pooled = scores.new_zeros(buckets, heads, head_dim).index_add(
            0, index, weights[..., None] * v.float()
        )  # [N+1, H, Dh]
        pooled = pooled[:num_images].reshape(num_images, width)  # [N, D]
        pooled = self.proj(pooled)  # [N, D]
        return self.classifier(self.norm(pooled))  # [N, num_classes]


# ---------------------------------------------------------------------------------------
# 8. NaViT


class NaViT(nn.Module):
    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbedding(config)
        self.positions = FactorizedPositions(config)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.width, bias=False)
        self.head = AttentionPoolHead(config)
        self.apply(_init_weights)

    def forward(
        self,
        patches: Tensor,
        segment_ids: Tensor,
        patch_rows: Tensor,
        patch_cols: Tensor,
        image_grid_h: Tensor,
        image_grid_w: Tensor,
        images_per_seq: Tensor,
    ) -> Tensor:
        num_images = image_grid_h.shape[0]  # N, known without a device sync
        image_index = token_image_index(segment_ids, images_per_seq, num_images)  # [B, L]
        # Each token's grid size; padding (index N) reads a dummy 1 to avoid dividing by 0.
        grid_h = F.pad(image_grid_h.long(), (0, 1), value=1)[image_index]  # [B, L]
        grid_w = F.pad(image_grid_w.long(), (0, 1), value=1)[image_index]  # [B, L]

        x = self.patch_embed(patches)  # [B, L, D]
        x = x + self.positions(patch_rows.long(), patch_cols.long(), grid_h, grid_w)
        mask = ImageMask(segment_ids, self.config.attn_impl)
        for block in self.blocks:
            x = block(x, mask)  # [B, L, D]
        x = self.norm(x)
        return self.head(x, image_index, num_images)  # [N, num_classes]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(
    name: str,
    num_classes: int,
    patch_size: int = 16,
    max_grid: int = 64,
    pos_mode: PosMode = "fractional",
    **overrides: Any,
) -> NaViT:
    """NaViT of a named size; `overrides` replace any other NaViTConfig field.

    build_model("tiny", 10) is a 2-block, 64-wide model for CPU tests;
    build_model("b16", 1000, attn_impl="sdpa") is ViT-B/16 on the SDPA path.
    """
    if name not in MODEL_SIZES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODEL_SIZES)}")
    config = NaViTConfig(
        num_classes=num_classes, patch_size=patch_size, max_grid=max_grid, pos_mode=pos_mode
    )
    config = replace(config, **{**MODEL_SIZES[name], **overrides})
    return NaViT(config)
