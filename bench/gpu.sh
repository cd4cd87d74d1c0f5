#!/usr/bin/env bash
# The GPU figures of issue 21 in one run (about 10 minutes on one H100, the start not included):
# vggt-1b at 518 px (8 and 16 frames; forward, and forward+backward of full, LoRA r 16 and the
# reduced adapter at D 64, each with and without gradient checkpointing; peak memory), the
# renderer on CUDA at the paper's sizes, and the paper path end to end without Ray.
#   bash bench/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench-gpu}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python bench/model.py --configs vggt-tiny --frames 2 --repeats 3 --cuda-frames 8 16 \
  2>&1 | tee "$out/model.txt"
python bench/render.py --device cuda --sizes 224 518 --scenes 8 --views 8 --repeats 3 \
  --dataset paper 2>&1 | tee "$out/render.txt"
python bench/paper_mini.py --device cuda 2>&1 | tee "$out/paper-mini.txt"
