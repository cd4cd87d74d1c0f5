"""The VGGT model: aggregator plus the heads a config enables."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn

from attrsub.errors import ConfigError
from attrsub.model.aggregator import Aggregator
from attrsub.model.config import ModelConfig
from attrsub.model.heads import CameraHead, DPTHead
from attrsub.model.track import TrackHead


class VGGT(nn.Module):
    """Visual Geometry Grounded Transformer with VGGT's module names.

    ``model(images)`` takes [B, S, 3, H, W] (or [S, 3, H, W]) in [0, 1], H and W multiples
    of the patch size, and returns a dict with ``pose_enc`` [B, S, 9], ``pose_enc_list``,
    ``depth`` [B, S, H, W, 1], ``depth_conf`` [B, S, H, W], ``world_points`` [B, S, H, W, 3],
    ``world_points_conf`` [B, S, H, W] for the enabled heads, plus ``track`` [B, S, N, 2],
    ``vis`` and ``conf`` [B, S, N] when the track head is on and query points are given.
    ``heads`` (a subset of HEADS) runs only those of the enabled heads, as the paper's
    downstream runs keep only the camera and depth heads: the others cost time and feed
    nothing that is trained or measured.
    """

    HEADS = ("camera", "depth", "point")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        dim_in = 2 * cfg.embed_dim
        self.aggregator = Aggregator(cfg)
        self.camera_head = (CameraHead(dim_in, cfg.camera_trunk_depth, cfg.camera_heads,
                                       cfg.camera_iterations, cfg.mlp_ratio)
                            if cfg.enable_camera else None)

        def dpt(output_dim: int, activation: str) -> DPTHead:
            return DPTHead(dim_in, cfg.patch_size, cfg.dpt_layers, cfg.dpt_out_channels,
                           cfg.dpt_features, output_dim, activation, cfg.dpt_head_hidden,
                           frames_chunk_size=cfg.frames_chunk_size)

        self.point_head = dpt(4, "inv_log") if cfg.enable_point else None
        self.depth_head = dpt(2, "exp") if cfg.enable_depth else None
        self.track_head = TrackHead(cfg) if cfg.enable_track else None

    def _kept_blocks(self, tracking: bool, heads: frozenset[str]) -> frozenset[int]:
        keep = set()
        if "camera" in heads:
            keep.add(self.config.depth - 1)
        if "depth" in heads or "point" in heads or tracking:
            keep.update(self.config.dpt_layers)
        return frozenset(keep)

    def _heads(self, heads: Collection[str] | None) -> frozenset[str]:
        enabled = {"camera": self.camera_head, "depth": self.depth_head,
                   "point": self.point_head}
        if heads is None:
            return frozenset(k for k, h in enabled.items() if h is not None)
        bad = sorted(set(heads) - set(self.HEADS))
        if bad or isinstance(heads, str):
            raise ConfigError(f"unknown head(s) {bad or heads!r}; valid: {self.HEADS}")
        return frozenset(k for k in heads if enabled[k] is not None)

    def check_inputs(self, images: Tensor, query_points: Tensor | None = None) -> Tensor:
        """Validate shapes before any work; returns images with a batch dimension."""
        if not isinstance(images, Tensor) or not images.is_floating_point():
            raise ConfigError("images must be a floating-point tensor in [0, 1]")
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ConfigError(f"images must be [B, S, 3, H, W] or [S, 3, H, W], got "
                              f"{tuple(images.shape)}")
        batch, frames, _, height, width = images.shape
        patch = self.config.patch_size
        if batch < 1 or frames < 1 or height < patch or width < patch:
            raise ConfigError(f"images {tuple(images.shape)} need B, S >= 1 and H, W >= {patch}")
        if height % patch or width % patch:
            raise ConfigError(f"image size {height}x{width} is not a multiple of the patch size "
                              f"{patch}; resize or crop to e.g. {height // patch * patch}x"
                              f"{width // patch * patch}")
        if query_points is not None and (
                query_points.dim() not in (2, 3) or query_points.shape[-1] != 2
                or (query_points.dim() == 3 and query_points.shape[0] != batch)):
            raise ConfigError(f"query_points must be [N, 2] or [{batch}, N, 2], got "
                              f"{tuple(query_points.shape)}")
        return images

    def forward(self, images: Tensor, query_points: Tensor | None = None,
                heads: Collection[str] | None = None) -> dict[str, object]:
        images = self.check_inputs(images, query_points)
        tracking = self.track_head is not None and query_points is not None
        run = self._heads(heads)
        tokens = self.aggregator(images, keep=self._kept_blocks(tracking, run))
        start = self.aggregator.patch_start_idx
        out: dict[str, object] = {}
        # Heads run in the parameters' dtype even under autocast: exp/expm1 overflow in half.
        dtype = self.aggregator.camera_token.dtype
        with torch.autocast(device_type=images.device.type, enabled=False):
            tokens = [t.to(dtype) if t is not None else None for t in tokens]
            images = images.to(dtype)
            if self.camera_head is not None and "camera" in run:
                poses = self.camera_head(tokens[-1])  # type: ignore[arg-type]
                out["pose_enc"] = poses[-1]
                out["pose_enc_list"] = poses
            if self.depth_head is not None and "depth" in run:
                out["depth"], out["depth_conf"] = self.depth_head(tokens, images, start)
            if self.point_head is not None and "point" in run:
                out["world_points"], out["world_points_conf"] = self.point_head(
                    tokens, images, start)
            if tracking:
                points = query_points if query_points.dim() == 3 else query_points[None]  # type: ignore[union-attr]
                tracks, vis, conf = self.track_head(tokens, images, start, points.to(dtype))  # type: ignore[misc]
                out["track"], out["vis"], out["conf"] = tracks[-1], vis, conf
        return out
