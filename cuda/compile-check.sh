#!/usr/bin/env bash
# Compiles every CUDA source for the GPUs we target, so kernels that do not compile fail CI on
# machines without a GPU. The addon build (cmake-js) compiles them too when a toolkit is found.
# Warnings are errors. sm_120a (NVFP4 hardware) is added when this nvcc knows it. gemm_bf16.cu is
# compiled a second time with cuBLASLt when its header is found (CUBLASLT_INCLUDE=dir to point at one,
# e.g. from the nvidia-cublas wheel), since this machine's toolkit has none.
set -euo pipefail
cd "$(dirname "$0")"
shopt -s nullglob
srcs=(*.cu)
[[ ${#srcs[@]} -eq 0 ]] && { echo "cuda: no sources"; exit 0; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
archs=(-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_89,code=sm_89 -gencode=arch=compute_90a,code=sm_90a)
if nvcc --list-gpu-arch 2>/dev/null | grep -qx compute_120; then archs+=(-gencode=arch=compute_120a,code=sm_120a); fi
flags=(-std=c++17 -O2 -I../native/include -I. -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror)
for f in "${srcs[@]}"; do
  nvcc "${flags[@]}" "${archs[@]}" -c "$f" -o "$out/${f%.cu}.o"
  echo "cuda: compiled $f (${#archs[@]} architectures)"
done
inc=${CUBLASLT_INCLUDE:-}
if [[ -z $inc ]]; then
  for d in "$(dirname "$(command -v nvcc)")/../include" /usr/local/cuda/include; do [[ -f $d/cublasLt.h ]] && inc=$d && break; done
fi
if [[ -n $inc && -f gemm_bf16.cu ]]; then
  nvcc "${flags[@]}" -DSVDQ_WITH_CUBLASLT -I"$inc" -gencode=arch=compute_90a,code=sm_90a -c gemm_bf16.cu -o "$out/gemm_bf16_lt.o"
  echo "cuda: compiled gemm_bf16.cu with cuBLASLt ($inc)"
else
  echo "cuda: no cublasLt.h found; gemm_bf16.cu checked without cuBLASLt only"
fi
# The kernels' register tricks, checked on the host (no GPU): nibble unpacking and the exact d*scale fma.
nvcc -std=c++17 -O2 -I../native/include -I. -x cu selftest/bit_tricks.cpp -o "$out/bit_tricks"
"$out/bit_tricks"
if python3 -c 'import numpy' 2>/dev/null; then python3 selftest/fragments.py; else echo "cuda: numpy missing, fragment emulation skipped"; fi
