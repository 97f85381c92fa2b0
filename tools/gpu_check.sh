#!/usr/bin/env bash
# The prepared check for a lent GPU machine (issue 18), in at most 8 minutes (GPU_CHECK_LIMIT_S):
#
#   1. install: the wheels of .whl/ (`make gpu-wheels`, built where the package index is) that
#      this Python lacks, and only those (tools/build_bundle.py --plan), with --no-deps into a
#      folder of their own put on PYTHONPATH: the machine's torch, torchvision and everything
#      else it has stay as they are;
#   2. benchmark: X-101-32x8d-FPN, a training iteration (2 images, 800x1333) and the backbone
#      forward, detectron2's built-in fp32 NCHW against the project's settings (tools/benchmark.py);
#   3. pytest -m gpu (tests/test_gpu.py), told where the benchmark's json is;
#   4. demo: the R/X demo pair trained on the GPU (a short schedule) and compared
#      (tools/train_net.py, tools/compare_backbones.py);
#   5. summary: one screen (tools/gpu_summary.py), with the achieved FLOP/s as a fraction of the
#      GPU's bf16 peak.
#
# Without CUDA (the CPU fallback) the same steps run: the install and pytest for real (every GPU
# test reports itself skipped), the benchmark and the demo at toy size on the CPU, to check their
# wiring only; the summary says the GPU parts were skipped.
#
# Writes at most 8 files into $OUT (else output/gpu_check/): gpu_check.log, benchmark.{json,md},
# comparison.{json,md}, summary.md. Each step gets at most what is left of the limit; one that
# runs out is reported as timed out and the rest still run if time is left.
#
# Usage: tools/gpu_check.sh   (PYTHON=... picks the interpreter; OUT=... the output folder)
# With the device tool: run(command="tools/gpu_check.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The machine's own Python with its torch: $PYTHON, else the first of these that imports torch.
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    for candidate in python3 python python3.12; do
        if "$candidate" -c "import torch" 2> /dev/null; then py="$candidate"; break; fi
    done
    py="${py:-python3}"
fi
export PYTHONUNBUFFERED=1
out="${OUT:-$root/output/gpu_check}"
limit="${GPU_CHECK_LIMIT_S:-480}"
demo_iters="${GPU_CHECK_DEMO_ITERS:-500}"
wheels="$root/.whl"
work="$(mktemp -d "${TMPDIR:-/tmp}/resnext-det-gpu-check.XXXXXX")"
site="$work/site"
steps="$work/steps.tsv"
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
exec > >(tee -a "$log") 2>&1
start=$(date +%s)
: > "$steps"

left() { echo $(( limit - ($(date +%s) - start) )); }

# step NAME BUDGET_S RESERVE_S CMD...: run CMD with at most BUDGET_S seconds, leaving RESERVE_S of
# the limit for the steps after it; record "NAME<TAB>status<TAB>seconds<TAB>note".
step() {
    local name="$1" budget="$2" reserve="$3"
    shift 3
    local t=$(( $(left) - reserve ))
    (( t > budget )) && t=$budget
    if (( t < 15 )); then
        printf '%s\tskipped\t0\tno time left of the %ss limit\n' "$name" "$limit" >> "$steps"
        echo "=== $name: skipped (no time left)"
        return 0
    fi
    echo "=== $name (at most ${t}s; $(left)s of ${limit}s left)"
    local s=$(date +%s)
    timeout --kill-after=10 "$t" "$@"
    local rc=$?
    local took=$(( $(date +%s) - s )) status="ok"
    (( rc == 124 || rc == 137 )) && status="timed out after ${t}s"
    (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "${NOTE:-}" >> "$steps"
    echo "=== $name: $status in ${took}s"
    return 0
}

echo "resnext-det GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), $("$py" --version 2>&1), in $root"

# ----------------------------------------------------------------------------- 1. install
export py root out work site wheels demo_iters
do_install() {
    if ! ls "$wheels"/*.whl > /dev/null 2>&1; then
        echo "no wheelhouse at $wheels: run 'make gpu-wheels' where the package index is" >&2
        return 2
    fi
    echo "wheelhouse: $(ls "$wheels"/*.whl | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
    "$py" tools/build_bundle.py --plan "$wheels" > "$work/plan.txt" || return 3
    mapfile -t todo < "$work/plan.txt"
    if (( ${#todo[@]} )); then
        local extra=()
        "$py" -m pip install --help 2>/dev/null | grep -q -- --break-system-packages \
            && extra=(--break-system-packages)
        "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps \
            --target "$site" "${extra[@]}" "${todo[@]}" || return 4
    fi
    # What the tests and tools import, and detectron2's model zoo (pkg_resources: setuptools < 81).
    PYTHONPATH="$root:$site" "$py" -c "import cv2, detectron2.engine, fvcore, pycocotools, \
tensorboard, resnext_det; from detectron2 import model_zoo; \
model_zoo.get_config_file('Base-RCNN-FPN.yaml'); from resnext_det.env import collect_env, \
format_rows; print(format_rows(collect_env()))" || return 5
}
export -f do_install
NOTE="" step install 90 300 bash -c do_install
export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
cuda="$("$py" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [[ "$cuda" == 1 ]]; then
    echo "CUDA: $("$py" -c 'import torch; print(torch.cuda.get_device_name(0))')"
else
    echo "no CUDA here: the GPU parts are skipped; benchmark and demo run at toy size on the CPU"
fi

# ----------------------------------------------------------------------------- 2. benchmark
bench=(tools/benchmark.py --no-plot --output "$out/benchmark" --warmup 2)
if [[ "$cuda" == 1 ]]; then
    bench+=(--device cuda --models X-101-32x8d --tasks train forward --size 800 1333 --batch 2
            --repeats 5 --settings detectron2 channels_last amp channels_last+amp optimized
            optimized+bf16 optimized+fp16)
    NOTE="GPU" step benchmark 180 220 "$py" "${bench[@]}"
else
    bench+=(--device cpu --models X-50-32x4d --tasks train forward --size 128 160 --batch 1
            --repeats 1 --settings detectron2 channels_last+amp optimized)
    NOTE="CPU wiring only (toy size; GPU benchmark skipped: no CUDA)" \
        step benchmark 150 200 "$py" "${bench[@]}"
fi

# ----------------------------------------------------------------------------- 3. pytest -m gpu
bench_ok=$(awk -F'\t' '$1 == "benchmark" && $2 == "ok"' "$steps")
if [[ "$cuda" == 1 && -n "$bench_ok" && -f "$out/benchmark.json" ]]; then
    export RESNEXT_DET_GPU_BENCHMARK="$out/benchmark.json"
fi
NOTE="" step pytest 240 100 "$py" -m pytest -m gpu -rs -q -p no:cacheprovider \
    --junitxml "$work/pytest.xml" tests/test_gpu.py
unset RESNEXT_DET_GPU_BENCHMARK

# ----------------------------------------------------------------------------- 4. demo pair
do_demo() {
    local data="$work/demo/data" device iters sizes=()
    if [[ "$cuda" == 1 ]]; then
        device=cuda iters=$demo_iters
    else
        device=cpu iters=8 sizes=(--num-train 16 --num-val 8)
    fi
    "$py" tools/make_synthetic_dataset.py --out "$data" "${sizes[@]}" || return 1
    local reg=(--register synthetic_train "$data/annotations/train.json" "$data/train"
               --register synthetic_val "$data/annotations/val.json" "$data/val")
    local m
    for m in R X; do
        "$py" tools/train_net.py --config-file "configs/demo/faster_rcnn_${m}_demo.yaml" "${reg[@]}" \
            OUTPUT_DIR "$work/demo/$m" MODEL.DEVICE "$device" DATASETS.TEST "()" \
            SOLVER.MAX_ITER "$iters" SOLVER.STEPS "($(( iters * 3 / 4 )), $(( iters * 9 / 10 )))" \
            SOLVER.WARMUP_ITERS "$(( iters / 20 + 1 ))" SOLVER.CHECKPOINT_PERIOD "$iters" \
            DATALOADER.NUM_WORKERS "$([[ $device == cuda ]] && echo 4 || echo 0)" || return 2
    done
    "$py" tools/compare_backbones.py --no-progress --device "$device" \
        --model "R-26=configs/demo/faster_rcnn_R_demo.yaml:$work/demo/R/model_final.pth" \
        --model "X-26=configs/demo/faster_rcnn_X_demo.yaml:$work/demo/X/model_final.pth" \
        --coco-json "$data/annotations/val.json" --image-root "$data/val" \
        --out "$work/demo/comparison" || return 3
    cp "$work/demo/comparison/comparison.md" "$work/demo/comparison/comparison.json" "$out/"
}
export -f do_demo
export cuda
if [[ "$cuda" == 1 ]]; then
    NOTE="GPU, $demo_iters iterations per model" step demo 200 15 bash -c do_demo
else
    NOTE="CPU wiring only (8 iterations, 16 images; GPU training skipped: no CUDA)" \
        step demo 200 15 bash -c do_demo
fi

# ----------------------------------------------------------------------------- 5. summary
"$py" tools/gpu_summary.py --out "$out" --steps "$steps" --junit "$work/pytest.xml" \
    --plan "$work/plan.txt" --elapsed "$(( $(date +%s) - start ))" --limit "$limit"
rm -rf "$work"
