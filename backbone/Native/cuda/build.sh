#!/bin/bash
# Builds libssm_cuda.so (the fused CUDA kernels) with nvcc. Usage: backbone/Native/cuda/build.sh [OUT_DIR]
# The apps load it from their own folder or from $SSM_CUDA_LIB; without it they use the tensor-op paths.
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
