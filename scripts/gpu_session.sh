#!/usr/bin/env bash
# The exact command sequence for a GPU session (a lent H100/H200 with no network, or a workstation).
#
# Large wheels cannot travel in one piece (at most 64 MiB of working tree per call), so they are split here and
# joined on the GPU machine while it stays warm:
#
#   here:   scripts/gpu_session.sh prepare            # downloads wheels, splits and packs them into .gpu/partN/
#   device: (carry [".gpu/part1"])    scripts/gpu_session.sh early; scripts/gpu_session.sh join 1
#   device: (one call per part, carry [".gpu/partN"])  scripts/gpu_session.sh join N   (N = 2, 3, ... last)
#   device: (carry [".gpu/small"])    scripts/gpu_session.sh install && scripts/gpu_session.sh test
#   device: (same machine, still warm)                 scripts/gpu_session.sh bench
#
# `prepare` prints the calls for this set of wheels; when the last part and .gpu/small fit one call together it
# says so, and that call runs `join LAST && install && test` (one call fewer). SKIP_RTX=1 prepare fetches
# ONNX Runtime only (TensorRT-RTX cannot run on Hopper; keep it for one session to record its own answer).
#
# The machine is released after a short idle time (30 s in the device tool), so issue the calls back to back;
# `join N` stops at once when an earlier part is gone (the machine was recycled), and `install` checks every
# wheel against the checksums `prepare` wrote. `bench` stops itself after BENCH_LIMIT seconds (default 540),
# keeping the rows it finished.
#
# On a workstation with network access: `pip install -e ".[gpu]"` in the checkout, then swap ONNX Runtime for its GPU build
# (`pip uninstall -y onnxruntime && pip install onnxruntime-gpu[cuda,cudnn]`; the two packages share one folder),
# and run `test` and `bench`.
# Results go to benchmarks/results/ (and to $OUT when that variable is set, so the device tool returns them).
set -euo pipefail
shopt -s nullglob                # a glob that matches nothing is empty (install then reports the missing wheel)
cd "$(dirname "$0")/.."
STAGE=${STAGE:-/tmp/segflow-gpu}  # on the device machine: joined wheels and the install target
PY=${PYTHON:-python3}
ORT_GPU=onnxruntime-gpu==1.31.1
TRT_RTX=(tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116)
PIECE=${PIECE:-56m}              # a part plus the working tree must stay under the 64 MiB a call carries
CARRY_LIMIT=$((64 << 20))        # what one device call carries: the working tree plus the carried folders
PYV=${PYV:-3.12}                 # the device's python (the image's /opt/torch/.venv); wheels are fetched for it

# ONNX Runtime sits in $STAGE/site, apart from the image's NVIDIA pip libraries (torch's CUDA/cuDNN), so its
# preload cannot find them there: put their folders on the loader path for the steps that run it.
# tee a step's output to benchmarks/results/NAME and, when the device tool set $OUT, to $OUT/NAME as it goes (a
# call cut at the time limit still returns what was written); `log_to NAME -a` appends
log_to() {
  local dest=(benchmarks/results/"$1") opts=()
  [ -n "${OUT:-}" ] && dest+=("$OUT/$1")
  [ -n "${2:-}" ] && opts=("$2")
  tee "${opts[@]}" "${dest[@]}"
}

# test and bench need install's packages: a machine recycled since then has lost them
require_install() {
  [ -d "$STAGE/site/onnxruntime" ] || { echo "no installed wheels on this machine (it was recycled since" \
    "'install', or install did not run): join the parts again, then run install" >&2; exit 3; }
}

nvidia_libs() {
  "$PY" - <<'EOF'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
libs = (p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True))
print(":".join(sorted({os.path.dirname(p) for p in libs})))
EOF
}

plat=(--only-binary=:all: --python-version "$PYV" --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

case "${1:-help}" in
  prepare)  # here (network): fetch wheels, split the big ones into <= 56 MiB parts, one folder per device call
    ex="$(git rev-parse --git-dir)/info/exclude"; mkdir -p "$(dirname "$ex")"
    grep -qx '/.gpu/' "$ex" 2>/dev/null || echo '/.gpu/' >> "$ex"
    rm -rf .gpu && mkdir -p .gpu/dl .gpu/small
    wheels=("$ORT_GPU"); [ -n "${SKIP_RTX:-}" ] || wheels+=("${TRT_RTX[@]}")
    "$PY" -m pip download --no-deps "${plat[@]}" -d .gpu/dl "${wheels[@]}"
    (cd .gpu/dl && sha256sum -- *.whl) > .gpu/small/SHA256SUMS   # install checks every joined wheel against it
    for f in .gpu/dl/*; do
      if [ "$(stat -c %s "$f")" -gt $((8 << 20)) ]; then
        split -b "$PIECE" -d -a 2 "$f" ".gpu/$(basename "$f").part"
      else
        mv "$f" .gpu/small/
      fi
    done
    # pack the pieces into as few folders (device calls) as fit under one piece's size: largest first, each into
    # the first folder with room (the ends of two wheels often share a folder)
    "$PY" - "$PIECE" <<'EOF'
import pathlib, re, sys
size = re.fullmatch(r"(\d+)([kKmMgG]?)", sys.argv[1])
if size is None:
    sys.exit(f"PIECE={sys.argv[1]}: give a size like 56m (bytes, or k/m/g binary units)")
cap = int(size[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[size[2].lower()]
folders = []  # [room left, [pieces]]
for piece in sorted(pathlib.Path(".gpu").glob("*.part??"), key=lambda p: -p.stat().st_size):
    slot = next((f for f in folders if f[0] >= piece.stat().st_size), None)
    if slot is None:
        folders.append(slot := [cap, []])
    slot[0] -= piece.stat().st_size
    slot[1].append(piece)
for n, (_room, pieces) in enumerate(folders, 1):
    (pathlib.Path(".gpu") / f"part{n}").mkdir()
    for piece in pieces:
        piece.rename(pathlib.Path(".gpu") / f"part{n}" / piece.name)
EOF
    n=$(find .gpu -maxdepth 1 -name 'part*' -type d | wc -l)
    ls -l .gpu/*/
    # what each call carries besides the parts: the working tree (tracked and untracked, not ignored)
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
      | awk '{s += $1} END {print s + 0}' || true)   # files deleted but still tracked are skipped
    size() { du -cb "$@" | tail -1 | cut -f1; }
    big=0; for d in .gpu/part*/; do s=$(size "$d"); [ "$s" -gt "$big" ] && big=$s; done
    [ $((tree + big)) -lt "$CARRY_LIMIT" ] || echo "warning: the working tree ($((tree >> 20)) MiB) plus the" \
      "largest part ($((big >> 20)) MiB) exceed the 64 MiB a call carries: prepare again with a smaller PIECE" >&2
    echo "parts: $n. Device calls, back to back:"
    echo "  1: carry .gpu/part1: scripts/gpu_session.sh early; scripts/gpu_session.sh join 1"
    for ((i = 2; i < n; i++)); do echo "  $i: carry .gpu/part$i: scripts/gpu_session.sh join $i"; done
    if [ $((tree + $(size ".gpu/part$n" .gpu/small))) -lt $((CARRY_LIMIT - (1 << 20))) ] && [ "$n" -gt 1 ]; then
      echo "  $n: carry .gpu/part$n and .gpu/small: scripts/gpu_session.sh join $n && scripts/gpu_session.sh" \
        "install && scripts/gpu_session.sh test"
    else
      [ "$n" -gt 1 ] && echo "  $n: carry .gpu/part$n: scripts/gpu_session.sh join $n"
      echo "  $((n + 1)): carry .gpu/small: scripts/gpu_session.sh install && scripts/gpu_session.sh test"
    fi
    echo "  then: scripts/gpu_session.sh bench"
    ;;
  early)    # device, first call: what a bare GPU machine can check with its own PyTorch and CuPy, no wheels
    mkdir -p benchmarks/results
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    set +e
    { nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv; "$PY" -c 'import cupy, torch; \
print("cupy", cupy.__version__, "NVRTC", cupy.cuda.nvrtc.getVersion(), "| torch", torch.__version__)'
      timeout -k 20 240 "$PY" -m pytest tests/runtime/test_device_sampler_torch_field.py \
        tests/runtime/test_fake_cupy_fidelity.py -q -rs
    } 2>&1 | log_to gpu_early.txt
    set -e
    ;;
  join)     # device: append the carried part to the staging folder (machine must stay warm between calls)
    k=${2:?part number}
    if [ "$k" = 1 ]; then   # the first call checks what the wheels were fetched for
      v=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
      [ "$v" = "$PYV" ] || { echo "this machine has python $v but the wheels are for $PYV:" \
        "run 'PYV=$v scripts/gpu_session.sh prepare' here first" >&2; exit 3; }
      nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || echo "no nvidia-smi here"
    fi
    for ((i = 1; i < k; i++)); do   # a recycled machine has lost the earlier parts: say so now, not at install
      [ -e "$STAGE/parts/.joined$i" ] || { echo "part $i is missing on this machine (it was recycled between calls):" \
        "start again with 'join 1'" >&2; exit 3; }
    done
    pieces=(.gpu/part"$k"/*)
    [ ${#pieces[@]} -gt 0 ] || { echo "no .gpu/part$k here: carry it with this call (carry [\".gpu/part$k\"])" >&2
      exit 3; }
    mkdir -p "$STAGE/parts"
    cp "${pieces[@]}" "$STAGE/parts/"
    touch "$STAGE/parts/.joined$k"
    ls -l "$STAGE/parts"
    ;;
  install)  # device: join the parts into wheels, install everything into $STAGE/site, check imports
    mkdir -p "$STAGE/whl"
    for first in "$STAGE"/parts/*.part00; do
      whl="$STAGE/whl/$(basename "${first%.part00}")"; cat "${first%00}"?? > "$whl"
    done
    cp .gpu/small/*.whl "$STAGE/whl/" 2>/dev/null || true
    sums="$PWD/.gpu/small/SHA256SUMS"
    [ -f "$sums" ] || { echo "no .gpu/small here: carry it with this call (carry [\".gpu/small\"])" >&2; exit 3; }
    (cd "$STAGE/whl" && sha256sum -c --strict "$sums") || {
      echo "a wheel is missing or damaged (see above): join its parts again" >&2; exit 3; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" "$STAGE"/whl/*.whl
    if [ -d "$STAGE/site/tensorrt_rtx_bindings" ]; then  # not with SKIP_RTX=1 prepare
      mkdir -p "$STAGE/site/tensorrt_rtx"   # the import name `tensorrt_rtx` (what the tensorrt-rtx-cu13 sdist adds)
      printf 'from tensorrt_rtx_bindings import *  # noqa\nfrom tensorrt_rtx_bindings import __version__  # noqa\n' \
          > "$STAGE/site/tensorrt_rtx/__init__.py"
    fi
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    LD_LIBRARY_PATH="$(nvidia_libs):${LD_LIBRARY_PATH:-}" PYTHONPATH="$STAGE/site" "$PY" - <<'EOF'
import onnxruntime as ort, cupy
print("onnxruntime", ort.__version__, ort.get_available_providers())
from segflow.runtime.backends.onnxrt import preload_cuda_libraries
print("CUDA libraries ONNX Runtime could not load:", preload_cuda_libraries() or "none")
print("cupy", cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)["name"])
try:
    print("NVRTC (CuPy's kernel compiler)", cupy.cuda.nvrtc.getVersion())
except Exception as exc:  # noqa: BLE001
    print("NVRTC unavailable (CuPy cannot compile kernels):", exc)
try:
    import tensorrt_rtx as trt; print("tensorrt_rtx", trt.__version__)
except Exception as exc:  # noqa: BLE001
    print("tensorrt_rtx unavailable:", exc)
EOF
    ;;
  test)     # device: the GPU tests, then the CPU-side TensorRT tests with the real library present
    require_install
    libs=$(nvidia_libs)
    export PYTHONPATH="$STAGE/site:${PYTHONPATH:-}" LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
    mkdir -p benchmarks/results
    set +e
    timeout -k 20 420 "$PY" -m pytest tests/runtime/test_trt_gpu.py tests/runtime/test_device_sampler_torch_field.py \
        tests/runtime/test_trt_build.py tests/runtime/test_trt_backend.py \
        tests/runtime/test_trt_api_check.py tests/runtime/test_fake_cupy_fidelity.py \
        -q -rs 2>&1 | log_to gpu_tests.txt
    nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv 2>&1 | log_to gpu_tests.txt -a
    timeout -k 10 60 "$PY" scripts/check_trt_api.py 2>&1 | log_to gpu_tests.txt -a
    timeout -k 10 120 "$PY" scripts/rtx_probe.py 2>&1 | log_to gpu_tests.txt -a   # TensorRT-RTX's own answer here
    set -e
    ;;
  bench)    # device: the GPU benchmark (paper preset), table + JSON
    require_install
    libs=$(nvidia_libs)
    export PYTHONPATH="$STAGE/site:${PYTHONPATH:-}" LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}" PYTHONUNBUFFERED=1
    # under the device's 10-minute limit; the script rewrites its JSON after every row, so a cut run keeps rows
    mkdir -p benchmarks/results
    set +e
    timeout -k 30 "${BENCH_LIMIT:-540}" "$PY" benchmarks/bench_gpu.py "${@:2}" 2>&1 | log_to bench_gpu.txt
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then  # its own stop, not the device tool's: say so, exit 0
      echo "bench stopped itself after BENCH_LIMIT=${BENCH_LIMIT:-540} s; the rows it finished are in" \
        "bench_gpu.json" | log_to bench_gpu.txt -a
      rc=0
    fi
    if [ -n "${OUT:-}" ]; then
      for f in benchmarks/results/bench_gpu.txt benchmarks/results/bench_gpu.json; do
        if [ -f "$f" ]; then cp "$f" "$OUT/"; fi
      done
    fi
    exit "$rc"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' 
    ;;
esac
