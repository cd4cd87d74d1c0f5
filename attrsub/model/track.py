"""Optional point-track head: DPT features plus a CoTracker-style iterative tracker.

Kept so VGGT's full released state dict loads strictly; the attrsub studies do not train it.
Names (``updateformer.virual_tracks``, ``time_blocks.N.attn.in_proj_weight`` ...) follow
VGGT's state dict, hence ``nn.MultiheadAttention`` and the upstream spelling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrsub.model.config import ModelConfig
from attrsub.model.heads import DPTHead
from attrsub.model.layers import Mlp


def _wide(device: torch.device) -> torch.dtype:
    """float64 for sin-cos tables where the backend has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sample_bilinear(field: Tensor, coords: Tensor, padding_mode: str) -> Tensor:
    """grid_sample with pixel coordinates (x, y), 0 at the first pixel centre."""
    height, width = field.shape[-2:]
    coords = coords.detach().to(field.dtype)
    scale = coords.new_tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)])
    grid = coords * scale - 1
    return F.grid_sample(field, grid, align_corners=True, padding_mode=padding_mode)


def sample_points(fmap: Tensor, coords: Tensor) -> Tensor:
    """Features [B, C, H, W] at points [B, N, 2] -> [B, N, C]."""
    return sample_bilinear(fmap, coords[:, :, None], "border")[..., 0].transpose(1, 2)


def sincos_grid(dim: int, grid_h: int, grid_w: int, device: torch.device) -> Tensor:
    """[1, dim, H, W] embedding: first half encodes x, second half y (base 10000)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=_wide(device), device=device) / quarter)
    xs = torch.arange(grid_w, device=device, dtype=_wide(device))[:, None] * omega
    ys = torch.arange(grid_h, device=device, dtype=_wide(device))[:, None] * omega
    emb_x = torch.cat((xs.sin(), xs.cos()), dim=-1)[None].expand(grid_h, -1, -1)
    emb_y = torch.cat((ys.sin(), ys.cos()), dim=-1)[:, None].expand(-1, grid_w, -1)
    return torch.cat((emb_x, emb_y), dim=-1).float().permute(2, 0, 1)[None]


def flow_embedding(flows: Tensor, channels: int) -> Tensor:
    """Interleaved sin/cos of x then y displacements: [..., 2] -> [..., 2 * channels]."""
    div = torch.arange(0, channels, 2, device=flows.device, dtype=torch.float32)
    div = div * (1000.0 / channels)
    parts = []
    for axis in range(2):
        angle = flows[..., axis:axis + 1] * div
        parts.append(torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2).float())
    return torch.cat(parts, dim=-1)


class AttnBlock(nn.Module):
    """Self-attention block whose residual starts from the normalised input (as upstream)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Cross-attention block: queries from ``x``, keys and values from ``context``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class UpdateFormer(nn.Module):
    """Alternates attention over time per track and over tracks via a few virtual tracks."""

    def __init__(self, depth: int, input_dim: int, hidden: int, num_heads: int, output_dim: int,
                 virtual_tracks: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden)
        self.output_norm = nn.LayerNorm(hidden)
        self.flow_head = nn.Linear(hidden, output_dim)
        self.virual_tracks = nn.Parameter(torch.randn(1, virtual_tracks, 1, hidden))
        self.time_blocks = nn.ModuleList(AttnBlock(hidden, num_heads, mlp_ratio)
                                         for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttnBlock(hidden, num_heads, mlp_ratio)
                                                  for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden, num_heads, mlp_ratio) for _ in range(depth))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, T, input_dim] -> [B, N, T, output_dim]."""
        init = self.input_transform(self.input_norm(x))
        batch, points, steps, _ = init.shape
        virtual = self.virual_tracks.repeat(batch, 1, steps, 1)
        tokens = torch.cat((init, virtual), dim=1)
        total = tokens.shape[1]
        for time_block, v2p, virt, p2v in zip(
                self.time_blocks, self.space_virtual2point_blocks, self.space_virtual_blocks,
                self.space_point2virtual_blocks, strict=True):
            tokens = time_block(tokens.reshape(batch * total, steps, -1))
            space = tokens.reshape(batch, total, steps, -1).transpose(1, 2)
            space = space.reshape(batch * steps, total, -1)
            point_tok, virtual_tok = space[:, :points], space[:, points:]
            virtual_tok = virt(v2p(virtual_tok, point_tok))
            point_tok = p2v(point_tok, virtual_tok)
            space = torch.cat((point_tok, virtual_tok), dim=1).reshape(batch, steps, total, -1)
            tokens = space.transpose(1, 2)
        tokens = tokens[:, :points] + init
        return self.flow_head(self.output_norm(tokens))


class Tracker(nn.Module):
    """Iteratively refines point tracks from multi-scale feature correlations."""

    def __init__(self, cfg: ModelConfig, stride: int = 2) -> None:
        super().__init__()
        latent = cfg.track_features
        self.stride = stride
        self.latent = latent
        self.levels = cfg.track_corr_levels
        self.radius = cfg.track_corr_radius
        self.max_scale = float(cfg.img_size)
        self.transformer_dim = 3 * latent + 4
        self.corr_mlp = Mlp(self.levels * (2 * self.radius + 1) ** 2, cfg.track_hidden, latent)
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = UpdateFormer(cfg.track_depth, self.transformer_dim, cfg.track_hidden,
                                         cfg.track_heads, latent + 2, cfg.track_virtual_tracks)
        self.fmap_norm = nn.LayerNorm(latent)
        self.ffeat_norm = nn.GroupNorm(1, latent)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent, latent), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent, 1))

    def _correlations(self, pyramid: list[Tensor], feats: Tensor, coords: Tensor) -> Tensor:
        """Correlation of track features with each pyramid level around the current coords."""
        batch, frames, points, channels = feats.shape
        r = self.radius
        steps = torch.linspace(-r, r, 2 * r + 1, device=coords.device, dtype=coords.dtype)
        # Upstream pairs the row offset with x and the column offset with y; kept for weights.
        delta = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)
        out = []
        for level, fmap in enumerate(pyramid):
            height, width = fmap.shape[-2:]
            corr = feats @ fmap.flatten(3) / math.sqrt(channels)
            corr = corr.reshape(batch * frames * points, 1, height, width)
            centre = coords.reshape(-1, 1, 1, 2) / 2**level
            sampled = sample_bilinear(corr, centre + delta, "zeros")
            out.append(sampled.reshape(batch, frames, points, -1))
        return torch.cat(out, dim=-1)

    def forward(self, query_points: Tensor, fmaps: Tensor,
                iters: int) -> tuple[list[Tensor], Tensor, Tensor]:
        """Query pixels [B, N, 2] on frame 0 and features [B, S, C, h, w] -> tracks, vis, conf."""
        batch, points, _ = query_points.shape
        _, frames, channels, height, width = fmaps.shape
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        pyramid = [fmaps]
        for _ in range(self.levels - 1):
            pooled = F.avg_pool2d(pyramid[-1].flatten(0, 1), kernel_size=2, stride=2)
            pyramid.append(pooled.reshape(batch, frames, channels, *pooled.shape[-2:]))

        query = query_points / float(self.stride)
        coords = query[:, None].repeat(1, frames, 1, 1)
        feats = sample_points(fmaps[:, 0], query)[:, None].repeat(1, frames, 1, 1)
        grid = sincos_grid(self.transformer_dim, height, width, fmaps.device)
        pos = sample_points(grid.expand(batch, -1, -1, -1), query)
        pos = pos.reshape(batch * points, 1, -1)
        ref = torch.cat((self.query_ref_token[:, :1],
                         self.query_ref_token[:, 1:].expand(-1, frames - 1, -1)), dim=1)

        predictions = []
        for _ in range(iters):
            coords = coords.detach()
            corr = self._correlations(pyramid, feats, coords)
            corr = self.corr_mlp(corr.transpose(1, 2).reshape(batch * points, frames, -1))
            flows = (coords - coords[:, :1]).transpose(1, 2).reshape(batch * points, frames, 2)
            flow_emb = torch.cat((flow_embedding(flows, self.latent // 2),
                                  flows / self.max_scale, flows / self.max_scale), dim=-1)
            track_feats = feats.transpose(1, 2).reshape(batch * points, frames, self.latent)
            x = torch.cat((flow_emb, corr, track_feats), dim=-1) + pos + ref
            delta = self.updateformer(x.reshape(batch, points, frames, -1))
            delta = delta.reshape(batch * points * frames, -1)
            update = self.ffeat_updater(self.ffeat_norm(delta[:, 2:]))
            track_feats = track_feats.reshape(-1, self.latent) + update
            feats = track_feats.reshape(batch, points, frames, self.latent).transpose(1, 2)
            moved = coords + delta[:, :2].reshape(batch, points, frames, 2).transpose(1, 2)
            coords = torch.cat((query[:, None], moved[:, 1:]), dim=1)
            predictions.append(coords * self.stride)

        flat = feats.reshape(-1, self.latent)
        vis = torch.sigmoid(self.vis_predictor(flat)).reshape(batch, frames, points)
        conf = torch.sigmoid(self.conf_predictor(flat)).reshape(batch, frames, points)
        return predictions, vis, conf


class TrackHead(nn.Module):
    """DPT feature extractor at half resolution feeding the tracker."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.iters = cfg.track_iters
        self.feature_extractor = DPTHead(
            2 * cfg.embed_dim, cfg.patch_size, cfg.dpt_layers, cfg.dpt_out_channels,
            cfg.track_features, pos_embed=False, feature_only=True, down_ratio=2,
            frames_chunk_size=cfg.frames_chunk_size,
        )
        self.tracker = Tracker(cfg)

    def forward(self, tokens: list[Tensor | None], images: Tensor, patch_start_idx: int,
                query_points: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        fmaps = self.feature_extractor(tokens, images, patch_start_idx)
        return self.tracker(query_points, fmaps, self.iters)  # type: ignore[arg-type]
