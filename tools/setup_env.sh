#!/usr/bin/env bash
# One-command set-up: .venv/ with torch + torchvision (pinned in constraints.txt), detectron2, and
# this project in editable mode with its dev extras. Idempotent: a second run checks a stamp and
# an import, and returns in seconds.
#
# detectron2 is taken, in this order:
#   1. a detectron2 that already imports in .venv (kept as it is);
#   2. --detectron2-src DIR (or $DETECTRON2_SRC): a source checkout, built with its compiled ops;
#   3. by default, the pure-Python wheel that tools/build_detectron2_wheel.py builds once from the
#      PyPI sdist pb1-detectron2==0.6 into .cache/wheels/ (no compiled ops, see that script).
#
# Usage: tools/setup_env.sh [--detectron2-src DIR] [--python PYTHON]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

d2_src="${DETECTRON2_SRC:-}"
python="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --detectron2-src) d2_src="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "setup_env.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

venv="$root/.venv"
py="$venv/bin/python"
stamp="$venv/.resnext-det-setup"
# What the set-up depends on: a change to any of these re-runs the installs.
want="$(cat constraints.txt pyproject.toml tools/setup_env.sh tools/build_detectron2_wheel.py | sha256sum | cut -d' ' -f1) ${d2_src}"
check_imports="import resnext_det, detectron2, detectron2.layers, torchvision, pycocotools, fvcore, cv2"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$py" -c "$check_imports" 2>/dev/null; then
    echo "setup_env: .venv is up to date"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$py" ]]; then
    echo "setup_env: creating .venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
pip=("$py" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip>=23" -c constraints.txt

echo "setup_env: torch + torchvision (constraints.txt)"
"${pip[@]}" install -q -c constraints.txt torch torchvision "setuptools<81" wheel

# A detectron2 of ours (version 0.6+pb1nocsrc*) older than the builder's is replaced; any other
# working detectron2 is kept.
ours="$("$py" tools/build_detectron2_wheel.py --print-version)"
installed="$("$py" -c 'import importlib.metadata as m; print(m.version("detectron2"))' 2>/dev/null || true)"
if [[ -n "$d2_src" ]]; then
    echo "setup_env: detectron2 from source $d2_src (with compiled ops)"
    "${pip[@]}" install -q --no-build-isolation -c constraints.txt "$d2_src"
elif [[ "$installed" != "$ours" && "$installed" == 0.6+pb1nocsrc* ]]; then
    echo "setup_env: replacing detectron2 $installed by $ours"
    wheel="$("$py" tools/build_detectron2_wheel.py --out .cache/wheels | tail -n 1)"
    "${pip[@]}" install -q --force-reinstall --no-deps "$wheel"
    "${pip[@]}" install -q -c constraints.txt "$wheel"
elif "$py" -c "import detectron2, detectron2.layers" 2>/dev/null; then
    echo "setup_env: keeping the detectron2 already in .venv ($("$py" -c 'import detectron2; print(detectron2.__version__)'))"
else
    echo "setup_env: detectron2 0.6 from the pb1-detectron2 sdist (no compiled ops)"
    wheel="$("$py" tools/build_detectron2_wheel.py --out .cache/wheels | tail -n 1)"
    "${pip[@]}" install -q -c constraints.txt "$wheel"
fi

echo "setup_env: resnext-det (editable, with dev extras)"
"${pip[@]}" install -q -c constraints.txt -e ".[dev]"

"$py" -c "$check_imports"
echo "$want" > "$stamp"
echo "setup_env: done in $(( $(date +%s) - start ))s; .venv is $(du -sh "$venv" | cut -f1)"
