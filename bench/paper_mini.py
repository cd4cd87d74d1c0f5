"""The paper's path end to end through the library, without Ray: one GPU, minutes.

    python bench/paper_mini.py --device cuda            # the paper-mini preset (VGGT-1B, 518 px)
    python bench/paper_mini.py --preset smoke --device cpu   # the same path, tiny, on a CPU

It runs what a study's trials run, in one process and in order, at the sizes of a preset
(``sweeps/presets.yaml``; ``paper-mini`` is the cluster smoke test of the same path): every
factor's adapters (``mine_adapter``), the bank (``build_bank``, the preset's extraction),
then ``finetune`` of the reduced adapter and of LoRA (each trains, then evaluates) on the
preset's first task and seed. It prints each stage's wall time and, on CUDA, its peak memory,
then one JSON line with all of it. Random-init bases (the preset's ``random_init``) need no
weights; the numbers it trains to mean nothing, the times and memory are the point.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from attrsub.methods import finetune
from attrsub.subspace.bank import save_bank
from attrsub.subspace.mine import build_bank, find_adapters, mine_adapter
from sweeps.config import load_preset


def _stage(name: str, device: str, run: Any, report: dict[str, Any]) -> Any:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    report[name] = {"wall_s": round(wall, 2), "peak_gib": None if peak is None else round(peak, 2)}
    print(f"{name:>16s}: {wall:8.1f} s" + ("" if peak is None else f"   peak {peak:6.2f} GiB"),
          flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper-mini")
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights", default=None, help="for a preset without random_init")
    p.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args(argv)
    preset = load_preset(args.preset)
    work = args.work or Path(tempfile.mkdtemp(prefix="attrsub-paper-mini-"))
    cache = work / "cache"
    base = {"base": preset.model, "weights": args.weights, "random_init": preset.random_init,
            "device": args.device}
    size = {"views": preset.views, "size": preset.size}
    report: dict[str, Any] = {"preset": preset.name, "device": args.device,
                              "card": torch.cuda.get_device_name() if args.device.startswith(
                                  "cuda") else "cpu"}
    m = preset.mining
    for factor in preset.factors:
        for group in range(preset.groups):
            torch.manual_seed(0)
            _stage(f"mine {factor} g{group}", args.device, lambda f=factor, g=group: mine_adapter(
                f, g, 0, work / "adapters" / f"{f}-g{g}", scenes=preset.scenes["mine"],
                steps=m.steps, lr=m.lr, rank=m.rank, batch_size=m.batch_size,
                cache=cache, **base, **size), report)
    bank = _stage("bank", "cpu", lambda: save_bank(build_bank(
        find_adapters([work / "adapters"]), preset.extraction, permutations=0),
        work / "bank.safetensors"), report)
    task, seed = preset.downstream.tasks[0], preset.downstream.seeds[0]
    down = preset.downstream
    common = {"steps": down.steps, "seed": seed, "batch_size": down.batch_size,
              "train_scenes": preset.scenes["train"], "eval_scenes": preset.scenes["eval"],
              "cache": cache, **base, **size}
    rows = {}
    for method in ("reduced", "lora"):
        torch.manual_seed(0)
        extra = {"bank": bank, "factors": preset.factors} if method == "reduced" else {}
        rows[method] = _stage(f"finetune {method}", args.device, lambda me=method, ex=extra:
                              finetune(task, me, rank=down.rank, lr=down.lr[me], **ex,
                                       **common), report)
        report[f"finetune {method}"].update(
            trainable=rows[method]["trainable_params"], main=rows[method].get("main"))
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
