"""Benchmarks of the subspace machinery at VGGT-1B shapes.

Section "extraction": factored IRLS extraction (``attrsub.subspace.extract.extract``) versus the
dense reference (``extract_dense``) on the 192 aggregator weight matrices of VGGT-1B
(24 frame + 24 global blocks x attn.qkv, attn.proj, mlp.fc1, mlp.fc2), k adapters of rank r
with random seeded factors. The factored path runs on every layer; the dense path, which
needs a full SVD of a d_out x d_in matrix per IRLS iteration, runs on one layer of each of
the four shapes and is extrapolated to all 192 (each shape occurs 48 times); the output says
so. Agreement is measured on those layers, on the float32 results both return: singular
values and IRLS weights (relative), and the rank-d' shared update U S V^T (relative
Frobenius error).

Section "training": one training step (forward, backward, AdamW step) of the reduced
adapter (frozen U, V of width D, trainable D x D middle matrix M; random orthonormal bases,
as the step cost does not depend on their values) versus PEFT LoRA of rank r = D on the same
32 or 64 aggregator linears, for vggt-tiny and vggt-small on 4 frames at 112 px. Each
configuration runs in a fresh process, so its peak resident memory (``ru_maxrss``, or
``torch.cuda.max_memory_allocated`` on a GPU) is its own; the step time is the median of
``--steps`` steps after two warm-up steps. The ratio column is reduced / LoRA (target
<= 1.05).

Run from the repository root: ``python -m bench.subspace [--threads 1] [--repeats 3]``
(``--section extraction|training|all``).
``main`` prints one table per section; further sections (e.g. training-step time of the
reduced adapter versus LoRA) add a ``bench_*`` function returning rows and a call in ``main``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import torch

from attrsub.adapters.update import Update
from attrsub.subspace.extract import ExtractConfig, LayerSubspace, extract, extract_dense

SHAPES = {
    "attn.qkv": (3072, 1024),
    "attn.proj": (1024, 1024),
    "mlp.fc1": (4096, 1024),
    "mlp.fc2": (1024, 4096),
}
BLOCKS = ("frame_blocks", "global_blocks")
DEPTH = 24


def vggt_layers() -> dict[str, tuple[int, int]]:
    """VGGT-1B aggregator weight names -> (d_out, d_in): 192 matrices."""
    return {
        f"aggregator.{kind}.{i}.{mod}": shape
        for kind in BLOCKS
        for i in range(DEPTH)
        for mod, shape in SHAPES.items()
    }


def random_updates(
    layers: dict[str, tuple[int, int]], k: int, r: int, seed: int
) -> dict[str, list[Update]]:
    """k random rank-r LoRA-like updates per layer (lora_B-sized factors small, as in training)."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: [
            Update(
                0.01 * torch.randn(d_out, r, generator=g),
                torch.randn(d_in, r, generator=g) / d_in**0.5,
            )
            for _ in range(k)
        ]
        for name, (d_out, d_in) in layers.items()
    }


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def disagreement(fac: LayerSubspace, den: LayerSubspace) -> dict[str, float]:
    """Relative differences between a factored and a dense extraction of one layer."""
    top = float(den.spectrum[0])
    rec_f, rec_d = fac.update().dense(), den.update().dense()
    return {
        "spectrum": float((fac.spectrum - den.spectrum).abs().max()) / top,
        "weights": float(((fac.weights - den.weights).abs() / den.weights).max()),
        "update": float(torch.linalg.matrix_norm(rec_f - rec_d) / torch.linalg.matrix_norm(rec_d)),
        "rank": float(fac.rank != den.rank),
    }


def bench_extraction(
    k: int = 8,
    r: int = 16,
    seed: int = 0,
    repeats: int = 3,
    dense_repeats: int = 1,
    cfg: ExtractConfig | None = None,
) -> list[dict[str, object]]:
    """Rows of the extraction table: factored (all layers), dense (subset, extrapolated)."""
    cfg = cfg or ExtractConfig()
    layers = vggt_layers()
    updates = random_updates(layers, k, r, seed)
    fac_time = _median_time(lambda: [extract(u, cfg) for u in updates.values()], repeats)

    subset = [next(n for n in layers if n.endswith(mod)) for mod in SHAPES]
    per_shape = len(layers) // len(SHAPES)
    dense_sub = _median_time(
        lambda: [extract_dense(updates[n], cfg) for n in subset], dense_repeats
    )
    fac_sub = _median_time(lambda: [extract(updates[n], cfg) for n in subset], repeats)
    worst: dict[str, float] = {}
    iters = []
    for name in subset:
        fac, den = extract(updates[name], cfg), extract_dense(updates[name], cfg)
        iters.append(fac.iterations)
        for key, val in disagreement(fac, den).items():
            worst[key] = max(worst.get(key, 0.0), val)
    dense_total = dense_sub * per_shape
    return [
        {
            "path": "factored",
            "layers": len(layers),
            "seconds": fac_time,
            "note": f"measured on all layers, median of {repeats}",
        },
        {
            "path": "dense",
            "layers": len(layers),
            "seconds": dense_total,
            "note": f"extrapolated: {len(subset)} layers (one per shape, median of "
            f"{dense_repeats}) x {per_shape}",
        },
        {
            "path": "speed-up",
            "layers": len(layers),
            "seconds": dense_total / fac_time,
            "note": f"same-subset speed-up {dense_sub / fac_sub:.1f}x; "
            f"IRLS iterations {min(iters)}-{max(iters)}",
        },
        {
            "path": "max rel. disagreement",
            "layers": len(subset),
            "seconds": max(worst["spectrum"], worst["weights"], worst["update"]),
            "note": ", ".join(f"{key} {val:.1e}" for key, val in worst.items()),
        },
    ]


REDUCED_VS_LORA = {"reduced": "random", "lora": "lora"}


def _training_setup(
    config: str, method: str, rank: int, frames: int, size: int, device: str
) -> tuple[Callable[[], None], int]:
    """A model prepared by ``method`` and a closure running one AdamW step on a fixed batch."""
    from attrsub.methods import prepare
    from attrsub.model import build

    torch.manual_seed(0)
    dev = torch.device(device)
    model, trainable = prepare(method, build(config), rank=rank, seed=0)
    model.to(dev).train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(1, frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = images.to(dev)

    def step() -> None:
        out = model(images)
        loss = out["depth"].square().mean() + out["pose_enc"].square().mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step, trainable


def _time_child(
    config: str, rank: int, frames: int, size: int, steps: int, threads: int, device: str
) -> dict[str, float]:
    """Median step time of both methods, steps interleaved so load changes hit both alike."""
    torch.set_num_threads(threads)
    fns = {
        name: _training_setup(config, method, rank, frames, size, device)[0]
        for name, method in REDUCED_VS_LORA.items()
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(steps + 2):
        for name, fn in fns.items():
            t = _median_time(fn, 1)
            if i >= 2:  # two warm-up steps
                times[name].append(t)
    return {name: statistics.median(v) for name, v in times.items()}


def _peak_child(
    config: str, method: str, rank: int, frames: int, size: int, threads: int, device: str
) -> tuple[float, int]:
    """Peak memory (MiB) of a fresh process training ``method`` for three steps."""
    torch.set_num_threads(threads)
    step, trainable = _training_setup(config, method, rank, frames, size, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step()
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, trainable
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, trainable


def _in_fresh_process(fn: Callable[..., object], *args: object) -> object:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def bench_training(
    configs: Sequence[str] = ("vggt-tiny", "vggt-small"),
    rank: int = 16,
    frames: int = 4,
    size: int = 112,
    steps: int = 7,
    threads: int = 1,
    device: str = "cpu",
) -> list[dict[str, object]]:
    """Rows of the training table: reduced (D = rank) versus LoRA (r = rank) per config."""
    rows: list[dict[str, object]] = []
    for config in configs:
        times = _in_fresh_process(_time_child, config, rank, frames, size, steps, threads, device)
        res = {}
        for name, method in REDUCED_VS_LORA.items():
            peak, trainable = _in_fresh_process(
                _peak_child, config, method, rank, frames, size, threads, device
            )
            res[name] = {"step_s": times[name], "peak_mib": peak, "trainable": trainable}
            rows.append({"model": config, "method": name, "rank": rank, **res[name], "note": ""})
        red, lora = res["reduced"], res["lora"]
        rows.append({
            "model": config, "method": "ratio", "rank": rank,
            "step_s": red["step_s"] / lora["step_s"],
            "peak_mib": red["peak_mib"] / lora["peak_mib"],
            "trainable": red["trainable"] / lora["trainable"],
            "note": "reduced / lora (target step_s <= 1.05)",
        })
    return rows


def print_table(title: str, rows: Sequence[dict[str, object]]) -> None:
    """A plain-text table: one line per row, columns in the first row's key order."""
    print(f"\n## {title}")
    keys = list(rows[0])
    cells = [[_fmt(row[key]) for key in keys] for row in rows]
    widths = [max(len(key), *(len(c[i]) for c in cells)) for i, key in enumerate(keys)]
    print("  ".join(key.ljust(w) for key, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(val.ljust(w) for val, w in zip(c, widths, strict=True)))


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="adapters per layer")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank of each adapter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timing runs (median)")
    parser.add_argument("--dense-repeats", type=int, default=1, help="dense timing runs")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: the small core SVDs only lose from spinning threads on a "
        "shared box; both paths use the same setting)",
    )
    parser.add_argument("--section", choices=("all", "extraction", "training"), default="all")
    parser.add_argument("--steps", type=int, default=7, help="timed training steps (median)")
    parser.add_argument("--device", default="cpu", help="training section: cpu or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ExtractConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {cfg}")
    if args.section in ("all", "extraction"):
        rows = bench_extraction(args.k, args.r, args.seed, args.repeats, args.dense_repeats, cfg)
        print_table(f"extraction: k={args.k} adapters, r={args.r}, VGGT-1B aggregator", rows)
    if args.section in ("all", "training"):
        rows = bench_training(rank=args.r, steps=args.steps, threads=args.threads,
                              device=args.device)
        print_table(
            f"training step: reduced (D={args.r}) vs LoRA (r={args.r}), 4 frames, 112 px, "
            f"{args.device}, median of {args.steps}",
            rows,
        )


if __name__ == "__main__":
    main()
