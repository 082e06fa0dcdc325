#!/bin/bash
# Portable bundle: every ssm-* app, a .NET runtime and the fused CUDA kernel's source in one tarball that runs on a
# Linux x64 machine with PyTorch (any CUDA) but no .NET and no internet.
#   tools/bundle.sh [OUT.tar.gz|OUT.tar.xz]  (default: dist/ssm-suite-linux-x64.tar.gz; run from anywhere; .xz is ~2x smaller)
#   BUNDLE_EXTRA="bench/GpuBench" tools/bundle.sh ...   also bundles those projects (e.g. the GPU benchmark)
#   BUNDLE_APPS="text dna" tools/bundle.sh ...          only those apps (folder names under apps/; default: all; none: no app)
# On the target:
#   tar -xzf ssm-suite-linux-x64.tar.gz && ssm-suite/bin/ssm-text doctor --device cuda
# How it runs there: the apps are published framework-dependent against TorchSharp alone (-p:TorchBackend=byo), so no
# libtorch travels; bin/<app> points DOTNET_ROOT at the bundled runtime and puts the libtorch of the installed PyTorch
# on LD_LIBRARY_PATH (found with `python3 -c 'import torch'`, or given as $TORCH_LIB). TorchSharp 0.107's native shim
# is built for libtorch 2.10 and was seen to resolve against PyTorch 2.11 (README, GPU): run `doctor --device cuda`
# first on a new machine. Where nvcc exists, the first run builds libssm_cuda.so (the fused selective scan) into the
# bundle's cache; without it the apps use the tensor-op path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$root/dist/ssm-suite-linux-x64.tar.gz}")
command -v dotnet > /dev/null || { echo "error: dotnet (the .NET 10 SDK) is needed to build the bundle" >&2; exit 1; }
stage=$(mktemp -d /tmp/ssm-bundle.XXXXXX)
trap 'rm -rf "$stage"' EXIT
b="$stage/ssm-suite"
mkdir -p "$b/apps" "$b/bin" "$b/cuda" "$b/torchstats" "$b/dotnet/host/fxr" "$b/dotnet/shared/Microsoft.NETCore.App"

apps=()
extra=()
for e in ${BUNDLE_EXTRA:-}; do extra+=("$root"/$e/*.csproj); done
chosen=()
if [ "${BUNDLE_APPS:-}" = none ]; then :
elif [ -n "${BUNDLE_APPS:-}" ]; then for a in $BUNDLE_APPS; do chosen+=("$root"/apps/$a/*.csproj); done
else chosen=("$root"/apps/*/*.csproj); fi
for proj in "${chosen[@]}" "${extra[@]}"; do
  grep -q "<OutputType>Exe</OutputType>" "$proj" || continue
  name=$(sed -n 's:.*<AssemblyName>\(.*\)</AssemblyName>.*:\1:p' "$proj" | head -1)
  [ -n "$name" ] || name=$(basename "$proj" .csproj)
  [ -n "$name" ] || continue
  echo "publishing $name"
  dotnet publish "$proj" -c Release -r linux-x64 --self-contained false -p:TorchBackend=byo \
    -p:InvariantGlobalization=true -p:DebugType=none -o "$b/apps/$name" -nologo -v quiet
  apps+=("$name")
done
# Whatever libtorch a package still brought along stays behind: the target's PyTorch provides it (with CUDA).
find "$b/apps" \( -name 'libtorch*.so' -o -name 'libc10*.so' -o -name 'libgomp*.so*' -o -name 'libshm.so' \) -delete

# The runtime: the dotnet muxer, hostfxr and Microsoft.NETCore.App of the SDK that built the apps.
d=$(dirname "$(readlink -f "$(command -v dotnet)")")
rt=$(ls "$d/shared/Microsoft.NETCore.App" | sort -V | tail -1)
fxr=$(ls "$d/host/fxr" | sort -V | tail -1)
cp "$d/dotnet" "$b/dotnet/"
cp -r "$d/host/fxr/$fxr" "$b/dotnet/host/fxr/"
cp -r "$d/shared/Microsoft.NETCore.App/$rt" "$b/dotnet/shared/Microsoft.NETCore.App/"
rm -f "$b/dotnet/shared/Microsoft.NETCore.App/$rt"/libmscordaccore.so "$b/dotnet/shared/Microsoft.NETCore.App/$rt"/libmscordbi.so  # debugger support only
cp "$root"/backbone/Native/cuda/*.cu "$root"/backbone/Native/cuda/*.cuh "$root"/backbone/Native/cuda/build.sh "$b/cuda/"
cp "$root"/backbone/Native/torchstats/*.cpp "$b/torchstats/"

cat > "$b/bin/.launch" <<'RUN'
#!/bin/bash
# Runs one bundled app against the installed PyTorch's libtorch (see tools/bundle.sh in the project).
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
app=$(basename "$0")
export DOTNET_ROOT="$here/dotnet" DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) || {
    echo "error: no libtorch: install PyTorch for python3, or set TORCH_LIB to a folder holding libtorch.so" >&2; exit 1; }
fi
[ -f "$TORCH_LIB/libtorch.so" ] || { echo "error: $TORCH_LIB has no libtorch.so (set TORCH_LIB to PyTorch's torch/lib)" >&2; exit 1; }
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The fused CUDA scan, built once per bundle where nvcc exists (cache: $SSM_CACHE or the bundle's cache/).
cache=${SSM_CACHE:-$here/cache}
if [ -z "${SSM_CUDA_LIB:-}" ]; then
  if [ ! -f "$cache/libssm_cuda.so" ] && command -v nvcc > /dev/null && [ ! -f "$cache/.cuda-failed" ]; then
    mkdir -p "$cache"
    echo "building the fused CUDA kernels once (nvcc) into $cache" >&2
    bash "$here/cuda/build.sh" "$cache" > "$cache/cuda-build.log" 2>&1 || { touch "$cache/.cuda-failed"; echo "note: nvcc failed (see $cache/cuda-build.log); using the tensor-op path" >&2; }
  fi
  [ -f "$cache/libssm_cuda.so" ] && export SSM_CUDA_LIB="$cache/libssm_cuda.so"
fi
exec "$here/apps/$app/$app" "$@"
RUN
chmod +x "$b/bin/.launch"
for a in "${apps[@]}"; do ln -s .launch "$b/bin/$a"; done
cat > "$b/README.txt" <<TXT
SsmSuite portable bundle (linux-x64). Apps: ${apps[*]}.
Needs: python3 with PyTorch (or TORCH_LIB=/path/to/torch/lib); nvcc is optional (fused CUDA kernels).
Run:   ssm-suite/bin/ssm-text doctor --device cuda      (checks every op on the GPU against float64 on the CPU)
       ssm-suite/bin/ssm-audio generate --n 4 --device cuda
TXT
mkdir -p "$(dirname "$out")"
case "$out" in
  *.xz) tar -C "$stage" -cf - ssm-suite | xz -T0 -9 > "$out.tmp" ;;
  *) tar -C "$stage" -czf "$out.tmp" ssm-suite ;;
esac
mv "$out.tmp" "$out"
echo "wrote $out ($(du -h "$out" | cut -f1)): ${apps[*]}"
