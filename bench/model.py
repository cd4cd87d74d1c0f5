"""Benchmark of the VGGT-architecture model: time and peak memory of forward and training steps.

Run: ``python bench/model.py [--configs vggt-tiny vggt-small] [--frames 2 4 8] [--size 112]
[--methods full lora reduced]``

For every config and frame count it prints the median forward time (eval, no grad), the
median forward+backward time (train mode, the loss touches every head) and the peak memory
of one forward+backward step, each with gradient checkpointing off and on; the ratio column
is checkpointing / plain (what the memory saving costs in time).

CPU memory is the peak resident set during the first training step after building the model
minus the resident set just before it (activations, gradients, one-time kernel buffers),
polled from /proc/self/statm every 0.5 ms. Every configuration runs in a fresh subprocess, so an
earlier, larger step cannot hide the peak, with glibc told to mmap blocks from 64 KiB so
freed tensors leave the resident set. On CUDA it is
``torch.cuda.max_memory_allocated`` over the allocation before the step; with CUDA present
``vggt-1b`` at 518 px and ``--cuda-frames`` (8 and 16) is measured too (bf16 autocast, as
VGGT trains), for full fine-tuning, LoRA r 16 and the reduced adapter at D 64.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch

from attrsub.model import CONFIGS, build


def _step_loss(out: dict[str, object]) -> torch.Tensor:
    """A scalar touching every head's output, so backward runs through the whole model."""
    terms = [v.float().mean() for k, v in out.items() if isinstance(v, torch.Tensor)]
    return torch.stack(terms).sum()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class _RssSampler:
    """Polls the current resident set every 0.5 ms in a thread (torch ops release the GIL)."""

    def __init__(self) -> None:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.0005):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_time(fn: object, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# What a training step trains: every weight but the patch encoder, LoRA r 16, or the
# reduced adapter at D 64 (random orthonormal U, V: the same compute as mined bases).
METHODS = {"full": ("full", 0), "lora": ("lora", 16), "reduced": ("random", 64)}


def measure(name: str, frames: int, size: int, checkpointing: bool, repeats: int,
            device: str, method: str = "full") -> dict[str, float]:
    """Peak memory of the first training step, then median forward and training-step times.

    The memory step comes first, before any warm-up: freed blocks that the C allocator keeps
    would otherwise be reused and hide the step's growth of the resident set.
    """
    from attrsub.methods import prepare

    torch.manual_seed(0)
    model = build(name, device=device, gradient_checkpointing=checkpointing)
    kind, rank = METHODS[method]
    model, _ = prepare(kind, model, rank=max(rank, 1))
    model.to(device)
    images = torch.rand(1, frames, 3, size, size, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")

    def train_step() -> None:
        model.train()
        with autocast:
            loss = _step_loss(model(images))
        loss.backward()
        model.zero_grad(set_to_none=True)

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model(images)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = _rss_bytes()
        with _RssSampler() as sampler:
            train_step()
        peak_mb = (sampler.peak - base) / 2**20
    forward()  # warm-up of the inference path
    return {"fwd_s": _median_time(forward, repeats, device),
            "train_s": _median_time(train_step, repeats, device), "peak_mb": peak_mb}


def _in_subprocess(args: list[str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--one", *args]
    # Blocks of 64 KiB and up are mmap'd and unmapped on free, so the resident set follows
    # live tensors instead of glibc's retained heap.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _params(name: str) -> str:
    count = sum(p.numel() for p in build(name, device="meta").parameters())
    with_track = sum(p.numel() for p in build(name, device="meta", track_head=True).parameters())
    return f"{name:11s} {count / 1e6:9.2f} M  (with track head {with_track / 1e6:.2f} M)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["vggt-tiny", "vggt-small"],
                        choices=sorted(CONFIGS))
    parser.add_argument("--frames", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--size", type=int, default=112, help="square image side, pixels")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["full"], choices=sorted(METHODS),
                        help="what the training step trains (CUDA runs all three)")
    parser.add_argument("--cuda-frames", nargs="+", type=int, default=[8, 16],
                        help="frames of the vggt-1b runs at 518 px on CUDA")
    parser.add_argument("--one", nargs=7, metavar=("NAME", "FRAMES", "SIZE", "CKPT", "REPEATS",
                                                   "DEVICE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        name, frames, size, ckpt, repeats, device, method = args.one
        result = measure(name, int(frames), int(size), ckpt == "1", int(repeats), device,
                         method)
        print(json.dumps(result))
        return

    print("parameters")
    for name in CONFIGS:
        print("  " + _params(name))
    runs = [(name, frames, args.size, "cpu", m) for name in args.configs
            for frames in args.frames for m in args.methods]
    if torch.cuda.is_available():
        runs += [("vggt-1b", frames, 518, "cuda", m) for frames in args.cuda_frames
                 for m in sorted(METHODS)]
    print(f"\nload average (1 min) at the start: {os.getloadavg()[0]:.2f}")
    print(f"torch {torch.__version__}, {args.threads} CPU threads, batch 1, median of "
          f"{args.repeats}; ckpt = gradient checkpointing on; ratio = ckpt / plain")
    header = (f"{'config':11s} {'dev':4s} {'px':>4s} {'S':>2s} {'trains':>7s} {'fwd s':>7s} "
              f"{'train s':>8s} "
              f"{'peak MB':>8s} | {'ckpt train s':>12s} {'ckpt MB':>8s} | {'time x':>6s} "
              f"{'mem x':>6s}")
    print(header)
    print("-" * len(header))
    for name, frames, size, device, method in runs:
        plain, ckpt = (_in_subprocess([name, str(frames), str(size), flag, str(args.repeats),
                                       device, method]) for flag in ("0", "1"))
        print(f"{name:11s} {device:4s} {size:4d} {frames:2d} {method:>7s} {plain['fwd_s']:7.3f} "
              f"{plain['train_s']:8.3f} {plain['peak_mb']:8.1f} | {ckpt['train_s']:12.3f} "
              f"{ckpt['peak_mb']:8.1f} | {ckpt['train_s'] / plain['train_s']:6.2f} "
              f"{_ratio(ckpt['peak_mb'], plain['peak_mb'])}", flush=True)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          f"(other processes inflate CPU times)")


def _ratio(num: float, den: float) -> str:
    return f"{num / den:6.2f}" if den >= 1.0 else "   n/a"


if __name__ == "__main__":
    main()
