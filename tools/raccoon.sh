#!/usr/bin/env bash
# The real-image path on the raccoon set: VOC -> COCO (its 160/40 split), train the equal-complexity
# ResNet and ResNeXt from scratch on the CPU, compare them with intervals. Results: docs/raccoon.md.
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

models=()
for m in R X; do
    config="configs/raccoon/faster_rcnn_${m}_26_scratch_raccoon.yaml"
    start=$(date +%s)
    "$py" tools/train_net.py --config-file "$config" --resume "${register[@]}" \
        OUTPUT_DIR "$out/$m"
    echo "raccoon: training $m took $(( $(date +%s) - start )) s" | tee -a "$out/times.txt"
    models+=(--model "$m-26=$config:$out/$m/model_final.pth")
done
"$py" tools/compare_backbones.py "${models[@]}" --coco-json "$out/raccoon_test.json" \
    --image-root "$src/images" --out "$out/comparison"
