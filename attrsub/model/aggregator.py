"""The aggregator: per-frame patch encoding, then alternating frame-wise and global attention.

Each frame gets one camera token and a few register tokens; the first frame uses its own
learned pair (index 0) so the network knows which camera defines the world frame.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from attrsub.model.config import ModelConfig
from attrsub.model.layers import Block, DinoViT, RopeTables, rope_tables

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_frame_tokens(token: Tensor, batch: int, frames: int) -> Tensor:
    """[1, 2, X, C] learned tokens -> [batch*frames, X, C]: slot 0 for frame 0, slot 1 after."""
    first = token[:, :1].expand(batch, 1, *token.shape[2:])
    rest = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
    return torch.cat((first, rest), dim=1).reshape(batch * frames, *token.shape[2:])


class Aggregator(nn.Module):
    """Alternating-attention trunk of VGGT (frame block i, then global block i, for each i)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.rope_freq = cfg.rope_freq
        self.head_dim = dim // cfg.num_heads
        self.patch_start_idx = 1 + cfg.num_register_tokens
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.patch_embed = DinoViT(cfg.img_size, cfg.patch_size, dim, cfg.patch_embed_depth,
                                   cfg.patch_embed_heads, cfg.mlp_ratio, cfg.num_register_tokens)

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                Block(dim, cfg.num_heads, cfg.mlp_ratio, init_values=cfg.init_values, qk_norm=True)
                for _ in range(cfg.depth)
            )

        self.frame_blocks = blocks()
        self.global_blocks = blocks()
        self.camera_token = nn.Parameter(torch.empty(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.empty(1, 2, cfg.num_register_tokens, dim))
        nn.init.normal_(self.camera_token, std=1e-6)
        nn.init.normal_(self.register_token, std=1e-6)

    def _rope(self, grid_h: int, grid_w: int, device: torch.device,
              dtype: torch.dtype) -> RopeTables:
        """Tables for one frame: special tokens at (0, 0), patch (y, x) at (y + 1, x + 1)."""
        ys, xs = torch.meshgrid(torch.arange(grid_h, device=device),
                                torch.arange(grid_w, device=device), indexing="ij")
        patches = torch.stack((ys, xs), dim=-1).reshape(-1, 2) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=patches.dtype, device=device)
        return rope_tables(torch.cat((special, patches)), self.head_dim, self.rope_freq, dtype)

    def _run(self, block: nn.Module, x: Tensor, rope: RopeTables) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return grad_checkpoint(block, x, rope, use_reentrant=False)
        return block(x, rope)

    def forward(self, images: Tensor, keep: frozenset[int] | None = None) -> list[Tensor | None]:
        """Images [B, S, 3, H, W] in [0, 1] -> per-block tokens [B, S, P, 2C] (frame ++ global).

        Only block indices in ``keep`` (all when None) are returned; the rest are None, so
        training does not hold every block's output alive for heads that never read it.
        """
        batch, frames, _, height, width = images.shape
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        normed = ((images - mean) / std).reshape(batch * frames, 3, height, width)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        patches = self.patch_embed(normed, checkpoint=checkpointing)

        tokens = torch.cat((first_frame_tokens(self.camera_token, batch, frames),
                            first_frame_tokens(self.register_token, batch, frames),
                            patches), dim=1)
        per_frame, dim = tokens.shape[1], tokens.shape[2]
        frame_rope = self._rope(height // self.patch_size, width // self.patch_size,
                                images.device, tokens.dtype)
        global_rope = (frame_rope[0].repeat(1, 1, frames, 1), frame_rope[1].repeat(1, 1, frames, 1))

        outputs: list[Tensor | None] = []
        for index, (frame_block, global_block) in enumerate(
                zip(self.frame_blocks, self.global_blocks, strict=True)):
            tokens = self._run(frame_block, tokens.reshape(batch * frames, per_frame, dim),
                               frame_rope)
            frame_out = tokens.reshape(batch, frames, per_frame, dim)
            tokens = self._run(global_block, tokens.reshape(batch, frames * per_frame, dim),
                               global_rope)
            if keep is None or index in keep:
                global_out = tokens.reshape(batch, frames, per_frame, dim)
                outputs.append(torch.cat((frame_out, global_out), dim=-1))
            else:
                outputs.append(None)
        return outputs
