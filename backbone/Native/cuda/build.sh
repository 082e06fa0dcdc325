#!/bin/bash
# Builds libssm_cuda.so (the fused CUDA kernels) with nvcc. Usage: backbone/Native/cuda/build.sh [OUT_DIR]
# The apps load it from their own folder or from $SSM_CUDA_LIB; without it they use the tensor-op paths.
# Where python3 has PyTorch with its C++ headers, it also builds libssm_torchstats.so (the caching allocator's peak-memory
# statistics, used by bench/GpuBench); a failure there is reported and does not fail the build.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/build}
mkdir -p "$OUT"
ARCHS=${SSM_CUDA_ARCHS:-"80 86 89 90"}
GENCODE=""
for a in $ARCHS; do GENCODE="$GENCODE -gencode arch=compute_$a,code=sm_$a"; done
nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC $GENCODE -o "$OUT/libssm_cuda.so.tmp" "$HERE"/*.cu
mv "$OUT/libssm_cuda.so.tmp" "$OUT/libssm_cuda.so"
echo "built $OUT/libssm_cuda.so"
if TORCH_DIR=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) && [ -d "$TORCH_DIR/include/c10" ]; then
  ABI=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || echo 1)
  CUDA_INC=$(dirname "$(dirname "$(command -v nvcc)")")/include
  if g++ -O2 -std=c++17 -shared -fPIC -D_GLIBCXX_USE_CXX11_ABI="$ABI" -I"$TORCH_DIR/include" -I"$CUDA_INC" \
       -o "$OUT/libssm_torchstats.so.tmp" "$HERE/../torchstats/torch_stats.cpp" -L"$TORCH_DIR/lib" -lc10_cuda -lc10 \
       -Wl,-rpath,"$TORCH_DIR/lib"; then
    mv "$OUT/libssm_torchstats.so.tmp" "$OUT/libssm_torchstats.so"
    echo "built $OUT/libssm_torchstats.so"
  else
    echo "note: libssm_torchstats.so not built (benchmarks will report the device's used memory instead)" >&2
  fi
fi
