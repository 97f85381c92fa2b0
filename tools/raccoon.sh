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

# Three training runs of each model (seeds 0..2 in OUT/M/seed_k, two at a time, one thread
# each): the comparison's intervals then cover the training runs as well as the 40 test images.
runs="${RUNS:-3}"
models=()
for m in R X; do
    config="configs/raccoon/faster_rcnn_${m}_26_scratch_raccoon.yaml"
    start=$(date +%s)
    "$py" tools/train_net.py --config-file "$config" --seed-runs "$runs" --parallel 2 \
        "${register[@]}" OUTPUT_DIR "$out/$m"
    echo "raccoon: training $runs runs of $m took $(( $(date +%s) - start )) s" | tee -a "$out/times.txt"
    for k in $(seq 0 $((runs - 1))); do
        models+=(--model "$m-26=$config:$out/$m/seed_$k/model_final.pth")
    done
done
"$py" tools/compare_backbones.py "${models[@]}" --coco-json "$out/raccoon_test.json" \
    --image-root "$src/images" --out "$out/comparison"
