#!/usr/bin/env bash
# Compiles every CUDA source for the GPUs we target, so kernels that do not compile fail CI on
# machines without a GPU. The addon build (cmake-js) compiles them too when a toolkit is found.
set -euo pipefail
cd "$(dirname "$0")"
shopt -s nullglob
srcs=(*.cu)
[[ ${#srcs[@]} -eq 0 ]] && { echo "cuda: no sources"; exit 0; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for f in "${srcs[@]}"; do
  nvcc -std=c++17 -O2 -I../native/include -I. \
    -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_89,code=sm_89 \
    -gencode=arch=compute_90a,code=sm_90a -c "$f" -o "$out/${f%.cu}.o"
  echo "cuda: compiled $f"
done
