"""Model configurations: one frozen dataclass, validated on construction, and the named sizes.

Field defaults are VGGT-1B's released architecture, so ``vggt-1b`` is the dataclass with
nothing changed and the smaller configs list only what they shrink.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from attrsub.errors import ConfigError
from attrsub.size import PATCH_SIZE


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and head switches of a VGGT-style model (defaults: VGGT-1B)."""

    name: str = "vggt-1b"
    img_size: int = 518
    patch_size: int = PATCH_SIZE
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_embed_depth: int = 24
    patch_embed_heads: int = 16
    rope_freq: float = 100.0
    init_values: float = 0.01
    camera_trunk_depth: int = 4
    camera_heads: int = 16
    camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    dpt_head_hidden: int = 32
    frames_chunk_size: int = 8
    track_features: int = 128
    track_iters: int = 4
    track_hidden: int = 384
    track_heads: int = 8
    track_depth: int = 6
    track_virtual_tracks: int = 64
    track_corr_levels: int = 7
    track_corr_radius: int = 4
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True
    enable_track: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _check_positive(self, (
            "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
            "patch_embed_depth", "patch_embed_heads", "rope_freq", "init_values",
            "camera_trunk_depth", "camera_heads", "camera_iterations", "dpt_features",
            "dpt_head_hidden", "frames_chunk_size", "track_features", "track_iters",
            "track_hidden", "track_heads", "track_depth", "track_virtual_tracks",
            "track_corr_levels", "track_corr_radius",
        ))
        if self.num_register_tokens < 0:
            raise ConfigError(f"{self.name}: num_register_tokens must be >= 0, "
                              f"got {self.num_register_tokens}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"{self.name}: img_size {self.img_size} is not a multiple of "
                              f"patch_size {self.patch_size}")
        _check_divides(self, "embed_dim", "num_heads")
        _check_divides(self, "embed_dim", "patch_embed_heads")
        if (self.embed_dim // self.num_heads) % 4:
            raise ConfigError(f"{self.name}: 2D RoPE needs a head dim divisible by 4, got "
                              f"{self.embed_dim // self.num_heads}")
        if (2 * self.embed_dim) % self.camera_heads:
            raise ConfigError(f"{self.name}: camera head width {2 * self.embed_dim} is not "
                              f"divisible by camera_heads {self.camera_heads}")
        _check_divides(self, "track_hidden", "track_heads")
        if len(self.dpt_out_channels) != 4 or len(self.dpt_layers) != 4:
            raise ConfigError(f"{self.name}: DPT needs exactly 4 dpt_out_channels and 4 "
                              f"dpt_layers, got {self.dpt_out_channels} and {self.dpt_layers}")
        bad = [i for i in self.dpt_layers if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"{self.name}: dpt_layers {bad} outside the {self.depth} "
                              f"aggregator blocks (valid 0..{self.depth - 1})")
        odd = [c for c in (*self.dpt_out_channels, self.dpt_features) if c <= 0 or c % 4]
        if odd:
            raise ConfigError(f"{self.name}: DPT channel counts must be positive multiples of 4 "
                              f"(sin-cos position embedding), got {odd}")
        if self.track_features % 4:
            raise ConfigError(f"{self.name}: track_features must be a multiple of 4, "
                              f"got {self.track_features}")

    @property
    def head_names(self) -> tuple[str, ...]:
        """State-dict prefixes of the heads this config builds."""
        flags = {"camera_head": self.enable_camera, "depth_head": self.enable_depth,
                 "point_head": self.enable_point, "track_head": self.enable_track}
        return tuple(name for name, on in flags.items() if on)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with fields changed; unknown field names raise ConfigError."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; valid: {sorted(fields)}")
        return dataclasses.replace(self, **overrides)


def _check_positive(cfg: ModelConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{cfg.name}: {name} must be a positive number, got {value!r}")


def _check_divides(cfg: ModelConfig, total: str, part: str) -> None:
    if getattr(cfg, total) % getattr(cfg, part):
        raise ConfigError(f"{cfg.name}: {total}={getattr(cfg, total)} is not divisible by "
                          f"{part}={getattr(cfg, part)}")


CONFIGS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        ModelConfig(name="vggt-1b"),
        ModelConfig(
            name="vggt-small", img_size=224, embed_dim=256, depth=8, num_heads=4,
            patch_embed_depth=6, patch_embed_heads=4, camera_trunk_depth=2, camera_heads=8,
            dpt_features=128, dpt_out_channels=(64, 128, 256, 256), dpt_layers=(1, 3, 5, 7),
            track_features=64, track_hidden=192, track_depth=3, track_virtual_tracks=32,
            track_corr_levels=4,
        ),
        ModelConfig(
            name="vggt-tiny", img_size=112, embed_dim=64, depth=4, num_heads=4,
            patch_embed_depth=2, patch_embed_heads=4, camera_trunk_depth=1, camera_heads=4,
            dpt_features=32, dpt_out_channels=(16, 32, 64, 64), dpt_layers=(0, 1, 2, 3),
            dpt_head_hidden=16, track_features=32, track_hidden=64, track_heads=4,
            track_depth=2, track_virtual_tracks=16, track_corr_levels=3, track_corr_radius=2,
        ),
    )
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The named config with optional field overrides; unknown names raise ConfigError."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown model config {name!r}; valid names: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]
