# Sourced by the GPU-machine scripts (run_gpu.sh, profile_train.sh, ../bench_decode/run_gpu.sh,
# ../bench_qlora/run_gpu.sh) with $bundle set to a folder made by bundle.sh: unpacks the libraries the
# bundle carries (OpenBLAS gzipped) into /tmp/finch-gpu-lib and defines finch_env, an `env` prefix that
# runs a bundle program with them, the CUDA toolkit's and pip's cuBLASLt, the goldens and the plugins.
# Only finch's programs get it: the bundle's libstdc++ must not reach Python (torch) run beside them.
lib=/tmp/finch-gpu-lib
mkdir -p "$lib"
cp "$bundle"/lib/*.so* "$lib"/ 2>/dev/null
for f in "$lib"/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)
finch_env=(env "LD_LIBRARY_PATH=$lib:/usr/local/cuda/lib64:${cublas:+$cublas:}${LD_LIBRARY_PATH:-}"
           "FINCH_SHARED_DIR=$bundle/shared" "FINCH_PLUGIN_PATH=$bundle/bin")
