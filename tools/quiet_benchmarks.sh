#!/usr/bin/env bash
# Every figure of docs/benchmarks.md, on a quiet machine (nothing else running: no tests, no
# training). Each tool records the load average before and after and labels its json/md
# "NOT quiet" when the 1-minute load went above 0.5 per core. About 90 minutes on a 2-core CPU.
#   tools/quiet_benchmarks.sh [OUT_DIR [SECTION ...]]   (default docs/benchmarks; all sections)
#   sections: peak train forward train1 forward1 trainkeep forwardkeep trainship forwardship
#             forward1ship settings settings1 parallel grouped tasks224 compile
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/benchmarks}
shift || true
SECTIONS=${*:-peak train forward train1 forward1 trainkeep forwardkeep trainship forwardship forward1ship settings settings1 parallel grouped tasks224 compile}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

# The 1-minute load average still carries the previous section's threads for a minute or two;
# wait (up to 5 minutes) until it is under 0.35 per core: the tools' quiet limit is 0.5 per core
# at their first sample, and their own start-up (imports, model building) adds to it first.
settle() {
    local limit waited=0
    limit=$(( $(nproc) * 35 ))
    while (( $(awk '{printf "%d", $1 * 100}' /proc/loadavg) > limit && waited < 300 )); do
        sleep 10; waited=$(( waited + 10 ))
    done
}

run() {
    settle
    echo "== $1 ($(date +%H:%M:%S); $(cut -d' ' -f1-3 /proc/loadavg))"
    case $1 in
    # Is torch's matmul (the benchmarks' "of peak" divisor) the peak? Against a oneDNN 1x1 conv.
    peak) $PY tools/peak_check.py --threads 1 2 --output "$OUT/peak_check" ;;
    # Training target: Faster R-CNN X-50-32x4d-FPN, 2 images at 512x640, against detectron2 fp32.
    train) $PY tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
        --settings detectron2 channels_last channels_last+amp cpu_train_defaults --repeats 5 \
        --memory returned --output "$OUT/cpu_train_512x640" ;;
    # Backbone forward at detection size, fp32-equal settings and bf16.
    forward) $PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
        --settings detectron2 torchvision channels_last optimized optimized+bf16 --repeats 5 \
        --memory returned --output "$OUT/cpu_forward_800x1216" ;;
    # The same two on one thread, process CPU time.
    train1) $PY tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
        --settings detectron2 channels_last channels_last+amp cpu_train_defaults --repeats 5 \
        --threads 1 --clock cpu --memory returned --output "$OUT/cpu_train_512x640_1thread" ;;
    forward1) $PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
        --settings detectron2 channels_last optimized optimized+bf16 --repeats 5 --threads 1 \
        --clock cpu --memory returned --output "$OUT/cpu_forward_800x1216_1thread" ;;
    # train and forward again with freed memory kept (what the project's trainer and CPU
    # inference do), for every setting, the baseline included: in a child process started with
    # resnext_det.runtime.KEEP_FREED_MEMORY_ENV.
    trainkeep) $PY tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
        --settings detectron2 channels_last channels_last+amp cpu_train_defaults --repeats 5 \
        --memory kept --output "$OUT/cpu_train_512x640_keep" ;;
    forwardkeep) $PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
        --settings detectron2 torchvision channels_last optimized optimized+bf16 --repeats 5 \
        --memory kept --output "$OUT/cpu_forward_800x1216_keep" ;;
    # The targets as shipped: the project's paths in a child process started with its allocator
    # setting (KEEP_FREED_MEMORY_ENV: what its trainer and CPU inference run with), detectron2
    # with the allocator's default, interleaved.
    trainship) $PY tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
        --settings detectron2 cpu_train_defaults --repeats 5 --memory as-shipped \
        --output "$OUT/cpu_train_512x640_shipped" ;;
    forwardship) $PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
        --settings detectron2 optimized optimized+bf16 --repeats 5 --memory as-shipped \
        --output "$OUT/cpu_forward_800x1216_shipped" ;;
    forward1ship) $PY tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward \
        --settings detectron2 optimized optimized+bf16 --repeats 5 --threads 1 --clock cpu \
        --memory as-shipped --output "$OUT/cpu_forward_800x1216_1thread_shipped" ;;
    # The demo's training: per-iteration time of each setting (2 threads, and 1 thread).
    settings) $PY tools/train_speed.py settings --rounds 5 --output "$OUT/demo_train_settings" ;;
    settings1) $PY tools/train_speed.py settings --rounds 5 --threads 1 --settings fp32 \
        channels_last channels_last+onednn_1x1 bf16 channels_last+bf16 \
        --output "$OUT/demo_train_settings_1thread" ;;
    # Two demo runs: as the first version trained, the defaults one after another, side by side.
    parallel) $PY tools/train_speed.py parallel --iters 150 --rounds 3 \
        --output "$OUT/demo_parallel" ;;
    # The grouped 3x3 convolution, every way tried (one thread, process CPU time).
    grouped) $PY tools/grouped_conv_bench.py --size 512 640 --threads 1 --repeats 7 \
        --output "$OUT/cpu_grouped_conv" ;;
    # All four tasks on small images, R-50 against X-50-32x4d, every default setting.
    tasks224) $PY tools/benchmark.py --models R-50 X-50-32x4d --tasks forward backward train \
        inference --size 224 320 --repeats 5 --memory returned \
        --output "$OUT/cpu_all_tasks_224x320" ;;
    # torch.compile (inductor) after folding, without and with freezing, memory kept.
    compile) $PY tools/benchmark.py --models X-101-32x8d --tasks forward \
        --settings detectron2 optimized optimized+compile optimized+compile+freezing --repeats 5 \
        --memory kept --output "$OUT/cpu_compile_800x1216_keep" ;;
    *) echo "quiet_benchmarks: no section $1 (sections: peak train forward train1 forward1" \
        "trainkeep forwardkeep trainship forwardship forward1ship settings settings1 parallel" \
        "grouped tasks224 compile)" >&2; exit 2 ;;
    esac
}
for s in $SECTIONS; do run "$s"; done
echo "== done ($(date +%H:%M:%S); $(cut -d' ' -f1-3 /proc/loadavg))"
