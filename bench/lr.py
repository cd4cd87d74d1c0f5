"""Learning-rate probe per fine-tuning method: where each method's per-preset rate comes from.

Low-rank methods start at a zero update (LoRA's B, the reduced adapter's M) and need far
larger rates than full fine-tuning to move at all in a short budget, so one rate for every
method makes the comparison meaningless. For each method and candidate rate this runs one
``attrsub.methods.finetune`` on a task at the preset's scale, on a probe seed that no study
uses (the studies' seeds draw other scenes), and prints the task's main metric beside the
``none`` baseline measured in the same run, then the best rate per method. The reduced
method gets its basis from a bank (``--bank``, e.g. a study's ``banks/bank-irls.safetensors``).

Run from the repository root:
``python bench/lr.py --preset quick --bank studies/quick/banks/bank-irls.safetensors``.
"""

from __future__ import annotations

import argparse
import time

GRID = {
    "full": (3e-4, 1e-3, 3e-3, 1e-2),
    "lora": (3e-3, 1e-2, 3e-2, 1e-1),
    "pissa": (3e-3, 1e-2, 3e-2, 1e-1),
    "psv": (3e-2, 1e-1, 3e-1, 1.0),
    "random": (3e-2, 1e-1, 3e-1, 1.0),
    "reduced": (3e-2, 1e-1, 3e-1, 1.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--task", default="print_attack")
    ap.add_argument("--bank", required=True, help="subspace bank for the reduced method")
    ap.add_argument("--seed", type=int, default=100, help="probe seed (not a study seed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()

    import torch

    from attrsub.methods import REGISTRY, finetune
    from attrsub.subspace.bank import load_bank
    from attrsub.tasks import get_task
    from sweeps.config import load_preset

    torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    task = get_task(args.task)
    basis = load_bank(args.bank).basis_set(list(preset.factors), preset.downstream.rank, "qr")

    def run(method: str, lr: float) -> float:
        torch.manual_seed(0)
        rank = preset.downstream.rank
        if REGISTRY[method].basis_family and not REGISTRY[method].needs_bank:
            rank *= len(preset.factors)
        row = finetune(
            args.task, method, base=preset.model, random_init=preset.random_init,
            basis=basis if REGISTRY[method].needs_bank else None, rank=rank,
            steps=preset.downstream.steps,
            lr=lr, seed=args.seed, batch_size=preset.downstream.batch_size,
            train_scenes=preset.scenes["train"], eval_scenes=preset.scenes["eval"],
            views=preset.views, size=preset.size, cache=args.cache,
        )
        return float(row["main"])

    none = run("none", 1.0)
    better = min if task.lower_is_better else max
    steps = preset.downstream.steps
    print(f"{args.task}, main = {task.main_metric}, preset {args.preset} ({steps} "
          f"steps, {preset.size} px), probe seed {args.seed}; baseline none: {none:.4f}")
    print(f"{'method':<9}{'lr':>9}{'main':>9}{'vs none':>10}{'s':>7}")
    best: dict[str, tuple[float, float]] = {}
    for method, rates in GRID.items():
        for lr in rates:
            t0 = time.perf_counter()
            value = run(method, lr)
            print(f"{method:<9}{lr:>9.0e}{value:>9.4f}{value - none:>+10.4f}"
                  f"{time.perf_counter() - t0:>7.1f}", flush=True)
            if method not in best or better(value, best[method][1]) == value:
                best[method] = (lr, value)
    print("\nbest rate per method (downstream.lr in sweeps/presets.yaml):")
    for method, (lr, value) in best.items():
        print(f"  {method}: {lr:.0e}  ({value:.4f})")


if __name__ == "__main__":
    main()
