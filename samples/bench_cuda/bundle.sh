#!/bin/sh
# Packs what samples/bench_cuda/run_gpu.sh needs from a finch build made here into BUILD/gpu-bundle,
# small enough to carry to the GPU machine (the device tool carries at most 64 MiB):
#   bin/   finch, libfinch-cuda.so, test_plugin_parity, test_golden, test_generate_golden (stripped);
#          where built also libfinch-opencl.so (NVIDIA's OpenCL driver is there), test_golden_vl,
#          test_qlora, bench_qlora and switch_backend
#   lib/   the shared libraries they load from the system that the GPU machine may lack (libcjson,
#          OpenBLAS and its Fortran runtime, PCRE2, utf8proc, stb, libgomp), OpenBLAS gzipped
#   shared/golden (the goldens test_golden reads), shared/bench/hf_peft_baseline.py
# usage: samples/bench_cuda/bundle.sh [BUILD_DIR (default build)] [SHARED_DIR (default ../shared)]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
shared=${2:-$root/../shared}
out=$build/gpu-bundle
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/shared/bench"
for f in "$build/bin/finch" "$build/bin/libfinch-cuda.so" "$build/tests/test_plugin_parity" "$build/tests/test_golden" \
         "$build/tests/test_generate_golden"; do
  [ -f "$f" ] || { echo "bundle: $f is missing (build with -DFINCH_CUDA=ON first)" >&2; exit 1; }
  cp "$f" "$out/bin/"
  strip --strip-unneeded "$out/bin/$(basename "$f")" 2>/dev/null || true
done
for f in "$build/bin/libfinch-opencl.so" "$build/tests/test_golden_vl" "$build/tests/test_qlora" "$build/bin/bench_qlora" \
         "$build/bin/switch_backend"; do
  [ -f "$f" ] || continue
  cp "$f" "$out/bin/"
  strip --strip-unneeded "$out/bin/$(basename "$f")" 2>/dev/null || true
done
# System libraries outside libc/libm/libgcc_s and the CUDA toolkit (present where nvcc is).
for f in "$out"/bin/*; do ldd "$f"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' | grep -v cuda |
  while read -r lib; do
    name=$(basename "$lib")
    case "$name" in
      libopenblas*) gzip -9c "$lib" > "$out/lib/$name.gz" ;;
      *) cp -L "$lib" "$out/lib/$name" ;;
    esac
  done
cp -r "$shared/golden" "$out/shared/"
cp "$shared/bench/hf_peft_baseline.py" "$out/shared/bench/"
du -sh "$out"
ls -la "$out/bin" "$out/lib"
