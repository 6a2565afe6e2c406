#!/usr/bin/env bash
# One call on the GPU machine: build the addon for sm_90a, run the GPU tests and the GEMM benchmark,
# write everything under $OUT and print a short table last. Here first: `bash ../shared/device/pack.sh`
# and `bash scripts/gpu-check.sh --pack-blas`, then the device tool:
#   run(carry: [".device"], command: "bash scripts/gpu-check.sh", timeout_s: 600).
# SVDQ_CUDA_ARCH overrides the architecture (e.g. 89 on an L40S); BENCH_ITERS the timed iterations.
# The core library links OpenBLAS + LAPACKE, which the GPU machine may lack: `bash scripts/gpu-check.sh
# --pack-blas` (here, after pack.sh) adds this machine's copies as .device/blas.tar.xz (~15 MB), used
# there only when the system's compiler finds no cblas.h/lapacke.h.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --pack-blas ]]; then
  set -e
  tmp=$(mktemp -d); mkdir -p "$tmp/lib" "$tmp/include" .device
  for l in libopenblas.so.0 liblapack.so.3 libblas.so.3 liblapacke.so.3 libtmglib.so.3 libgfortran.so.5 libquadmath.so.0; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$tmp/lib/$l"
    ln -s "$l" "$tmp/lib/${l%%.so*}.so"
  done
  cp -L /usr/include/x86_64-linux-gnu/{cblas.h,openblas_config.h} "$tmp/include/"
  cp -L /usr/include/{lapack.h,lapacke.h,lapacke_config.h,lapacke_mangling.h,lapacke_utils.h} "$tmp/include/"
  tar -C "$tmp" -cf - lib include | xz -T2 -6 > .device/blas.tar.xz
  rm -rf "$tmp"; du -h .device/blas.tar.xz; exit 0
fi
source .device/unpack.sh
if ! echo '#include <cblas.h>
#include <lapacke.h>' | c++ -fsyntax-only -x c++ - 2>/dev/null && [[ -f .device/blas.tar.xz ]]; then
  mkdir -p .device/blas && tar -C .device/blas -xJf .device/blas.tar.xz
  export CMAKE_LIBRARY_PATH=$PWD/.device/blas/lib CMAKE_INCLUDE_PATH=$PWD/.device/blas/include
  export LD_LIBRARY_PATH=$PWD/.device/blas/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} CPATH=$PWD/.device/blas/include
  echo "using the carried OpenBLAS/LAPACKE (.device/blas)"
fi
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
ARCH=${SVDQ_CUDA_ARCH:-90a}
command -v nvcc >/dev/null || for d in /usr/local/cuda/bin /usr/local/cuda-13*/bin; do [[ -x $d/nvcc ]] && export PATH=$d:$PATH && break; done
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

# cmake directly (not cmake-js): cmake-js wants Node headers from the network unless npm's nodedir is set.
start=$(date +%s)
if ! { cmake -S native -B native/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
         -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include" \
         -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/native/build/Release" &&
       ninja -C native/build -j"$(nproc)"; } > "$OUT/build.txt" 2>&1; then
  echo "BUILD FAILED (tail of $OUT/build.txt):"; tail -40 "$OUT/build.txt"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s; $(grep -E 'svdq:' "$OUT/build.txt" | tr '\n' ' ')"

SVDQ_GPU_TESTS=1 SVDQ_REQUIRE_GPU=1 node --import tsx node_modules/.bin/ava test/gpu/kernels.test.ts --verbose --timeout=10m \
  > "$OUT/test-gpu.txt" 2>&1
trc=$?
node --import tsx bench/gemm.ts --iters "${BENCH_ITERS:-20}" --json "$OUT/gemm.json" > "$OUT/bench-gemm.txt" 2>&1
brc=$?
# PyTorch BF16 F.linear at M=4608, the peer the issue compares against (a cross-check of the cuBLASLt column).
python3 - > "$OUT/torch-bf16.txt" 2>&1 <<'PY' || true
import torch, torch.nn.functional as F
print("torch", torch.__version__, torch.cuda.get_device_name())
for K, N in [(3072, 9216), (3072, 3072), (3072, 12288), (12288, 3072), (3072, 21504), (15360, 3072)]:
    x = torch.randn(4608, K, device="cuda", dtype=torch.bfloat16); w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    for _ in range(3): F.linear(x, w)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); [F.linear(x, w) for _ in range(20)]; e.record(); torch.cuda.synchronize()
    ms = s.elapsed_time(e) / 20
    print(f"M=4608 K={K} N={N}: {ms:.3f} ms, {2*4608*K*N/ms/1e9:.0f} TFLOPS")
PY

echo "== test:gpu (rc $trc) =="
grep -E "✘|✔.*GPU present|tests? (passed|failed|skipped)|known failure|uncaught" "$OUT/test-gpu.txt" | head -60
echo "== torch BF16 =="; cat "$OUT/torch-bf16.txt"
echo "== bench:gemm (rc $brc) =="; cat "$OUT/bench-gemm.txt"
exit $(( trc != 0 || brc != 0 ))
