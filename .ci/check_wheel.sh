#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv outside the checkout, and run the tiny-world sampling
# stage from there: a module or data file missing from the wheel fails here (`make check-wheel`).
#
# The wheel is installed with --no-deps; its dependencies (torch, transformers, ...) are borrowed from
# the project's .venv through a path file, which adds that site-packages directory to sys.path without
# running its .pth hooks, so the editable install of the checkout stays invisible. (Installing the
# dependencies afresh takes many minutes for the same check.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-.venv/bin/python}"
case "$python" in /*) ;; *) python="$root/$python" ;; esac  # relative to the checkout, as make passes it
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# build from a copy of the tree without build/ or *.egg-info, whose stale files would hide a missing one
mkdir "$tmp/src"
tar -C "$root" --exclude=./.venv --exclude=./build --exclude=./runs --exclude='*.egg-info' --exclude=./.git \
    -cf - . | tar -C "$tmp/src" -xf -
cd "$tmp/src"
deps="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$tmp/dist" . >/dev/null
"$python" -m venv "$tmp/venv"
venv_python="$tmp/venv/bin/python"
"$venv_python" -m pip install --quiet --no-deps --no-index "$tmp"/dist/rlvf-*.whl
echo "$deps" > "$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-rlvf-deps.pth"
cd "$tmp"  # nothing of the checkout on the path from here on
model="$("$venv_python" -c '
import pathlib, sys, rlvf
here = pathlib.Path(rlvf.__file__).parent
assert str(here).startswith(sys.prefix), f"rlvf imported from {here}, not from the installed wheel"
print(here / "tinyworld" / "model")')"
OMP_NUM_THREADS=1 "$venv_python" -m rlvf.pipeline --config "$root/configs/tinyworld-c3po.yaml" --stages sample \
    --set "model.path=$model" --set "data.dirs=[$tmp/data]" --set "output_dir=$tmp/run" \
    --set sample.categories=1 --set sample.in_scope_per_category=2 --set sample.near_scope_per_category=2 \
    --set sample.out_of_scope=2 --set "sample.baselines=[]" --set "eval.methods=[base, adapter, revised]"
test -s "$tmp/data/in_scope_train.jsonl"
echo "check-wheel: the installed wheel ran the sampling stage outside the checkout"
