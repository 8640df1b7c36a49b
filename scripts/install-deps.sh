#!/usr/bin/env bash
# Installs every build and test dependency of perceiver.cpp from Debian's archive. Idempotent.
# Usage: sudo bash scripts/install-deps.sh        (runs apt-get update first)
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  nlohmann-json3-dev libcli11-dev          # JSON, command line
  libzip-dev zlib1g-dev libdeflate-dev      # pytorch_model.bin (zip; libdeflate: fast CRC-32)
  libjpeg62-turbo-dev libpng-dev libwebp-dev libexif-dev   # image codecs, the ones Pillow uses
  libcurl4-openssl-dev libssl-dev           # hub downloads, sha256
  libdnnl-dev ocl-icd-opencl-dev            # oneDNN GEMMs (its CMake config needs OpenCL headers)
  libgtest-dev libgmock-dev libbenchmark-dev  # tests, micro-benchmarks
  clang-14 libclang-rt-14-dev libomp-14-dev   # fuzzing (libFuzzer; OpenMP for the clang configure)
  python3 python3-numpy                     # the hub stand-in server used by tests
  python3-dev pybind11-dev python3-pytest python3-pil   # the Python module and its tests
  libcpp-httplib-dev                        # perceiver serve (HTTP server)
  dataset-fashion-mnist                     # real-data accuracy test
  python3-torch libopenblas0-pthread        # bench/side_by_side.py's PyTorch, on OpenBLAS (not reference BLAS)
  python3-onnx                              # bench/ort_quantize.py (ONNX Runtime's int8 rewrite of the graph)
)
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
echo "install-deps: ok"
