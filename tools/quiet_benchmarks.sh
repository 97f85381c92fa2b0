#!/usr/bin/env bash
# Every figure of docs/benchmarks.md, on a quiet machine (nothing else running: no tests, no
# training). Each tool records the load average before and after and labels its json/md
# "NOT quiet" when the 1-minute load went above 0.5 per core. About an hour on a 2-core CPU.
#   tools/quiet_benchmarks.sh [OUT_DIR]      (default docs/benchmarks)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/benchmarks}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
uptime
# 1. Training target: Faster R-CNN X-50-32x4d-FPN, 2 images at 512x640, against detectron2 fp32.
$PY tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
    --settings detectron2 channels_last channels_last+amp cpu_train_defaults --repeats 5 \
    --output "$OUT/cpu_train_512x640"
# 2. Backbone forward at detection size, fp32-equal settings and bf16.
$PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
    --settings detectron2 torchvision channels_last optimized optimized+bf16 --repeats 5 \
    --output "$OUT/cpu_forward_800x1216"
# 2b. The same two on one thread, process CPU time (comparable with the loaded-machine tables).
$PY tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
    --settings detectron2 channels_last channels_last+amp cpu_train_defaults --repeats 5 \
    --threads 1 --clock cpu --output "$OUT/cpu_train_512x640_1thread"
$PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
    --settings detectron2 channels_last optimized optimized+bf16 --repeats 5 --threads 1 \
    --clock cpu --output "$OUT/cpu_forward_800x1216_1thread"
# 3. The demo's training: per-iteration time of each setting (2 threads, and 1 thread).
$PY tools/train_speed.py settings --rounds 5 --output "$OUT/demo_train_settings"
$PY tools/train_speed.py settings --rounds 5 --threads 1 --output "$OUT/demo_train_settings_1thread"
# 4. Two demo runs: one after another with 2 threads each vs side by side with 1 thread each.
$PY tools/train_speed.py parallel --iters 100 --rounds 3 --output "$OUT/demo_parallel"
# 5. The grouped 3x3 convolution, every way tried (one thread, process CPU time).
$PY tools/grouped_conv_bench.py --size 512 640 --threads 1 --repeats 7 --output "$OUT/cpu_grouped_conv"
uptime
