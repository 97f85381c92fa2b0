#!/usr/bin/env bash
# The real-image path on the raccoon set: VOC -> COCO (its 160/40 split), train the equal-complexity
# ResNet and ResNeXt from scratch on the CPU (RUNS=3 runs each), compare them with intervals over
# images and runs. Results: docs/raccoon.md.
# Usage: tools/raccoon.sh [RACCOON_DIR (default ../shared/data/raccoon)] [OUT (default output/raccoon)]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
src="${1:-../shared/data/raccoon}"
out="${2:-output/raccoon}"
py=.venv/bin/python
mkdir -p "$out"

for split in train test; do
    "$py" tools/voc_to_coco.py --xml-dir "$src/annotations" --image-dir "$src/images" \
        --split "$src/${split}_labels.csv" --out "$out/raccoon_$split.json"
done
register=(--register raccoon_train "$out/raccoon_train.json" "$src/images"
          --register raccoon_val "$out/raccoon_test.json" "$src/images")

# Three training runs of each model (seeds 0..2 in OUT/M/seed_k): the two models train at the same
# time, one process of one thread each, their runs one after another, so both cores stay busy to
# the end. The comparison's intervals then cover the training runs as well as the 40 test images.
runs="${RUNS:-3}"
models=()
pids=()
for m in R X; do
    config="configs/raccoon/faster_rcnn_${m}_26_scratch_raccoon.yaml"
    (
        start=$(date +%s)
        "$py" tools/train_net.py --config-file "$config" --seed-runs "$runs" \
            "${register[@]}" OUTPUT_DIR "$out/$m" CPU_TRAINING.NUM_THREADS 1 > "$out/train_$m.log" 2>&1
        echo "raccoon: training $runs runs of $m (one thread) took $(( $(date +%s) - start )) s" \
            | tee -a "$out/times.txt"
    ) &
    pids+=($!)
    for k in $(seq 0 $((runs - 1))); do
        models+=(--model "$m-26=$config:$out/$m/seed_$k/model_final.pth")
    done
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "raccoon: a training failed; see $out/train_*.log" >&2; exit 1; }
done
"$py" tools/compare_backbones.py "${models[@]}" --coco-json "$out/raccoon_test.json" \
    --image-root "$src/images" --out "$out/comparison"
