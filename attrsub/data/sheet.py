"""Contact sheets: RGB and depth of a few scenes and views, so a person can see the data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from attrsub.data.datasets import DatasetSpec, SceneDataset, render_factor_dataset
from attrsub.fsio import atomic_path
from attrsub.scenes.factors import CANONICAL, FACTORS


def contact_sheet(
    datasets: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    scenes: int = 4,
    views: int = 4,
) -> Path:
    """Write a PNG grid: one row per scene, RGB and depth side by side for each view.

    Depth is shown with a per-image colour map over valid pixels (invalid = black) so
    geometry differences between scenes are visible at a glance.
    """
    rows: list[tuple[str, SceneDataset, int]] = []
    for path in datasets:
        ds = SceneDataset(path)
        label = ds.info.get("label", Path(path).name)
        rows += [(label, ds, i) for i in range(min(scenes, len(ds)))]
    ncols = 2 * min(views, max(ds.views for _, ds, _ in rows))
    cmap = plt.get_cmap("turbo").with_extremes(bad="black")
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(1.6 * ncols, 1.7 * len(rows)), squeeze=False
    )
    for r, (label, ds, i) in enumerate(rows):
        item = ds[i]
        for v in range(ncols // 2):
            ax_rgb, ax_depth = axes[r, 2 * v], axes[r, 2 * v + 1]
            for ax in (ax_rgb, ax_depth):
                ax.set_xticks([])
                ax.set_yticks([])
            if v >= item["images"].shape[0]:
                ax_rgb.axis("off")
                ax_depth.axis("off")
                continue
            ax_rgb.imshow(item["images"][v].permute(1, 2, 0).numpy())
            depth = item["depths"][v].clone()
            valid = item["valid"][v]
            shown = depth.masked_fill(~valid, float("nan")).numpy()
            ax_depth.imshow(shown, cmap=cmap)
            if r == 0:
                ax_rgb.set_title(f"view {v} RGB", fontsize=8)
                ax_depth.set_title(f"view {v} depth", fontsize=8)
        axes[r, 0].set_ylabel(f"{label}\nscene {i}", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def family_sheet(
    out: str | os.PathLike[str],
    *,
    scenes: int = 3,
    views: int = 3,
    size: int = 112,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """One sheet of the base's world and every family's extremes: ``scenes`` rows of the
    canonical distribution, then of each factor family (group 0), rendered into the cache.

    Read it top to bottom: each family's rows differ from the canonical ones only in its
    factor (textureless and striped albedo, tiny or huge shapes, wide or narrow lenses
    and unseen paths, coloured grazing lights), the rest looking like the canonical rows.
    """
    paths = [
        render_factor_dataset(
            DatasetSpec(f, scenes=scenes, views=views, size=size, seed=seed), cache
        )
        for f in (CANONICAL, *FACTORS)
    ]
    return contact_sheet(paths, out, scenes=scenes, views=views)
