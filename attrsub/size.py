"""Image sizes the ViT accepts: positive multiples of its patch size, checked once, here."""

from __future__ import annotations

from attrsub.errors import ConfigError

PATCH_SIZE = 14


def check_size(size: object, what: str = "image size") -> int:
    """Return ``size`` if it is a positive multiple of the patch size, else raise ConfigError."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % PATCH_SIZE:
        raise ConfigError(
            f"{what} {size!r} is not a positive multiple of the patch size {PATCH_SIZE} "
            f"(valid: 56, 112, 224, 518, ...)"
        )
    return size
