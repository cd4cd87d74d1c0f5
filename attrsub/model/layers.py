"""Transformer building blocks shared by the patch encoder, the aggregator and the camera head.

Module and parameter names follow VGGT's state dict (``attn.qkv``, ``ls1.gamma``,
``mlp.fc1`` ...) so released weights load unchanged and LoRA can target layers by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

RopeTables = tuple[Tensor, Tensor]
"""Per-token (cos, sin) tables, each [1, 1, tokens, head_dim], built once per forward."""


class LayerScale(nn.Module):
    """Learned per-channel residual scale; small init keeps deep stacks near identity."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer GELU MLP; ``fc1``/``fc2`` are plain ``nn.Linear`` so PEFT can wrap them."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def rope_tables(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> RopeTables:
    """2D rotary tables for integer (y, x) positions [tokens, 2].

    The first half of each head rotates with y, the second with x (VGGT's layout); building
    the tables once per forward instead of once per attention call saves a gather per block.
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device=positions.device).float() / half))
    angles = positions.float()[..., None] * inv_freq  # [tokens, 2, half/2]
    angles = torch.cat((angles, angles), dim=-1).flatten(-2)  # [tokens, head_dim]
    return angles.cos().to(dtype)[None, None], angles.sin().to(dtype)[None, None]


def apply_rope(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate each (y, x) half of the head dimension by its own angle."""
    cos, sin = tables
    parts = x.unflatten(-1, (2, 2, x.shape[-1] // 4))
    rotated = torch.stack((-parts[..., 1, :], parts[..., 0, :]), dim=-2).flatten(-3)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q, k and 2D RoPE."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm: nn.Module = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: RopeTables | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: float = 0.01,
                 qk_norm: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: Tensor, rope: RopeTables | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: [N, 3, H, W] -> [N, H/p * W/p, dim]."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """DINOv2-style ViT with register tokens: the per-frame patch encoder of VGGT.

    The learned position embedding is stored for ``img_size`` and resized bicubically
    (with antialiasing, no offset, as VGGT configures DINOv2) for any other patch grid.
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_register_tokens: int) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=1.0, norm_eps=1e-6)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def _pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        stored = self.pos_embed.shape[1] - 1
        side = math.isqrt(stored)
        if grid_h == side and grid_w == side:
            return self.pos_embed
        patch_pos = self.pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).flatten(1, 2).to(self.pos_embed.dtype)
        return torch.cat((self.pos_embed[:, :1], patch_pos), dim=1)

    def forward(self, images: Tensor, checkpoint: bool = False) -> Tensor:
        """Normalised images [N, 3, H, W] -> final-norm patch tokens [N, H/p * W/p, dim]."""
        n, _, height, width = images.shape
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        x = x + self._pos_embed(height // self.patch_size, width // self.patch_size)
        x = torch.cat((x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = grad_checkpoint(block, x, use_reentrant=False) if checkpoint else block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens:]
