"""``real``: fine-tune on real RGB-D frames, test on held-out frames and on two stereo sources
(``attrsub.data.captures``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attrsub.data.capture_sources import require_real_data
from attrsub.data.captures import (
    CASTEL_FRAMES,
    CHESS_PAIRS,
    CaptureDataset,
    aloe_captures,
    castel_captures,
    castel_windows,
    chessboard_captures,
)
from attrsub.tasks.base import (
    LABEL_STREAM,
    PathLike,
    Task,
    TaskSize,
    check_seed,
    check_task_size,
)


@dataclass(frozen=True)
class RealTask(Task):
    """Synthetic-to-real: few-shot fine-tuning of the synthetic-pretrained model on captured
    frames (``attrsub.data.captures``; fetch them with ``attrsub fetch-real``).

    - ``train``: castel windows of ``views`` consecutive RGB-D frames (30 frames cut into
      30 // views non-overlapping windows; the remainder is dropped).
    - ``test``: held-out castel windows, disjoint from the training ones (the main metric).
      Adjacent windows of one slow sequence are alike, so this measures adapting to one
      real scene and sensor, not generalising to new scenes.
    - ``chessboard``: stereo pairs (two views each; depth only on the board) and ``aloe``:
      the Middlebury stereo pair (two views, dense depth), both never trained on.

    TaskSize maps as: ``views`` -> window length, capped at 15 so two windows exist;
    ``eval_scenes`` -> test windows (at most half of them) and chessboard pairs (at most
    13); ``train_scenes`` -> training windows (at most the rest); ``size`` -> image size.
    Splits come from a permutation of the windows (and of the pairs) seeded by ``seed``.
    Depth is scored after per-image scale-and-shift alignment (the Aloe scale rests on an
    approximate calibration, and VGGT-style models predict depth up to scale); castel poses
    are estimated (see ``attrsub.data.captures``), so its camera metrics are only indicative.
    """

    depth_align: str = "scale_shift"

    def views(self, size: TaskSize) -> int:
        return min(check_task_size(size).views, CASTEL_FRAMES // 2)

    def windows(self, seed: int, size: TaskSize) -> dict[str, list[tuple[int, ...]]]:
        """The castel frame windows of the train and test splits, deterministic from ``seed``."""
        size, seed = self.check(size), check_seed(seed)
        wins = castel_windows(self.views(size))
        order = self.stream(seed, "windows", 0, LABEL_STREAM).permutation(len(wins))
        n_test = min(size.eval_scenes, len(wins) // 2)
        n_train = min(size.train_scenes, len(wins) - n_test)
        return {
            "train": [wins[i] for i in sorted(order[n_test : n_test + n_train])],
            "test": [wins[i] for i in sorted(order[:n_test])],
        }

    def chessboard_pairs(self, seed: int, size: TaskSize) -> list[int]:
        """Indices into ``CHESS_PAIRS`` of the chessboard split."""
        size, seed = self.check(size), check_seed(seed)
        order = self.stream(seed, "chessboard", 0, LABEL_STREAM).permutation(len(CHESS_PAIRS))
        return sorted(int(i) for i in order[: min(size.eval_scenes, len(CHESS_PAIRS))])

    def require_data(self, cache: PathLike | None) -> None:
        require_real_data(cache)

    def train_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> CaptureDataset:
        size = self.check(size)
        root = require_real_data(cache)
        return CaptureDataset(castel_captures(root, self.windows(seed, size)["train"]), size.size)

    def eval_data(
        self, cache: PathLike | None, size: TaskSize, seed: int = 0, *, device: str = "cpu"
    ) -> dict[str, torch.utils.data.Dataset]:
        size = self.check(size)
        root = require_real_data(cache)
        return {
            "test": CaptureDataset(
                castel_captures(root, self.windows(seed, size)["test"]), size.size
            ),
            "chessboard": CaptureDataset(
                chessboard_captures(root, self.chessboard_pairs(seed, size)), size.size
            ),
            "aloe": CaptureDataset(aloe_captures(root), size.size),
        }
