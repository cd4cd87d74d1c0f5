"""Prediction heads on the aggregator's tokens: camera (iterative) and DPT (dense maps).

Pose encoding is VGGT's ``absT_quaR_FoV``: translation (3), quaternion (4, xyzw),
field of view (h, w) — 9 numbers per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrsub.model.layers import Block, Mlp

POSE_DIM = 9


def inverse_log(y: Tensor) -> Tensor:
    """sign(y) * (exp|y| - 1): lets point coordinates span many orders of magnitude."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


class CameraHead(nn.Module):
    """Refines a pose encoding per frame from the last block's camera tokens.

    Each iteration embeds the previous (detached) estimate, modulates the normalised camera
    tokens adaptive-LayerNorm style, runs a small transformer trunk and adds a delta.
    """

    def __init__(self, dim_in: int, trunk_depth: int, num_heads: int, iterations: int,
                 mlp_ratio: float = 4.0, init_values: float = 0.01) -> None:
        super().__init__()
        self.iterations = iterations
        self.trunk = nn.Sequential(*(Block(dim_in, num_heads, mlp_ratio, init_values=init_values)
                                     for _ in range(trunk_depth)))
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)

    def forward(self, last_tokens: Tensor) -> list[Tensor]:
        """Tokens [B, S, P, C] of the last block -> one [B, S, 9] encoding per iteration."""
        pose_tokens = self.token_norm(last_tokens[:, :, 0])
        batch, frames, _ = pose_tokens.shape
        estimate: Tensor | None = None
        estimates: list[Tensor] = []
        for _ in range(self.iterations):
            if estimate is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(batch, frames, -1))
            else:
                cond = self.embed_pose(estimate.detach())
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift) + pose_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            estimate = delta if estimate is None else estimate + delta
            fov = F.relu(estimate[..., 7:])
            estimates.append(torch.cat((estimate[..., :7], fov), dim=-1))
        return estimates


def _interpolate(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize, chunked over the batch so huge inputs stay under int32 indexing."""
    limit = 1_610_612_736
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements <= limit:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = x.chunk(elements // limit + 1, dim=0)
    return torch.cat([F.interpolate(c, size=size, mode="bilinear", align_corners=True)
                      for c in chunks])


def _uv_embed(channels: int, grid_h: int, grid_w: int, aspect: float, ref: Tensor) -> Tensor:
    """Sin-cos embedding [channels, h, w] of a centred, diagonal-normalised uv grid."""
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (grid_w - 1) / grid_w, span_x * (grid_w - 1) / grid_w, grid_w,
                        dtype=ref.dtype, device=ref.device).double()
    ys = torch.linspace(-span_y * (grid_h - 1) / grid_h, span_y * (grid_h - 1) / grid_h, grid_h,
                        dtype=ref.dtype, device=ref.device).double()
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64, device=ref.device) / quarter)
    ex, ey = xs[:, None] * omega, ys[:, None] * omega  # [w, q], [h, q]
    emb_x = torch.cat((ex.sin(), ex.cos()), dim=-1)[None].expand(grid_h, -1, -1)
    emb_y = torch.cat((ey.sin(), ey.cos()), dim=-1)[:, None].expand(-1, grid_w, -1)
    return torch.cat((emb_x, emb_y), dim=-1).permute(2, 0, 1).to(ref.dtype)


class ResidualConvUnit(nn.Module):
    """relu-conv-relu-conv with a skip from relu(x); the DPT refinement unit."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # VGGT's unit applies an in-place ReLU to its input, so its skip carries relu(x).
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FeatureFusionBlock(nn.Module):
    """Adds a skip feature map, refines, upsamples (to ``size`` or x2) and mixes channels."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None,
                size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        target = size or (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(_interpolate(x, target))


class DPTHead(nn.Module):
    """Dense prediction head fusing four aggregator blocks at four scales (DPT).

    With ``feature_only`` it returns the fused feature map (the track head's use); otherwise
    ``output_dim - 1`` activated channels plus a confidence channel (1 + exp).
    """

    def __init__(self, dim_in: int, patch_size: int, layers: tuple[int, ...],
                 out_channels: tuple[int, ...], features: int, output_dim: int = 1,
                 activation: str = "exp", head_hidden: int = 32, pos_embed: bool = True,
                 feature_only: bool = False, down_ratio: int = 1,
                 frames_chunk_size: int = 8) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.layers = tuple(layers)
        self.activation = activation
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        self.frames_chunk_size = frames_chunk_size
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList((
            nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
            nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
        ))
        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn",
                    nn.Conv2d(oc, features, kernel_size=3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3,
                                                  padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, head_hidden, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_hidden, output_dim, kernel_size=1),
            )

    def forward(self, tokens: list[Tensor | None], images: Tensor,
                patch_start_idx: int) -> Tensor | tuple[Tensor, Tensor]:
        """Features [B, S, C, h, w] if feature_only, else (values [B,S,H,W,D-1], conf [B,S,H,W])."""
        frames = images.shape[1]
        step = self.frames_chunk_size
        if step >= frames:
            return self._forward_frames(tokens, images, patch_start_idx, 0, frames)
        parts = [self._forward_frames(tokens, images, patch_start_idx, s, min(s + step, frames))
                 for s in range(0, frames, step)]
        if self.feature_only:
            return torch.cat(parts, dim=1)  # type: ignore[arg-type]
        return (torch.cat([p[0] for p in parts], dim=1),  # type: ignore[index]
                torch.cat([p[1] for p in parts], dim=1))  # type: ignore[index]

    def _forward_frames(self, tokens: list[Tensor | None], images: Tensor, patch_start_idx: int,
                        start: int, stop: int) -> Tensor | tuple[Tensor, Tensor]:
        batch, _, _, height, width = images.shape
        frames = stop - start
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        maps = []
        for project, resize, layer in zip(self.projects, self.resize_layers, self.layers,
                                          strict=True):
            x = tokens[layer]
            if x is None:
                raise RuntimeError(f"aggregator did not keep block {layer} for the DPT head")
            x = x[:, start:stop, patch_start_idx:]
            x = self.norm(x.reshape(batch * frames, -1, x.shape[-1]))
            x = project(x.transpose(1, 2).reshape(batch * frames, -1, grid_h, grid_w))
            if self.pos_embed:
                x = x + 0.1 * _uv_embed(x.shape[1], grid_h, grid_w, width / height, x)
            maps.append(resize(x))

        out = self._fuse(maps)
        out = _interpolate(out, (int(grid_h * self.patch_size / self.down_ratio),
                                 int(grid_w * self.patch_size / self.down_ratio)))
        if self.pos_embed:
            out = out + 0.1 * _uv_embed(out.shape[1], out.shape[2], out.shape[3],
                                        width / height, out)
        if self.feature_only:
            return out.reshape(batch, frames, *out.shape[1:])
        out = self.scratch.output_conv2(out).permute(0, 2, 3, 1)
        values, conf = out[..., :-1], 1 + out[..., -1].exp()
        values = inverse_log(values) if self.activation == "inv_log" else values.exp()
        return (values.reshape(batch, frames, *values.shape[1:]),
                conf.reshape(batch, frames, *conf.shape[1:]))

    def _fuse(self, maps: list[Tensor]) -> Tensor:
        s = self.scratch
        l1, l2, l3, l4 = (s.layer1_rn(maps[0]), s.layer2_rn(maps[1]),
                          s.layer3_rn(maps[2]), s.layer4_rn(maps[3]))
        out = s.refinenet4(l4, size=tuple(l3.shape[2:]))
        out = s.refinenet3(out, l3, size=tuple(l2.shape[2:]))
        out = s.refinenet2(out, l2, size=tuple(l1.shape[2:]))
        out = s.refinenet1(out, l1)
        return s.output_conv1(out)
