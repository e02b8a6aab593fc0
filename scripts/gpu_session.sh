#!/usr/bin/env bash
# The exact command sequence for a GPU session (a lent H100/H200 with no network, or a workstation).
#
# Large wheels cannot travel in one piece (at most 64 MiB of working tree per call), so they are split here and
# joined on the GPU machine while it stays warm:
#
#   here:   scripts/gpu_session.sh prepare            # downloads wheels into .whl/ and splits them into .gpu/partN/
#   device: (one call per part, carry [".gpu/partN"])  scripts/gpu_session.sh join N
#   device: (carry [".gpu/small"])                     scripts/gpu_session.sh install
#   device: (same machine, still warm)                 scripts/gpu_session.sh test
#   device:                                            scripts/gpu_session.sh bench
#
# On a workstation with network access: `pip install segflow[gpu]`, then swap ONNX Runtime for its GPU build
# (`pip uninstall -y onnxruntime && pip install onnxruntime-gpu[cuda,cudnn]`; the two packages share one folder),
# and run `test` and `bench`.
# Results go to benchmarks/results/ (and to $OUT when that variable is set, so the device tool returns them).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=/tmp/segflow-gpu           # on the device machine: joined wheels and the install target
PY=${PYTHON:-python3}
ORT_GPU=onnxruntime-gpu==1.31.1
TRT_RTX=(tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116)
PIECE=${PIECE:-60m}

# ONNX Runtime sits in $STAGE/site, apart from the image's NVIDIA pip libraries (torch's CUDA/cuDNN), so its
# preload cannot find them there: put their folders on the loader path for the steps that run it.
nvidia_libs() {
  $PY - <<'EOF'
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
libs = (p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True))
print(":".join(sorted({os.path.dirname(p) for p in libs})))
EOF
}

plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

case "${1:-help}" in
  prepare)  # here (network): fetch wheels, split the big ones into <= 60 MiB parts, one folder per device call
    ex="$(git rev-parse --git-dir)/info/exclude"; mkdir -p "$(dirname "$ex")"
    grep -qx '/.gpu/' "$ex" 2>/dev/null || echo '/.gpu/' >> "$ex"
    rm -rf .gpu && mkdir -p .gpu/dl .gpu/small
    $PY -m pip download --no-deps "${plat[@]}" -d .gpu/dl "$ORT_GPU" "${TRT_RTX[@]}"
    n=0
    for f in .gpu/dl/*; do
      if [ "$(stat -c %s "$f")" -gt $((60 << 20)) ]; then
        split -b "$PIECE" -d -a 2 "$f" ".gpu/$(basename "$f").part"
      else
        mv "$f" .gpu/small/
      fi
    done
    for p in .gpu/*.part*; do n=$((n + 1)); mkdir -p ".gpu/part$n"; mv "$p" ".gpu/part$n/"; done
    ls -l .gpu/*/ && echo "parts: $n (one device call each: carry .gpu/partN, run 'scripts/gpu_session.sh join N')"
    ;;
  join)     # device: append the carried part to the staging folder (machine must stay warm between calls)
    mkdir -p "$STAGE/parts" && cp .gpu/part"${2:?part number}"/* "$STAGE/parts/" && ls -l "$STAGE/parts"
    ;;
  install)  # device: join the parts into wheels, install everything into $STAGE/site, check imports
    mkdir -p "$STAGE/whl"
    for first in "$STAGE"/parts/*.part00; do
      whl="$STAGE/whl/$(basename "${first%.part00}")"; cat "${first%00}"?? > "$whl"
      $PY -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).testzip()" "$whl"
    done
    cp .gpu/small/*.whl "$STAGE/whl/" 2>/dev/null || true
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" "$STAGE"/whl/*.whl
    mkdir -p "$STAGE/site/tensorrt_rtx"   # the import name `tensorrt_rtx` (what the tensorrt-rtx-cu13 sdist adds)
    printf 'from tensorrt_rtx_bindings import *  # noqa\nfrom tensorrt_rtx_bindings import __version__  # noqa\n' \
        > "$STAGE/site/tensorrt_rtx/__init__.py"
    $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    LD_LIBRARY_PATH="$(nvidia_libs):${LD_LIBRARY_PATH:-}" PYTHONPATH="$STAGE/site" $PY - <<'EOF'
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
    export PYTHONPATH="$STAGE/site:${PYTHONPATH:-}" LD_LIBRARY_PATH="$(nvidia_libs):${LD_LIBRARY_PATH:-}"
    mkdir -p benchmarks/results
    set +e
    $PY -m pytest tests/runtime/test_trt_gpu.py tests/runtime/test_trt_build.py tests/runtime/test_trt_backend.py \
        tests/runtime/test_trt_api_check.py tests/runtime/test_fake_cupy_fidelity.py \
        -q -rs 2>&1 | tee benchmarks/results/gpu_tests.txt
    nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv >> benchmarks/results/gpu_tests.txt
    $PY scripts/check_trt_api.py >> benchmarks/results/gpu_tests.txt 2>&1
    set -e
    [ -n "${OUT:-}" ] && cp benchmarks/results/gpu_tests.txt "$OUT/" || true
    ;;
  bench)    # device: the GPU benchmark (paper preset), table + JSON
    export PYTHONPATH="$STAGE/site:${PYTHONPATH:-}" LD_LIBRARY_PATH="$(nvidia_libs):${LD_LIBRARY_PATH:-}" \
        PYTHONUNBUFFERED=1
    $PY benchmarks/bench_gpu.py "${@:2}" 2>&1 | tee benchmarks/results/bench_gpu.txt
    [ -n "${OUT:-}" ] && cp benchmarks/results/bench_gpu.txt benchmarks/results/bench_gpu.json "$OUT/" || true
    ;;
  *)
    sed -n '2,14p' "$0"
    ;;
esac
